"""Deep supervision: auxiliary 1x1 heads on a decoder's intermediate stages, for training only.

Each stage's features (recorded by forward hooks while the network trains) get their own small
head and the loss against the mask resized to that stage (nearest, so ignored pixels stay
ignored), as nnU-Net does. The heads live beside the network, not in it: checkpoints keep them
under their own prefix, and the bundle, the export and inference use the plain network.
"""

from __future__ import annotations

from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from segkit.errors import ConfigError

AUX_STAGES = 3
"""Decoder stages below full resolution that get a head (the coarsest are left out)."""


def _out_channels(block: nn.Module) -> int:
    convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


class DeepSupervision(nn.Module):
    """Auxiliary heads on the last ``AUX_STAGES`` intermediate stages of ``network.decoder``.

    Needs a decoder whose stages are a ``blocks`` list run coarse to fine (smp's Unet, MAnet,
    Linknet). ``loss(main_loss, masks, loss_fn)`` adds the stages' losses, weighted 1/2, 1/4, 1/8
    of the full-resolution output's and normalised to sum to one.
    """

    def __init__(self, network: nn.Module, num_classes: int, arch: str) -> None:
        super().__init__()
        blocks = getattr(getattr(network, "decoder", None), "blocks", None)
        if not isinstance(blocks, nn.ModuleList) or len(blocks) < 2:
            raise ConfigError(
                f"loss.deep_supervision: the {arch} decoder has no list of stages to supervise "
                "(use Unet, MAnet or Linknet, or set loss.deep_supervision: false)"
            )
        stages = list(blocks)[:-1][-AUX_STAGES:]  # intermediate stages, finest last
        self.heads = nn.ModuleList(
            nn.Conv2d(_out_channels(b), num_classes, kernel_size=1) for b in stages
        )
        self._features: list[torch.Tensor | None] = [None] * len(stages)
        for i, block in enumerate(stages):
            # A partial of a bound method, not a closure: a deep copy of the network (the EMA
            # callback's) then records into the copy's heads, not into these.
            block.register_forward_hook(partial(self._record, i))

    def _record(self, index: int, module: nn.Module, args: object, output: torch.Tensor) -> None:
        self._features[index] = output if module.training else None

    def loss(
        self,
        main_loss: torch.Tensor,
        masks: torch.Tensor,
        loss_fn: nn.Module,
    ) -> torch.Tensor:
        """The deep-supervised loss of the forward pass just run (in training mode)."""
        total, weight_sum = main_loss, 1.0
        # finest stage first: weights 1/2, 1/4, 1/8
        for depth, (head, features) in enumerate(
            zip(reversed(self.heads), reversed(self._features), strict=True), start=1
        ):
            if features is None:
                continue
            logits = head(features)
            target = F.interpolate(masks[:, None].float(), size=logits.shape[-2:], mode="nearest")
            weight = 0.5**depth
            total = total + weight * loss_fn(logits, target[:, 0].long())
            weight_sum += weight
        self._features = [None] * len(self._features)
        return total / weight_sum
