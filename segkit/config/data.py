"""The ``data`` and ``augment`` sections: where the images and masks are, how to read them, and
how training augments them."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator, model_validator

from segkit.config.base import MaskEncoding, Section
from segkit.normalization import Normalization

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _in_byte_range(colour: tuple[int, ...]) -> bool:
    return all(0 <= v <= 255 for v in colour)


class SplitConfig(Section):
    """One split: an image folder and a mask folder whose files pair by stem."""

    images: Path = Field(
        description="Folder of images (png, jpg, tif/tiff, bmp); searched recursively."
    )
    masks: Path = Field(
        description="Folder of masks, one per image with the same stem (lossless formats)."
    )


class DataConfig(Section):
    """Where the data is and how to read it."""

    train: SplitConfig | None = Field(None, description="Training images and masks.")
    val: SplitConfig | None = Field(
        None,
        description="Validation images and masks; when null, `val_fraction` of train is held out.",
    )
    val_fraction: float = Field(
        0.2,
        ge=0.0,
        lt=1.0,
        description="Seeded share of train held out for validation when `val` is null.",
    )
    classes: list[str] = Field(
        ["background", "foreground"],
        min_length=1,
        description="Class names; their count is the number of classes.",
    )
    mask_encoding: MaskEncoding = Field(
        "index",
        description="index: pixel value = class; binary: 0 and 255 (or 0/1); palette: RGB colours from `palette`.",
    )
    palette: dict[str, tuple[int, int, int]] | None = Field(
        None,
        description="{class name: [r, g, b]}: decodes palette masks and colours outputs. Default: a fixed colour table.",
    )
    ignore_index: int = Field(
        255,
        ge=0,
        le=65535,
        description="Mask value never counted in loss or metrics; fill value when crops are padded.",
    )
    in_channels: int = Field(
        3,
        ge=1,
        description="Image channels the model takes: 1 grayscale, 3 RGB, N multi-band. Images are converted to it.",
    )
    patch_size: int = Field(
        512,
        ge=16,
        description="Training crop size (images smaller than it are padded with ignore_index in the mask).",
    )
    normalization: Normalization = Field(
        "dataset",
        description="'dataset': one mean/std for every image (data.mean/std); 'image': each image "
        "by its own per-channel mean/std (for acquisitions that differ in brightness or contrast).",
    )
    mean: list[float] | None = Field(
        None,
        description="Per-channel mean after scaling to [0, 1]. Default: ImageNet for 3 channels, 0.5 otherwise.",
    )
    std: list[float] | None = Field(
        None,
        description="Per-channel std after scaling to [0, 1]. Default: ImageNet for 3 channels, 0.25 otherwise.",
    )
    batch_size: int = Field(
        8, ge=1, description="Training batch size per device (validation uses 1: whole images)."
    )
    num_workers: int = Field(2, ge=0, description="DataLoader worker processes.")
    steps_per_epoch: int | None = Field(
        None,
        ge=1,
        description="Optimiser steps per epoch, drawing training images with replacement; "
        "null = one pass over the training images.",
    )
    rare_classes: list[str] = Field(
        default_factory=list,
        description="Classes whose pixels `oversample` crops are centred on.",
    )
    oversample: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Share of training crops that contain a pixel of `rare_classes` (where the image has one).",
    )
    max_image_pixels: int = Field(
        1_000_000_000,
        ge=1,
        description="Refuse images with more pixels than this (decompression-bomb guard).",
    )

    @field_validator("palette")
    @classmethod
    def _colours_in_range(
        cls, v: dict[str, tuple[int, int, int]] | None
    ) -> dict[str, tuple[int, int, int]] | None:
        # After pydantic's own coercion (numpy integers, "255" ...): a colour such as [300, 0, 0]
        # would otherwise fail much later (OverflowError).
        bad = [f"{name}={list(c)}" for name, c in (v or {}).items() if not _in_byte_range(c)]
        if bad:
            raise ValueError(f"a colour is 3 integers 0-255 ([r, g, b]); bad: {', '.join(bad)}")
        return v

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if len(set(self.classes)) != len(self.classes):
            raise ValueError(f"classes must be unique, got {self.classes}")
        if self.ignore_index < len(self.classes):
            raise ValueError(
                f"ignore_index {self.ignore_index} collides with a class index (0..{len(self.classes) - 1}); use 255"
            )
        if self.mask_encoding == "binary" and len(self.classes) != 2:
            raise ValueError(
                f"mask_encoding 'binary' needs exactly 2 classes, got {len(self.classes)}"
            )
        if self.mask_encoding == "palette":
            if not self.palette:
                raise ValueError(
                    "mask_encoding 'palette' needs data.palette: {class name: [r, g, b]}"
                )
            missing = [c for c in self.classes if c not in self.palette]
            if missing:
                raise ValueError(f"data.palette has no colour for classes {missing}")
        if self.palette:
            unknown = [c for c in self.palette if c not in self.classes]
            if unknown:
                raise ValueError(
                    f"data.palette names {unknown}, which are not in classes {self.classes}"
                )
        unknown_rare = [c for c in self.rare_classes if c not in self.classes]
        if unknown_rare:
            raise ValueError(
                f"data.rare_classes names {unknown_rare}, which are not in classes {self.classes}"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if value is not None and len(value) != self.in_channels:
                raise ValueError(
                    f"data.{name} has {len(value)} values but in_channels is {self.in_channels}"
                )
        return self

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def resolved_mean(self) -> list[float]:
        """The normalisation mean actually used (explicit, else the default for `in_channels`)."""
        if self.mean is not None:
            return list(self.mean)
        return list(IMAGENET_MEAN) if self.in_channels == 3 else [0.5] * self.in_channels

    def resolved_std(self) -> list[float]:
        """The normalisation std actually used (explicit, else the default for `in_channels`)."""
        if self.std is not None:
            return list(self.std)
        return list(IMAGENET_STD) if self.in_channels == 3 else [0.25] * self.in_channels


class AugmentConfig(Section):
    """Training augmentation (albumentations). Validation never augments."""

    hflip: float = Field(0.5, ge=0, le=1, description="Probability of a horizontal flip.")
    vflip: float = Field(0.5, ge=0, le=1, description="Probability of a vertical flip.")
    rotate90: float = Field(0.5, ge=0, le=1, description="Probability of a random 90° rotation.")
    color_jitter: float = Field(
        0.3, ge=0, le=1, description="Probability of mild brightness/contrast jitter."
    )
    scale: tuple[float, float] | None = Field(
        None,
        description="Random zoom range, e.g. [0.75, 1.25], drawn with the rotation for half the "
        "crops; null disables it.",
    )
    rotate: float = Field(
        0.0,
        ge=0,
        le=180,
        description="Largest random rotation in degrees (any angle, reflected borders); 0 disables it.",
    )
    elastic: float = Field(
        0.0, ge=0, le=1, description="Probability of an elastic deformation of the image and mask."
    )
    gamma: float = Field(0.0, ge=0, le=1, description="Probability of a random gamma change.")
