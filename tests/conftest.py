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
