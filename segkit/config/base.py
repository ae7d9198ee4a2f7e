"""What every config section shares: the strict base model and the allowed values of the
enumerated options."""

from __future__ import annotations

from typing import Annotated, Literal, get_args

from pydantic import BaseModel, ConfigDict, Field

# The allowed values of the enumerated options, in one place: the schema and the option models
# (segkit.engine.options, whose fields are also the CLI's flags and choices) use these types.
MaskEncoding = Literal["index", "binary", "palette"]
Blend = Literal["constant", "gaussian", "cosine"]
TTA = Literal["none", "hflip", "flip", "d4"]
MASK_ENCODINGS: tuple[str, ...] = get_args(MaskEncoding)
BLENDS: tuple[str, ...] = get_args(Blend)

# The ranges of the tiling options, in one place for the stored predict defaults and the options
# of a predict call.
TileSize = Annotated[int, Field(ge=16)]
Overlap = Annotated[float, Field(ge=0)]
BatchSize = Annotated[int, Field(ge=1)]


class Section(BaseModel):
    """A config section: unknown keys are refused, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)
