"""``segkit evaluate``: per-class metrics of a model on image/mask pairs.

Predictions come from :class:`segkit.engine.predictor.Predictor` (the engine ``predict`` uses,
so a ``.ckpt`` and its ``.onnx`` export are evaluated the same way, tiles and TTA included); masks
are decoded with the model's own data settings (classes, encoding, palette, ignore_index).
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from segkit.config import DataConfig
from segkit.errors import DataError, ModelError
from segkit.models.metrics import ConfusionMatrix, SegmentationMetrics
from segkit.utils import atomic_write_text


def model_data_config(model_path: Path, predictor: Any) -> DataConfig:
    """The data section the model was trained with (its card's), else, for an ONNX file without
    segkit metadata, index masks of its classes."""
    card = predictor.card
    if card.data is not None:
        return card.data
    try:
        return DataConfig(
            classes=list(card.classes), ignore_index=card.ignore_index, in_channels=card.in_channels
        )
    except ValueError as e:
        raise ModelError(f"{model_path}: cannot describe its masks ({e})") from None


def _load_pair(
    image_path: Path, mask_path: Path, data: DataConfig
) -> tuple[np.ndarray, np.ndarray]:
    from segkit.data.dataset import check_same_size
    from segkit.data.masks import load_mask
    from segkit.io.images import LOSSY_SUFFIXES, read_image

    image = read_image(image_path, in_channels=data.in_channels, max_pixels=data.max_image_pixels)
    try:
        mask = load_mask(mask_path, data)
    except DataError as e:
        if mask_path.suffix.lower() not in LOSSY_SUFFIXES:
            raise
        raise DataError(
            f"{e} — JPEG is lossy and leaves values that are no class at edges: save masks as PNG"
        ) from None
    check_same_size(image_path, image.shape, mask_path, mask.shape)
    return image, mask


def scoring_predictor(
    model_path: str | Path, device: str | None = None, **options: Any
) -> tuple[Any, DataConfig]:
    """The :class:`~segkit.engine.predictor.Predictor` of ``model_path`` at temperature 1 (the
    network's own probabilities: scorers apply the model's temperature themselves, to report
    both) and the data settings its masks are read with. ``options``: tile, overlap, ..."""
    from segkit.engine.predictor import Predictor

    model_path = Path(model_path)
    predictor = Predictor.from_path(model_path, device=device, temperature=1.0, **options)
    data = model_data_config(model_path, predictor)
    if len(predictor.card.classes) != data.num_classes:
        raise ModelError(
            f"{model_path}: the model has {len(predictor.card.classes)} classes but its data config lists {data.num_classes}"
        )
    return predictor, data


def scored_images(
    predictor: Any, pairs: Sequence[tuple[Path, Path]], data: DataConfig
) -> Iterator[tuple[np.ndarray, Iterator[tuple[int, int, torch.Tensor]]]]:
    """``(mask, blocks)`` of every pair in order: the ``(H, W)`` mask and the image's
    ``(row, col, (K, h, w) probabilities)`` blocks (:meth:`Predictor.blocks_many`; use them
    before asking for the next image). Images are decoded ahead (readahead.py)."""
    from segkit.io.readahead import default_workers, header_pixels, read_ahead

    masks: deque[np.ndarray] = deque()  # of the images the predictor has taken, not yet scored

    def images() -> Iterator[np.ndarray]:
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

    for blocks in predictor.blocks_many(images()):  # small images share forward passes
        yield masks.popleft(), blocks


class EvaluationMetrics(SegmentationMetrics):
    """:class:`SegmentationMetrics` plus how well the probabilities are calibrated: ECE and NLL
    before and after the model's temperature scaling (:mod:`segkit.models.calibration`)."""

    def __init__(
        self, matrix: np.ndarray, classes: list[str], calibration: dict[str, Any] | None = None
    ) -> None:
        super().__init__(matrix, classes)
        self.calibration = calibration

    def table(self, title: str | None = None) -> Any:
        """The metrics table; its caption ends with the calibration line."""
        t = super().table(title)
        c = self.calibration
        if c and c["ece_before"] is not None:
            t.caption = (
                f"{t.caption}\ncalibration ({c['bins']} bins): ECE {100 * c['ece_before']:.2f}% -> "
                f"{100 * c['ece_after']:.2f}%, NLL {c['nll_before']:.4f} -> {c['nll_after']:.4f} "
                f"(temperature {c['temperature']:.3g})"
            )
        return t

    def to_dict(self) -> dict[str, Any]:
        """The metrics' JSON, with ``calibration`` (temperature, ECE/NLL before and after)."""
        return {**super().to_dict(), "calibration": self.calibration}


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
) -> EvaluationMetrics:
    """Metrics of ``model_path`` on explicit ``(image, mask)`` pairs (train uses its val split)."""
    from segkit.engine.labels import HostLabels, label_dtype
    from segkit.engine.uncertainty import apply_temperature
    from segkit.models.calibration import CalibrationStats, calibration_summary

    model_path = Path(model_path)
    if not pairs:
        raise DataError("no image/mask pairs to evaluate")
    predictor, data = scoring_predictor(
        model_path, device, tile=tile, overlap=overlap, blend=blend, tta=tta, batch_size=batch_size
    )
    classes = list(predictor.card.classes)
    temperature = predictor.card.temperature
    confusion = ConfusionMatrix(
        len(classes), ignore_index=data.ignore_index, sync=False
    )  # may run on rank 0 only
    before, after = CalibrationStats(), CalibrationStats()
    for mask, blocks in scored_images(predictor, pairs, data):
        pred = np.empty(mask.shape, dtype=label_dtype(len(classes)))
        labels = HostLabels(pred)
        for row, col, probs in blocks:
            labels.add(row, col, probs)
            window = mask[row : row + probs.shape[1], col : col + probs.shape[2]]
            target = torch.from_numpy(window.astype(np.int64))
            valid = (target != data.ignore_index) & (target >= 0) & (target < len(classes))
            before.update(probs, target, valid)
            if temperature != 1.0:
                probs = apply_temperature(probs.clone(), temperature)
            after.update(probs, target, valid)
        labels.flush()
        confusion.update(
            torch.from_numpy(pred.astype(np.int64)), torch.from_numpy(mask.astype(np.int64))
        )
    metrics = EvaluationMetrics(
        confusion.compute().numpy(), classes, calibration_summary(before, after, temperature)
    )
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
) -> EvaluationMetrics:
    """Per-class IoU/Dice/precision/recall, and ECE/NLL, of a ``.ckpt`` or ``.onnx`` model on a
    folder pair.

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


def fit_checkpoint_temperature(
    checkpoint: str | Path, pairs: Iterable[tuple[Path, Path]], device: str | None = None
) -> float:
    """Fit the temperature of ``checkpoint`` on image/mask ``pairs`` (the validation set) through
    the predictor (tiles, blending and TTA as predict runs them) and store it in the checkpoint."""
    from segkit.bundle import set_temperature
    from segkit.models.calibration import PixelSample

    predictor, data = scoring_predictor(checkpoint, device)
    sample = PixelSample()
    for mask, blocks in scored_images(predictor, list(pairs), data):
        for row, col, probs in blocks:
            target = torch.from_numpy(
                mask[row : row + probs.shape[1], col : col + probs.shape[2]].astype(np.int64)
            )
            valid = (target != data.ignore_index) & (target < probs.shape[0])
            sample.add(probs, target, valid)
    temperature = sample.fit()
    set_temperature(checkpoint, temperature)
    return temperature
