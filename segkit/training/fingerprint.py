"""The dataset fingerprint the plan reads: sizes, channels, intensities and class frequencies of
a seeded sample of the training images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from segkit.config import SegkitConfig
from segkit.data.alignment import MaskOffset, describe
from segkit.errors import ConfigError
from segkit.normalization import MIN_STD, image_statistics

MAX_SAMPLED_IMAGES = 64  # enough for stable statistics; bounds the time on large datasets


@dataclass
class Fingerprint:
    """What the training images hold (a seeded sample of at most ``MAX_SAMPLED_IMAGES``)."""

    images: int  # in the training split
    pairs: int  # image/mask pairs in data.train, before a validation share is held out
    sampled: int
    median_size: tuple[int, int]  # (height, width)
    min_side: int
    max_side: int
    mean: list[float]  # per model channel, of images scaled to [0, 1]
    std: list[float]
    class_share: list[float]  # share of the labelled (not ignored) pixels per class
    class_images: list[float]  # share of the images holding at least one pixel of each class
    brightness_spread: float  # std of the images' own means, in units of the pixels' std
    contrast_ratio: float  # largest over smallest of the images' own stds
    mask_offset: tuple[float, float] | None  # (down, right) px onto the content; None: unknown

    def rows(self, classes: list[str]) -> list[tuple[str, str]]:
        """(what, value) rows for a report."""
        h, w = self.median_size
        rows = [
            ("training images", f"{self.images} ({self.sampled} read)"),
            ("median size", f"{w}x{h} (sides {self.min_side}-{self.max_side})"),
            ("intensity mean", _floats(self.mean)),
            ("intensity std", _floats(self.std)),
            ("image brightness spread", f"{self.brightness_spread:.2f} std"),
            ("image contrast ratio", f"{self.contrast_ratio:.2f}"),
            ("mask offset", describe(self.mask_offset)),
        ]
        for name, share, present in zip(classes, self.class_share, self.class_images, strict=True):
            rows.append((f"class {name}", f"{share:.1%} of pixels, in {present:.0%} of images"))
        return rows


def _floats(values: list[float]) -> str:
    return "[" + ", ".join(f"{v:.3f}" for v in values) + "]"


def fingerprint(config: SegkitConfig) -> Fingerprint:
    """Measure the training split of ``config.data`` (the images ``train`` would train on)."""
    from segkit.data.datamodule import split_pairs
    from segkit.data.dataset import SegmentationDataset, find_pairs

    data = config.data
    if data.train is None:
        raise ConfigError("data.train is not set: the plan reads the training images")
    pairs = find_pairs(data.train.images, data.train.masks)
    total = len(pairs)
    if data.val is None:
        pairs, _ = split_pairs(pairs, data.val_fraction, config.run.seed)
    rng = np.random.default_rng(config.run.seed)
    chosen = sorted(rng.permutation(len(pairs))[:MAX_SAMPLED_IMAGES].tolist())
    dataset = SegmentationDataset([pairs[i] for i in chosen], data)
    k = data.num_classes
    sizes: list[tuple[int, int]] = []
    pixel_sum = pixel_sq = np.zeros(data.in_channels, np.float64)
    pixel_n = 0
    counts = np.zeros(k, np.int64)
    present = np.zeros(k, np.int64)
    own_means, own_stds = [], []
    offset = MaskOffset()
    for i in range(len(dataset)):
        image, mask = dataset.load(i)
        sizes.append(image.shape[:2])
        own_mean, own_std = image_statistics(image)
        own_means.append(own_mean)
        own_stds.append(own_std)
        offset.add(image, mask, k)
        flat = image.reshape(-1, image.shape[2]).astype(np.float64)
        pixel_sum = pixel_sum + flat.sum(0)
        pixel_sq = pixel_sq + (flat**2).sum(0)
        pixel_n += flat.shape[0]
        labelled = mask[mask != data.ignore_index]
        per_class = np.bincount(labelled.ravel(), minlength=k)[:k]
        counts += per_class
        present += per_class > 0
    mean = pixel_sum / pixel_n
    std = np.sqrt(np.maximum(pixel_sq / pixel_n - mean**2, 1e-12))
    sides = np.array(sizes)
    # per channel, the worst: one uneven band is reason enough to normalise per image
    spread = np.std(own_means, axis=0) / np.maximum(std, MIN_STD)
    contrast = np.max(own_stds, axis=0) / np.min(own_stds, axis=0)
    return Fingerprint(
        images=len(pairs),
        pairs=total,
        sampled=len(dataset),
        median_size=(int(np.median(sides[:, 0])), int(np.median(sides[:, 1]))),
        min_side=int(sides.min()),
        max_side=int(sides.max()),
        mean=[round(float(v), 4) for v in mean],
        std=[round(float(v), 4) for v in std],
        class_share=(counts / max(1, counts.sum())).tolist(),
        class_images=(present / len(dataset)).tolist(),
        brightness_spread=round(float(spread.max()), 4),
        contrast_ratio=round(float(contrast.max()), 4),
        mask_offset=offset.offset(),
    )
