"""Data: decode mask encodings, pair, augment, load, and check datasets (reading images and
masks is :mod:`segkit.io.images`; its names are re-exported here).

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
    "DataReport": "segkit.data.checks",
    "check_folders": "segkit.data.checks",
    "check_or_raise": "segkit.data.checks",
    "SegmentationDataModule": "segkit.data.datamodule",
    "SegmentationDataset": "segkit.data.dataset",
    "find_pairs": "segkit.data.dataset",
    "train_transforms": "segkit.data.transforms",
    "decode_mask": "segkit.data.masks",
    "load_mask": "segkit.data.masks",
    "image_to_float": "segkit.io.images",
    "list_images": "segkit.io.images",
    "read_image": "segkit.io.images",
    "read_mask": "segkit.io.images",
    "write_image": "segkit.io.images",
    "make_shapes_dataset": "segkit.data.synthetic",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segkit.data' has no attribute {name!r}")
