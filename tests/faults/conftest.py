"""Fixtures of the fault suite: tiny datasets, configs and bundles in tmp_path, subprocess helpers.

Everything here is small on purpose (64 px images, TINY_MODEL, a few steps): the whole suite must
stay within a few minutes on two CPU cores while still killing real processes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from segkit.bundle import save_bundle
from segkit.config import load_config
from segkit.models.build import build_model
from segkit.utils import is_temporary_file
from tests.conftest import QUIET_TRAINER, TINY_MODEL

REPO = Path(__file__).resolve().parents[2]
CLASSES = ["background", "circle", "rectangle", "triangle"]


def picture(h: int = 64, w: int = 64, seed: int = 0, channels: int = 3) -> np.ndarray:
    """A uint8 ``h x w x channels`` picture with some structure (blocks), seeded."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (max(1, h // 8), max(1, w // 8), channels), dtype=np.uint8)
    return np.ascontiguousarray(np.kron(low, np.ones((8, 8, 1), np.uint8))[:h, :w])


def save_png(path: Path, array: np.ndarray, **kwargs: Any) -> Path:
    """Write with PIL directly (independent of segkit's writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, **kwargs)
    return path


def config_dict(data: dict[str, Any], runs: Path, **sections: Any) -> dict[str, Any]:
    """A tiny training config for ``make_shapes_dataset`` output (2 steps per epoch of 8 images)."""
    cfg: dict[str, Any] = {
        "data": {
            "train": {"images": str(data["train_images"]), "masks": str(data["train_masks"])},
            "val": {"images": str(data["val_images"]), "masks": str(data["val_masks"])},
            "classes": list(data["classes"]),
            "patch_size": 64,
            "batch_size": 4,
            "num_workers": 0,
        },
        "model": dict(TINY_MODEL),
        "optimizer": {"lr": 0.01},
        "scheduler": {"warmup_epochs": 0.5},
        "trainer": {**QUIET_TRAINER, "max_epochs": 2},
        "run": {"dir": str(runs), "seed": 0, "val_preview_images": 0, "plan": False},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value}
    return cfg


def write_config(path: Path, cfg: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(cfg, sort_keys=False), encoding="utf-8")
    return path


@pytest.fixture
def shapes(tmp_path: Path) -> dict[str, Any]:
    """A fresh 64 px synthetic shapes set (4 train, 2 val pairs, index masks) this test may spoil."""
    from segkit.data.synthetic import make_shapes_dataset

    return make_shapes_dataset(tmp_path / "data", n_train=4, n_val=2, size=64, seed=0)


@pytest.fixture(scope="session")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TINY_MODEL bundle (4 classes, tile 64) with seeded random weights: predicts quickly."""
    cfg = load_config(
        {
            "data": {"classes": CLASSES, "patch_size": 64},
            "model": TINY_MODEL,
            "predict": {"tile": 64, "batch_size": 4},
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, len(CLASSES), 3).eval()
    return save_bundle(tmp_path_factory.mktemp("bundle") / "tiny.ckpt", cfg, model)


def temporaries(folder: Path) -> list[Path]:
    """Every file under ``folder`` (hidden ones included) named like an atomic_path temporary."""
    return sorted(p for p in Path(folder).rglob("*") if is_temporary_file(p))


def error_lines(err: str) -> list[str]:
    """The non-empty stderr lines that are not Python warnings (which name their source line)."""
    lines = [ln for ln in err.splitlines() if ln.strip()]
    return [ln for ln in lines if "Warning:" not in ln and not ln.startswith("  ")]


def segkit_cmd(*args: str) -> list[str]:
    """The real console entry point, as a user runs it."""
    return [sys.executable, "-m", "segkit", *args]


def python_cmd(code: str, *args: str) -> list[str]:
    """A Python process that patches something, then runs the CLI (``sys.argv[1:]`` are its arguments)."""
    return [sys.executable, "-c", code, *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env.update({"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    return env


def start(cmd: list[str], cwd: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start ``cmd`` with stdout+stderr going to ``log`` (a pipe nobody reads could block it)."""
    with open(log, "wb") as out:  # the child writes through its own copy of the descriptor
        return subprocess.Popen(cmd, cwd=cwd, env=child_env(), stdout=out, stderr=subprocess.STDOUT)


def kill_when(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], timeout: float, log: Path
) -> None:
    """SIGKILL ``proc`` as soon as ``ready()`` is true (polled every 5 ms); fail if it ends first."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            pytest.fail(
                f"the process ended (rc {proc.returncode}) before the kill point:\n{log.read_text(errors='replace')[-3000:]}"
            )
        if time.monotonic() > deadline:
            proc.kill()
            pytest.fail(
                f"kill point not reached in {timeout}s:\n{log.read_text(errors='replace')[-3000:]}"
            )
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
