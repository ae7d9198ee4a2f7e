"""Training progress for logs: one line per epoch when output is not a terminal.

A progress bar redraws itself with carriage returns, which a log file keeps as hundreds of lines;
this callback writes what the bar would end with, once per epoch.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import lightning as L


class EpochLines(L.Callback):
    """Print ``epoch N/M  train/loss ...  val/mIoU ...  (T s)`` on rank 0 at the end of each epoch."""

    def __init__(self, stream: Any = None) -> None:
        self._stream = stream
        self._t0 = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._t0 = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.sanity_checking:
            return
        # Lightning lists a value logged per step and per epoch as "x" and "x_epoch": show it once
        metrics = {
            k.removesuffix("_epoch"): float(v)
            for k, v in trainer.callback_metrics.items()
            if k.endswith(("loss", "loss_epoch", "mIoU")) and not k.endswith("loss_step")
        }
        parts = [f"{k} {v:.4f}" for k, v in sorted(metrics.items())]
        total = trainer.max_epochs if trainer.max_epochs and trainer.max_epochs > 0 else "?"
        line = f"epoch {trainer.current_epoch + 1}/{total}  {'  '.join(parts)}"
        print(f"{line}  ({time.perf_counter() - self._t0:.1f} s)", file=self._stream or sys.stdout)
