"""Data: read images and masks, decode mask encodings, pair, augment, load, and check datasets.

Submodules import torch/albumentations lazily through this package's attributes, so
``import segkit.data`` stays cheap for the CLI.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "DataReport",
    "SegmentationDataModule",
    "SegmentationDataset",
    "check_folders",
    "check_or_raise",
    "decode_mask",
    "find_pairs",
    "image_to_float",
    "list_images",
    "load_mask",
    "make_shapes_dataset",
    "read_image",
    "read_mask",
    "train_transforms",
    "write_image",
]

_LAZY = {
    "DataReport": "checks",
    "check_folders": "checks",
    "check_or_raise": "checks",
    "SegmentationDataModule": "datamodule",
    "SegmentationDataset": "dataset",
    "find_pairs": "dataset",
    "train_transforms": "transforms",
    "decode_mask": "masks",
    "load_mask": "masks",
    "image_to_float": "io",
    "list_images": "io",
    "read_image": "io",
    "read_mask": "io",
    "write_image": "io",
    "make_shapes_dataset": "synthetic",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"segkit.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'segkit.data' has no attribute {name!r}")
