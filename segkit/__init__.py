"""segkit: train U-Net-style segmentation models on your own masks, predict any-size images, export ONNX."""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "ModelCard",
    "PredictOptions",
    "Predictor",
    "SegkitConfig",
    "evaluate",
    "export_onnx",
    "load_bundle",
    "load_config",
    "train",
]

_LAZY = {
    "ModelCard": "segkit.card",
    "PredictOptions": "segkit.engine.options",
    "Predictor": "segkit.engine.predictor",
    "SegkitConfig": "segkit.config",
    "load_config": "segkit.config",
    "load_bundle": "segkit.bundle",
    "train": "segkit.training",
    "evaluate": "segkit.evaluation",
    "export_onnx": "segkit.export.onnx",
}


def __getattr__(name: str) -> Any:
    # Lazy imports keep `import segkit` and `segkit --help` fast (torch loads only when needed).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'segkit' has no attribute {name!r}")
