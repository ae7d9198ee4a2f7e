"""What a model is, as plain data: the facts every checkpoint stores and inference reads.

Below the engine, the bundle and the export (each of them imports this, this imports none of
them), so a model's description has one home that every layer can reach.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from segkit import __version__
from segkit.config import DataConfig, SegkitConfig
from segkit.data.palette import class_colors

BUNDLE_FORMAT = 1


def bundle_hparams(config: SegkitConfig, stride: int = 32) -> dict[str, Any]:
    """The plain-data facts stored in every checkpoint (``LightningModule.save_hyperparameters``)."""
    data = config.data
    return {
        "bundle_format": BUNDLE_FORMAT,
        "segkit_version": __version__,
        "config": config.to_dict(),
        "classes": list(data.classes),
        "colors": class_colors(data.classes, data.palette).tolist(),
        "in_channels": data.in_channels,
        "mean": data.resolved_mean(),
        "std": data.resolved_std(),
        "stride": int(stride),
    }


@dataclass
class ModelInfo:
    """Facts about a model that inference needs; read from a bundle or from ONNX metadata."""

    classes: list[str]
    colors: np.ndarray  # (K, 3) uint8
    in_channels: int
    mean: list[float]
    std: list[float]
    stride: int = 32
    tile: int = 512
    overlap: float = 0.25
    blend: str = "gaussian"
    tta: str = "none"
    batch_size: int | None = None  # None: default_batch_size(device)
    ignore_index: int = 255
    temperature: float = 1.0
    """Divides the logits before softmax (temperature scaling, fitted after training); 1: none."""
    extra: dict[str, str] = field(default_factory=dict)
    data: DataConfig | None = None
    """The data section the model was trained with (bundle, or config stored in the ONNX file):
    how ``segkit evaluate`` reads masks and how large an input may be; None for a foreign ONNX."""

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def max_image_pixels(self) -> int:
        """Inputs with more pixels are refused (decompression-bomb guard): the training config's
        ``data.max_image_pixels``, else that setting's default."""
        if self.data is not None:
            return self.data.max_image_pixels
        return int(DataConfig.model_fields["max_image_pixels"].default)
