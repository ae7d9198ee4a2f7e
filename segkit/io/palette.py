"""Class colours: the user's palette when given, else a fixed, distinguishable table."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

# Pascal VOC-style colour table (black background first); repeated with a shift past its end.
_BASE = [
    (0, 0, 0),
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
    (170, 110, 40),
    (255, 250, 200),
    (128, 0, 0),
    (170, 255, 195),
    (128, 128, 0),
    (255, 215, 180),
    (0, 0, 128),
    (128, 128, 128),
]


def default_colors(num_classes: int) -> np.ndarray:
    """A ``(num_classes, 3)`` uint8 table of distinct colours."""
    rows = [_BASE[i % len(_BASE)] for i in range(num_classes)]
    out = np.array(rows, dtype=np.int64)
    for i in range(len(_BASE), num_classes):
        out[i] = (out[i] + 37 * (i // len(_BASE))) % 256
    return out.astype(np.uint8)


def class_colors(
    classes: list[str], palette: dict[str, tuple[int, int, int]] | dict[str, list[int]] | None
) -> np.ndarray:
    """The ``(K, 3)`` uint8 colour of each class, in class order."""
    colors = default_colors(len(classes))
    if palette:
        for i, name in enumerate(classes):
            if name in palette:
                colors[i] = np.asarray(palette[name], dtype=np.uint8)
    return colors


def palette_image(indices: np.ndarray, colors: np.ndarray) -> Image.Image:
    """A ``P``-mode PIL image of 2-D class indices (< 256) whose palette is ``colors`` (``(K, 3)``,
    padded with black to 256 entries): saved as PNG, the pixels stay the class indices and any
    viewer shows the colours."""
    from PIL import Image

    table = np.zeros((256, 3), dtype=np.uint8)
    rows = np.asarray(colors, dtype=np.uint8).reshape(-1, 3)[:256]
    table[: len(rows)] = rows
    im = Image.fromarray(np.asarray(indices, dtype=np.uint8))  # "L"; the palette makes it "P"
    im.putpalette(table.tobytes())
    return im
