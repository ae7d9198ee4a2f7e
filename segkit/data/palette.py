"""Class colours: the user's palette when given, else a fixed, distinguishable table."""

from __future__ import annotations

import numpy as np

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
