"""The Lightning Trainer a run uses: every ``trainer.*`` key passed through, the precision
``auto`` resolves to, segkit's callbacks (best and last checkpoints, early stopping, progress,
learning-rate monitor), its loggers, and checkpoints written atomically."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info

from segkit.config import SegkitConfig
from segkit.training.loggers import ResumableCSVLogger, tensorboard_available
from segkit.training.progress import EpochLines
from segkit.utils import atomic_path

MONITOR = "val/mIoU"


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written to a temporary file beside the target, fsynced, then renamed over it.

    Lightning's own save goes through an fsspec transaction whose temporary file lives in the
    system temp folder, so the final move is a copy when that is another file system, and a
    killed run can leave a truncated ``last.ckpt``. Remote URLs keep Lightning's behaviour.
    """

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        if storage_options is not None or "://" in str(path):
            return super().save_checkpoint(checkpoint, path, storage_options)
        with atomic_path(Path(path)) as tmp:
            torch.save(checkpoint, tmp)


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` → bf16-mixed on GPUs with bf16, 16-mixed on older GPUs, 32-true otherwise (CPU:
    bf16 autocast is far slower than fp32 there). Any other value is passed through unchanged."""
    if precision != "auto":
        return precision
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def build_trainer(
    config: SegkitConfig,
    run_dir: Path,
    resume_from: Path | None = None,
    callbacks: Sequence[L.Callback] = (),
) -> tuple[L.Trainer, ModelCheckpoint]:
    """A Trainer with every ``trainer.*`` key passed through (None dropped) plus segkit's callbacks.

    ``resume_from``: the checkpoint a resumed run starts from (its metrics.csv history is kept).
    ``callbacks``: the caller's own Lightning callbacks, added after segkit's.
    """
    kwargs = {k: v for k, v in config.trainer.model_dump().items() if v is not None}
    kwargs["precision"] = resolve_precision(
        str(kwargs.get("precision", "auto")), str(kwargs.get("accelerator", "auto"))
    )
    # best.ckpt is what users ship: weights and the bundle's facts only (save_weights_only);
    # last.ckpt keeps optimiser, scheduler and loop state for run.resume=last. Best is listed
    # first so that last.ckpt carries its updated state.
    checkpoint = ModelCheckpoint(
        dirpath=run_dir,
        filename="best",
        monitor=MONITOR,
        mode="max",
        save_top_k=1,
        save_weights_only=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    # The latest state under one name, replaced at every save (monitor None: newest is "best");
    # Lightning's save_last only writes when a top-k checkpoint was saved in the same step.
    last = ModelCheckpoint(
        dirpath=run_dir, filename="last", save_top_k=1, enable_version_counter=False
    )
    all_callbacks: list[L.Callback] = [checkpoint, last, *(kwargs.pop("callbacks", None) or [])]
    if config.run.early_stopping_patience:
        all_callbacks.append(
            EarlyStopping(
                monitor=MONITOR,
                mode="max",
                patience=config.run.early_stopping_patience,
                check_finite=False,
            )
        )
    kwargs.setdefault("enable_model_summary", False)  # its table is noise in a run's output
    if "enable_progress_bar" not in kwargs and not sys.stdout.isatty():
        # a log file: one line per epoch instead of a bar redrawn hundreds of times
        kwargs["enable_progress_bar"] = False
        all_callbacks.append(EpochLines())
    elif kwargs.get("enable_progress_bar", True):
        all_callbacks.append(RichProgressBar())
    logger = kwargs.pop("logger", True)
    loggers: Any = False
    if logger is not False:
        loggers = [ResumableCSVLogger(run_dir, name="logs", version="", resume_from=resume_from)]
        if tensorboard_available():
            loggers.append(TensorBoardLogger(run_dir, name="tensorboard", version=""))
        else:
            rank_zero_info(
                "TensorBoard is not installed: logs/metrics.csv only (segkit[tensorboard])"
            )
        all_callbacks.append(LearningRateMonitor(logging_interval="step"))
    plugins = [AtomicCheckpointIO(), *(kwargs.pop("plugins", None) or [])]
    kwargs.pop("default_root_dir", None)
    trainer = L.Trainer(
        **kwargs,
        callbacks=[*all_callbacks, *callbacks],
        logger=loggers,
        plugins=plugins,
        default_root_dir=run_dir,
    )
    return trainer, checkpoint
