"""Read a segkit ONNX export's self-description back: ``metadata_props`` -> ModelInfo.

Also serves ONNX files segkit did not write: what their metadata lacks (classes, normalisation)
the caller supplies, and the channel count comes from the input shape.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from segkit.card import ModelInfo
from segkit.config import DataConfig
from segkit.data.palette import default_colors
from segkit.errors import ModelError, first_line

DEFAULT_STRIDE = 32


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (empty for a file segkit did not write)."""
    proto = _load_onnx(path)
    return {p.key: p.value for p in proto.metadata_props}


def _load_onnx(path: str | Path) -> Any:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: ONNX file not found")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ModelError(
            f"{path}: not a readable ONNX model (truncated or corrupt?): {first_line(e)}"
        ) from None


def onnx_model_info(
    source: str | Path | dict[str, str],
    classes: list[str] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    *,
    input_shape: list[Any] | None = None,
    name: str | Path | None = None,
) -> ModelInfo:
    """The ModelInfo of an ONNX model, from its segkit metadata and what the caller supplies.

    ``source`` is a path or the metadata dict itself. Caller values win over metadata. A model
    segkit did not export needs ``classes``, ``mean`` and ``std`` from the caller; its channel
    count is read from the input shape (``input_shape``, or the file's) and its stride defaults
    to 32. A ModelError names everything that is missing, and the file (``name`` for a dict).
    """
    name = str(name or (source if not isinstance(source, dict) else "ONNX metadata"))
    if isinstance(source, dict):
        meta = dict(source)
    else:
        proto = _load_onnx(source)
        meta = {p.key: p.value for p in proto.metadata_props}
        if input_shape is None and proto.graph.input:
            dims = proto.graph.input[0].type.tensor_type.shape.dim
            input_shape = [
                d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims
            ]
    try:
        meta_classes = _json(meta, "classes")
        in_channels = int(meta["in_channels"]) if "in_channels" in meta else None
        if (
            in_channels is None
            and input_shape is not None
            and len(input_shape) == 4
            and isinstance(input_shape[1], int)
        ):
            in_channels = input_shape[1]
        classes = [str(c) for c in (classes or meta_classes or [])] or None
        mean = [float(v) for v in (mean or _json(meta, "mean") or [])] or None
        std = [float(v) for v in (std or _json(meta, "std") or [])] or None
        missing = [
            n
            for n, v in (
                ("classes", classes),
                ("mean", mean),
                ("std", std),
                ("in_channels", in_channels),
            )
            if v is None
        ]
        if missing:
            how = {
                "classes": "--classes NAME ...",
                "mean": "--mean M ...",
                "std": "--std S ...",
                "in_channels": "a static channel dimension in the input shape",
            }
            raise ModelError(
                f"{name}: no segkit metadata for {', '.join(missing)} (not a segkit export?); "
                f"supply {', '.join(how[m] for m in missing)}"
            )
        for label, values in (("mean", mean), ("std", std)):
            if len(values or []) != in_channels:
                raise ModelError(
                    f"{name}: {label} has {len(values or [])} values but the model takes {in_channels} channels"
                )
        colors = _json(meta, "colors")
        colors_arr = (
            np.asarray(colors, dtype=np.uint8)
            if colors and len(colors) == len(classes or [])
            else default_colors(len(classes or []))
        )
        info = ModelInfo(
            classes=classes or [],
            colors=colors_arr,
            in_channels=int(in_channels or 0),
            mean=mean or [],
            std=std or [],
            stride=int(meta.get("stride", DEFAULT_STRIDE)),
        )
        static = (
            input_shape is not None
            and len(input_shape) == 4
            and all(isinstance(d, int) and d > 0 for d in input_shape[2:])
        )
        info.tile = min(input_shape[2:]) if static else int(meta.get("tile", info.tile))  # type: ignore[index]
        info.overlap = float(meta.get("overlap", info.overlap))
        info.blend = meta.get("blend", info.blend)
        info.tta = meta.get("tta", info.tta)
        if meta.get("batch_size"):  # empty or absent: the device's default
            info.batch_size = int(meta["batch_size"])
        if (
            input_shape is not None
            and input_shape
            and isinstance(input_shape[0], int)
            and input_shape[0] > 0
        ):
            info.batch_size = input_shape[0]
        info.ignore_index = int(meta.get("ignore_index", info.ignore_index))
        info.temperature = float(meta.get("temperature", info.temperature))
        if not info.temperature > 0:
            raise ValueError(f"temperature must be > 0, got {info.temperature}")
    except (ValueError, TypeError, KeyError) as e:
        raise ModelError(f"{name}: malformed segkit metadata: {first_line(e)}") from None
    info.extra = {k: v for k, v in meta.items() if k != "config"}
    if meta.get("config"):
        # The network runs without it: predict goes on with the default data settings.
        try:
            info.data = stored_data_config(meta["config"], name)
        except ModelError as e:
            warnings.warn(f"{e}; using the default data settings", stacklevel=2)
    return info


def stored_data_config(text: str, name: str | Path) -> DataConfig:
    """The data section of the training config a segkit export carries (the data section alone:
    validating the model section would import smp, which onnxruntime inference does not need)."""
    try:
        return DataConfig.model_validate(json.loads(text)["data"])
    except (ValueError, KeyError, TypeError) as e:
        raise ModelError(f"{name}: the stored training config is not valid: {e}") from None


def _json(meta: dict[str, str], key: str) -> Any:
    if key not in meta:
        return None
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        raise ValueError(f"'{key}' is not JSON: {meta[key][:80]!r}") from None
