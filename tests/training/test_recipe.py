"""The recipe's training parts: a time budget the schedule anneals over, fixed-length epochs,
rare-class oversampling, and the warnings a finished run gives."""

from __future__ import annotations

import csv
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch

from segkit.config import load_config
from segkit.data.datamodule import SegmentationDataModule, image_weights
from segkit.data.synthetic import make_shapes_dataset
from segkit.models.metrics import SegmentationMetrics
from segkit.training import train
from segkit.training.diagnostics import loss_gap, never_predicted
from segkit.training.module import Decay, warmup_then
from segkit.training.plan import UNLIMITED_EPOCHS
from tests.conftest import shapes_run_config


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    return make_shapes_dataset(tmp_path_factory.mktemp("recipe"), n_train=8, n_val=2, size=64)


def _config(shapes, runs: Path, **sections):
    run = {"val_preview_images": 0, **sections.pop("run", {})}
    return load_config(shapes_run_config(shapes, runs, run=run, **sections))


def _lr_after(scheduler: torch.optim.lr_scheduler.LRScheduler, steps: int) -> float:
    for _ in range(steps):
        scheduler.optimizer.step()
        scheduler.step()
    return scheduler.get_last_lr()[0]


def test_schedule_follows_the_time_budget_and_ends_at_its_floor():
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    decay = Decay("cosine", steps=None, min_ratio=0.1)
    schedule = warmup_then(optimizer, 2, decay)
    assert schedule.get_last_lr()[0] == pytest.approx(1 / 3)  # warm-up counts steps
    assert _lr_after(schedule, 2) == pytest.approx(1.0)  # no budget spent: the full rate
    decay.time_progress = 0.5
    assert _lr_after(schedule, 98) == pytest.approx(0.1 + 0.9 * 0.5)
    decay.time_progress = 1.0
    assert _lr_after(schedule, 1) == pytest.approx(0.1)
    # with both limits, whichever ends first: here the steps
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    both = warmup_then(optimizer, 0, Decay("poly", steps=10, time_progress=0.2))
    assert _lr_after(both, 10) == pytest.approx(0.0)


@pytest.mark.slow
def test_a_budgeted_run_stops_on_time_and_its_learning_rate_reaches_the_floor(shapes, tmp_path):
    config = _config(
        shapes,
        tmp_path,
        data={"steps_per_epoch": 5},
        scheduler={"name": "cosine", "warmup_epochs": 0.2, "min_lr_ratio": 0.0},
        trainer={"max_time": "00:00:00:12"},
        run={"plan": True},
    )
    result = train(config)
    assert result.plan is not None
    assert any(d.key == "trainer.max_epochs" for d in result.plan.decisions)
    with open(result.run_dir / "logs" / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    lrs = [float(r["lr-AdamW/pg1"]) for r in rows if r.get("lr-AdamW/pg1")]
    peak = max(lrs)
    assert len(lrs) > 5  # it trained several epochs' worth of steps before the budget ran out
    assert lrs[-1] <= 0.05 * peak  # the last steps anneal to the floor
    ckpt = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    (timer,) = [v for k, v in ckpt["callbacks"].items() if k.startswith("Timer")]
    assert timer["time_elapsed"]["train"] >= 12  # stopped by the budget, not by epochs
    assert ckpt["epoch"] + 1 < UNLIMITED_EPOCHS


def test_an_epoch_is_steps_per_epoch_batches_whatever_the_dataset(shapes, tmp_path):
    config = _config(shapes, tmp_path, data={"steps_per_epoch": 7, "batch_size": 3})
    module = SegmentationDataModule(config)
    module.setup("fit")
    assert len(module.train_dataloader()) == 7
    assert len(SegmentationDataModule(_config(shapes, tmp_path)).train_dataloader()) == 4


def test_rare_class_images_are_drawn_the_oversample_share_and_crops_hold_them(tmp_path):
    """6 images, class 'rare' (a 4x4 square) in only one: drawn 60% of the time, and then the
    64px crop out of 128px holds it (albumentations' CropNonEmptyMaskIfExists)."""
    from PIL import Image

    for i in range(6):
        mask = np.zeros((128, 128), np.uint8)
        mask[:, 64:] = 1
        if i == 0:
            mask[100:104, 8:12] = 2
        for sub, array in (("images", np.full((128, 128), 40 * i, np.uint8)), ("masks", mask)):
            (tmp_path / sub).mkdir(exist_ok=True)
            Image.fromarray(array).save(tmp_path / sub / f"{i}.png")
    train = {"images": str(tmp_path / "images"), "masks": str(tmp_path / "masks")}
    config = load_config(
        {
            "data": {
                "train": train,
                "val_fraction": 0.0,
                "classes": ["a", "b", "rare"],
                "in_channels": 1,
                "patch_size": 64,
                "batch_size": 4,
                "steps_per_epoch": 250,
                "num_workers": 0,
                "rare_classes": ["rare"],
                "oversample": 0.6,
            },
            "run": {"seed": 0},
        }
    )
    module = SegmentationDataModule(config)
    module.setup("fit")
    weights = image_weights(module.train_dataset)
    assert weights is not None and weights[0] / weights.sum() == pytest.approx(0.6)
    rare_crops = sum(int((m == 2).any()) for b in module.train_dataloader() for m in b["mask"])
    # 1000 crops: 60% drawn from the rare image, 60% of those centred on the rare square (a
    # plain random crop holds it 5% of the time: 1% of all crops without oversampling)
    assert 0.25 < rare_crops / 1000 < 0.5


def test_warnings_name_a_class_never_predicted_and_a_loss_gap():
    matrix = np.array([[50, 0, 0], [10, 30, 0], [5, 5, 0]])  # class c: truth 10, predicted 0
    metrics = SegmentationMetrics(matrix, ["a", "b", "c"])
    (warning,) = never_predicted(metrics)
    assert "'c'" in warning and "data.rare_classes=[c]" in warning
    assert loss_gap(0.2, 1.5) and not loss_gap(0.2, 0.3) and not loss_gap(None, 1.0)


class _OneClassModel(L.Callback):
    """Makes the network answer class 0 everywhere (its head: zero weights, a large bias)."""

    def on_fit_start(self, trainer, pl_module):
        head = pl_module.model.segmentation_head[0]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.copy_(torch.tensor([50.0] + [0.0] * (head.bias.numel() - 1)))


def test_a_run_that_predicts_one_class_warns(shapes, tmp_path):
    config = _config(
        shapes,
        tmp_path,
        optimizer={"lr": 1e-12},
        trainer={"max_epochs": 1, "limit_train_batches": 1},
        run={"plan": False},
    )
    result = train(config, callbacks=[_OneClassModel()])
    names = config.data.classes[1:]
    assert [w.split("'")[1] for w in result.warnings if "never predicted" in w] == names


def test_ema_weights_are_what_the_checkpoints_hold(shapes, tmp_path):
    config = _config(
        shapes,
        tmp_path,
        optimizer={"ema_decay": 0.5},
        trainer={"max_epochs": 1},
        run={"plan": False},
    )
    result = train(config)
    last = torch.load(result.last_checkpoint, map_location="cpu", weights_only=True)
    raw, averaged = last["current_model_state"], last["state_dict"]
    name = "model.segmentation_head.0.weight"
    assert not torch.equal(raw[name], averaged[name])  # the checkpoint's weights are the EMA's
    best = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    assert "current_model_state" not in best and "optimizer_states" not in best  # weights only
    assert torch.equal(best["state_dict"][name], averaged[name])  # the same epoch: EMA weights
    from segkit.bundle import load_bundle

    model = load_bundle(result.last_checkpoint).build_model()
    assert torch.equal(model.state_dict()["segmentation_head.0.weight"], averaged[name])
