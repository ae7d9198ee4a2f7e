"""Tiny saved bundles and small synthetic images, shared by the engine, io and pipeline tests
(each package's conftest.py imports the fixtures it uses)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from segkit.bundle import save_bundle
from segkit.card import ModelCard
from segkit.config import PredictConfig, load_config
from segkit.io.palette import default_colors
from segkit.models.build import build_model
from tests.conftest import TINY_MODEL

CLASSES = ["background", "red", "green", "blue"]


def model_card(classes: int, in_channels: int = 3) -> ModelCard:
    """The card of a model with ``classes`` classes named c0, c1, ..., identity-like
    normalisation, no training config (as a foreign ONNX file's)."""
    return ModelCard(
        classes=[f"c{i}" for i in range(classes)],
        colors=default_colors(classes).tolist(),
        in_channels=in_channels,
        mean=[0.5] * in_channels,
        std=[0.25] * in_channels,
        predict=PredictConfig(tile=512),
    )


def make_bundle(
    path: Path,
    in_channels: int = 3,
    classes: list[str] | None = None,
    seed: int = 0,
    predict: dict | None = None,
    data: dict | None = None,
) -> Path:
    """A TINY_MODEL bundle (stride 8) with fixed-seed random weights; ``data`` adds data keys."""
    classes = classes or CLASSES
    cfg = load_config(
        {
            "data": {"classes": classes, "in_channels": in_channels, "patch_size": 64}
            | (data or {}),
            "model": TINY_MODEL,
            "predict": predict or {},
        }
    )
    torch.manual_seed(seed)
    model = build_model(cfg.model, len(classes), in_channels)
    model.eval()
    with (
        torch.no_grad()
    ):  # centre each class's mean logit so every class wins somewhere (a fair test)
        x = (
            torch.from_numpy(shapes_image(128, 128, seed=99, channels=in_channels))
            .permute(2, 0, 1)[None]
            .float()
            / 255
        )
        logits = model((x - 0.5) / 0.25)
        model.segmentation_head[0].bias -= logits.mean(dim=(0, 2, 3))
    return save_bundle(path, cfg, model)


@pytest.fixture(scope="session")
def bundle_path(tmp_path_factory) -> Path:
    return make_bundle(
        tmp_path_factory.mktemp("bundle") / "tiny.ckpt", predict={"tile": 64, "batch_size": 4}
    )


@pytest.fixture(scope="session")
def gray_bundle_path(tmp_path_factory) -> Path:
    return make_bundle(
        tmp_path_factory.mktemp("bundle1") / "gray.ckpt", in_channels=1, predict={"tile": 64}
    )


def shapes_image(h: int, w: int, seed: int = 0, channels: int = 3) -> np.ndarray:
    """uint8 ``h x w x channels`` picture of coloured discs and boxes on a noisy background."""
    rng = np.random.default_rng(seed)
    img = rng.normal(60, 10, size=(h, w, channels))
    yy, xx = np.mgrid[:h, :w]
    for _ in range(max(2, h * w // 2000)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, max(6, min(h, w) / 4))
        color = rng.uniform(0, 255, size=channels)
        if rng.random() < 0.5:
            img[(yy - cy) ** 2 + (xx - cx) ** 2 < r**2] = color
        else:
            img[(abs(yy - cy) < r) & (abs(xx - cx) < r / 2)] = color
    return np.clip(img, 0, 255).astype(np.uint8)


SCENE_COLORS = np.array([[40, 40, 40], [220, 40, 40], [40, 200, 40], [40, 60, 220]])


def colour_scene(h: int, w: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A uint8 RGB image of red/green/blue discs and boxes on gray, and its class mask."""
    rng = np.random.default_rng(seed)
    mask = np.zeros((h, w), np.uint8)
    yy, xx = np.mgrid[:h, :w]
    for _ in range(max(3, h * w // 800)):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(4, 14)
        k = rng.integers(1, 4)
        inside = (
            (yy - cy) ** 2 + (xx - cx) ** 2 < r**2
            if rng.random() < 0.5
            else (abs(yy - cy) < r) & (abs(xx - cx) < r / 2)
        )
        mask[inside] = k
    image = SCENE_COLORS[mask] + rng.normal(0, 20, (h, w, 3))
    return np.clip(image, 0, 255).astype(np.uint8), mask


@pytest.fixture(scope="session")
def trained_bundle_path(tmp_path_factory) -> Path:
    """TINY_MODEL briefly trained (plain torch, ~20 steps) to segment colour_scene: confident, local
    decisions like a real model's, which a random net (all near-ties and long-range context) lacks."""
    cfg = load_config(
        {
            "data": {"classes": CLASSES, "patch_size": 64},
            "model": TINY_MODEL,
            "predict": {"tile": 64},
        }
    )
    torch.manual_seed(0)
    model = build_model(cfg.model, len(CLASSES), 3)
    scenes = [colour_scene(48, 48, i) for i in range(16)]
    mean = torch.tensor(cfg.data.resolved_mean())[:, None, None]
    std = torch.tensor(cfg.data.resolved_std())[:, None, None]
    x = (
        torch.from_numpy(np.stack([s[0] for s in scenes])).permute(0, 3, 1, 2).float() / 255 - mean
    ) / std
    y = torch.from_numpy(np.stack([s[1] for s in scenes])).long()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    model.train()
    for step in range(24):
        batch = slice(step % 4 * 4, step % 4 * 4 + 4)
        loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return save_bundle(tmp_path_factory.mktemp("trained") / "trained.ckpt", cfg, model.eval())


class CountingBackend:
    """Wraps a backend and records the batch size of every forward pass."""

    def __init__(self, inner) -> None:
        self.inner, self.card, self.device = inner, inner.card, inner.device
        self.batches: list[int] = []

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        self.batches.append(int(tiles.shape[0]))
        return self.inner(tiles)
