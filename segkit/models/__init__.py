"""Networks, losses, metrics and calibration (imported lazily: torch loads on use)."""

from __future__ import annotations

from typing import Any

__all__ = [
    "ConfusionMatrix",
    "SegmentationMetrics",
    "build_loss",
    "build_model",
    "model_stride",
]

_LAZY = {
    "build_model": "segkit.models.build",
    "model_stride": "segkit.models.build",
    "build_loss": "segkit.models.losses",
    "ConfusionMatrix": "segkit.models.metrics",
    "SegmentationMetrics": "segkit.models.metrics",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segkit.models' has no attribute {name!r}")
