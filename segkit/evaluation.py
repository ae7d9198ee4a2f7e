"""``segkit evaluate``: per-class metrics of a model on image/mask pairs.

Predictions come from :class:`segkit.inference.predictor.Predictor` (the engine ``predict`` uses,
so a ``.ckpt`` and its ``.onnx`` export are evaluated the same way, tiles and TTA included); masks
are decoded with the model's own data settings (classes, encoding, palette, ignore_index).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segkit.config import DataConfig
from segkit.errors import DataError, ModelError
from segkit.models.metrics import ConfusionMatrix, SegmentationMetrics
from segkit.utils import atomic_write_text


def model_data_config(model_path: Path, predictor: Any) -> DataConfig:
    """The data section the model was trained with (the bundle's, or the config an ONNX export
    carries), else, for an ONNX file without segkit metadata, index masks of its classes."""
    info = predictor.info
    if info.data is not None:
        return info.data
    if model_path.suffix.lower() == ".onnx":  # a stored config predict could skip: masks need it
        from segkit.export.metadata import read_onnx_metadata, stored_data_config

        stored = read_onnx_metadata(model_path).get("config")
        if stored:
            return stored_data_config(stored, model_path)
    try:
        return DataConfig(
            classes=list(info.classes), ignore_index=info.ignore_index, in_channels=info.in_channels
        )
    except ValueError as e:
        raise ModelError(f"{model_path}: cannot describe its masks ({e})") from None


def _load_pair(
    image_path: Path, mask_path: Path, data: DataConfig
) -> tuple[np.ndarray, np.ndarray]:
    from segkit.data.io import LOSSY_SUFFIXES, read_image
    from segkit.data.masks import load_mask

    image = read_image(image_path, in_channels=data.in_channels, max_pixels=data.max_image_pixels)
    try:
        mask = load_mask(mask_path, data)
    except DataError as e:
        if mask_path.suffix.lower() not in LOSSY_SUFFIXES:
            raise
        raise DataError(
            f"{e} — JPEG is lossy and leaves values that are no class at edges: save masks as PNG"
        ) from None
    if image.shape[:2] != mask.shape[:2]:
        raise DataError(
            f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but image {image_path.name} is {image.shape[1]}x{image.shape[0]} (width x height)"
        )
    return image, mask


def evaluate_pairs(
    model_path: str | Path,
    pairs: Sequence[tuple[Path, Path]],
    *,
    device: str | None = None,
    json_path: str | Path | None = None,
    tile: int | None = None,
    overlap: float | None = None,
    blend: str | None = None,
    tta: str | None = None,
    batch_size: int | None = None,
) -> SegmentationMetrics:
    """Metrics of ``model_path`` on explicit ``(image, mask)`` pairs (train uses its val split)."""
    from segkit.inference.predictor import Predictor
    from segkit.inference.readahead import default_workers, header_pixels, read_ahead

    model_path = Path(model_path)
    if not pairs:
        raise DataError("no image/mask pairs to evaluate")
    predictor = Predictor.from_path(
        model_path,
        device=device,
        tile=tile,
        overlap=overlap,
        blend=blend,
        tta=tta,
        batch_size=batch_size,
    )
    data = model_data_config(model_path, predictor)
    classes = list(predictor.info.classes)
    if len(classes) != data.num_classes:
        raise ModelError(
            f"{model_path}: the model has {len(classes)} classes but its data config lists {data.num_classes}"
        )
    confusion = ConfusionMatrix(
        len(classes), ignore_index=data.ignore_index, sync=False
    )  # may run on rank 0 only
    masks: deque[np.ndarray] = deque()  # of the images predict_many has taken, not yet scored

    def images() -> Iterator[np.ndarray]:
        """The images, decoded ahead (readahead.py: a pass or two of small images)."""
        for _, loaded in read_ahead(
            pairs,
            lambda pair: _load_pair(*pair, data),
            lambda pair: header_pixels(pair[0], data.max_image_pixels),
            workers=default_workers(),
            spare_pixels=2 * predictor.pixels_per_pass(),
        ):
            image, mask = loaded.result()
            masks.append(mask)
            yield image

    for pred in predictor.predict_many(images()):  # small images share forward passes
        mask = masks.popleft()
        confusion.update(
            torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
        )
    metrics = SegmentationMetrics(confusion.compute().numpy(), classes)
    if json_path is not None:
        payload = {"model": str(model_path), "images": len(pairs), **metrics.to_dict()}
        try:
            atomic_write_text(Path(json_path), json.dumps(payload, indent=2) + "\n")
        except OSError as e:
            raise DataError(f"cannot write {json_path}: {e.strerror or e}") from None
    return metrics


def evaluate(
    model_path: str | Path,
    images: str | Path,
    masks: str | Path,
    device: str | None = None,
    json_path: str | Path | None = None,
    tile: int | None = None,
    overlap: float | None = None,
    blend: str | None = None,
    tta: str | None = None,
    batch_size: int | None = None,
) -> SegmentationMetrics:
    """Per-class IoU/Dice/precision/recall of a ``.ckpt`` or ``.onnx`` model on a folder pair.

    Images and masks pair by stem (as in training); options left at ``None`` take the model's
    stored predict defaults. With ``json_path`` the metrics are also written there (atomically).
    """
    from segkit.data.dataset import find_pairs

    pairs = find_pairs(Path(images), Path(masks))
    return evaluate_pairs(
        model_path,
        pairs,
        device=device,
        json_path=json_path,
        tile=tile,
        overlap=overlap,
        blend=blend,
        tta=tta,
        batch_size=batch_size,
    )
