"""A tiny trained bundle shared by the export tests (trained once per session: a few seconds)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segkit.bundle import save_bundle
from segkit.config import load_config
from tests.conftest import TINY_MODEL

CLASSES = ["background", "red", "green"]


def synthetic_batch(
    generator: torch.Generator, n: int = 4, size: int = 64
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random blocky RGB images in [0, 1]; label 1 where red dominates, 2 where green does, else 0."""
    low = torch.rand(n, 3, size // 8, size // 8, generator=generator)
    images = torch.nn.functional.interpolate(low, size=(size, size), mode="nearest")
    r, g = images[:, 0], images[:, 1]
    labels = torch.zeros(n, size, size, dtype=torch.long)
    labels[(r > 0.6) & (r > g)] = 1
    labels[(g > 0.6) & (g >= r)] = 2
    return images, labels


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A TINY_MODEL bundle (3 classes, stride 8) trained for a few steps, so its argmax means something."""
    from segkit.models.build import build_model

    config = load_config(
        {
            "model": TINY_MODEL,
            "data": {"classes": CLASSES, "patch_size": 64, "palette": {"red": [200, 0, 0]}},
            "predict": {"overlap": 0.25, "blend": "cosine", "batch_size": 4},
        }
    )
    torch.manual_seed(0)
    model = build_model(config.model, len(CLASSES), 3)
    mean = torch.tensor(config.data.resolved_mean()).view(1, 3, 1, 1)
    std = torch.tensor(config.data.resolved_std()).view(1, 3, 1, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(30):
        images, labels = synthetic_batch(generator)
        loss = torch.nn.functional.cross_entropy(model((images - mean) / std), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    path = tmp_path_factory.mktemp("bundle") / "best.ckpt"
    return save_bundle(path, config, model)


@pytest.fixture(scope="session")
def test_image() -> np.ndarray:
    """A 100x150 uint8 RGB image of the training kind (not a multiple of the stride or the tile)."""
    images, _ = synthetic_batch(torch.Generator().manual_seed(1), n=1, size=160)
    return (images[0, :, :100, :150].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


@pytest.fixture(scope="session")
def exported(trained_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, float]:
    """The trained bundle exported to ONNX, and the verified max difference."""
    from segkit.export import export_onnx

    out = tmp_path_factory.mktemp("onnx") / "model.onnx"
    return out, export_onnx(trained_bundle, out)
