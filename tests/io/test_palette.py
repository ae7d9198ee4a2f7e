"""Palette PNGs are written by one rule, whether a mask (write_image) or a prediction's index
output: class indices as pixel values, the class colours padded with black to 256 entries."""

from __future__ import annotations

import numpy as np
from PIL import Image

from segkit.io.images import write_image
from segkit.io.palette import default_colors
from segkit.pipeline.writers import _write_labels


def test_masks_and_predicted_index_files_are_the_same_palette_png(tmp_path):
    labels = np.random.default_rng(0).integers(0, 5, (24, 32)).astype(np.uint8)
    colors = default_colors(5)
    write_image(tmp_path / "mask.png", labels, palette=colors)
    _write_labels(tmp_path / "pred.png", labels, colors)
    expected = np.zeros((256, 3), np.uint8)
    expected[:5] = colors
    for name in ("mask.png", "pred.png"):
        with Image.open(tmp_path / name) as im:
            assert im.mode == "P"
            np.testing.assert_array_equal(np.asarray(im), labels)
            np.testing.assert_array_equal(np.array(im.getpalette()).reshape(-1, 3), expected)
