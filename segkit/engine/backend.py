"""What every inference backend (torch checkpoint, onnxruntime) provides to the one tiler."""

from __future__ import annotations

from typing import Protocol

import torch

from segkit.card import ModelCard

GPU_BATCH_SIZE = 8  # tiles per forward pass on a GPU: keeps it busy
CPU_BATCH_SIZE = 1
"""On a CPU one tile per pass is no slower and holds the least: Unet-resnet34, 129 tiles of 512²,
2 cores: torch 99 s at batch 1 vs 103 s at 2, onnxruntime 63 vs 67 s, 0.17-0.24 GB less peak RSS."""


def default_batch_size(device: torch.device) -> int:
    """Tiles per forward pass when neither the call nor the model sets one."""
    return GPU_BATCH_SIZE if device.type == "cuda" else CPU_BATCH_SIZE


CPU_BLOCK_WIDTH = 2048
"""Columns the CPU stitcher finishes at a time: its work area is ``K x tile_h x (2048 + tile)``
floats (~64 MB at 12 classes and 512² tiles) instead of a tile-high band of the whole width."""


def block_width(device: torch.device) -> int | None:
    """Columns stitched per block on ``device``: a whole row on a GPU (its memory is not the
    host's, and every block costs a wait for the GPU when it is copied back), else
    :data:`CPU_BLOCK_WIDTH`."""
    return None if device.type == "cuda" else CPU_BLOCK_WIDTH


class Backend(Protocol):
    """Runs the network on a batch of normalised tiles."""

    card: ModelCard
    device: torch.device

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` float32 normalised tiles (h, w multiples of ``card.stride``) ->
        ``(N, K, h, w)`` float32 class probabilities (softmax), on ``self.device``."""
        ...
