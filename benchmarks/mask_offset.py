"""How far the membrane masks sit off the image content (docs/recipe.md, flips and the offset).

Membranes are dark, so the mean (lightly blurred) image intensity under the membrane mask is
lowest where mask and content line up. Prints that mean for the mask moved by -2..2 px down and
right, and the sub-pixel offset of the minimum on each axis (a parabola through the neighbours).

    python benchmarks/mask_offset.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

SHIFTS = range(-2, 3)


def mean_under_mask(data: Path, slices: range) -> np.ndarray:
    """``table[dy + 2, dx + 2]``: mean intensity under the membrane mask moved by (dy, dx)."""
    table = np.zeros((len(SHIFTS), len(SHIFTS)))
    for i in slices:
        image = cv2.imread(str(data / "train" / "image" / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
        label = cv2.imread(str(data / "train" / "label" / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
        if image is None or label is None:
            raise SystemExit(f"{data}: slice {i} is missing or unreadable")
        smooth = cv2.GaussianBlur(image.astype(np.float32) / 255, (0, 0), 1.0)[4:-4, 4:-4]
        membrane = label < 128
        for r, dy in enumerate(SHIFTS):
            for c, dx in enumerate(SHIFTS):
                moved = np.roll(membrane, (dy, dx), (0, 1))[4:-4, 4:-4]
                table[r, c] += smooth[moved].mean() / len(slices)
    return table


def subpixel_minimum(values: np.ndarray) -> float:
    """The offset of the minimum of ``values`` (at SHIFTS) refined by a parabola."""
    k = int(np.clip(np.argmin(values), 1, len(values) - 2))
    left, mid, right = values[k - 1 : k + 2]
    curvature = left - 2 * mid + right
    step = 0.5 * (left - right) / curvature if curvature > 0 else 0.0
    return SHIFTS[k] + step


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "membrane"
    p.add_argument("--data", type=Path, default=default, help="membrane folder")
    p.add_argument("--slices", type=int, default=30, help="slices 0..N-1")
    args = p.parse_args(argv)
    table = mean_under_mask(args.data, range(args.slices))
    print("mean intensity under the membrane mask moved by (down, right) px:")
    print("down\\right " + " ".join(f"{dx:>7d}" for dx in SHIFTS))
    for dy, row in zip(SHIFTS, table, strict=True):
        print(f"{dy:>10d} " + " ".join(f"{v:7.4f}" for v in row))
    centre = len(SHIFTS) // 2
    down, right = subpixel_minimum(table[:, centre]), subpixel_minimum(table[centre])
    print(f"best fit: masks moved {down:+.2f} px down, {right:+.2f} px right")


if __name__ == "__main__":
    main()
