"""train(): learning happens, the run folder is complete, resume is exact, DDP reduces the metrics."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml

from segkit.bundle import load_bundle, save_bundle
from segkit.config import load_config
from segkit.data.synthetic import make_shapes_dataset
from segkit.errors import ConfigError, DataError
from segkit.training import (
    AtomicCheckpointIO,
    build_trainer,
    resolve_precision,
    resolve_run_dir,
    train,
)
from segkit.training.module import SegmentationModule
from tests.conftest import QUIET_TRAINER, shapes_run_config

REPO = Path(__file__).resolve().parents[2]


def _config(data: dict, runs: Path, **sections) -> dict:
    cfg = shapes_run_config(
        data,
        runs,
        data={"batch_size": 4},
        optimizer={"lr": 0.01},
        scheduler={"warmup_epochs": 0.5},
        run={"seed": 0, "plan": False},
    )
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One short run on the synthetic shapes set, shared by the tests that inspect its results."""
    root = tmp_path_factory.mktemp("train")
    data = make_shapes_dataset(root / "data", n_train=16, n_val=4, size=64, seed=0)
    config = load_config(
        _config(data, root / "runs", trainer={"max_epochs": 5}, run={"val_preview_images": 2})
    )
    counter = _BatchCounter()
    result = train(config, config_path=Path("shapes.yaml"), callbacks=[counter])
    return config, result, counter


class _BatchCounter(L.Callback):
    """A caller's own callback, handed to train()."""

    def __init__(self) -> None:
        self.batches = 0

    def on_train_batch_end(self, *args: object) -> None:
        self.batches += 1


def test_own_callbacks_run(trained):
    config, result, counter = trained
    assert counter.batches == 5 * (16 // config.data.batch_size)  # every step of the 5 epochs


def test_training_beats_the_initial_model(trained, tmp_path):
    from segkit.evaluation import evaluate

    config, result, _ = trained
    L.seed_everything(
        config.run.seed, workers=True, verbose=False
    )  # the same initial weights train() drew
    initial = save_bundle(tmp_path / "init.ckpt", config, SegmentationModule(config).model)
    before = evaluate(initial, config.data.val.images, config.data.val.masks, device="cpu")
    after = result.metrics
    assert after.miou > before.miou + 0.2, (before.miou, after.miou)
    assert after.total_pixels == 4 * 64 * 64


def test_run_folder_holds_everything(trained):
    config, result, _ = trained
    run = result.run_dir
    assert run == config.run.dir / "shapes"  # named after the config file
    assert result.best_checkpoint == run / "best.ckpt" and result.best_checkpoint.is_file()
    assert result.last_checkpoint == run / "last.ckpt" and result.last_checkpoint.is_file()
    assert load_config(yaml.safe_load((run / "config.yaml").read_text())) == config
    stored = json.loads((run / "metrics.json").read_text())
    assert stored["mIoU"] == pytest.approx(result.metrics.miou)
    assert sorted(p.name for p in (run / "previews").iterdir()) == [
        f"epoch_{i:03d}.png" for i in range(5)
    ]
    assert (run / "logs" / "metrics.csv").is_file() and any((run / "tensorboard").iterdir())
    assert not [p for p in run.iterdir() if ".tmp" in p.name]


def test_best_checkpoint_is_a_safe_bundle_with_identical_logits(trained):
    _, result, _ = trained
    raw = torch.load(result.best_checkpoint, map_location="cpu", weights_only=True)
    assert raw["hyper_parameters"]["model_card"]["classes"] == [
        "background",
        "circle",
        "rectangle",
        "triangle",
    ]
    x = torch.randn(1, 3, 64, 96)
    module = SegmentationModule.load_from_checkpoint(
        result.best_checkpoint, map_location="cpu", weights_only=True
    ).eval()
    with torch.no_grad():
        torch.testing.assert_close(load_bundle(result.best_checkpoint).build_model()(x), module(x))


def test_bad_data_is_refused_before_training(tmp_path):
    data = make_shapes_dataset(tmp_path / "data", n_train=2, n_val=1, size=32)
    bad = sorted(Path(data["train_masks"]).iterdir())[0]
    from PIL import Image

    Image.fromarray(np.full((32, 32), 7, np.uint8)).save(bad)
    config = load_config(_config(data, tmp_path / "runs"))
    with pytest.raises(DataError, match=bad.name):
        train(config)
    assert not (tmp_path / "runs").exists()


def _steps(path: Path) -> tuple[int, int, int]:
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    adam_step = int(next(iter(ckpt["optimizer_states"][0]["state"].values()))["step"])
    return int(ckpt["global_step"]), adam_step, int(ckpt["lr_schedulers"][0]["last_epoch"])


def test_resume_continues_step_optimizer_and_schedule(tmp_path):
    data = make_shapes_dataset(tmp_path / "data", n_train=8, n_val=2, size=64)  # 2 steps per epoch
    base = _config(
        data,
        tmp_path / "runs",
        run={"name": "r", "val_preview_images": 0},
        trainer={"logger": False},
    )
    first = train(load_config(base, ["trainer.max_epochs=2"]))
    assert _steps(first.last_checkpoint) == (4, 4, 4)

    resumed = train(load_config(base, ["trainer.max_epochs=3", "run.resume=last"]))
    assert resumed.run_dir == first.run_dir  # continues in the named folder, no "r-2"
    # an uninterrupted 3-epoch run takes 3 x 2 steps; a fresh optimiser would have counted only 2
    assert _steps(resumed.last_checkpoint) == (6, 6, 6)
    assert not (tmp_path / "runs" / "r-2").exists()

    with pytest.raises(ConfigError, match=r"model.encoder='tu-resnet10t'"):
        train(load_config(base, ["run.resume=last", "model.encoder=resnet18"]))


def test_resume_without_a_checkpoint_is_a_config_error(tmp_path):
    config = load_config({"run": {"dir": str(tmp_path), "name": "nothing", "resume": "last"}})
    with pytest.raises(
        ConfigError, match=r"run.resume=last: checkpoint .*nothing/last.ckpt not found"
    ):
        train(config)


def test_run_folders_are_numbered(tmp_path):
    config = load_config({"run": {"dir": str(tmp_path)}})
    assert resolve_run_dir(config, Path("cfg/membrane.yaml")) == tmp_path / "membrane"
    (tmp_path / "membrane").mkdir()
    assert resolve_run_dir(config, Path("membrane.yaml")) == tmp_path / "membrane-2"
    (tmp_path / "membrane-2").mkdir()
    assert resolve_run_dir(config, Path("membrane.yaml")) == tmp_path / "membrane-3"
    assert resolve_run_dir(config) == tmp_path / "run"
    resuming = load_config({"run": {"dir": str(tmp_path), "name": "membrane", "resume": "last"}})
    assert resolve_run_dir(resuming) == tmp_path / "membrane"
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "config.yaml").write_text("{}")
    from_path = load_config(
        {"run": {"dir": str(tmp_path), "resume": str(tmp_path / "other" / "last.ckpt")}}
    )
    assert (
        resolve_run_dir(from_path) == tmp_path / "other"
    )  # a checkpoint path continues in its own run


def test_trainer_gets_every_trainer_key_and_segkit_callbacks(tmp_path):
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    config = load_config(
        {
            "trainer": {
                "accelerator": "cpu",
                "max_epochs": 3,
                "limit_train_batches": 3,
                "gradient_clip_val": 0.5,
                "accumulate_grad_batches": 2,
                "enable_progress_bar": False,
            },
            "run": {"early_stopping_patience": 2},
        }
    )
    trainer, checkpoint = build_trainer(config, tmp_path)
    assert (
        trainer.max_epochs,
        trainer.limit_train_batches,
        trainer.gradient_clip_val,
        trainer.accumulate_grad_batches,
    ) == (3, 3, 0.5, 2)
    assert trainer.precision == "32-true"  # 'auto' on CPU
    assert isinstance(trainer.strategy.checkpoint_io, AtomicCheckpointIO)
    assert (
        checkpoint.monitor == "val/mIoU"
        and checkpoint.mode == "max"
        and checkpoint.save_weights_only
    )
    assert any(
        c.filename == "last" and c.monitor is None and not c.save_weights_only
        for c in trainer.checkpoint_callbacks
    )
    stopper = next(c for c in trainer.callbacks if isinstance(c, EarlyStopping))
    assert stopper.patience == 2 and stopper.monitor == "val/mIoU"
    assert isinstance(trainer.checkpoint_callback, ModelCheckpoint)
    assert [type(lg).__name__ for lg in trainer.loggers] == [
        "ResumableCSVLogger",
        "TensorBoardLogger",
    ]
    assert Path(trainer.default_root_dir) == tmp_path


def test_resolve_precision(monkeypatch):
    assert resolve_precision("auto", "cpu") == "32-true"
    assert resolve_precision("16-mixed", "cpu") == "16-mixed"  # explicit values pass through
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto", "auto") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision("auto", "gpu") == "bf16-mixed"
    assert resolve_precision("auto", "auto") == "bf16-mixed"
    assert resolve_precision("auto", "cpu") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_precision("auto", "cuda") == "16-mixed"


def test_checkpoint_writes_are_atomic(tmp_path, monkeypatch):
    path = tmp_path / "last.ckpt"
    io = AtomicCheckpointIO()
    io.save_checkpoint({"step": torch.tensor(1)}, path)

    def killed(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"half a checkpo")
        raise OSError("No space left on device")

    monkeypatch.setattr(torch, "save", killed)
    with pytest.raises(OSError):
        io.save_checkpoint({"step": torch.tensor(2)}, path)
    assert torch.load(path, weights_only=True)["step"] == 1  # the previous checkpoint is intact
    assert [p.name for p in tmp_path.iterdir()] == ["last.ckpt"]  # no temporary left behind


DDP_SCRIPT = """
import json, os, sys
from pathlib import Path
from segkit.config import load_config
from segkit.training import module as M
from segkit.training import train

out = Path(sys.argv[1])
seen = {"pixels": 0}
step, end = M.SegmentationModule.validation_step, M.SegmentationModule.on_validation_epoch_end

def counting_step(self, batch, batch_idx):
    if not self.trainer.sanity_checking:
        seen["pixels"] += int((batch["mask"] != 255).sum())
    return step(self, batch, batch_idx)

def recording_end(self):
    end(self)
    if not self.trainer.sanity_checking:
        record = {"local": seen["pixels"], "reduced": self.last_val_metrics.total_pixels, "world": self.trainer.world_size}
        (out / f"val{self.global_rank}.json").write_text(json.dumps(record))

M.SegmentationModule.validation_step = counting_step
M.SegmentationModule.on_validation_epoch_end = recording_end
result = train(load_config(json.loads((out / "config.json").read_text())))
rank = os.environ.get("LOCAL_RANK", "0")
import torch.distributed as dist
(out / f"result{rank}.json").write_text(json.dumps({"run_dir": str(result.run_dir), "total": result.metrics.total_pixels, "group_open": dist.is_initialized()}))
"""


@pytest.mark.slow
def test_ddp_on_two_cpu_processes_reduces_the_confusion_matrix(tmp_path):
    # 5 val images on 2 processes: Lightning's sampler would validate 6 (one twice); segkit's
    # gives 3 + 2, and the process with one batch fewer must not hang the other.
    data = make_shapes_dataset(tmp_path / "data", n_train=8, n_val=5, size=64)
    cfg = _config(
        data,
        tmp_path / "runs",
        run={"name": "ddp", "val_preview_images": 1},
        trainer={"strategy": "ddp", "devices": 2, "max_epochs": 1, "num_sanity_val_steps": 0},
    )
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    script = tmp_path / "ddp_train.py"
    script.write_text(textwrap.dedent(DDP_SCRIPT))
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    for var in ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "SEGKIT_RUN_DIR"):
        env.pop(var, None)
    proc = subprocess.run(
        [sys.executable, str(script), str(tmp_path)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]

    image = 64 * 64
    total = 5 * image
    for rank, images in ((0, 3), (1, 2)):
        val = json.loads((tmp_path / f"val{rank}.json").read_text())
        assert val["world"] == 2
        assert val["local"] == images * image  # each image validated by one process...
        assert val["reduced"] == total  # ...and the matrix it logged from covers each once
        res = json.loads((tmp_path / f"result{rank}.json").read_text())
        assert res["run_dir"] == str(tmp_path / "runs" / "ddp")  # both ranks wrote into one folder
        assert res["total"] == total
        assert not res["group_open"]  # closed by train(), not left to gloo at interpreter exit
    assert (tmp_path / "runs" / "ddp" / "best.ckpt").is_file()
    assert not (tmp_path / "runs" / "ddp-2").exists()


def test_training_logs_to_csv_alone_without_tensorboard(tmp_path, monkeypatch):
    """TensorBoard is an extra: without it the trainer still logs, to metrics.csv."""
    import segkit.training.trainer

    config = load_config({"trainer": dict(QUIET_TRAINER)})
    assert segkit.training.trainer.tensorboard_available()  # the dev extra installs it
    monkeypatch.setattr(segkit.training.trainer, "tensorboard_available", lambda: False)
    trainer, _ = build_trainer(config, tmp_path)
    assert [type(lg).__name__ for lg in trainer.loggers] == ["ResumableCSVLogger"]


def test_validation_scores_what_predict_writes_tiles_included(tmp_path):
    """Validation runs whole images through the predictor: with a tile smaller than the images
    (tiles, overlap, blending), the logged val mIoU is what ``evaluate`` of the checkpoint gives."""
    import csv

    from segkit.evaluation import evaluate

    data = make_shapes_dataset(tmp_path / "data", n_train=8, n_val=3, size=64, seed=1)
    config = load_config(
        _config(
            data,
            tmp_path / "runs",
            trainer={"max_epochs": 1},
            predict={"tile": 32, "overlap": 0.5, "blend": "gaussian"},
            run={"name": "tiled"},
        )
    )
    result = train(config)
    with (result.run_dir / "logs" / "metrics.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    logged = [float(r["val/mIoU"]) for r in rows if r.get("val/mIoU")]
    assert len(logged) == 1
    scored = evaluate(
        result.last_checkpoint, data["val_images"], data["val_masks"], device="cpu", tta="none"
    )
    assert load_bundle(result.last_checkpoint).card.tile == 32
    assert logged[0] == pytest.approx(scored.miou, abs=1e-6)
