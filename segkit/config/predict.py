"""The ``predict`` section: the inference defaults a bundle stores."""

from __future__ import annotations

from pydantic import Field

from segkit.config.base import TTA, BatchSize, Blend, Overlap, Section, TileSize


class PredictConfig(Section):
    """Inference defaults stored in the bundle; predict options override them."""

    tile: TileSize | None = Field(None, description="Tile size; null = the training patch_size.")
    overlap: Overlap = Field(
        0.25, description="Tile overlap: a fraction (< 1) of the tile, or pixels (>= 1)."
    )
    blend: Blend = Field("gaussian", description="Blend window of overlapping tiles.")
    tta: TTA = Field(
        "none",
        description="Test-time augmentation: the mean over 2 (hflip: horizontal flip), 4 (flip: "
        "horizontal and vertical flips) or 8 (d4: flips and quarter turns) passes.",
    )
    batch_size: BatchSize | None = Field(
        None,
        description="Tiles per forward pass; null = 8 on a GPU, 1 on a CPU (where bigger batches "
        "are no faster and hold more memory).",
    )
