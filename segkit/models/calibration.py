"""Temperature scaling (Guo et al., 2017) and how well probabilities are calibrated.

One scalar ``T`` divides the logits: ``softmax(z / T)``. It is fitted after training by minimising
the negative log-likelihood of the validation pixels (``torch.optim.LBFGS`` on ``log T``), stored
in the bundle (``hyper_parameters["temperature"]``) and the ONNX metadata, and applied at predict
time to the blended probabilities (:func:`segkit.engine.uncertainty.apply_temperature`), which
never changes the arg-max. The logits fitted here are the log of the probabilities the predictor
blends, the same quantity the temperature is applied to at predict time.

:class:`CalibrationStats` accumulates the expected calibration error (15 equal-width confidence
bins, as in Guo et al.) and the NLL over any number of blocks without keeping them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

ECE_BINS = 15
FIT_PIXELS = 1 << 21
"""Validation pixels the temperature is fitted on at most (a uniform sample): one scalar needs
far fewer, and the sample's logits are held in memory."""


def log_probs(probs: torch.Tensor) -> torch.Tensor:
    """``log p`` of ``(K, ...)`` probabilities, finite where a probability is 0: the logits of
    the probabilities up to a per-pixel constant (which softmax ignores)."""
    return probs.float().clamp_min(torch.finfo(torch.float32).tiny).log()


def fit_temperature(logits: torch.Tensor, targets: torch.Tensor, max_iter: int = 100) -> float:
    """The ``T > 0`` minimising the NLL of ``softmax(logits / T)``; ``logits`` ``(N, K)`` float,
    ``targets`` ``(N,)`` int64 class indices (ignored pixels already dropped)."""
    if logits.ndim != 2 or targets.shape != logits.shape[:1]:
        raise ValueError(
            f"expected (N, K) logits and (N,) targets, got {logits.shape} and {targets.shape}"
        )
    if len(targets) == 0:
        return 1.0
    logits, targets = logits.detach().double(), targets.long()
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)  # T = exp(log_t) stays > 0
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = torch.nn.functional.cross_entropy(logits / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    t = float(log_t.detach().exp())
    return t if math.isfinite(t) and t > 0 else 1.0


class PixelSample:
    """A uniform random sample of at most ``size`` ``(log-probabilities, target)`` pixels drawn from
    any number of blocks: each pixel gets a random key and those under a falling threshold stay."""

    def __init__(self, size: int = FIT_PIXELS, seed: int = 0) -> None:
        self.size = size
        self.threshold = 1.0
        self._generator = torch.Generator().manual_seed(seed)
        self._logits: list[torch.Tensor] = []
        self._targets: list[torch.Tensor] = []
        self._keys: list[torch.Tensor] = []
        self._count = 0

    def add(self, probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
        """``(K, h, w)`` probabilities, ``(h, w)`` targets and the mask of pixels that count."""
        logits = log_probs(probs.cpu()).flatten(1).T[valid.flatten()]  # (pixels, K)
        keys = torch.rand(len(logits), generator=self._generator)
        keep = keys < self.threshold
        self._logits.append(logits[keep])
        self._targets.append(target.flatten()[valid.flatten()][keep])
        self._keys.append(keys[keep])
        self._count += int(keep.sum())
        if self._count > 2 * self.size:
            self._shrink()

    def _shrink(self) -> None:
        keys = torch.cat(self._keys)
        self.threshold = float(keys.kthvalue(self.size).values)
        keep = keys <= self.threshold
        self._logits, self._targets = (
            [torch.cat(self._logits)[keep]],
            [torch.cat(self._targets)[keep]],
        )
        self._keys, self._count = [keys[keep]], int(keep.sum())

    def fit(self) -> float:
        """The temperature fitted on the sample (1.0 for an empty one)."""
        if not self._logits:
            return 1.0
        return fit_temperature(torch.cat(self._logits), torch.cat(self._targets))


@dataclass
class CalibrationStats:
    """Running ECE and NLL of probabilities against targets; feed blocks with :meth:`update`."""

    bins: int = ECE_BINS

    def __post_init__(self) -> None:
        self.count = torch.zeros(self.bins, dtype=torch.float64)
        self.confidence = torch.zeros(self.bins, dtype=torch.float64)
        self.correct = torch.zeros(self.bins, dtype=torch.float64)
        self.nll_sum = 0.0

    def update(self, probs: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
        """``(K, h, w)`` probabilities, ``(h, w)`` int64 targets, ``(h, w)`` bool pixels that count."""
        target, valid = target.to(probs.device), valid.to(probs.device)
        probs = probs.float()
        conf, pred = probs.max(0)
        conf, pred, t = conf[valid], pred[valid], target[valid]
        if t.numel() == 0:
            return
        true_p = probs.flatten(1)[:, valid.flatten()].gather(0, t[None]).squeeze(0)
        self.nll_sum += float(
            -true_p.clamp_min(torch.finfo(torch.float32).tiny).log().double().sum()
        )
        # bin b holds confidences in (b/B, (b+1)/B]
        idx = (conf.double() * self.bins).ceil().long().clamp_(1, self.bins) - 1
        self.count += torch.bincount(idx, minlength=self.bins).double().cpu()
        self.confidence += torch.bincount(idx, conf.double(), minlength=self.bins).cpu()
        self.correct += torch.bincount(idx, (pred == t).double(), minlength=self.bins).cpu()

    @property
    def pixels(self) -> int:
        return int(self.count.sum())

    @property
    def ece(self) -> float:
        """Expected calibration error: the pixel-weighted mean of |accuracy - confidence| per bin."""
        n = self.count.sum()
        if n == 0:
            return math.nan
        return float((self.correct - self.confidence).abs().sum() / n)

    @property
    def nll(self) -> float:
        """Mean negative log-likelihood of the true class."""
        return self.nll_sum / self.pixels if self.pixels else math.nan


def calibration_summary(
    before: CalibrationStats, after: CalibrationStats, temperature: float
) -> dict[str, Any]:
    """JSON-able ECE and NLL before and after temperature scaling."""

    def value(v: float) -> float | None:
        return None if math.isnan(v) else float(v)

    return {
        "temperature": float(temperature),
        "bins": before.bins,
        "ece_before": value(before.ece),
        "ece_after": value(after.ece),
        "nll_before": value(before.nll),
        "nll_after": value(after.nll),
    }
