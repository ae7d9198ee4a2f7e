"""Per-pixel uncertainty from class probabilities, and temperature scaling of probabilities.

Both work on ``(K, h, w)`` probabilities wherever they are (GPU or CPU), so the streaming stitcher's
blocks become maps without leaving the device. The maps:

- ``entropy``: normalised predictive entropy ``-sum_k p_k log p_k / log K``, in [0, 1]: 0 where one
  class takes all the probability, 1 where every class is equally likely;
- ``confidence``: the largest class probability, in [1/K, 1].
"""

from __future__ import annotations

import math

import numpy as np
import torch

UNCERTAINTY_MAPS = ("entropy", "confidence")


def _as_tensor(probs: torch.Tensor | np.ndarray) -> torch.Tensor:
    return probs if isinstance(probs, torch.Tensor) else torch.from_numpy(np.asarray(probs))


def normalised_entropy(probs: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(K, h, w)`` probabilities -> ``(h, w)`` float32 entropy divided by ``log K`` (in [0, 1])."""
    p = _as_tensor(probs).float()
    k = p.shape[0]
    if k < 2:
        return torch.zeros(p.shape[1:], dtype=torch.float32, device=p.device)
    # entr(0) = 0: a class with no probability adds nothing
    return (torch.special.entr(p).sum(0) / math.log(k)).clamp_(0.0, 1.0)


def max_probability(probs: torch.Tensor | np.ndarray) -> torch.Tensor:
    """``(K, h, w)`` probabilities -> ``(h, w)`` float32 probability of the arg-max class."""
    return _as_tensor(probs).float().amax(0)


MAP_FUNCTIONS = {"entropy": normalised_entropy, "confidence": max_probability}


def apply_temperature(probs: torch.Tensor, temperature: float) -> torch.Tensor:
    """Temperature-scaled ``(..., K, h, w)`` probabilities along the class axis ``-3``, in place.

    ``softmax(z / T)`` computed from ``p = softmax(z)`` as ``p ** (1/T)`` renormalised, so it works
    on any head (logits, probabilities) and on blended tiles. A monotonic map of each pixel's
    probabilities: the arg-max class does not change. ``T == 1`` returns ``probs`` untouched.
    """
    if temperature == 1.0:
        return probs
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    # through logs: p ** (1/T) underflows to 0 for every class where all are small and T < 1
    logp = probs.clamp_min_(torch.finfo(probs.dtype).tiny).log_().div_(temperature)
    logp.sub_(logp.amax(dim=-3, keepdim=True)).exp_()
    return logp.div_(logp.sum(dim=-3, keepdim=True))
