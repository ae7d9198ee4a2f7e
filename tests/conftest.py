"""Shared test fixtures: no test may reach the network; everything is small and CPU-only."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(autouse=True)
def _offline(tmp_path_factory, monkeypatch):
    """Point torch.hub and the Hugging Face cache at an empty folder and forbid hub downloads."""
    cache = tmp_path_factory.getbasetemp() / "model-cache"
    monkeypatch.setenv("TORCH_HOME", str(cache / "torch"))
    monkeypatch.setenv("HF_HOME", str(cache / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("NO_ALBUMENTATIONS_UPDATE", "1")
    yield


def pytest_configure(config):
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    os.environ.setdefault("OMP_NUM_THREADS", "2")


TINY_MODEL = {
    "arch": "Unet",
    "encoder": "tu-resnet10t",
    "encoder_weights": None,
    "kwargs": {"encoder_depth": 3, "decoder_channels": [32, 16, 8]},
}
"""A small, fast smp model (stride 8, ~0.4M parameters, every parameter used so DDP is happy) for tests: import it as ``from tests.conftest import TINY_MODEL``."""


QUIET_TRAINER = {
    "accelerator": "cpu",
    "enable_progress_bar": False,
    "enable_model_summary": False,
    "log_every_n_steps": 1,  # short epochs: Lightning warns at its default 10
}
"""``trainer`` keys of a test run: CPU, no progress bar or model summary."""


def shapes_run_config(shapes: dict, runs, **sections: dict) -> dict:
    """A training config, as plain data, on a ``make_shapes_dataset`` folder set: TINY_MODEL,
    64 px patches of batch 2, no worker processes, a quiet CPU trainer, runs under ``runs``.
    Each of ``sections`` updates that section key by key (``data={"batch_size": 4}``)."""
    config: dict = {
        "data": {
            "train": {"images": str(shapes["train_images"]), "masks": str(shapes["train_masks"])},
            "val": {"images": str(shapes["val_images"]), "masks": str(shapes["val_masks"])},
            "classes": shapes["classes"],
            "patch_size": 64,
            "batch_size": 2,
            "num_workers": 0,
        },
        "model": dict(TINY_MODEL),
        "trainer": dict(QUIET_TRAINER),
        "run": {"dir": str(runs)},
    }
    for name, values in sections.items():
        config[name] = {**config.get(name, {}), **values}
    return config
