"""Intensity normalisation: per dataset or per image.

``dataset``: every image is normalised with one mean/std (ImageNet's, or the training images'),
stored in the model card. ``image``: each image with its own per-channel mean/std, as nnU-Net does
for data whose acquisitions differ in brightness or contrast (microscopes, scanners, stains).
Training and inference take an image's statistics the same way, from the same rows, so the model
sees identical inputs in both, and an image larger than memory is never read whole for them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import numpy as np

Normalization = Literal["dataset", "image"]

STAT_ROWS = 256
"""At most this many evenly spaced rows (and as many columns' worth of samples per row) give an
image's statistics: exact for images up to that size, a dense sample beyond."""

MIN_STD = 1e-3
"""The smallest std divided by: a flat image stays finite (its pixels all become 0)."""


def statistic_rows(height: int) -> np.ndarray:
    """The row indices an image of ``height`` rows takes its statistics from."""
    return np.unique(np.linspace(0, height - 1, min(height, STAT_ROWS)).round().astype(int))


def image_statistics(
    image: Any, prepare: Callable[[np.ndarray], np.ndarray] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel ``(mean, std)`` float32 arrays of an ``H x W x C`` image (an array or a windowed
    reader that slices like one). ``prepare`` maps raw rows to the model's float pixels
    (its channels, scaled to [0, 1]) first; without it the image must already be those pixels."""
    height, width = image.shape[:2]
    col_step = max(1, width // STAT_ROWS)
    rows = [np.asarray(image[int(r) : int(r) + 1, ::col_step]) for r in statistic_rows(height)]
    sample = np.concatenate(rows, axis=0)
    if sample.ndim == 2:
        sample = sample[..., None]
    if prepare is not None:
        sample = prepare(sample)
    flat = sample.reshape(-1, sample.shape[-1]).astype(np.float64)
    mean = flat.mean(axis=0)
    std = np.maximum(flat.std(axis=0), MIN_STD)
    return mean.astype(np.float32), std.astype(np.float32)
