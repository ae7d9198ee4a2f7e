"""How far the membrane masks sit off the image content (docs/recipe.md, flips and the offset).

Runs segkit's measure (:mod:`segkit.data.alignment`, the one the plan reads) on the membrane
slices: prints the contrast between membrane and the rest with the masks moved -2..2 px down and
right, and the sub-pixel offset of its peak on each axis.

    python benchmarks/mask_offset.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from segkit.data.alignment import SHIFTS, MaskOffset, describe


def measure(data: Path, slices: range) -> MaskOffset:
    """The contrast profiles of ``slices`` (gray images, 0/255 labels), summed."""
    offset = MaskOffset()
    for i in slices:
        image = cv2.imread(str(data / "train" / "image" / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
        label = cv2.imread(str(data / "train" / "label" / f"{i}.png"), cv2.IMREAD_GRAYSCALE)
        if image is None or label is None:
            raise SystemExit(f"{data}: slice {i} is missing or unreadable")
        offset.add(image.astype(np.float32) / 255, (label > 127).astype(np.int64), 2)
    return offset


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    default = Path(__file__).resolve().parents[2] / "shared" / "data" / "membrane"
    p.add_argument("--data", type=Path, default=default, help="membrane folder")
    p.add_argument("--slices", type=int, default=30, help="slices 0..N-1")
    args = p.parse_args(argv)
    offset = measure(args.data, range(args.slices))
    profile = offset.profile / max(1, offset.images)
    print("contrast between the classes with the masks moved by N px:")
    print("moved      " + " ".join(f"{s:>7d}" for s in SHIFTS))
    for axis, row in zip(("down", "right"), profile, strict=True):
        print(f"{axis:>10} " + " ".join(f"{v:7.4f}" for v in row))
    found = offset.offset()
    if found is not None:
        print(f"best fit: masks moved {found[0]:+.2f} px down, {found[1]:+.2f} px right")
    print(describe(found))


if __name__ == "__main__":
    main()
