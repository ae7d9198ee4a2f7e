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
from typing import Any

from segkit.config import SegkitConfig, load_config
from segkit.data.alignment import describe
from segkit.training.fingerprint import Fingerprint, fingerprint

RARE_SHARE = 0.05  # a class under this share of the labelled pixels counts as rare
UNLIMITED_EPOCHS = 100_000  # with a time budget, the budget ends the run
SMALL_DATASET = 50  # fewer image pairs: a smaller validation share
LIGHT_DECODER = [128, 64, 32, 16, 16]  # half smp's default widths: more steps per CPU-minute
# Per-image normalisation when the images' own means spread by more than this many pixel stds,
# or their stds by more than this factor (acquisitions differ: nnU-Net's z-score case).
UNEVEN_BRIGHTNESS = 0.5
UNEVEN_CONTRAST = 2.0
OFFSET_PX = 0.4  # masks this far off the content sideways (or more): no horizontal flips


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
    uneven = fp.brightness_spread > UNEVEN_BRIGHTNESS or fp.contrast_ratio > UNEVEN_CONTRAST
    if uneven:
        choose(
            "data.normalization",
            "image",
            f"the images differ in brightness (spread {fp.brightness_spread:.2f} std) or contrast "
            f"(ratio {fp.contrast_ratio:.2f}): each is normalised by its own mean/std",
        )
    else:
        choose(
            "data.normalization",
            "dataset",
            f"the images are alike in brightness (spread {fp.brightness_spread:.2f} std) and "
            f"contrast (ratio {fp.contrast_ratio:.2f}): one mean/std for all",
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
        f"a short linear warm-up ({(config.data.steps_per_epoch or steps) // 4} steps) settles "
        "the optimiser; the rest decays",
    )
    few = fp.images < 100
    # Drawn or rasterised masks often sit a fraction of a pixel off the image content, the same
    # way in every image: a model learns that offset unless flips and turns reverse it at random.
    measured = f" ({describe(fp.mask_offset)})" if fp.mask_offset is not None else ""
    choose(
        "augment.vflip",
        0.0,
        "a vertical flip reverses any fixed offset of the masks against the images, so the "
        f"model cannot learn it{measured}; set it for data without an 'up'",
    )
    choose("augment.rotate90", 0.0, "a quarter turn turns such an offset the same way")
    if fp.mask_offset is not None and abs(fp.mask_offset[1]) >= OFFSET_PX:
        choose(
            "augment.hflip",
            0.0,
            f"{describe(fp.mask_offset)}: a horizontal flip would reverse that offset",
        )
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
