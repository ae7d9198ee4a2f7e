"""How far the masks sit off the image content.

Drawn or rasterised masks often sit a fraction of a pixel off the image content, the same way in
every image. A model learns such an offset, unless flips reverse it at random (then it learns
none, and its masks sit off by the whole offset): the plan keeps the flips that leave it alone.

The measure: where a class differs in intensity from the rest, that contrast is largest with the
mask on the content. It is taken with the mask moved -2..2 px along each axis (the image lightly
blurred, so a sub-pixel offset shows), summed over images, and the peak refined by a parabola.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import cv2
import numpy as np

SHIFTS = (-2, -1, 0, 1, 2)
BORDER = 4  # rows and columns np.roll wraps around are left out
MIN_SHARE = 0.01  # a class under this share of the labelled pixels (or over 1 - it) is skipped
MIN_CONTRAST = 0.02  # peak contrast (intensity in [0, 1]) below which nothing is measurable


def contrast_profile(image: np.ndarray, mask: np.ndarray, num_classes: int) -> np.ndarray | None:
    """``(2, len(SHIFTS))``: the mean over classes of the contrast between a class's pixels and
    the other labelled ones, with the mask moved down (row 0) or right (row 1) by each shift.
    ``image`` is float ``H x W [x C]`` in [0, 1]; mask values ``>= num_classes`` are unlabelled.
    None when the image is too small or no class covers enough of it."""
    if min(mask.shape) <= 2 * (BORDER + max(SHIFTS)):
        return None
    smooth = cv2.GaussianBlur(np.ascontiguousarray(image, np.float32), (0, 0), 1.0)
    inner = smooth.reshape(*mask.shape, -1)[BORDER:-BORDER, BORDER:-BORDER]
    labelled = mask < num_classes
    profile, used = np.zeros((2, len(SHIFTS))), 0
    for k in range(num_classes):
        member = mask == k
        share = member.sum() / max(1, labelled.sum())
        if not MIN_SHARE <= share <= 1 - MIN_SHARE:
            continue
        for axis in (0, 1):
            for j, shift in enumerate(SHIFTS):
                moved = np.roll(member, shift, axis)[BORDER:-BORDER, BORDER:-BORDER]
                rest = np.roll(labelled, shift, axis)[BORDER:-BORDER, BORDER:-BORDER] & ~moved
                if moved.any() and rest.any():
                    difference = inner[moved].mean(0) - inner[rest].mean(0)
                    profile[axis, j] += float(np.abs(difference).mean())
        used += 1
    return profile / used if used else None


def peak(values: np.ndarray) -> float:
    """The shift at the maximum of ``values`` (taken at SHIFTS), refined by a parabola through
    its neighbours."""
    k = int(np.clip(np.argmax(values), 1, len(values) - 2))
    left, mid, right = values[k - 1 : k + 2]
    curvature = left - 2 * mid + right
    return SHIFTS[k] + (0.5 * (left - right) / curvature if curvature < 0 else 0.0)


@dataclass
class MaskOffset:
    """Profiles of a set of images, summed; the offset they show."""

    profile: np.ndarray = field(default_factory=lambda: np.zeros((2, len(SHIFTS))))
    images: int = 0

    def add(self, image: np.ndarray, mask: np.ndarray, num_classes: int) -> None:
        one = contrast_profile(image, mask, num_classes)
        if one is not None:
            self.profile += one
            self.images += 1

    def offset(self) -> tuple[float, float] | None:
        """``(down, right)``: how far the masks must move to sit on the content (0.6 down:
        they sit 0.6 px above it); None when no class has contrast enough to tell."""
        if not self.images or self.profile.max() / self.images < MIN_CONTRAST:
            return None
        return round(peak(self.profile[0]), 2), round(peak(self.profile[1]), 2)


def describe(offset: tuple[float, float] | None) -> str:
    """``offset`` in words: where the masks sit against the image content."""
    if offset is None:
        return "not measurable (no class differs enough in intensity from the rest)"
    down, right = offset
    vertical = f"{abs(down):.2f} px {'above' if down > 0 else 'below'}"
    horizontal = f"{abs(right):.2f} px {'left of' if right > 0 else 'right of'}"
    return f"masks sit {vertical} and {horizontal} the image content"
