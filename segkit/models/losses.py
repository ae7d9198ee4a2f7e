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
    (never a class index) marking pixels to skip. A batch whose pixels are all ignored gives a zero
    loss with zero gradients that still touches every logit (so DDP sees a gradient for every
    parameter) instead of cross-entropy's NaN. There is no Python branch on the data: a GPU would
    otherwise stop and wait for the host at every step.
    """

    def __init__(self, terms: dict[str, tuple[float, nn.Module]], ignore_index: int) -> None:
        super().__init__()
        self.weights = {name: weight for name, (weight, _) in terms.items()}
        self.terms = nn.ModuleDict({name: module for name, (_, module) in terms.items()})
        self.ignore_index = ignore_index
        # This batch's detached term values, for logging.
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()  # losses in fp32 even under autocast
        counted = (target != self.ignore_index).any()  # stays on the device
        # An all-ignored batch gets one stand-in pixel of class 0, so that no term divides by zero
        # (cross-entropy and focal would give NaN), and is then weighted by 0.
        flat = target.reshape(-1).long().clone()
        flat[0] = torch.where(counted, flat[0], 0)
        target = flat.view(target.shape)
        scale = counted.to(logits.dtype)
        total = logits.new_zeros(())
        last_terms = {}
        for name, term in self.terms.items():
            value = term(logits, target) * scale
            last_terms[name] = value.detach()
            total = total + self.weights[name] * value
        self.last_terms = last_terms
        return total


def build_loss(loss: LossConfig, num_classes: int, ignore_index: int) -> nn.Module:
    """The weighted sum of the losses whose weight in ``loss`` is > 0 (see :class:`WeightedLoss`).

    ``num_classes`` is the number of logit channels; every term uses smp's multiclass mode.
    """
    del num_classes  # every term infers K from the logits; kept in the signature for clarity
    weights = loss.term_weights()
    terms = {
        name: (float(w), LOSS_FACTORIES[name](ignore_index)) for name, w in weights.items() if w > 0
    }
    return WeightedLoss(terms, ignore_index)
