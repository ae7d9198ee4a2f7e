"""Image/mask pairing by file stem and the torch Dataset that reads, decodes and transforms a pair."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from segkit.config import DataConfig
from segkit.data.masks import load_mask
from segkit.errors import DataError
from segkit.io.images import image_to_float, list_images, read_image
from segkit.normalization import image_statistics


def pair_key(path: Path, root: Path) -> str:
    """The name two files pair by: the path below ``root`` without its suffix (``sub/img_001``)."""
    return path.relative_to(root).with_suffix("").as_posix()


def index_by_key(files: list[Path], root: Path) -> dict[str, Path]:
    """``{pair key: file}``; two files with one key (``a.png`` and ``a.tif``) are a DataError."""
    out: dict[str, Path] = {}
    for f in files:
        key = pair_key(f, root)
        if key in out:
            raise DataError(f"{f}: has the same name as {out[key]}; keep one file per stem")
        out[key] = f
    return out


def unpaired(
    image_files: dict[str, Path], mask_files: dict[str, Path], images: Path, masks: Path
) -> list[str]:
    """One problem line per image without a mask and per mask without an image (both keyed by
    :func:`index_by_key`), images first."""
    return [
        f"{image}: no mask named '{key}.*' in {masks}"
        for key, image in image_files.items()
        if key not in mask_files
    ] + [
        f"{mask}: no image named '{key}.*' in {images}"
        for key, mask in mask_files.items()
        if key not in image_files
    ]


def check_same_size(
    image_path: Path, image_hw: tuple[int, ...], mask_path: Path, mask_hw: tuple[int, ...]
) -> None:
    """A DataError naming both files unless the image's and the mask's ``(H, W)`` agree."""
    if tuple(image_hw[:2]) != tuple(mask_hw[:2]):
        raise DataError(
            f"{image_path}: image is {image_hw[1]}x{image_hw[0]} but its mask {mask_path} "
            f"is {mask_hw[1]}x{mask_hw[0]} (width x height)"
        )


def find_pairs(images: Path, masks: Path) -> list[tuple[Path, Path]]:
    """``(image, mask)`` pairs matched by relative subfolder + stem, sorted by image path.

    Every image needs a mask and every mask an image; the first unmatched file is named.
    """
    images, masks = Path(images), Path(masks)
    image_files = index_by_key(list_images(images), images)
    mask_files = index_by_key(list_images(masks), masks)
    if not image_files:
        raise DataError(f"{images}: no images found (looked for png, jpg, tif, bmp files)")
    problems = unpaired(image_files, mask_files, images, masks)
    if problems:
        raise DataError(problems[0])
    return sorted(((image_files[k], mask_files[k]) for k in image_files), key=lambda p: p[0])


class SegmentationDataset(Dataset):
    """Reads one pair per item → ``{"image": (C,H,W) float32, "mask": (H,W) int64, "name": str}``.

    Without a transform the image is only scaled to [0, 1] (no normalisation).
    """

    def __init__(
        self,
        pairs: list[tuple[Path, Path]],
        data: DataConfig,
        transform: Callable[..., dict[str, Any]] | None = None,
    ) -> None:
        self.pairs = list(pairs)
        self.data = data
        self.transform = transform

    def __len__(self) -> int:
        return len(self.pairs)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """The pair as arrays: float32 ``H x W x C`` image in [0, 1] and int64 ``H x W`` mask."""
        image_path, mask_path = self.pairs[index]
        image = image_to_float(
            read_image(image_path, self.data.in_channels, self.data.max_image_pixels)
        )
        mask = load_mask(mask_path, self.data)
        check_same_size(image_path, image.shape, mask_path, mask.shape)
        return image, mask

    def __getitem__(self, index: int) -> dict[str, Any]:
        image, mask = self.load(index)
        name = self.pairs[index][0].stem
        if self.transform is None:
            return {
                "image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))),
                "mask": torch.from_numpy(mask),
                "name": name,
            }
        # int32 keeps every ignore_index (up to 65535) and is what OpenCV-backed transforms accept.
        out = self.transform(image=image, mask=mask.astype(np.int32))
        pixels = out["image"].float()
        if (
            self.data.normalization == "image"
        ):  # the whole image's statistics, as predict takes them
            mean, std = image_statistics(image)
            pixels = (pixels - torch.from_numpy(mean)[:, None, None]) / torch.from_numpy(std)[
                :, None, None
            ]
        return {
            "image": pixels,
            "mask": torch.as_tensor(out["mask"]).long(),
            "name": name,
        }
