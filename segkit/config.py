"""The typed config schema: the single home of every key, default, type and range.

Precedence is defaults < YAML file < ``key=value`` overrides. Everything is validated by
pydantic; unknown keys are collected into one error with close-match suggestions.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Literal, TypeGuard, get_args

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from segkit.errors import ConfigError

# The allowed values of the enumerated options, in one place: the schema and the option models
# (segkit.inference.options, whose fields are also the CLI's flags and choices) use these types.
MaskEncoding = Literal["index", "binary", "palette"]
Blend = Literal["constant", "gaussian", "cosine"]
TTA = Literal["none", "hflip", "flip", "d4"]
MASK_ENCODINGS: tuple[str, ...] = get_args(MaskEncoding)
BLENDS: tuple[str, ...] = get_args(Blend)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Suffixes that make an `encoder_weights` value a local file rather than a weight-set name.
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")


def is_weights_file(weights: str | None, base: Path | None = None) -> TypeGuard[str]:
    """True when ``encoder_weights`` names a local file rather than a weight set like 'imagenet'.

    The one rule for both the config (which resolves such a path against the config's folder,
    ``base``) and the model builder: a weights suffix, a folder separator, or an existing file.
    """
    if not weights:
        return False
    return (
        weights.lower().endswith(WEIGHT_SUFFIXES)
        or "/" in weights
        or "\\" in weights
        or ((base or Path()) / Path(weights).expanduser()).is_file()
    )


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' — did you mean a, b?' with up to 3 close choices (case-insensitive), or ''."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)
    return f" — did you mean {', '.join(by_lower[c] for c in close)}?" if close else ""


def _in_byte_range(colour: tuple[int, ...]) -> bool:
    return all(0 <= v <= 255 for v in colour)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class SplitConfig(_Section):
    """One split: an image folder and a mask folder whose files pair by stem."""

    images: Path = Field(
        description="Folder of images (png, jpg, tif/tiff, bmp); searched recursively."
    )
    masks: Path = Field(
        description="Folder of masks, one per image with the same stem (lossless formats)."
    )


class DataConfig(_Section):
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


class AugmentConfig(_Section):
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


class ModelConfig(_Section):
    """Any segmentation-models-pytorch architecture and encoder."""

    arch: str = Field(
        "Unet",
        description="smp architecture name (Unet, UnetPlusPlus, FPN, DeepLabV3Plus, Segformer, ...).",
    )
    encoder: str = Field(
        "resnet34",
        description="smp encoder name (resnet18, resnet34, efficientnet-b0, mit_b0, tu-* timm encoders, ...).",
    )
    encoder_weights: str | None = Field(
        "imagenet",
        description="'imagenet' (downloaded), null (random init) or a path to a local weights file.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword arguments for smp.create_model (e.g. decoder_channels).",
    )

    # Names are checked against smp's own registries here, so a typo is a config error (exit 2)
    # before any data is read; smp is imported only when a name is given (defaults are valid).
    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        import segmentation_models_pytorch as smp

        if v.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
            names = sorted(c.__name__ for c in smp.MODEL_ARCHITECTURES_MAPPING.values())
            raise ValueError(
                f"unknown architecture '{v}'{_did_you_mean(v, names)} (valid: {', '.join(names)})"
            )
        return v

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, v: str) -> str:
        import segmentation_models_pytorch as smp

        if v.startswith("tu-"):
            import timm

            if not timm.is_model(v[3:]):
                hint = _did_you_mean(v, ("tu-" + name for name in timm.list_models()))
                raise ValueError(
                    f"unknown timm encoder '{v}'{hint} (any name from timm.list_models() prefixed with 'tu-')"
                )
            return v
        names = smp.encoders.get_encoder_names()
        if v not in names:
            raise ValueError(
                f"unknown encoder '{v}'{_did_you_mean(v, names)} "
                f"(valid: {', '.join(sorted(names))}; or 'tu-<timm model name>')"
            )
        return v


class LossConfig(_Section):
    """Weights of the smp losses summed into the training loss; 0 disables a term."""

    dice: float = Field(1.0, ge=0, description="Dice loss weight.")
    ce: float = Field(
        1.0,
        ge=0,
        description="Cross-entropy weight (softmax over the class outputs; binary models have 2 outputs too).",
    )
    focal: float = Field(0.0, ge=0, description="Focal loss weight.")
    lovasz: float = Field(0.0, ge=0, description="Lovasz hinge/softmax weight.")
    tversky: float = Field(0.0, ge=0, description="Tversky loss weight.")
    jaccard: float = Field(0.0, ge=0, description="Jaccard (soft IoU) loss weight.")
    deep_supervision: bool = Field(
        False,
        description="Also supervise the decoder's intermediate stages through auxiliary heads "
        "(training only; Unet, MAnet, Linknet).",
    )

    def term_weights(self) -> dict[str, float]:
        """The weight of each loss term (every field but the ``deep_supervision`` switch)."""
        return self.model_dump(exclude={"deep_supervision"})

    @model_validator(mode="after")
    def _some_term(self) -> LossConfig:
        if not any(v > 0 for v in self.term_weights().values()):
            raise ValueError("at least one loss weight must be > 0")
        return self


class OptimizerConfig(_Section):
    """The optimiser."""

    name: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Optimiser.")
    lr: float = Field(1.0e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(1.0e-4, ge=0, description="Weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only).")
    nesterov: bool = Field(False, description="Nesterov momentum (sgd only).")
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep an exponential moving average of the weights with this decay "
        "(validated, checkpointed and exported instead of the raw weights); null disables it.",
    )


class SchedulerConfig(_Section):
    """Learning-rate schedule, stepped every optimiser step."""

    name: Literal["cosine", "poly", "constant"] = Field(
        "cosine", description="cosine decay, poly (power `power`) decay, or constant."
    )
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warm-up length in epochs.")
    power: float = Field(0.9, gt=0, description="Exponent of the poly schedule.")
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="Final learning rate as a fraction of `optimizer.lr`."
    )


class TrainerConfig(BaseModel):
    """Passed through to ``lightning.Trainer``: any Trainer argument is accepted here."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    max_epochs: int = Field(50, ge=1, description="Training epochs.")
    precision: str = Field(
        "auto",
        description="'auto' = bf16-mixed on bf16 GPUs, 16-mixed on older GPUs, 32 on CPU; or any Lightning precision.",
    )
    accelerator: str = Field("auto", description="cpu, gpu, auto ...")
    devices: int | str | list[int] = Field(
        "auto", description="Number of devices or ids; >1 uses DDP."
    )
    strategy: str = Field("auto", description="auto, ddp, ddp_spawn, ...")
    log_every_n_steps: int = Field(10, ge=1, description="Logging interval in steps.")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_str(cls, v: Any) -> Any:
        # `trainer.precision=32` arrives from YAML as an int; Lightning takes both spellings.
        return str(v) if isinstance(v, int) else v


class RunConfig(_Section):
    """Where a run writes and how it starts."""

    dir: Path = Field(
        Path("runs"),
        description="Parent folder of runs; a relative path is relative to the working directory.",
    )
    name: str | None = Field(
        None,
        description="Run folder name; default: the config file stem (or 'run'), numbered if it exists.",
    )
    seed: int = Field(0, description="Seed for splits, augmentation and init.")
    resume: str | None = Field(
        None,
        description="'last' resumes <run>/last.ckpt; or a checkpoint path (relative to the working directory).",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many validations without val mIoU improving; null disables.",
    )
    plan: bool = Field(
        True,
        description="Fill the keys the config does not set from the dataset and the device "
        "(`segkit plan CONFIG` shows the choices and why); false keeps the schema defaults.",
    )
    val_preview_images: int = Field(
        4,
        ge=0,
        description="Validation images drawn into the per-epoch preview PNG (image | truth | prediction).",
    )


class PredictConfig(_Section):
    """Inference defaults stored in the bundle; predict options override them."""

    tile: int | None = Field(None, ge=16, description="Tile size; null = the training patch_size.")
    overlap: float = Field(
        0.25, ge=0, description="Tile overlap: a fraction (< 1) of the tile, or pixels (>= 1)."
    )
    blend: Blend = Field("gaussian", description="Blend window of overlapping tiles.")
    tta: TTA = Field(
        "none",
        description="Test-time augmentation: the mean over 2 (hflip: horizontal flip), 4 (flip: "
        "horizontal and vertical flips) or 8 (d4: flips and quarter turns) passes.",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Tiles per forward pass; null = 8 on a GPU, 1 on a CPU (where bigger batches "
        "are no faster and hold more memory).",
    )


class SegkitConfig(_Section):
    """The whole configuration of a run."""

    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (paths as str): what goes into YAML, checkpoints and ONNX metadata."""
        return json.loads(self.model_dump_json())

    @field_validator("trainer", mode="before")
    @classmethod
    def _trainer_dict(cls, v: Any) -> Any:
        return v if v is not None else {}


def _trainer_arguments() -> list[str]:
    """Names ``lightning.Trainer`` accepts: extra ``trainer.*`` keys are checked against them."""
    import inspect

    from lightning import Trainer

    return [p for p in inspect.signature(Trainer.__init__).parameters if p != "self"]


def _format_validation_error(err: ValidationError, source: str, overrides: Sequence[str]) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = _short_listing(e["msg"].removeprefix("Value error, "))
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            text = _unknown_key_message(key)
        elif (
            isinstance(got, dict | list)
            or got is None
            or not key
            or (isinstance(got, str) and repr(got) in msg)
        ):
            text = f"{key}: {msg}" if key else msg
        else:
            text = f"{key}: {msg} (got {_clip(repr(got))})"
        parts.append((_origin(key, source, overrides), text))
    return _by_origin(parts)


def _origin(key: str, source: str, overrides: Sequence[str]) -> str:
    """Where a dotted key's value came from: the last override that set it, else ``source``."""
    for item in reversed(overrides):
        set_key = item.partition("=")[0].strip()
        if key and (
            key == set_key or key.startswith(set_key + ".") or set_key.startswith(key + ".")
        ):
            return f"override '{_clip(item)}'"
    return source


def _by_origin(parts: Sequence[tuple[str, str]]) -> str:
    """``origin: message; message`` per origin, origins joined by ``; `` in first-seen order."""
    grouped: dict[str, list[str]] = {}
    for origin, text in parts:
        grouped.setdefault(origin, []).append(text)
    return "; ".join(f"{origin}: {'; '.join(texts)}" for origin, texts in grouped.items())


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_LISTED = 10  # names an error lists before it says "... N more"


def _short_listing(text: str, limit: int = _LISTED) -> str:
    """Cut a long ``(valid: a, b, ...)`` / ``(allowed: ...)`` listing to its first ``limit`` names."""

    def cut(m: re.Match[str]) -> str:
        names = m.group(2).split(", ")
        if len(names) <= limit:
            return m.group(0)
        return f"({m.group(1)}: {', '.join(names[:limit])}, ... {len(names) - limit} more"

    # The listing ends where the parenthesis closes or a "; or ..." note begins, which is kept.
    return re.sub(r"\((valid|allowed): ([^();]*)(?=[;)])", cut, text)


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The config section an annotation holds: ``SplitConfig | None`` -> SplitConfig, else None."""
    for t in (annotation, *get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def _section_at(keys: Sequence[str]) -> type[BaseModel] | None:
    """The config section at a dotted path (``["data", "train"]``); None for any other key."""
    section: type[BaseModel] | None = SegkitConfig
    for key in keys:
        field = section.model_fields.get(key) if section is not None else None
        section = _submodel(field.annotation) if field is not None else None
    return section


def _allowed_keys(section: type[BaseModel]) -> list[str]:
    allowed = set(section.model_fields)
    if section is TrainerConfig:
        allowed |= set(_trainer_arguments())
    return sorted(allowed)


def _unknown_key_message(dotted: str) -> str:
    """``unknown key 'a.b' — did you mean a.c?``; the allowed keys (a few) only without a close match."""
    *parents, leaf = dotted.split(".")
    section = _section_at(parents)
    allowed = _allowed_keys(section) if section is not None else []
    close = difflib.get_close_matches(leaf, allowed, n=3)
    hint = f" — did you mean {', '.join('.'.join([*parents, c]) for c in close)}?" if close else ""
    listing = ""
    if allowed and (not close or len(allowed) <= _LISTED):  # a long list only without a hint
        listing = _short_listing(f" (allowed: {', '.join(allowed)})")
    return f"unknown key '{dotted}'{hint}{listing}"


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1,2]"]`` into a nested dict; values are parsed with ``yaml.safe_load``."""
    nested: dict[str, Any] = {}
    for item in overrides:
        _apply_override(nested, item)
    return nested


def _apply_override(data: dict[str, Any], item: str) -> None:
    """Set one ``KEY=VALUE`` (dotted key, YAML value) in ``data``, in place.

    A dotted key reaches into any mapping, so ``data.palette.cell=[9,9,9]`` changes one colour and
    keeps the others. A mapping given for a config section (``trainer={...}``) is merged into it;
    any other value replaces what was there, so ``data.palette={...}`` replaces the whole palette.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}' is not KEY=VALUE (example: trainer.max_epochs=5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    keys = key.strip().split(".")
    node = data
    for i, k in enumerate(keys[:-1]):
        if node.get(k) is None:
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise ConfigError(f"override '{item}': '{'.'.join(keys[: i + 1])}' is not a section")
    node[keys[-1]] = _merged(node.get(keys[-1]), value, keys)


def _merged(old: Any, new: Any, keys: list[str]) -> Any:
    """``new`` merged into ``old`` where both are mappings for a config section, else ``new``."""
    if not (isinstance(old, dict) and isinstance(new, dict) and _section_at(keys) is not None):
        return new
    return {**old, **{k: _merged(old.get(k), v, [*keys, k]) for k, v in new.items()}}


def _check_unknown(data: dict[str, Any], source: str, overrides: Sequence[str]) -> None:
    unknown = []
    for section, body in data.items():
        if section not in SegkitConfig.model_fields:
            unknown.append(section)
            continue
        sub = _section_at([section])
        if isinstance(body, dict) and sub is not None:
            # Lightning's Trainer arguments only for keys the section does not declare: importing
            # lightning costs ~0.2 GB and seconds, and loading a bundle to predict never needs it.
            extra = [key for key in body if key not in sub.model_fields]
            if extra:
                allowed = _allowed_keys(sub)
                unknown.extend(f"{section}.{key}" for key in extra if key not in allowed)
    if unknown:
        raise ConfigError(
            _by_origin([(_origin(k, source, overrides), _unknown_key_message(k)) for k in unknown])
        )


def load_config(
    source: str | Path | dict[str, Any] | SegkitConfig | None = None,
    overrides: list[str] | None = None,
) -> SegkitConfig:
    """Build a validated config from defaults, an optional YAML file or dict, and overrides.

    Relative input paths in a YAML file (``data.*.images/masks``, a local
    ``model.encoder_weights`` file) are resolved against the file's folder, so a config works
    from any working directory. ``run.dir`` and ``run.resume`` name outputs of runs and stay
    relative to the working directory (``segkit train configs/x.yaml`` writes to ``./runs``),
    as do paths given as overrides.
    """
    name = "config"
    data: dict[str, Any] = {}
    if isinstance(source, SegkitConfig):
        data = source.to_dict()
    elif isinstance(source, dict):
        data = copy.deepcopy(source)
    elif source is not None:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: expected a mapping of sections (data:, model:, ...), got {type(loaded).__name__}"
            )
        data = _resolve_paths(loaded, path.parent)
    for item in overrides or []:
        _apply_override(data, item)
    _check_unknown(data, name, overrides or [])
    try:
        return SegkitConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, name, overrides or [])) from None


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    data = json.loads(json.dumps(data, default=str))
    for split in ("train", "val"):
        body = (data.get("data") or {}).get(split)
        if isinstance(body, dict):
            for key in ("images", "masks"):
                if (
                    isinstance(body.get(key), str)
                    and not Path(body[key]).expanduser().is_absolute()
                ):
                    body[key] = str((base / body[key]).resolve())
                elif isinstance(body.get(key), str):
                    body[key] = str(Path(body[key]).expanduser())
    weights = (data.get("model") or {}).get("encoder_weights")
    if isinstance(weights, str) and is_weights_file(weights, base):
        p = Path(weights).expanduser()
        data["model"]["encoder_weights"] = str(p if p.is_absolute() else (base / p).resolve())
    return data


def save_config(config: SegkitConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from segkit.utils import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))


def config_reference() -> list[tuple[str, str, str]]:
    """(key, default, description) rows of every config key: docs/config.md's reference."""
    rows = []
    for section_name, field in SegkitConfig.model_fields.items():
        section = field.annotation
        assert isinstance(section, type) and issubclass(section, BaseModel)
        for key, sub in section.model_fields.items():
            default = sub.get_default(call_default_factory=True)
            rows.append(
                (f"{section_name}.{key}", json.dumps(default, default=str), sub.description or "")
            )
    return rows
