"""SegmentationModule: gradients reach every parameter, the checkpoint is a safe bundle, schedules."""

from __future__ import annotations

import copy

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

from segkit.bundle import load_bundle
from segkit.config import load_config
from segkit.training.module import Decay, SegmentationModule, warmup_then
from tests.conftest import TINY_MODEL

IGNORE = 255


class RandomSegmentation(Dataset):
    """Stand-in for segkit.data's dataset: the same item dict, random content."""

    def __init__(self, n: int, size: int = 32, classes: int = 3) -> None:
        self.n, self.size, self.classes = n, size, classes

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> dict:
        g = torch.Generator().manual_seed(i)
        mask = torch.randint(0, self.classes, (self.size, self.size), generator=g)
        mask[:2] = IGNORE
        image = (
            torch.randn(3, self.size, self.size, generator=g) + mask.clamp(max=self.classes).float()
        )
        return {"image": image, "mask": mask, "name": f"{i:03d}"}


def _config(**run):
    return load_config(
        {
            "data": {
                "classes": ["a", "b", "c"],
                "patch_size": 32,
                "batch_size": 2,
                "num_workers": 0,
            },
            "model": TINY_MODEL,
            "run": run,
        }
    )


def _fit(module, root, max_steps=2, val=True):
    trainer = L.Trainer(
        max_steps=max_steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        limit_val_batches=2 if val else 0,  # a loader all the same: Lightning warns without one
        default_root_dir=root,
    )
    train = DataLoader(RandomSegmentation(4), batch_size=2)
    trainer.fit(module, train, DataLoader(RandomSegmentation(2), batch_size=1))
    return trainer


def test_every_parameter_gets_a_gradient():
    module = SegmentationModule(_config())
    batch = torch.utils.data.default_collate([RandomSegmentation(2)[i] for i in range(2)])
    loss = module.loss(module(batch["image"]), batch["mask"])
    loss.backward()
    assert not [
        n
        for n, p in module.named_parameters()
        if p.grad is None or not torch.isfinite(p.grad).all()
    ]
    # timm zero-initialises each residual block's last norm, so only inner block weights may
    # start with an exactly-zero gradient; the decoder and head must not
    zero = [n for n, p in module.named_parameters() if p.grad.abs().sum() == 0]
    assert not [n for n in zero if not n.startswith("model.encoder.")]


def test_the_network_trains_channels_last_and_hands_back_nchw_logits():
    """channels_last is a speed choice (NHWC convolutions); losses and metrics see plain NCHW
    logits, equal to the same weights run in the default layout."""
    module = SegmentationModule(_config()).eval()
    conv = next(m for m in module.model.modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    images = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = module(images)
        plain = copy.deepcopy(module.model).to(memory_format=torch.contiguous_format)(images)
    assert logits.is_contiguous() and logits.shape == (2, 3, 32, 32)
    torch.testing.assert_close(logits, plain, atol=1e-5, rtol=1e-5)


def test_weights_change_after_training_steps(tmp_path):
    cfg = load_config(
        _config(val_preview_images=0).to_dict(),
        ["optimizer.weight_decay=0", "scheduler.warmup_epochs=0"],
    )
    module = SegmentationModule(cfg)  # no weight decay: only gradients can move a weight
    before = {
        k: v.clone() for k, v in module.model.state_dict().items() if v.dtype.is_floating_point
    }
    _fit(module, tmp_path, max_steps=2, val=False)
    after = module.model.state_dict()
    unchanged = [k for k, v in before.items() if "running" not in k and torch.equal(v, after[k])]
    assert not unchanged


def test_checkpoint_is_a_bundle_loaded_with_weights_only(tmp_path):
    module = SegmentationModule(_config(val_preview_images=2))
    trainer = _fit(module, tmp_path)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)

    raw = torch.load(path, map_location="cpu", weights_only=True)  # no pickled code allowed
    assert raw["hyper_parameters"]["model_card"] == module.card.to_dict()
    assert module.card.classes == ["a", "b", "c"] and module.card.stride == 8
    assert raw["global_step"] == 2

    x = torch.randn(1, 3, 48, 40)
    module.eval()
    with torch.no_grad():
        expected = module(x)
        from_bundle = load_bundle(path).build_model()(x)
        reloaded = SegmentationModule.load_from_checkpoint(
            path, map_location="cpu", weights_only=True
        ).eval()(x)
    torch.testing.assert_close(from_bundle, expected)
    torch.testing.assert_close(reloaded, expected)

    # the validation preview: 2 rows of image | truth | prediction
    with Image.open(tmp_path / "previews" / "epoch_000.png") as preview:
        assert preview.width == 3 * 32 + 2 * 4 and preview.height == 2 * 32 + 4


def test_validation_logs_dataset_level_metrics(tmp_path):
    module = SegmentationModule(_config(val_preview_images=0))
    trainer = _fit(module, tmp_path, max_steps=2)  # one epoch, then validation
    metrics = module.last_val_metrics
    assert metrics is not None
    # 2 val images of 32x32 with two ignored rows each
    assert metrics.total_pixels == 2 * 30 * 32
    logged = trainer.callback_metrics
    assert logged["val/mIoU"].item() == pytest.approx(metrics.miou)
    assert {"val/loss", "val/pixel_accuracy", "val/IoU/a", "val/micro_IoU"} <= set(logged)


def test_pretrained_false_skips_encoder_weights(tmp_path):
    cfg = _config().model_copy(
        update={
            "model": _config().model.model_copy(
                update={"encoder_weights": str(tmp_path / "missing.pth")}
            )
        }
    )
    module = SegmentationModule(
        cfg, pretrained=False
    )  # resuming: the checkpoint brings the weights
    assert module.hparams["model_card"]["config"]["model"]["encoder_weights"].endswith(
        "missing.pth"
    )


@pytest.mark.parametrize("name", ["cosine", "poly", "constant"])
def test_schedule_warms_up_then_decays(name):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    s = warmup_then(optimizer, 4, Decay(name=name, steps=16, power=0.9, min_ratio=0.1))
    factors = []
    for _ in range(21):
        factors.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        s.step()
    factors = np.array(factors)
    assert np.all(np.diff(factors[:5]) > 0) and factors[0] < 0.5  # linear warm-up
    assert factors[4] == pytest.approx(1.0)
    if name == "constant":
        assert np.allclose(factors[4:], 1.0)
    else:
        assert np.all(np.diff(factors[4:]) <= 1e-12)
        assert factors[20] == pytest.approx(0.1)


def test_optimizer_and_scheduler_follow_the_config(tmp_path):
    cfg = load_config(
        _config().to_dict(),
        [
            "optimizer.name=sgd",
            "optimizer.lr=0.5",
            "scheduler.name=constant",
            "scheduler.warmup_epochs=0",
        ],
    )
    module = SegmentationModule(cfg)
    trainer = _fit(module, tmp_path, max_steps=2, val=False)
    opt = trainer.optimizers[0]
    assert isinstance(opt, torch.optim.SGD) and opt.param_groups[0]["momentum"] == 0.9
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5)
    assert opt.param_groups[1]["weight_decay"] == 0.0  # norms and biases are not decayed


def test_a_resumed_schedule_continues_the_same_curve(tmp_path):
    """The scheduler state (warm-up, decay and its time progress) survives a weights-only
    checkpoint round trip, as ``run.resume`` needs."""

    def schedule(progress=None):
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        decay = Decay("cosine", steps=10, min_ratio=0.1, time_progress=progress)
        return optimizer, warmup_then(optimizer, 3, decay)

    optimizer, first = schedule(0.6)
    for _ in range(5):
        optimizer.step()
        first.step()
    torch.save(first.state_dict(), tmp_path / "s.pt")
    optimizer, resumed = schedule()
    resumed.load_state_dict(torch.load(tmp_path / "s.pt", weights_only=True))
    for a, b in ((first, resumed),) * 4:
        a.optimizer.step()
        a.step()
        b.optimizer.step()
        b.step()
        assert b.get_last_lr() == pytest.approx(a.get_last_lr())
    assert resumed._schedulers[1].lr_lambdas[0].time_progress == 0.6
