"""``segkit train``: check the data, fit with Lightning, keep the best checkpoint, report metrics.

Everything a run writes lives in one folder: ``config.yaml`` (resolved), ``best.ckpt`` and
``last.ckpt`` (segkit bundles, written atomically), ``logs/metrics.csv``, ``tensorboard/``,
``previews/epoch_NNN.png`` and ``metrics.json`` (the best checkpoint evaluated on val).
"""

from __future__ import annotations

import csv
import os
import sys
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from inspect import signature
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.fabric.loggers.logger import rank_zero_experiment
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.plugins.io import TorchCheckpointIO

from segkit.config import SegkitConfig, save_config
from segkit.errors import ConfigError
from segkit.models.metrics import SegmentationMetrics
from segkit.utils import atomic_path, temporary_target

MONITOR = "val/mIoU"
_RUN_DIR_ENV = "SEGKIT_RUN_DIR"  # hands rank 0's run folder to DDP processes Lightning re-launches


@dataclass
class TrainResult:
    """What a finished run produced."""

    run_dir: Path
    best_checkpoint: Path
    last_checkpoint: Path
    metrics: SegmentationMetrics  # the best checkpoint on the validation set


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


class _AtomicExperimentWriter(ExperimentWriter):
    """Rewrites ``metrics.csv`` (needed whenever a new column appears) through a temporary file.

    Lightning truncates the file and writes it again, so a run killed at that moment, which is
    right around a checkpoint (the epoch-end columns appear then), lost its whole history.
    """

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        path = Path(self.metrics_file_path)
        with open(path, newline="") as f:
            rows = list(csv.DictReader(f))
        _write_csv(path, fieldnames, rows)


def _write_csv(path: Path, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


class ResumableCSVLogger(CSVLogger):
    """A CSVLogger whose ``metrics.csv`` survives kills and resumes.

    Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts, so a resumed run lost
    every row logged before it. This one keeps the complete rows logged before the checkpoint's
    step and drops those at or after it: a killed run logged them after its last checkpoint and
    the resumed run logs those steps again, so every step appears exactly once.
    """

    def __init__(self, *args: Any, resume_from: Path | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resume_from = resume_from

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is not None:
            return self._experiment
        path = Path(self.log_dir) / ExperimentWriter.NAME_METRICS_FILE
        kept: list[dict[str, str]] = []
        if self._resume_from is not None and path.is_file():
            step = int(
                torch.load(self._resume_from, map_location="cpu", weights_only=True, mmap=True)[
                    "global_step"
                ]
            )
            with open(path, newline="") as f:
                reader = csv.DictReader(f)  # a row cut short by a kill has None fields: dropped
                kept = [
                    r
                    for r in reader
                    if None not in r.values()
                    and (r.get("step") or "").isdigit()
                    and int(r["step"]) < step
                ]
        self._fs.makedirs(self.root_dir, exist_ok=True)
        self._experiment = _AtomicExperimentWriter(log_dir=self.log_dir)  # deletes metrics.csv
        if kept:
            keys = sorted(set().union(*kept))
            _write_csv(path, keys, kept)
            self._experiment.metrics_keys = keys
        return self._experiment


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the temporaries a killed run left in its folder (a half-written ``.last.*.tmp.ckpt``)."""
    for path in run_dir.rglob(".*"):
        if path.is_file() and temporary_target(path) is not None:
            path.unlink(missing_ok=True)


def resolve_precision(precision: str, accelerator: str) -> str:
    """``auto`` → bf16-mixed on GPUs with bf16, 16-mixed on older GPUs, 32-true otherwise (CPU:
    bf16 autocast is far slower than fp32 there). Any other value is passed through unchanged."""
    if precision != "auto":
        return precision
    if accelerator in ("gpu", "cuda", "auto") and torch.cuda.is_available():
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32-true"


def _is_spawned_rank() -> bool:
    """True in every process of a run but the first: those Lightning's DDP launcher starts beside
    rank 0, and the other ranks torchrun (``RANK``) or SLURM's srun (``SLURM_PROCID``) start."""
    ranks = ["RANK", "LOCAL_RANK", "NODE_RANK"] + (["SLURM_PROCID"] if _under_srun() else [])
    return any(os.environ.get(name, "0") != "0" for name in ranks)


def _under_srun() -> bool:
    """SLURM started this process with srun (Lightning's own test)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    return SLURMEnvironment.detect()


def _launched_processes() -> int:
    """How many processes torchrun (``WORLD_SIZE``) or SLURM's ``srun`` (``SLURM_NTASKS``)
    started together; 1 for a plain start, whose DDP workers Lightning spawns later. torchrun
    first, as Lightning does: it may run inside a one-task SLURM job."""
    if "WORLD_SIZE" in os.environ:
        return int(os.environ["WORLD_SIZE"])
    if _under_srun():
        return int(os.environ["SLURM_NTASKS"])
    return 1


def resolve_run_dir(config: SegkitConfig, config_path: Path | None = None) -> Path:
    """``run.dir / run.name`` (name defaults to the config file's stem or "run"), numbered
    ``-2``, ``-3`` ... when it exists — except when resuming, which continues in the named folder
    (or in the folder of the checkpoint given to ``run.resume``).

    Processes started together (torchrun, SLURM's srun) cannot number without a race, so they share ``run.dir / run.name`` and refuse it when it holds an earlier run's
    checkpoints, which would otherwise be overwritten.
    """
    run = config.run
    if os.environ.get(_RUN_DIR_ENV) and _is_spawned_rank():
        return Path(os.environ[_RUN_DIR_ENV])
    name = run.name or (Path(config_path).stem if config_path else "run")
    base = Path(run.dir) / name
    if run.resume and run.resume != "last":
        ckpt = Path(run.resume).expanduser()
        if (ckpt.parent / "config.yaml").is_file():
            return ckpt.parent
    if run.resume:
        return base
    world_size = _launched_processes()
    if world_size > 1:
        earlier = [f for f in ("last.ckpt", "best.ckpt") if (base / f).is_file()]
        if earlier:
            raise ConfigError(
                f"{base}: holds {earlier[0]} from an earlier run; {world_size} processes cannot "
                "pick a new numbered folder, so set run.name to a new name, or run.resume=last "
                "to continue that run"
            )
        return base
    candidate, n = base, 1
    while candidate.exists():
        n += 1
        candidate = base.with_name(f"{name}-{n}")
    return candidate


def _resume_path(config: SegkitConfig, run_dir: Path) -> Path | None:
    resume = config.run.resume
    if not resume:
        return None
    path = run_dir / "last.ckpt" if resume == "last" else Path(resume).expanduser()
    if not path.is_file():
        raise ConfigError(
            f"run.resume={resume}: checkpoint {path} not found (set run.name to the run folder to resume)"
        )
    from segkit.bundle import load_bundle

    stored = load_bundle(path).config
    for key in ("model.arch", "model.encoder", "model.kwargs", "data.classes", "data.in_channels"):
        section, field = key.split(".")
        old, new = (
            getattr(getattr(stored, section), field),
            getattr(getattr(config, section), field),
        )
        if old != new:
            raise ConfigError(
                f"run.resume: {path} was trained with {key}={old!r}, but the config now says {new!r}"
            )
    return path


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
    checkpoint = ModelCheckpoint(
        dirpath=run_dir,
        filename="best",
        monitor=MONITOR,
        mode="max",
        save_top_k=1,
        save_last=True,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    all_callbacks: list[L.Callback] = [checkpoint, *(kwargs.pop("callbacks", None) or [])]
    if config.run.early_stopping_patience:
        all_callbacks.append(
            EarlyStopping(
                monitor=MONITOR,
                mode="max",
                patience=config.run.early_stopping_patience,
                check_finite=False,
            )
        )
    if kwargs.get("enable_progress_bar", True):
        all_callbacks.append(
            RichProgressBar()
            if sys.stdout.isatty()
            else TQDMProgressBar(refresh_rate=max(1, config.trainer.log_every_n_steps))
        )
    logger = kwargs.pop("logger", True)
    loggers: Any = False
    if logger is not False:
        loggers = [
            ResumableCSVLogger(run_dir, name="logs", version="", resume_from=resume_from),
            TensorBoardLogger(run_dir, name="tensorboard", version=""),
        ]
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


def _safe_load() -> dict[str, Any]:
    """``weights_only=True`` for ``Trainer.fit`` where Lightning takes it (2.6+): the resumed
    checkpoint is then never unpickled, whatever torch's own default (False before torch 2.6).
    Older Lightning cannot be told; ``_resume_path`` has already opened the file with
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
    from segkit.evaluation import evaluate_pairs
    from segkit.models.module import SegmentationModule

    L.seed_everything(config.run.seed, workers=True, verbose=False)
    opened_by_caller = torch.distributed.is_available() and torch.distributed.is_initialized()
    if torch.cuda.is_available():  # TF32 matmuls for fp32 work on tensor-core GPUs
        torch.set_float32_matmul_precision("high")
    run_dir = resolve_run_dir(config, config_path)
    ckpt_path = _resume_path(config, run_dir)
    spawned = _is_spawned_rank()
    if not spawned:
        check_or_raise(config)
    module = SegmentationModule(config, pretrained=ckpt_path is None)
    datamodule = SegmentationDataModule(config, stride=int(module.hparams["stride"]))
    datamodule.setup("fit")
    if not datamodule.val_pairs:
        raise ConfigError(
            "no validation images: set data.val, or data.val_fraction > 0 to hold out part of data.train"
        )
    if not spawned:
        run_dir.mkdir(parents=True, exist_ok=True)
        if ckpt_path is not None:
            remove_stale_temporaries(run_dir)
        save_config(config, run_dir / "config.yaml")
        os.environ[_RUN_DIR_ENV] = str(run_dir)
    trainer, checkpoint = build_trainer(config, run_dir, resume_from=ckpt_path, callbacks=callbacks)
    with warnings.catch_warnings():  # config.yaml is there on purpose
        warnings.filterwarnings(
            "ignore", message=r"Checkpoint directory .* exists and is not empty"
        )
        warnings.filterwarnings(
            "ignore", message=r"Experiment logs directory .* exists"
        )  # ResumableCSVLogger keeps them
        trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, **_safe_load())

    last = run_dir / "last.ckpt"
    best = Path(checkpoint.best_model_path) if checkpoint.best_model_path else last
    if trainer.is_global_zero:  # temperature scaling fitted on val, stored in best (atomically)
        from segkit.models.calibration import fit_checkpoint_temperature

        fit_checkpoint_temperature(best, datamodule.val_pairs, str(trainer.strategy.root_device))
    payload = None
    if trainer.is_global_zero:
        device = str(trainer.strategy.root_device)  # where training ran: "cpu", "cuda:0", ...
        metrics = evaluate_pairs(
            best, datamodule.val_pairs, device=device, json_path=run_dir / "metrics.json"
        )
        payload = metrics.to_dict()
    payload = trainer.strategy.broadcast(payload, src=0)
    if not opened_by_caller:
        _close_process_group()
    return TrainResult(
        run_dir=run_dir,
        best_checkpoint=best,
        last_checkpoint=last,
        metrics=SegmentationMetrics.from_dict(payload),
    )
