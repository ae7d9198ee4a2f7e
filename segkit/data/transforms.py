"""The training augmentation built from the config with albumentations.

Inputs are float32 ``H x W x C`` images in [0, 1] (any C) and integer ``H x W`` masks; outputs
are a ``(C, H, W)`` float tensor and an ``(H, W)`` mask tensor. Padding never invents labels: the
mask is filled with ``ignore_index`` so padded pixels count in neither loss nor metrics.
"""

from __future__ import annotations

import albumentations as A
import cv2
from albumentations.pytorch import ToTensorV2

from segkit.config import SegkitConfig


def _normalize(config: SegkitConfig) -> list[A.BasicTransform]:
    """Per-dataset normalisation; none with ``data.normalization: image``, where the dataset
    normalises each sample by its whole image's statistics (a crop's own would differ)."""
    data = config.data
    if data.normalization == "image":
        return []
    return [A.Normalize(mean=data.resolved_mean(), std=data.resolved_std(), max_pixel_value=1.0)]


def train_transforms(config: SegkitConfig) -> A.Compose:
    """The training pipeline: pad to ``patch_size`` (mask ← ignore_index), random crop (part of
    them on rare classes), optional zoom/rotation and elastic warp, flips, 90° rotations,
    brightness/contrast and gamma jitter, then normalise (per dataset; per image the dataset
    normalises). Validation does not augment: it runs whole images through the predictor.
    """
    data, aug = config.data, config.augment
    pad = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": data.ignore_index}
    size = data.patch_size
    steps = [
        A.PadIfNeeded(min_height=size, min_width=size, position="random", **pad),
        _crop(config, size),
        *_warps(config),
    ]
    steps += [
        A.HorizontalFlip(p=aug.hflip),
        A.VerticalFlip(p=aug.vflip),
        A.RandomRotate90(p=aug.rotate90),
    ]
    if aug.color_jitter > 0:
        # Per-image brightness/contrast works on any channel count (it is not a hue/saturation change).
        steps.append(
            A.RandomBrightnessContrast(brightness_limit=0.1, contrast_limit=0.1, p=aug.color_jitter)
        )
    if aug.gamma > 0:
        steps.append(A.RandomGamma(gamma_limit=(80, 120), p=aug.gamma))
    steps += [*_normalize(config), ToTensorV2()]
    return A.Compose(steps, seed=config.run.seed)


def _crop(config: SegkitConfig, size: int) -> A.BasicTransform:
    """A random crop; with ``data.oversample``, that share of crops holds a rare-class pixel
    where the image has one (albumentations' CropNonEmptyMaskIfExists, which never centres on
    mask value 0, so a rare class at index 0 is oversampled only by image, see the datamodule)."""
    data = config.data
    random_crop = A.RandomCrop(height=size, width=size)
    rare = {data.classes.index(name) for name in data.rare_classes}
    if data.oversample <= 0 or not rare:
        return random_crop
    others = [i for i in range(data.num_classes) if i not in rare] + [data.ignore_index]
    return A.OneOf(
        [
            A.RandomCrop(height=size, width=size, p=1.0 - data.oversample),
            A.CropNonEmptyMaskIfExists(
                height=size, width=size, ignore_values=others, p=data.oversample
            ),
        ],
        p=1.0,
    )


def _warps(config: SegkitConfig) -> list[A.BasicTransform]:
    """Zoom and rotation (one affine warp of half the patches) and elastic deformation, after the
    crop (so a rare-class crop keeps its pixel and the cost does not grow with the image), borders
    reflected. cv2's warps sample image and mask at the same points; its resize would not
    (INTER_NEAREST shifts the mask by up to half a pixel against INTER_LINEAR's image)."""
    aug = config.augment
    reflect = {"border_mode": cv2.BORDER_REFLECT_101, "mask_interpolation": cv2.INTER_NEAREST}
    warps: list[A.BasicTransform] = []
    if aug.rotate > 0 or aug.scale is not None:
        warps.append(
            A.Affine(
                rotate=(-aug.rotate, aug.rotate),
                scale=aug.scale if aug.scale is not None else 1.0,
                p=0.5,
                **reflect,
            )
        )
    if aug.elastic > 0:
        warps.append(A.ElasticTransform(alpha=30, sigma=6, p=aug.elastic, **reflect))
    return warps
