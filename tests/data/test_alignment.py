"""The masks' offset against the image content: found where it is, zero where there is none,
nothing where the classes have no contrast to measure by."""

from __future__ import annotations

import numpy as np
import pytest

from segkit.data.alignment import MaskOffset, contrast_profile, describe


def _discs(seed: int, size: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """A noisy dark image with bright discs, and their exact mask (class 1)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size]
    mask = np.zeros((size, size), np.int64)
    for _ in range(8):
        y, x, r = rng.integers(12, size - 12), rng.integers(12, size - 12), rng.integers(4, 10)
        mask[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = 1
    image = (0.2 + 0.5 * mask + rng.normal(0, 0.05, mask.shape)).astype(np.float32)
    return image, mask


def _offset(
    shift: tuple[int, int] = (0, 0), unlabelled: bool = False
) -> tuple[float, float] | None:
    found = MaskOffset()
    for seed in range(3):
        image, mask = _discs(seed)
        moved = np.roll(mask, shift, (0, 1))
        if unlabelled:
            moved[:10] = 255  # unlabelled rows count for neither side
        found.add(np.repeat(image[..., None], 3, axis=2), moved, 2)
    return found.offset()


def test_masks_on_the_content_have_no_offset():
    down, right = _offset()
    assert abs(down) < 0.15 and abs(right) < 0.15
    assert _offset(unlabelled=True) == pytest.approx((down, right), abs=0.1)


@pytest.mark.parametrize(("shift", "expected"), [((-1, 0), (1, 0)), ((0, 1), (0, -1))])
def test_masks_drawn_a_pixel_off_are_found(shift, expected):
    """Masks one pixel high must move one pixel down; one to the right, one to the left."""
    assert _offset(shift) == pytest.approx(expected, abs=0.25)
    text = describe(_offset(shift))
    assert ("above" in text) if expected[0] else ("right of" in text)


def test_classes_without_contrast_or_tiny_images_measure_nothing():
    rng = np.random.default_rng(0)
    found = MaskOffset()
    noise = rng.random((64, 64)).astype(np.float32)
    found.add(noise, (rng.random((64, 64)) > 0.5).astype(np.int64), 2)
    assert found.images == 1 and found.offset() is None
    assert "not measurable" in describe(None)
    assert contrast_profile(noise[:12, :12], np.zeros((12, 12), np.int64), 2) is None
    assert contrast_profile(noise, np.zeros((64, 64), np.int64), 2) is None  # one class only
