"""The training plan: read the dataset and the device, then choose what the config leaves unset.

nnU-Net's lesson: people pick a toolkit over a hand-written loop because it reads the data and
configures a recipe that works without tuning. ``fingerprint`` measures the training images
(sizes, channels, intensities, class frequencies); ``make_plan`` turns the fingerprint and the
device into decisions, each with its reason; ``apply_plan`` writes them into the config for the
keys the user did not set (the user's own keys always win). ``segkit plan CONFIG`` prints both,
``segkit train`` applies them when ``run.plan`` is true.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from segkit.config import AugmentConfig, SegkitConfig, load_config
from segkit.errors import ConfigError

MAX_SAMPLED_IMAGES = 64  # enough for stable statistics; bounds the time on large datasets
RARE_SHARE = 0.05  # a class under this share of the labelled pixels counts as rare
UNLIMITED_EPOCHS = 100_000  # with a time budget, the budget ends the run
SMALL_DATASET = 50  # fewer image pairs: a smaller validation share
LIGHT_DECODER = [128, 64, 32, 16, 16]  # half smp's default widths: more steps per CPU-minute


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

    def rows(self, classes: list[str]) -> list[tuple[str, str]]:
        """(what, value) rows for a report."""
        h, w = self.median_size
        rows = [
            ("training images", f"{self.images} ({self.sampled} read)"),
            ("median size", f"{w}x{h} (sides {self.min_side}-{self.max_side})"),
            ("intensity mean", _floats(self.mean)),
            ("intensity std", _floats(self.std)),
        ]
        for name, share, present in zip(classes, self.class_share, self.class_images, strict=True):
            rows.append((f"class {name}", f"{share:.1%} of pixels, in {present:.0%} of images"))
        return rows


@dataclass
class Device:
    """Where training runs: the plan sizes the model and the batches for it."""

    accelerator: str  # "gpu" or "cpu"
    cpu_cores: int
    gpu_memory_gb: float = 0.0

    @classmethod
    def detect(cls, config: SegkitConfig) -> Device:
        import torch

        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
        wants_cpu = str(config.trainer.accelerator) == "cpu"
        if torch.cuda.is_available() and not wants_cpu:
            memory = torch.cuda.get_device_properties(0).total_memory / 1024**3
            return cls("gpu", cores or 1, memory)
        return cls("cpu", cores or 1)


@dataclass
class Decision:
    """One key the plan sets, and why."""

    key: str  # dotted config key
    value: Any
    reason: str


@dataclass
class Plan:
    fingerprint: Fingerprint
    device: Device
    decisions: list[Decision] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # keys the plan would set but the user did

    def reasons(self) -> dict[str, str]:
        return {d.key: d.reason for d in self.decisions}


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
    for i in range(len(dataset)):
        image, mask = dataset.load(i)
        sizes.append(image.shape[:2])
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
    )


def _round_to(value: float, multiple: int) -> int:
    return max(multiple, int(round(value / multiple)) * multiple)


def make_plan(config: SegkitConfig, fp: Fingerprint, device: Device) -> Plan:
    """The recipe for this dataset on this device: every key the plan may set, with its reason.

    Which of them apply is ``apply_plan``'s business (the user's keys win).
    """
    plan = Plan(fp, device)

    def choose(key: str, value: Any, reason: str) -> None:
        plan.decisions.append(Decision(key, value, reason))

    data, gpu = config.data, device.accelerator == "gpu"
    if gpu:
        choose("model.encoder", "resnet34", "a GPU trains the standard U-Net encoder fast")
    else:
        choose("model.encoder", "resnet18", "a CPU trains a smaller encoder more steps per minute")
        if config.model.arch.lower() == "unet":
            choose(
                "model.kwargs",
                {"decoder_channels": LIGHT_DECODER},
                "a half-width decoder: more steps per CPU-minute",
            )
    # The patch: as large as the device affords, never beyond the images (rounded to the stride).
    largest = 512 if gpu else 256
    typical = min(fp.median_size)
    patch = min(largest, _round_to(typical, 32))
    choose(
        "data.patch_size",
        patch,
        f"median image side {typical}px; {largest}px is the largest crop this device "
        "trains efficiently",
    )
    pixels = (16 if gpu and device.gpu_memory_gb >= 20 else 8) * (largest / patch) ** 2
    batch = int(min(64 if gpu else 32, max(2, round(pixels))))
    choose("data.batch_size", batch, f"{patch}px crops: about as many pixels per step as fit")
    steps = 250 if gpu else 100
    choose(
        "data.steps_per_epoch",
        steps,
        "an epoch is a fixed amount of training (validation and checkpoints at a steady pace), "
        f"not one pass over {fp.images} images",
    )
    if not (data.in_channels == 3 and config.model.encoder_weights == "imagenet"):
        choose("data.mean", fp.mean, "the training images' own per-channel mean")
        choose("data.std", fp.std, "the training images' own per-channel std")
    if data.val is None and fp.pairs < SMALL_DATASET:
        choose(
            "data.val_fraction",
            0.1,
            f"{fp.pairs} images: hold out fewer for validation, train on more",
        )
    rare = [
        name
        for name, share in zip(data.classes, fp.class_share, strict=True)
        if 0 < share < RARE_SHARE
    ]
    if rare:
        choose("data.rare_classes", rare, f"under {RARE_SHARE:.0%} of the labelled pixels")
        choose("data.oversample", 0.33, "a third of the crops hold a rare-class pixel")
    choose("loss.dice", 1.0, "Dice weighs every class alike, whatever its pixel count")
    choose("loss.ce", 1.0, "cross-entropy for per-pixel decisions; with Dice, no worse than alone")
    choose(
        "optimizer.name", "adamw", "AdamW: robust without tuning from random or pretrained weights"
    )
    if config.model.encoder_weights is None:
        choose("optimizer.lr", 3.0e-3, "from random weights a higher peak rate learns faster")
    else:
        choose("optimizer.lr", 1.0e-3, "pretrained weights: a peak rate that keeps them")
    choose("scheduler.name", "cosine", "cosine decay to zero: the last steps anneal")
    choose(
        "scheduler.warmup_epochs",
        0.25,
        f"a short linear warm-up ({steps // 4} steps) settles the optimiser; the rest decays",
    )
    few = fp.images < 100
    # Drawn or rasterised masks often sit a fraction of a pixel off the image content, the same
    # way in every image: a model learns that offset unless flips and turns reverse it at random.
    choose(
        "augment.vflip",
        0.0,
        "a vertical flip reverses any fixed offset of the masks against the images, so the "
        "model cannot learn it; set it for data without an 'up'",
    )
    choose("augment.rotate90", 0.0, "a quarter turn turns such an offset the same way")
    choose(
        "augment.rotate",
        45.0 if few else 15.0,
        f"{fp.images} training images: {'strong' if few else 'mild'} rotation",
    )
    if few:
        choose("augment.scale", [0.85, 1.2], f"{fp.images} training images: random zoom")
    choose("augment.color_jitter", 0.5, "robustness to brightness and contrast changes")
    choose("augment.gamma", 0.3, "robustness to other intensity curves")
    whole = min(1024, -(-max(fp.median_size) // 32) * 32)
    if whole > patch:
        choose(
            "predict.tile",
            whole,
            f"predict typical {max(fp.median_size)}px images in one tile: full context, no seams",
        )
    choose(
        "predict.tta",
        "none",
        "TTA (hflip, flip or d4, with the views the training showed) is switched on after "
        "training where it measurably pays on validation",
    )
    if config.trainer.model_extra and config.trainer.model_extra.get("max_time"):
        choose("trainer.max_epochs", UNLIMITED_EPOCHS, "trainer.max_time ends the run")
    return plan


def _user_keys(config: SegkitConfig) -> set[str]:
    """Dotted keys given by the user (YAML, dict or overrides), from pydantic's fields_set."""
    keys = set()
    for section in SegkitConfig.model_fields:
        body = getattr(config, section)
        keys |= {f"{section}.{name}" for name in body.model_fields_set}
    return keys


def apply_plan(config: SegkitConfig, plan: Plan) -> SegkitConfig:
    """``config`` with the plan's decisions for the keys the user did not set.

    Decisions the user's keys override move to ``plan.kept``; those applied stay in
    ``plan.decisions``. The result is a fully explicit config (every key counts as set), so
    planning it again changes nothing.
    """
    user = _user_keys(config)
    data = config.to_dict()
    applied = []
    for decision in plan.decisions:
        if decision.key in user:
            plan.kept.append(decision.key)
            continue
        section, key = decision.key.split(".")
        data[section][key] = decision.value
        applied.append(decision)
    plan.decisions = applied
    return load_config(data)


def plan_config(config: SegkitConfig, device: Device | None = None) -> tuple[SegkitConfig, Plan]:
    """Fingerprint the data, plan for ``device`` (detected when None) and apply the plan."""
    plan = make_plan(config, fingerprint(config), device or Device.detect(config))
    return apply_plan(config, plan), plan


def annotated_yaml(config: SegkitConfig, plan: Plan | None) -> str:
    """The resolved config as YAML, each key the plan chose followed by ``# plan: <reason>``."""
    import re

    import yaml

    reasons = plan.reasons() if plan is not None else {}
    section, lines = "", []
    for line in yaml.safe_dump(config.to_dict(), sort_keys=False).splitlines():
        top = re.match(r"^(\w+):", line)
        key = re.match(r"^  (\w+):", line)
        if top:
            section = top.group(1)
        elif key and f"{section}.{key.group(1)}" in reasons:
            line = f"{line}  # plan: {reasons[f'{section}.{key.group(1)}']}"
        lines.append(line)
    return "\n".join(lines) + "\n"


TTA_GAIN = 0.001  # val mIoU a TTA mode must add (over the next cheaper one) to be worth its passes
TTA_PASSES = {"hflip": 2, "flip": 4, "d4": 8}
# The training augmentations each TTA mode's views need (any one set of them suffices): a view the
# model never trained on only hurts it, and undoes what it learned of the masks' conventions.
TTA_NEEDS = {
    "hflip": (("hflip",),),
    "flip": (("hflip", "vflip"), ("hflip", "rotate90"), ("vflip", "rotate90")),
    "d4": (("hflip", "rotate90"), ("vflip", "rotate90")),
}


def tta_candidates(augment: AugmentConfig) -> list[str]:
    """The TTA modes, cheapest first, whose views the training augmentation showed the model."""
    trained = {name for name in ("hflip", "vflip", "rotate90") if getattr(augment, name) > 0}
    return [
        mode for mode in TTA_PASSES if any(trained.issuperset(needs) for needs in TTA_NEEDS[mode])
    ]


def measured_tta(
    checkpoint: Path,
    pairs: list[tuple[Path, Path]],
    without: float,
    device: str | None,
    augment: AugmentConfig,
) -> Decision | None:
    """After training: the TTA mode for ``predict.tta`` that raises the validation mIoU of
    ``checkpoint`` (``without``: its mIoU without TTA) by at least ``TTA_GAIN`` over the next
    cheaper mode (none < hflip < flip < d4), or None when none pays. Only the modes whose views
    ``augment`` trained on are tried."""
    from segkit.evaluation import evaluate_pairs

    best_mode, best = "none", without
    scores = {}
    for mode in tta_candidates(augment):
        scores[mode] = evaluate_pairs(checkpoint, pairs, device=device, tta=mode).miou
        if scores[mode] >= best + TTA_GAIN:
            best_mode, best = mode, scores[mode]
    if best_mode == "none":
        return None
    measured = ", ".join(f"{mode} {score:.4f}" for mode, score in scores.items())
    return Decision(
        "predict.tta",
        best_mode,
        f"measured on validation: mIoU {without:.4f} without TTA, {measured} "
        f"({TTA_PASSES[best_mode]} network passes per tile; --tta none to skip)",
    )
