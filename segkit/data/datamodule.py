"""The LightningDataModule: pairs scanned in ``setup``, a seeded train/val split, one loader factory."""

from __future__ import annotations

import warnings
from pathlib import Path

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch.utils.data import (
    DataLoader,
    RandomSampler,
    Sampler,
    WeightedRandomSampler,
    get_worker_info,
)

from segkit.config import SegkitConfig
from segkit.data.dataset import SegmentationDataset, find_pairs
from segkit.data.masks import load_mask
from segkit.data.transforms import train_transforms
from segkit.errors import ConfigError, DataError


def split_pairs(
    pairs: list[tuple[Path, Path]], fraction: float, seed: int
) -> tuple[list[tuple[Path, Path]], list[tuple[Path, Path]]]:
    """A seeded ``(train, val)`` split holding out ``fraction`` of pairs (at least one when > 0).

    Depends only on the sorted pairs and the seed, so every run and every DDP rank agrees.
    """
    if fraction <= 0:
        return list(pairs), []
    if len(pairs) < 2:
        raise DataError(
            f"{len(pairs)} image pair found: cannot hold out data.val_fraction={fraction} for validation "
            "(add images or set data.val)"
        )
    n_val = min(len(pairs) - 1, max(1, round(len(pairs) * fraction)))
    order = np.random.default_rng(seed).permutation(len(pairs))
    val_idx = set(order[:n_val].tolist())
    train = [p for i, p in enumerate(pairs) if i not in val_idx]
    val = [p for i, p in enumerate(pairs) if i in val_idx]
    return train, val


def _reseed_worker(worker_id: int) -> None:
    """Give each loader worker its own augmentation stream (albumentations keeps its own RNG)."""
    info = get_worker_info()
    transform = getattr(info.dataset, "transform", None) if info is not None else None
    if transform is not None and hasattr(transform, "set_random_seed"):
        transform.set_random_seed(torch.initial_seed() % 2**32)


def val_sampler(dataset: SegmentationDataset) -> Sampler | None:
    """Under DDP, each validation image on exactly one process, else None (a plain loader).

    Lightning's own DistributedSampler repeats images so that every process gets as many; the
    summed confusion matrix would count those twice. Lightning leaves a DistributedSampler it is
    given alone. Processes may then run one batch more or less: validation does no collective op
    per batch (the matrix is reduced once at epoch end), but DDP syncs buffers on the first
    forward, so every process needs one image; with fewer images, Lightning's sampler stays.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return None
    world = torch.distributed.get_world_size()
    if world < 2:
        return None
    if len(dataset) < world:
        warnings.warn(
            f"{len(dataset)} validation image(s) for {world} processes: some are validated twice "
            "and count twice in the validation metrics (add validation images or use fewer devices)",
            stacklevel=2,
        )
        return None
    return UnrepeatedDistributedSampler(
        dataset, num_replicas=world, rank=torch.distributed.get_rank(), shuffle=False
    )


def image_weights(dataset: SegmentationDataset) -> np.ndarray | None:
    """Sampling weights that draw images holding a ``data.rare_classes`` pixel ``data.oversample``
    of the time (at least their natural share); None when nothing is oversampled.

    Crops are then centred on those pixels by the transform (see ``train_transforms``): the two
    together are what nnU-Net calls foreground oversampling.
    """
    data = dataset.data
    if data.oversample <= 0 or not data.rare_classes:
        return None
    rare = np.array([data.classes.index(name) for name in data.rare_classes])
    has_rare = np.array([np.isin(load_mask(m, data), rare).any() for _, m in dataset.pairs])
    n_rare = int(has_rare.sum())
    if n_rare in (0, len(has_rare)):
        return None
    share = max(data.oversample, n_rare / len(has_rare))
    return np.where(has_rare, share / n_rare, (1.0 - share) / (len(has_rare) - n_rare))


def train_sampler(dataset: SegmentationDataset, batch_size: int) -> Sampler | None:
    """Draws ``data.steps_per_epoch`` batches per epoch (with replacement, rare-class images
    weighted up), so an epoch means the same amount of training whatever the dataset's size;
    None for the plain shuffled pass (steps_per_epoch null and nothing oversampled)."""
    data = dataset.data
    weights = image_weights(dataset)
    if data.steps_per_epoch is None and weights is None:
        return None
    samples = (data.steps_per_epoch or max(1, len(dataset) // batch_size)) * batch_size
    if weights is None:
        return RandomSampler(dataset, replacement=True, num_samples=samples)
    return WeightedRandomSampler(weights.tolist(), num_samples=samples, replacement=True)


class SegmentationDataModule(L.LightningDataModule):
    """Train and val loaders from ``config.data``: augmented patches, and whole raw images."""

    def __init__(self, config: SegkitConfig) -> None:
        super().__init__()
        self.config = config
        self.train_pairs: list[tuple[Path, Path]] = []
        self.val_pairs: list[tuple[Path, Path]] = []
        self.train_dataset: SegmentationDataset | None = None
        self.val_dataset: SegmentationDataset | None = None

    def setup(self, stage: str | None = None) -> None:
        """Scan and pair the folders (once), split, and build the datasets."""
        if self.train_dataset is not None:
            return
        data = self.config.data
        if data.train is None:
            raise ConfigError("data.train is not set: give data.train.images and data.train.masks")
        pairs = find_pairs(data.train.images, data.train.masks)
        if data.val is not None:
            self.train_pairs, self.val_pairs = pairs, find_pairs(data.val.images, data.val.masks)
        else:
            self.train_pairs, self.val_pairs = split_pairs(
                pairs, data.val_fraction, self.config.run.seed
            )
        self.train_dataset = SegmentationDataset(
            self.train_pairs, data, train_transforms(self.config)
        )
        # Whole raw images: validation runs them through the predictor, as predict would.
        self.val_dataset = SegmentationDataset(self.val_pairs, data)

    def _dataloader(self, split: str) -> DataLoader:
        if self.train_dataset is None or self.val_dataset is None:
            self.setup("fit")
        data = self.config.data
        train = split == "train"
        dataset = self.train_dataset if train else self.val_dataset
        assert dataset is not None
        batch_size = data.batch_size if train else 1
        sampler = train_sampler(dataset, batch_size) if train else val_sampler(dataset)
        return DataLoader(
            dataset,
            batch_size=batch_size,
            shuffle=train and sampler is None,
            sampler=sampler,
            drop_last=train and len(dataset) > batch_size,
            num_workers=data.num_workers,
            persistent_workers=data.num_workers > 0,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=_reseed_worker if data.num_workers > 0 else None,
        )

    def train_dataloader(self) -> DataLoader:
        """Random patches, ``data.batch_size`` per step (``data.steps_per_epoch`` steps, or one pass)."""
        return self._dataloader("train")

    def val_dataloader(self) -> DataLoader:
        """Whole validation images, one per batch (sizes differ); each counted once under DDP."""
        return self._dataloader("val")
