"""Segmentation metrics from one dataset-level confusion matrix.

Conventions (where peers differ): ignore_index pixels are dropped before counting; mIoU is the
macro mean over classes, and a class absent from both prediction and ground truth has IoU NaN and
is skipped in the mean (smp would count it as 1.0); micro IoU and pixel accuracy are reported
separately and labelled as such (torchgeo's default IoU is micro).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
from rich.table import Table
from torchmetrics.classification import MulticlassConfusionMatrix


class ConfusionMatrix(MulticlassConfusionMatrix):
    """A ``(K, K)`` int64 matrix (rows: ground truth, columns: prediction) summed over a dataset.

    ``update(preds, target)`` takes labels ``(N, H, W)`` or logits ``(N, K, H, W)`` and labels
    ``(N, H, W)``; pixels equal to ``ignore_index`` are dropped. The state is reduced with a sum
    across DDP processes when computed, so every process sees the whole validation set's matrix;
    ``sync=False`` keeps it local (a single process evaluating while others wait would deadlock).
    """

    def __init__(
        self, num_classes: int, ignore_index: int | None = None, sync: bool = True
    ) -> None:
        super().__init__(
            num_classes=num_classes,
            ignore_index=ignore_index,
            normalize=None,
            validate_args=False,
            sync_on_compute=sync,
        )


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` with NaN where ``den == 0`` (undefined, not zero)."""
    num = num.astype(np.float64)
    den = den.astype(np.float64)
    out = np.full(num.shape, np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _nanmean(values: np.ndarray) -> float:
    finite = values[~np.isnan(values)]
    return float(finite.mean()) if finite.size else math.nan


def _fmt(value: float, percent: bool = True) -> str:
    if value is None or math.isnan(value):
        return "—"
    return f"{100 * value:.2f}" if percent else f"{value:.4f}"


def _json(value: float) -> float | None:
    return None if math.isnan(value) else float(value)


@dataclass
class SegmentationMetrics:
    """Per-class and summary metrics of a confusion matrix ``(K, K)``, rows = ground truth."""

    matrix: np.ndarray
    classes: list[str]

    def __post_init__(self) -> None:
        self.matrix = np.asarray(self.matrix, dtype=np.int64)
        k = len(self.classes)
        if self.matrix.shape != (k, k):
            raise ValueError(
                f"confusion matrix shape {self.matrix.shape} does not match {k} classes"
            )

    @property
    def tp(self) -> np.ndarray:
        return np.diag(self.matrix)

    @property
    def fp(self) -> np.ndarray:
        return self.matrix.sum(0) - self.tp

    @property
    def fn(self) -> np.ndarray:
        return self.matrix.sum(1) - self.tp

    @property
    def total_pixels(self) -> int:
        """Counted pixels (ignore_index pixels excluded)."""
        return int(self.matrix.sum())

    @property
    def iou(self) -> np.ndarray:
        """Per-class IoU ``TP / (TP + FP + FN)``; NaN for a class in neither prediction nor truth."""
        return _ratio(self.tp, self.tp + self.fp + self.fn)

    @property
    def dice(self) -> np.ndarray:
        """Per-class Dice (F1) ``2TP / (2TP + FP + FN)``; NaN like IoU."""
        return _ratio(2 * self.tp, 2 * self.tp + self.fp + self.fn)

    @property
    def precision(self) -> np.ndarray:
        """``TP / (TP + FP)``; 0 for a class in the ground truth but never predicted (as
        scikit-learn's ``zero_division=0``), NaN for a class in neither."""
        return self._zero_where_seen(_ratio(self.tp, self.tp + self.fp))

    @property
    def recall(self) -> np.ndarray:
        """``TP / (TP + FN)``; 0 for a class predicted but absent from the ground truth, NaN for
        a class in neither."""
        return self._zero_where_seen(_ratio(self.tp, self.tp + self.fn))

    def _zero_where_seen(self, values: np.ndarray) -> np.ndarray:
        """Undefined ratios become 0 for classes in the prediction or the ground truth."""
        seen = (self.tp + self.fp + self.fn) > 0
        return np.where(np.isnan(values) & seen, 0.0, values)

    @property
    def mprecision(self) -> float:
        """Macro mean precision (never-predicted classes count as 0)."""
        return _nanmean(self.precision)

    @property
    def mrecall(self) -> float:
        """Macro mean recall (classes predicted but absent from the ground truth count as 0)."""
        return _nanmean(self.recall)

    @property
    def pixel_share(self) -> np.ndarray:
        """Share of the counted ground-truth pixels that belong to each class."""
        return _ratio(self.matrix.sum(1), np.full(len(self.classes), self.total_pixels))

    @property
    def miou(self) -> float:
        """Macro mean IoU over the classes whose IoU is defined."""
        return _nanmean(self.iou)

    @property
    def mdice(self) -> float:
        """Macro mean Dice over the classes whose Dice is defined."""
        return _nanmean(self.dice)

    @property
    def micro_iou(self) -> float:
        """Pixel-pooled IoU ``sum TP / sum (TP + FP + FN)`` (dominated by large classes)."""
        return float(
            _ratio(self.tp.sum(keepdims=True), (self.tp + self.fp + self.fn).sum(keepdims=True))[0]
        )

    @property
    def pixel_accuracy(self) -> float:
        """Correct pixels / counted pixels."""
        return float(_ratio(self.tp.sum(keepdims=True), np.array([self.total_pixels]))[0])

    def table(self, title: str | None = None) -> Table:
        """A rich table: one row per class (NaN shown as "—"), then the labelled summaries."""
        t = Table(title=title, title_justify="left")
        t.add_column("class")
        for name in ("IoU %", "Dice %", "precision %", "recall %", "pixels %"):
            t.add_column(name, justify="right")
        columns = (self.iou, self.dice, self.precision, self.recall, self.pixel_share)
        for i, name in enumerate(self.classes):
            t.add_row(name, *(_fmt(c[i]) for c in columns))
        t.add_section()
        t.add_row(
            "mean (macro)",
            _fmt(self.miou),
            _fmt(self.mdice),
            _fmt(self.mprecision),
            _fmt(self.mrecall),
            "",
            style="bold",
        )
        t.add_row("micro IoU (pixel-pooled)", _fmt(self.micro_iou), "", "", "", "")
        t.add_row("pixel accuracy", _fmt(self.pixel_accuracy), "", "", "", "")
        t.caption = (
            f"{self.total_pixels:,} pixels counted (ignore_index excluded); — = class in neither "
            "prediction nor ground truth; a class never predicted has precision 0 (and one "
            "never in the ground truth recall 0), counted so in the means"
        )
        return t

    def to_dict(self) -> dict[str, Any]:
        """JSON-able summary (NaN becomes null); :meth:`from_dict` reads it back."""
        per_class = {}
        for i, name in enumerate(self.classes):
            per_class[name] = {
                "iou": _json(self.iou[i]),
                "dice": _json(self.dice[i]),
                "precision": _json(self.precision[i]),
                "recall": _json(self.recall[i]),
                "pixel_share": _json(self.pixel_share[i]),
                "pixels": int(self.matrix[i].sum()),
            }
        return {
            "mIoU": _json(self.miou),
            "mDice": _json(self.mdice),
            "mPrecision": _json(self.mprecision),
            "mRecall": _json(self.mrecall),
            "micro_IoU": _json(self.micro_iou),
            "pixel_accuracy": _json(self.pixel_accuracy),
            "total_pixels": self.total_pixels,
            "classes": list(self.classes),
            "per_class": per_class,
            "confusion_matrix": self.matrix.tolist(),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SegmentationMetrics:
        """Rebuild from :meth:`to_dict` output (the confusion matrix holds everything)."""
        return cls(
            matrix=np.asarray(data["confusion_matrix"], dtype=np.int64),
            classes=list(data["classes"]),
        )
