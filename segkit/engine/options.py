"""The options of one inference call, as typed pydantic models: each field is one option with its
type, default, range and help, validated here and nowhere else. ``segkit.cli`` builds the
command-line flags of ``predict`` and ``evaluate`` from these fields, so a new field is a new flag.

A tiling option left at ``None`` takes the model card's default (``ModelCard.predict``).
"""

from __future__ import annotations

from typing import Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from segkit.config import TTA, BatchSize, Blend, Overlap, TileSize
from segkit.errors import ConfigError
from segkit.io.pyramids import PyramidFormat

OutputKind = Literal["index", "color", "overlay", "probs", "entropy", "confidence"]
"""What predict can write: label images, the class probabilities, the uncertainty maps."""
ProbsDtype = Literal["float16", "uint8"]


def flag_name(field: str) -> str:
    """The command-line flag of an option field: ``batch_size`` -> ``--batch-size``."""
    return "--" + field.replace("_", "-")


def options_error(err: ValidationError) -> str:
    """One line for the first problem of a validation error, named by its flag."""
    first = err.errors()[0]
    field = str(first["loc"][0]) if first["loc"] else ""
    where = f"{flag_name(field)} {first.get('input')!r}: " if field else ""
    more = f" (and {err.error_count() - 1} more)" if err.error_count() > 1 else ""
    return f"{where}{str(first['msg']).removeprefix('Value error, ')}{more}"


class Options(BaseModel):
    """Base of the option models: unknown options are refused, values never change afterwards."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @classmethod
    def parse(cls, **values: Any) -> Self:
        """Validated options; a ConfigError with one line naming the bad option."""
        try:
            return cls(**values)
        except ValidationError as e:
            raise ConfigError(options_error(e)) from None


class TileOptions(Options):
    """How an image is cut into tiles and put back together."""

    tile: TileSize | None = Field(None, description="tile size in pixels (default: from the model)")
    overlap: Overlap | None = Field(
        None,
        description="tile overlap: fraction < 1 or pixels >= 1 (default: from the model)",
    )
    blend: Blend | None = Field(None, description="blend window of overlapping tiles")
    tta: TTA | None = Field(None, description="test-time augmentation")
    batch_size: BatchSize | None = Field(
        None,
        description="tiles per forward pass (default: the model's, else 8 on a GPU and 1 on a "
        "CPU); images smaller than a tile are packed into the same pixels, several per pass",
    )


class InferenceOptions(TileOptions):
    """The options of ``segkit evaluate``: the tiling and the device."""

    device: str | None = Field(
        None, description="cpu, cuda, cuda:1 ... (default: cuda when available)"
    )


class PredictOptions(InferenceOptions):
    """The options of ``segkit predict`` (the model, the source and the output are arguments)."""

    save: list[OutputKind] = Field(
        ["index"],
        min_length=1,
        description="outputs to write (default: index); entropy, confidence: float32 TIFF maps",
    )
    probs_dtype: ProbsDtype = Field(
        "float16", description="storage of --save probs (default float16)"
    )
    pyramid_format: PyramidFormat = Field(
        "ome-tiff",
        description="container of outputs of 4096x4096 pixels or more, written as pyramids for "
        "QuPath, napari and Fiji (default ome-tiff)",
    )
    skip_existing: bool = Field(
        False, description="skip images whose outputs already exist (resume a killed run)"
    )
    devices: int = Field(
        1, ge=1, description="shard the images over N processes/GPUs (torch.distributed)"
    )
    workers: int | None = Field(
        None,
        description="background threads decoding and writing images (default: one per CPU, 2 to 8)",
    )
    max_pixels: int | None = Field(
        None,
        ge=1,
        description="refuse images with more pixels (default: the model's data.max_image_pixels, "
        "1000000000 unless set in training)",
    )
    classes: list[str] | None = Field(
        None, description="class names, for an ONNX model without segkit metadata"
    )
    mean: list[float] | None = Field(
        None, description="normalisation mean, for an ONNX model without segkit metadata"
    )
    std: list[float] | None = Field(
        None, description="normalisation std, for an ONNX model without segkit metadata"
    )

    @field_validator("save")
    @classmethod
    def _once_each(cls, save: list[OutputKind]) -> list[OutputKind]:
        return list(dict.fromkeys(save))

    def tiling(self) -> dict[str, Any]:
        """The :class:`TileOptions` fields, as the Predictor takes them."""
        return {k: getattr(self, k) for k in TileOptions.model_fields}

    def model_facts(self) -> dict[str, Any]:
        """What describes an ONNX file without segkit metadata (unset: left out)."""
        return {k: v for k in ("classes", "mean", "std") if (v := getattr(self, k)) is not None}
