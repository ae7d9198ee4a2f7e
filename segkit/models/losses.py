"""The training loss: a weighted sum of segmentation_models_pytorch losses.

Every term is built in smp's multiclass mode with ``ignore_index``, so void / padded pixels never
contribute; the weights come from ``LossConfig`` and a weight of 0 leaves a term out.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from segmentation_models_pytorch import losses as smp_losses
from torch import nn

from segkit.config import LossConfig

MODE = smp_losses.MULTICLASS_MODE

# name in LossConfig -> factory(ignore_index) of an smp (or torch) loss on (N,K,H,W) logits, (N,H,W) labels
LOSS_FACTORIES: dict[str, Callable[[int], nn.Module]] = {
    "dice": lambda ignore: smp_losses.DiceLoss(MODE, from_logits=True, ignore_index=ignore),
    "ce": lambda ignore: nn.CrossEntropyLoss(ignore_index=ignore),
    "focal": lambda ignore: smp_losses.FocalLoss(MODE, ignore_index=ignore),
    "lovasz": lambda ignore: smp_losses.LovaszLoss(MODE, ignore_index=ignore, from_logits=True),
    "tversky": lambda ignore: smp_losses.TverskyLoss(MODE, from_logits=True, ignore_index=ignore),
    "jaccard": lambda ignore: smp_losses.JaccardLoss(MODE, from_logits=True, ignore_index=ignore),
}


class WeightedLoss(nn.Module):
    """``sum(weight * term(logits, target))`` over the enabled terms.

    ``logits`` is ``(N, K, H, W)`` float, ``target`` ``(N, H, W)`` int64 with ``ignore_index``
    marking pixels to skip. A batch whose pixels are all ignored gives a zero loss that still
    touches every logit (so DDP sees a gradient for every parameter) instead of cross-entropy's NaN.
    """

    def __init__(self, terms: dict[str, tuple[float, nn.Module]], ignore_index: int) -> None:
        super().__init__()
        self.weights = {name: weight for name, (weight, _) in terms.items()}
        self.terms = nn.ModuleDict({name: module for name, (_, module) in terms.items()})
        self.ignore_index = ignore_index
        self.last_terms: dict[str, torch.Tensor] = {}  # detached per-term values, for logging

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        target = target.long()
        if not bool((target != self.ignore_index).any()):
            return logits.sum() * 0.0
        logits = logits.float()  # losses in fp32 even under autocast
        total = logits.new_zeros(())
        self.last_terms = {}
        for name, term in self.terms.items():
            value = term(logits, target)
            self.last_terms[name] = value.detach()
            total = total + self.weights[name] * value
        return total


def build_loss(loss: LossConfig, num_classes: int, ignore_index: int) -> nn.Module:
    """The weighted sum of the losses whose weight in ``loss`` is > 0 (see :class:`WeightedLoss`).

    ``num_classes`` is the number of logit channels; every term uses smp's multiclass mode.
    """
    del num_classes  # every term infers K from the logits; kept in the signature for clarity
    weights = loss.model_dump()
    terms = {
        name: (float(w), LOSS_FACTORIES[name](ignore_index)) for name, w in weights.items() if w > 0
    }
    return WeightedLoss(terms, ignore_index)
