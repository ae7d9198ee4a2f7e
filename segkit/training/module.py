"""The LightningModule: model, loss, metrics, optimiser and schedule from one SegkitConfig.

torchgeo-style: ``__init__`` stores the bundle facts with ``save_hyperparameters`` (so every
checkpoint Lightning writes *is* a segkit bundle that ``torch.load(weights_only=True)`` opens),
then ``configure_models`` / ``configure_losses`` / ``configure_metrics``. Training steps on
augmented patches; validation runs whole images through the predictor, as ``segkit predict`` does.
No method is called ``configure_model`` (singular): Lightning would call it on every
fit/validate/predict and rebuild the network over loaded weights.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EMAWeightAveraging, Timer, WeightAveraging
from lightning.pytorch.utilities.types import OptimizerLRSchedulerConfig

from segkit.card import CARD_KEY, ModelCard, is_legacy, validate_card
from segkit.config import SegkitConfig, load_config
from segkit.engine.predictor import Predictor
from segkit.engine.torch_backend import TorchBackend
from segkit.models.build import build_model, model_stride
from segkit.models.deep_supervision import DeepSupervision
from segkit.models.losses import build_loss
from segkit.models.metrics import ConfusionMatrix, SegmentationMetrics
from segkit.training.callbacks import ValidationPreview

OPTIMIZERS = {"adamw": torch.optim.AdamW, "adam": torch.optim.Adam, "sgd": torch.optim.SGD}


@dataclass
class Decay:
    """Learning-rate factor of the decay after warm-up (a ``LambdaLR`` lambda): cosine / poly down
    to ``min_ratio``, or constant.

    The decay runs over ``steps`` or, when the run has a time budget (``trainer.max_time``), over
    the budget (``time_progress``, the share spent, set before every step), whichever ends first:
    the last minutes of a budgeted run anneal whatever the speed of the machine.
    A plain dataclass (not a lambda) so ``LambdaLR.state_dict`` stores its fields and a resumed
    run continues the same curve.
    """

    name: str
    steps: int | None
    power: float = 0.9
    min_ratio: float = 0.0
    time_progress: float | None = None

    def __call__(self, step: int) -> float:
        if self.name == "constant" or not (self.steps or self.time_progress is not None):
            return 1.0
        progress = self.time_progress or 0.0  # whichever limit, steps or time, comes first
        if self.steps:
            progress = max(progress, step / max(1, self.steps))
        progress = min(1.0, progress)
        decay = (
            0.5 * (1.0 + math.cos(math.pi * progress))
            if self.name == "cosine"
            else (1.0 - progress) ** self.power
        )
        return self.min_ratio + (1.0 - self.min_ratio) * decay


def warmup_then(
    optimizer: torch.optim.Optimizer, warmup_steps: int, decay: Decay
) -> torch.optim.lr_scheduler.LRScheduler:
    """torch's schedulers: ``LinearLR`` from ``1 / (warmup_steps + 1)`` up to the full rate over
    ``warmup_steps`` steps, then ``LambdaLR(decay)`` (its step counts from the warm-up's end)."""
    after = torch.optim.lr_scheduler.LambdaLR(optimizer, decay)
    if warmup_steps <= 0:
        return after
    warmup = torch.optim.lr_scheduler.LinearLR(
        optimizer, start_factor=1 / (warmup_steps + 1), total_iters=warmup_steps
    )
    return torch.optim.lr_scheduler.SequentialLR(
        optimizer, [warmup, after], milestones=[warmup_steps]
    )


class SegmentationModule(L.LightningModule):
    """Semantic segmentation with any smp model.

    Batches are dicts ``{"image": (N, C, H, W) float, "mask": (N, H, W) int64, ...}``; ``forward``
    returns logits ``(N, K, H, W)``. ``config`` is a SegkitConfig or its dict; ``pretrained=False``
    skips ``model.encoder_weights``; ``model_card`` is the stored card Lightning passes back in
    ``load_from_checkpoint`` (its config is used when ``config`` is not given).
    """

    def __init__(
        self,
        config: dict[str, Any] | SegkitConfig | None = None,
        pretrained: bool | None = None,
        **stored: Any,
    ) -> None:
        super().__init__()
        restored: ModelCard | None = None  # re-created from a checkpoint: its card, with what
        if config is None and isinstance(stored.get(CARD_KEY), dict):  # was decided after training
            restored = validate_card(stored[CARD_KEY])
            config = restored.config
        self.config = load_config(config)
        # Weights that a checkpoint will overwrite (re-created from one, or resuming) are not
        # downloaded or read: ``pretrained=None`` means "unless re-created from a checkpoint".
        self._pretrained = (
            not (CARD_KEY in stored or is_legacy(stored)) if pretrained is None else pretrained
        )
        self.configure_models()
        self.card = restored or ModelCard.from_config(self.config, model_stride(self.model))
        self.save_hyperparameters({CARD_KEY: self.card.to_dict()})
        self.configure_losses()
        self.configure_metrics()
        self.last_val_metrics: SegmentationMetrics | None = None
        self.lr_decay: Decay | None = None
        self._budget: Timer | None = None
        self._val_predictor: Predictor | None = None

    # -- set-up -------------------------------------------------------------------------------
    def configure_models(self) -> None:
        """Build ``self.model`` (the smp network) from ``config.model``, channels_last: NHWC
        convolutions train ~14% faster on a CPU (oneDNN) and use tensor cores on a GPU."""
        model_cfg = self.config.model
        if not self._pretrained:
            model_cfg = model_cfg.model_copy(update={"encoder_weights": None})
        self.model = build_model(
            model_cfg, self.config.data.num_classes, self.config.data.in_channels
        ).to(memory_format=torch.channels_last)
        self.deep_supervision = (
            DeepSupervision(self.model, self.config.data.num_classes, model_cfg.arch)
            if self.config.loss.deep_supervision
            else None
        )

    def configure_losses(self) -> None:
        """Build ``self.loss`` from ``config.loss``."""
        data = self.config.data
        self.loss = build_loss(self.config.loss, data.num_classes, data.ignore_index)

    def configure_metrics(self) -> None:
        """The validation confusion matrix (summed across DDP processes when computed)."""
        data = self.config.data
        self.val_confusion = ConfusionMatrix(data.num_classes, ignore_index=data.ignore_index)

    # -- steps --------------------------------------------------------------------------------
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``(N, C, H, W)`` normalised images -> ``(N, K, H, W)`` logits, plain NCHW whatever the
        network's layout: your own losses and callbacks may ``view`` them (smp's losses
        ``reshape``, which would make the same copy)."""
        return self.model(x.contiguous(memory_format=torch.channels_last)).contiguous()

    def _log_loss(
        self, stage: str, loss: torch.Tensor, n: int, terms: dict[str, torch.Tensor] | None = None
    ) -> None:
        # Validation logs on_epoch only: a per-step sync_dist would deadlock DDP, whose processes
        # may validate one image more or less (see segkit.data.datamodule.val_sampler).
        train = stage == "train"
        self.log(
            f"{stage}/loss",
            loss,
            on_step=train,
            on_epoch=True,
            prog_bar=True,
            batch_size=n,
            sync_dist=True,
        )
        for name, value in (terms or {}).items():
            self.log(
                f"{stage}/loss_{name}",
                value,
                on_step=False,
                on_epoch=True,
                batch_size=n,
                sync_dist=True,
            )

    def on_train_start(self) -> None:
        """Find the time budget: Lightning's Timer, present when ``trainer.max_time`` is set."""
        timers = [c for c in self.trainer.callbacks if isinstance(c, Timer)]  # type: ignore[attr-defined]
        self._budget = next((t for t in timers if t.time_remaining() is not None), None)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Tell the schedule how much of the time budget is spent (the decay follows it)."""
        if self._budget is not None and self.lr_decay is not None:
            elapsed, remaining = self._budget.time_elapsed(), self._budget.time_remaining()
            assert remaining is not None
            self.lr_decay.time_progress = elapsed / max(elapsed + remaining, 1e-9)

    def training_step(self, batch: dict[str, Any], batch_idx: int) -> torch.Tensor:
        images, masks = batch["image"], batch["mask"].long()
        loss = self.loss(self(images), masks)
        terms = dict(getattr(self.loss, "last_terms", {}))  # the full-resolution output's
        if self.deep_supervision is not None:
            loss = self.deep_supervision.loss(loss, masks, self.loss)
        self._log_loss("train", loss, images.shape[0], terms)
        return loss

    def _validation_predictor(self) -> Predictor:
        """The engine ``segkit predict`` runs, over the weights being validated (made at the first
        step of each validation, after callbacks such as EMA have swapped their weights in)."""
        if self._val_predictor is None:
            backend = TorchBackend(model=self.model, card=self.card, device=self.device)
            self._val_predictor = Predictor(backend, tta="none")
        return self._val_predictor

    def validation_step(self, batch: dict[str, Any], batch_idx: int) -> dict[str, torch.Tensor]:
        """Score whole raw images as predict runs them: normalised, tiled, blended and stitched
        by the predictor, so the metric that picks the best checkpoint scores the masks
        ``segkit predict`` will write, for images of any size."""
        predictor, masks = self._validation_predictor(), batch["mask"].long()
        probs = torch.empty(
            (masks.shape[0], self.card.num_classes, *masks.shape[1:]), device=self.device
        )
        for i, image in enumerate(batch["image"]):
            pixels = image.permute(1, 2, 0).cpu().numpy()
            # blocks on the backend's device (this module's): stitched there, no host round trip
            for row, col, block in predictor.iter_blocks(pixels, as_tensor=True, copy=False):
                probs[i, :, row : row + block.shape[1], col : col + block.shape[2]] = (
                    torch.as_tensor(block)
                )
        # log(p) as logits: softmax(log p) = p, so the loss scores the stitched probabilities
        self._log_loss("val", self.loss(probs.clamp_min(1e-8).log(), masks), len(masks))
        preds = probs.max(1).indices  # = argmax(1), but 5-25x faster over classes on a CPU
        self.val_confusion.update(preds, masks)
        return {"preds": preds}  # for the preview callback

    def on_validation_epoch_end(self) -> None:
        """Log dataset-level metrics from the confusion matrix reduced over all processes."""
        self._val_predictor = None
        matrix = self.val_confusion.compute()  # torchmetrics sums the state across DDP ranks here
        self.val_confusion.reset()
        metrics = SegmentationMetrics(matrix.cpu().numpy(), self.card.classes)
        self.last_val_metrics = metrics
        # Identical on every rank (the matrix is already reduced); sync_dist only keeps Lightning's
        # epoch-level bookkeeping uniform across processes.
        self.log("val/mIoU", metrics.miou, prog_bar=True, sync_dist=True)
        values = {
            "val/mDice": metrics.mdice,
            "val/micro_IoU": metrics.micro_iou,
            "val/pixel_accuracy": metrics.pixel_accuracy,
        }
        values.update(
            {
                f"val/IoU/{name}": float(v)
                for name, v in zip(metrics.classes, metrics.iou, strict=True)
            }
        )
        self.log_dict(values, sync_dist=True)

    # -- optimisation -------------------------------------------------------------------------
    def configure_optimizers(self) -> OptimizerLRSchedulerConfig:
        """Optimiser from ``config.optimizer`` (no weight decay on norms and biases) and a
        per-step schedule from ``config.scheduler`` sized by ``trainer.estimated_stepping_batches``
        (or by the time budget, see :class:`Decay`)."""
        opt = self.config.optimizer
        decay = [p for p in self.parameters() if p.requires_grad and p.ndim > 1]
        no_decay = [p for p in self.parameters() if p.requires_grad and p.ndim <= 1]
        groups = [
            {"params": decay, "weight_decay": opt.weight_decay},
            {"params": no_decay, "weight_decay": 0.0},
        ]
        extra = {"momentum": opt.momentum, "nesterov": opt.nesterov} if opt.name == "sgd" else {}
        optimizer = OPTIMIZERS[opt.name](groups, lr=opt.lr, **extra)
        sched = self.config.scheduler
        total = self.trainer.estimated_stepping_batches
        batches = self.trainer.num_training_batches
        per_epoch = (
            math.ceil(batches / self.trainer.accumulate_grad_batches)
            if math.isfinite(batches)
            else 0
        )
        warmup_steps = round(sched.warmup_epochs * per_epoch)
        lr_decay = self.lr_decay = Decay(
            name=sched.name,
            steps=max(1, int(total) - warmup_steps) if math.isfinite(total) else None,
            power=sched.power,
            min_ratio=sched.min_lr_ratio,
        )
        scheduler = warmup_then(optimizer, warmup_steps, lr_decay)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "step", "frequency": 1},
        }

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        """Weights-only checkpoints skip the callbacks' hooks, so the EMA callback could not put
        its averaged weights in: ask it here, and keep the file weights-only."""
        if "optimizer_states" in checkpoint:  # a full checkpoint: the callbacks' hooks ran
            return
        for callback in self.trainer.callbacks:  # type: ignore[attr-defined]
            if isinstance(callback, WeightAveraging):
                callback.on_save_checkpoint(self.trainer, self, checkpoint)
                checkpoint.pop("current_model_state", None)
                checkpoint.pop("averaging_state", None)

    def configure_callbacks(self) -> list[L.Callback]:
        """Callbacks that travel with the module, whatever Trainer runs it: the per-epoch preview
        grid, and Lightning's EMA of the weights (``optimizer.ema_decay``), which validation,
        checkpoints and so exports use instead of the raw weights."""
        callbacks: list[L.Callback] = []
        n = self.config.run.val_preview_images
        if n > 0:
            callbacks.append(ValidationPreview(n, self.config.data.ignore_index))
        if self.config.optimizer.ema_decay is not None:
            callbacks.append(EMAWeightAveraging(decay=self.config.optimizer.ema_decay))
        return callbacks
