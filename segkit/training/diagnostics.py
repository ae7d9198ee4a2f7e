"""What a user needs to hear after training: symptoms of a run that did not work, and what to try.

A 3-epoch run on a small dataset can end with a model that calls everything one class and an
unsettled validation loss, with nothing to say so; these checks name the symptom in one line each.
"""

from __future__ import annotations

import math

from segkit.models.metrics import SegmentationMetrics

LOSS_GAP = 2.0  # validation loss this many times the training loss is worth a warning


def never_predicted(metrics: SegmentationMetrics) -> list[str]:
    """One warning per class present in the validation truth but never predicted there."""
    predicted, present = metrics.matrix.sum(0), metrics.matrix.sum(1)
    return [
        f"class '{name}' is never predicted on the validation set ({int(n)} of its pixels there): "
        "train longer (trainer.max_time or max_epochs), add loss.dice, or oversample it "
        f"(data.rare_classes=[{name}] data.oversample=0.33)"
        for name, p, n in zip(metrics.classes, predicted, present, strict=True)
        if n > 0 and p == 0
    ]


def loss_gap(train_loss: float | None, val_loss: float | None) -> list[str]:
    """A warning when the validation loss is far above the training loss."""
    if train_loss is None or val_loss is None or not math.isfinite(val_loss):
        return []
    if val_loss <= LOSS_GAP * max(train_loss, 1e-6) or val_loss - train_loss < 0.1:
        return []
    return [
        f"validation loss {val_loss:.3g} is far above the training loss {train_loss:.3g}: the model "
        "overfits or has trained too briefly for its normalisation statistics to settle; train "
        "longer, add augmentation (augment.rotate, augment.elastic) or more images"
    ]


def training_warnings(
    metrics: SegmentationMetrics, train_loss: float | None, val_loss: float | None
) -> list[str]:
    """All warnings for a finished run: ``metrics`` of the best checkpoint on validation, and the
    last epoch's mean training and validation losses."""
    return never_predicted(metrics) + loss_gap(train_loss, val_loss)
