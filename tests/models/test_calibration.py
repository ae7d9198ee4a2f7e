"""Temperature scaling: the fit, ECE/NLL, and an over-confident model made honest."""

from __future__ import annotations

import math

import pytest
import torch

from segkit.engine.uncertainty import apply_temperature
from segkit.models.calibration import (
    CalibrationStats,
    PixelSample,
    fit_temperature,
)


def _sampled(n: int = 20000, k: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and targets drawn from softmax(logits): calibrated by construction."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, k, generator=g) * 1.5
    targets = torch.multinomial(torch.softmax(logits, 1), 1, generator=g).squeeze(1)
    return logits, targets


def _stats(probs_nk: torch.Tensor, targets: torch.Tensor) -> CalibrationStats:
    stats = CalibrationStats()
    probs = probs_nk.T[:, :, None]  # (K, N, 1): a block of N x 1 pixels
    stats.update(probs, targets[:, None], torch.ones(len(targets), 1, dtype=torch.bool))
    return stats


def test_calibrated_logits_fit_a_temperature_near_one():
    logits, targets = _sampled()
    assert fit_temperature(logits, targets) == pytest.approx(1.0, abs=0.08)


def test_over_confident_model_gets_t_above_one_and_lower_ece_and_nll():
    logits, targets = _sampled()
    over = logits * 3  # the same ranking, three times too sure
    t = fit_temperature(over, targets)
    assert t > 2.5
    raw = torch.softmax(over, 1)
    before = _stats(raw, targets)
    after = _stats(apply_temperature(raw.T[:, :, None].clone(), t)[:, :, 0].T, targets)
    assert after.ece < before.ece / 3
    assert after.nll < before.nll
    assert torch.equal(torch.softmax(over / t, 1).argmax(1), raw.argmax(1))


def test_ece_and_nll_of_known_cases():
    # every pixel 80% sure of class 0; half are class 0: ECE |0.5 - 0.8| = 0.3
    probs = torch.tensor([[0.8, 0.2]]).repeat(10, 1)
    targets = torch.tensor([0, 1] * 5)
    stats = _stats(probs, targets)
    assert stats.ece == pytest.approx(0.3)
    assert stats.nll == pytest.approx(-(math.log(0.8) + math.log(0.2)) / 2)
    assert _stats(torch.eye(3), torch.arange(3)).ece == pytest.approx(0.0)
    empty = CalibrationStats()
    empty.update(torch.rand(2, 3, 3), torch.zeros(3, 3, dtype=torch.long), torch.zeros(3, 3).bool())
    assert math.isnan(empty.ece) and math.isnan(empty.nll)


def test_pixel_sample_is_bounded_and_fits():
    logits, targets = _sampled(n=50000)
    sample = PixelSample(size=4000)
    probs = torch.softmax(logits * 2, 1)
    for start in range(0, 50000, 5000):  # ten blocks of 5000 x 1 pixels
        part = slice(start, start + 5000)
        sample.add(probs[part].T[:, :, None], targets[part, None], torch.ones(5000, 1).bool())
        assert sum(len(t) for t in sample._targets) <= 2 * 4000
    assert sample.fit() == pytest.approx(2.0, rel=0.15)


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="expected"):
        fit_temperature(torch.zeros(4, 3, 2), torch.zeros(4, dtype=torch.long))
    assert fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0
