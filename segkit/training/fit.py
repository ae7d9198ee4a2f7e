"""``train()``: check the data, plan, fit with Lightning, finish the best checkpoint, report.

Everything a run writes lives in one folder: ``config.yaml`` (resolved), ``best.ckpt`` and
``last.ckpt`` (segkit bundles, written atomically), ``logs/metrics.csv``, ``tensorboard/`` (with
the tensorboard extra), ``previews/epoch_NNN.png`` and ``metrics.json`` (the best checkpoint
evaluated on val)."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from inspect import signature
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.utilities import rank_zero_only

from segkit.config import SegkitConfig
from segkit.errors import ConfigError
from segkit.models.metrics import SegmentationMetrics
from segkit.training.finish import finish_best
from segkit.training.plan import Plan, plan_config
from segkit.training.run_dir import resolve_run_dir, resume_path, start_run_dir
from segkit.training.trainer import build_trainer


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    metrics: SegmentationMetrics  # the best checkpoint on the validation set
    plan: Plan | None = None  # what the plan chose (run.plan), None when it did not run
    warnings: list[str] = field(default_factory=list)  # symptoms of a run that did not work


def _safe_load() -> dict[str, Any]:
    """``weights_only=True`` for ``Trainer.fit`` where Lightning takes it (2.6+): the resumed
    checkpoint is then never unpickled, whatever torch's own default (False before torch 2.6).
    Older Lightning cannot be told; ``resume_path`` has already opened the file with
    ``weights_only=True`` (``load_bundle``), which refuses checkpoints carrying pickled code."""
    return {"weights_only": True} if "weights_only" in signature(L.Trainer.fit).parameters else {}


def _close_process_group() -> None:
    """Destroy the process group Lightning's DDP opened. Left to interpreter exit, gloo's worker
    threads can abort a finished run with SIGABRT ("terminate called without an active
    exception"; pytorch/pytorch#179291), which failed the 2-process CPU test once."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def train(
    config: SegkitConfig,
    config_path: Path | None = None,
    callbacks: Sequence[L.Callback] = (),
) -> TrainResult:
    """Fit a model as ``config`` says and evaluate its best checkpoint on the validation set.

    The data is checked first (bad data is refused with a DataError listing the problems);
    ``run.resume`` continues a run exactly (global step, optimiser and scheduler state).
    ``callbacks`` are extra Lightning callbacks (your own logging, timing, pruning, ...).
    """
    from segkit.data.checks import check_or_raise
    from segkit.data.datamodule import SegmentationDataModule
    from segkit.training.diagnostics import training_warnings
    from segkit.training.module import SegmentationModule

    L.seed_everything(config.run.seed, workers=True, verbose=False)
    opened_by_caller = torch.distributed.is_available() and torch.distributed.is_initialized()
    if torch.cuda.is_available():  # TF32 matmuls for fp32 work on tensor-core GPUs
        torch.set_float32_matmul_precision("high")
    run_dir = resolve_run_dir(config, config_path)
    ckpt_path = resume_path(config, run_dir)
    rank_zero_only(check_or_raise)(config)  # the other ranks trust rank 0's data check
    plan = None
    if config.run.plan:
        config, plan = plan_config(config)
    module = SegmentationModule(config, pretrained=ckpt_path is None)
    datamodule = SegmentationDataModule(config)
    datamodule.setup("fit")
    if not datamodule.val_pairs:
        raise ConfigError(
            "no validation images: set data.val, or data.val_fraction > 0 to hold out part of data.train"
        )
    start_run_dir(config, run_dir, resuming=ckpt_path is not None)
    trainer, checkpoint = build_trainer(config, run_dir, resume_from=ckpt_path, callbacks=callbacks)
    with warnings.catch_warnings():  # config.yaml is there on purpose
        warnings.filterwarnings(
            "ignore", message=r"Checkpoint directory .* exists and is not empty"
        )
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, **_safe_load())

    last = run_dir / "last.ckpt"
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
    payload: dict[str, Any] = {}  # rank 0 fills it; the broadcast hands it to the others
    if trainer.is_global_zero:
        device = str(trainer.strategy.root_device)  # where training ran: "cpu", "cuda:0", ...
        payload = finish_best(
            best, datamodule.val_pairs, device, plan, run_dir, config.augment
        ).to_dict()
    payload = trainer.strategy.broadcast(payload, src=0)
    if not opened_by_caller:
        _close_process_group()
    metrics = SegmentationMetrics.from_dict(payload)
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=best,
        last_checkpoint=last,
        metrics=metrics,
        plan=plan,
        warnings=training_warnings(
            metrics, _logged(trainer, "train/loss_epoch"), _logged(trainer, "val/loss")
        ),
    )


def _logged(trainer: L.Trainer, key: str) -> float | None:
    """The last value Lightning logged under ``key`` (its epoch mean), or None."""
    value = trainer.callback_metrics.get(key)
    return float(value) if value is not None else None
