"""What every inference backend (torch checkpoint, onnxruntime) provides to the one tiler."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch


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
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.classes)


GPU_BATCH_SIZE = 8  # tiles per forward pass on a GPU: keeps it busy
CPU_BATCH_SIZE = 2  # on a CPU bigger batches are no faster and hold ~0.1 GB more per 512² tile


def default_batch_size(device: torch.device) -> int:
    """Tiles per forward pass when neither the call nor the model sets one."""
    return GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE


class Backend(Protocol):
    """Runs the network on a batch of normalised tiles."""

    info: ModelInfo
    device: torch.device

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` float32 normalised tiles (h, w multiples of ``info.stride``) ->
        ``(N, K, h, w)`` float32 class probabilities (softmax), on ``self.device``."""
        ...
