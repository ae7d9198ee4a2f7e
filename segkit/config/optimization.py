"""The ``loss``, ``optimizer`` and ``scheduler`` sections: what training minimises and how it
steps."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from segkit.config.base import Section


class LossConfig(Section):
    """Weights of the smp losses summed into the training loss; 0 disables a term."""

    dice: float = Field(1.0, ge=0, description="Dice loss weight.")
    ce: float = Field(
        1.0,
        ge=0,
        description="Cross-entropy weight (softmax over the class outputs; binary models have 2 outputs too).",
    )
    focal: float = Field(0.0, ge=0, description="Focal loss weight.")
    lovasz: float = Field(0.0, ge=0, description="Lovasz hinge/softmax weight.")
    tversky: float = Field(0.0, ge=0, description="Tversky loss weight.")
    jaccard: float = Field(0.0, ge=0, description="Jaccard (soft IoU) loss weight.")
    deep_supervision: bool = Field(
        False,
        description="Also supervise the decoder's intermediate stages through auxiliary heads "
        "(training only; Unet, MAnet, Linknet).",
    )

    def term_weights(self) -> dict[str, float]:
        """The weight of each loss term (every field but the ``deep_supervision`` switch)."""
        return self.model_dump(exclude={"deep_supervision"})

    @model_validator(mode="after")
    def _some_term(self) -> LossConfig:
        if not any(v > 0 for v in self.term_weights().values()):
            raise ValueError("at least one loss weight must be > 0")
        return self


class OptimizerConfig(Section):
    """The optimiser."""

    name: Literal["adamw", "adam", "sgd"] = Field("adamw", description="Optimiser.")
    lr: float = Field(1.0e-3, gt=0, description="Peak learning rate.")
    weight_decay: float = Field(1.0e-4, ge=0, description="Weight decay.")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum (sgd only).")
    nesterov: bool = Field(False, description="Nesterov momentum (sgd only).")
    ema_decay: float | None = Field(
        None,
        gt=0,
        lt=1,
        description="Keep an exponential moving average of the weights with this decay "
        "(validated, checkpointed and exported instead of the raw weights); null disables it.",
    )


class SchedulerConfig(Section):
    """Learning-rate schedule, stepped every optimiser step."""

    name: Literal["cosine", "poly", "constant"] = Field(
        "cosine", description="cosine decay, poly (power `power`) decay, or constant."
    )
    warmup_epochs: float = Field(1.0, ge=0, description="Linear warm-up length in epochs.")
    power: float = Field(0.9, gt=0, description="Exponent of the poly schedule.")
    min_lr_ratio: float = Field(
        0.0, ge=0, le=1, description="Final learning rate as a fraction of `optimizer.lr`."
    )
