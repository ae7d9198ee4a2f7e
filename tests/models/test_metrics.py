"""Metrics against a hand-computed confusion matrix: ignore_index, absent classes, macro vs micro."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from rich.console import Console

from segkit.models.metrics import ConfusionMatrix, SegmentationMetrics

CLASSES = ["a", "b", "c", "d"]
IGNORE = 255
# 8 pixels; two are ignored (one of them *predicted* as c, which must not count).
TARGET = torch.tensor([[[0, 0, 0, 1], [1, IGNORE, IGNORE, 0]]])
PRED = torch.tensor([[[0, 0, 1, 1], [0, 2, 1, 3]]])
# counted (truth, pred): (0,0) (0,0) (0,1) (1,1) (1,0) (0,3)
EXPECTED = np.array([[2, 1, 0, 1], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0]])


def _metrics() -> SegmentationMetrics:
    cm = ConfusionMatrix(len(CLASSES), ignore_index=IGNORE)
    cm.update(PRED, TARGET)
    return SegmentationMetrics(cm.compute().numpy(), CLASSES)


def test_confusion_matrix_drops_ignored_pixels_and_accumulates():
    cm = ConfusionMatrix(len(CLASSES), ignore_index=IGNORE)
    cm.update(PRED, TARGET)
    np.testing.assert_array_equal(cm.compute().numpy(), EXPECTED)
    cm.update(PRED, TARGET)  # a second batch adds up (dataset-level, not per-batch means)
    np.testing.assert_array_equal(cm.compute().numpy(), 2 * EXPECTED)
    assert cm.compute().dtype == torch.int64


def test_confusion_matrix_takes_logits():
    logits = torch.nn.functional.one_hot(PRED, len(CLASSES)).permute(0, 3, 1, 2).float() * 5
    cm = ConfusionMatrix(len(CLASSES), ignore_index=IGNORE)
    cm.update(logits, TARGET)
    np.testing.assert_array_equal(cm.compute().numpy(), EXPECTED)


def test_confusion_matrix_state_is_summed_across_processes():
    cm = ConfusionMatrix(len(CLASSES), ignore_index=IGNORE)
    assert cm._reductions["confmat"].__name__ == "dim_zero_sum"


def test_per_class_values_match_hand_computation():
    m = _metrics()
    # class a: TP 2, FP 1 (b->a), FN 2 (a->b, a->d); class b: TP 1, FP 1, FN 1
    np.testing.assert_allclose(m.iou[:2], [2 / 5, 1 / 3])
    assert math.isnan(m.iou[2])  # c: in neither truth nor (counted) prediction
    assert m.iou[3] == 0.0  # d: predicted but absent from the truth counts as a miss
    np.testing.assert_allclose(m.dice[:2], [4 / 7, 2 / 4])
    np.testing.assert_allclose(m.precision[[0, 1, 3]], [2 / 3, 1 / 2, 0.0])
    np.testing.assert_allclose(m.recall[:2], [2 / 4, 1 / 2])
    assert m.recall[3] == 0.0  # d: predicted, never in the truth (scikit-learn's zero_division=0)
    assert math.isnan(m.recall[2]) and math.isnan(m.precision[2])  # c: in neither
    np.testing.assert_allclose(m.pixel_share, [4 / 6, 2 / 6, 0, 0])


def test_a_class_never_predicted_has_precision_0_in_the_macro_mean():
    # rows = truth, columns = prediction: class 1 is in the truth (3 pixels) but never predicted
    m = SegmentationMetrics(np.array([[5, 0, 1], [3, 0, 0], [1, 0, 2]]), ["x", "y", "z"])
    np.testing.assert_allclose(m.precision, [5 / 9, 0.0, 2 / 3])
    np.testing.assert_allclose(m.recall, [5 / 6, 0.0, 2 / 3])
    assert m.mprecision == pytest.approx((5 / 9 + 0 + 2 / 3) / 3)
    assert m.mrecall == pytest.approx((5 / 6 + 0 + 2 / 3) / 3)
    summary = m.to_dict()
    assert summary["per_class"]["y"]["precision"] == 0.0
    assert summary["mPrecision"] == pytest.approx(m.mprecision)
    console = Console(width=200, record=True)
    console.print(m.table())
    text = console.export_text()
    assert f"{100 * m.mprecision:.2f}" in text and "never predicted has precision 0" in text


def test_summaries_macro_skips_nan_micro_and_accuracy_are_separate():
    m = _metrics()
    assert m.miou == pytest.approx(
        (2 / 5 + 1 / 3 + 0.0) / 3
    )  # NaN class skipped, not counted as 1 or 0
    assert m.micro_iou == pytest.approx(3 / (3 + 3 + 3))
    assert m.pixel_accuracy == pytest.approx(3 / 6)
    assert m.total_pixels == 6


def test_table_shows_dash_for_absent_class_and_labels_summaries():
    console = Console(width=140, record=True)
    console.print(_metrics().table("val"))
    text = console.export_text()
    row_c = next(line for line in text.splitlines() if line.strip("│ ").startswith("c "))
    assert "—" in row_c
    assert "mean (macro)" in text and "micro IoU" in text and "pixel accuracy" in text
    assert "40.00" in text  # IoU of a as a percentage


def test_to_dict_is_strict_json_and_round_trips():
    m = _metrics()
    d = m.to_dict()
    text = json.dumps(d, allow_nan=False)  # NaN became null
    assert d["per_class"]["c"]["iou"] is None
    assert d["mIoU"] == pytest.approx(m.miou)
    back = SegmentationMetrics.from_dict(json.loads(text))
    np.testing.assert_array_equal(back.matrix, m.matrix)
    assert back.classes == CLASSES


def test_empty_matrix_gives_nan_not_errors():
    m = SegmentationMetrics(np.zeros((2, 2), np.int64), ["x", "y"])
    assert math.isnan(m.miou) and math.isnan(m.pixel_accuracy)
    assert m.to_dict()["mIoU"] is None


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="does not match 3 classes"):
        SegmentationMetrics(np.zeros((2, 2), np.int64), ["x", "y", "z"])
