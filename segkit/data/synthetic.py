"""The demo dataset: noisy textured images with circles, rectangles and triangles.

Small, seeded and quick to write, yet not trivial: classes differ by shape and (noisy, jittered)
colour over a textured background, so a small U-Net learns it on CPU in a couple of minutes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from segkit.config import MASK_ENCODINGS
from segkit.errors import ConfigError
from segkit.io.images import write_image

SHAPE_CLASSES = ["background", "circle", "rectangle", "triangle"]
SHAPE_PALETTE: dict[str, tuple[int, int, int]] = {
    "background": (0, 0, 0),
    "circle": (230, 25, 75),
    "rectangle": (60, 180, 75),
    "triangle": (0, 130, 200),
}
BINARY_CLASSES = ["background", "shape"]
BINARY_PALETTE: dict[str, tuple[int, int, int]] = {
    "background": (0, 0, 0),
    "shape": (255, 255, 255),
}

# Mean fill colour of each shape class: distinct but overlapping once jitter and noise are added.
_FILL = np.array([[0, 0, 0], [190, 80, 70], [80, 170, 90], [70, 100, 190]], dtype=np.float64)


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """Smooth low-frequency texture plus fine noise, in a random muted colour."""
    grid = rng.normal(0.0, 1.0, (6, 6, 3)).astype(np.float32)
    smooth = np.asarray(
        Image.fromarray(((grid + 3) * 40).clip(0, 255).astype(np.uint8)).resize(
            (size, size), Image.Resampling.BICUBIC
        ),
        dtype=np.float64,
    )
    base = rng.uniform(90, 150) + rng.uniform(-20, 20, 3)
    return base + (smooth - 120) * 0.35 + rng.normal(0, 12, (size, size, 3))


def _shape_layer(rng: np.random.Generator, kind: int, size: int) -> np.ndarray:
    """Boolean ``H x W`` footprint of one random circle (1), rectangle (2) or triangle (3)."""
    layer = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(layer)
    r = rng.uniform(0.08, 0.18) * size
    cx, cy = rng.uniform(r, size - r, 2)
    if kind == 1:
        draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=1)
    else:
        corners = 4 if kind == 2 else 3
        angle0 = rng.uniform(0, 2 * np.pi)
        if kind == 2:
            aspect = rng.uniform(0.6, 1.0)
            local = np.array(
                [[-r, -r * aspect], [r, -r * aspect], [r, r * aspect], [-r, r * aspect]]
            )
        else:
            angles = angle0 + np.arange(corners) * 2 * np.pi / corners
            local = np.stack([np.cos(angles), np.sin(angles)], axis=1) * r * 1.2
        rot = np.array([[np.cos(angle0), -np.sin(angle0)], [np.sin(angle0), np.cos(angle0)]])
        points = local @ rot.T + [cx, cy] if kind == 2 else local + [cx, cy]
        draw.polygon([tuple(p) for p in points.tolist()], fill=1)
    return np.asarray(layer, dtype=bool)


def make_shape_sample(rng: np.random.Generator, size: int) -> tuple[np.ndarray, np.ndarray]:
    """One ``(H x W x 3 uint8 image, H x W uint8 class-index mask)`` pair."""
    image = _background(rng, size)
    mask = np.zeros((size, size), dtype=np.uint8)
    kinds = [1, 2, 3, *rng.integers(1, 4, rng.integers(0, 3)).tolist()]
    rng.shuffle(kinds)
    for kind in kinds:
        footprint = _shape_layer(rng, kind, size)
        colour = _FILL[kind] + rng.uniform(-35, 35, 3)
        image[footprint] = colour + rng.normal(0, 18, (int(footprint.sum()), 3))
        mask[footprint] = kind
    return image.clip(0, 255).astype(np.uint8), mask


def make_shapes_dataset(
    root: Path,
    n_train: int = 24,
    n_val: int = 8,
    size: int = 128,
    seed: int = 0,
    mask_encoding: str = "index",
) -> dict[str, Any]:
    """Write ``root/{train,val}/{images,masks}/NNN.png`` and describe them.

    ``mask_encoding``: ``index`` (pixel = class of ``SHAPE_CLASSES``), ``binary`` (0 background /
    255 any shape; classes ``background, shape``) or ``palette`` (RGB colours of ``SHAPE_PALETTE``).
    Returns ``{"train_images", "train_masks", "val_images", "val_masks": Path, "classes": list,
    "palette": {name: [r, g, b]}}`` — ready to drop into a config's ``data`` section.
    """
    if mask_encoding not in MASK_ENCODINGS:
        raise ConfigError(
            f"mask_encoding '{mask_encoding}' is not one of {', '.join(MASK_ENCODINGS)}"
        )
    root = Path(root)
    rng = np.random.default_rng(seed)
    classes, palette = (
        (BINARY_CLASSES, BINARY_PALETTE)
        if mask_encoding == "binary"
        else (SHAPE_CLASSES, SHAPE_PALETTE)
    )
    colours = np.array([SHAPE_PALETTE[c] for c in SHAPE_CLASSES], dtype=np.uint8)
    out: dict[str, Any] = {}
    for split, count in (("train", n_train), ("val", n_val)):
        images, masks = root / split / "images", root / split / "masks"
        for i in range(count):
            image, mask = make_shape_sample(rng, size)
            write_image(images / f"{i:03d}.png", image)
            if mask_encoding == "binary":
                write_image(masks / f"{i:03d}.png", np.where(mask > 0, 255, 0).astype(np.uint8))
            elif mask_encoding == "palette":
                write_image(masks / f"{i:03d}.png", colours[mask])
            else:  # indexed PNG: pixel values are classes, and viewers show the palette colours
                write_image(masks / f"{i:03d}.png", mask, palette=colours)
        out[f"{split}_images"], out[f"{split}_masks"] = images, masks
    out["classes"] = list(classes)
    out["palette"] = {name: list(rgb) for name, rgb in palette.items()}
    return out
