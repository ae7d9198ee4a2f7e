"""``segkit train``: check the data, fit with Lightning, keep the best checkpoint, report metrics.

Everything a run writes lives in one folder: ``config.yaml`` (resolved), ``best.ckpt`` and
``last.ckpt`` (segkit bundles, written atomically), ``logs/metrics.csv``, ``tensorboard/`` (with
the tensorboard extra), ``previews/epoch_NNN.png`` and ``metrics.json`` (the best checkpoint
evaluated on val).
"""

from __future__ import annotations

import csv
import importlib.util
import io
import os
import sys
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from inspect import signature
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
from lightning.pytorch.loggers import Logger, TensorBoardLogger
from lightning.pytorch.plugins.io import TorchCheckpointIO
from lightning.pytorch.utilities import rank_zero_info, rank_zero_only

from segkit.config import AugmentConfig, SegkitConfig, save_config
from segkit.errors import ConfigError
from segkit.models.metrics import SegmentationMetrics
from segkit.training.plan import Plan, plan_config
from segkit.training.progress import EpochLines
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
    plan: Plan | None = None  # what the plan chose (run.plan), None when it did not run
    warnings: list[str] = field(default_factory=list)  # symptoms of a run that did not work


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


METRICS_FILE = "metrics.csv"


class ResumableCSVLogger(Logger):
    """``<save_dir>/<name>/metrics.csv``, one row per ``log_metrics`` call, that survives kills
    and resumes (Lightning's public ``Logger`` API; its own CSVLogger deletes the file on start).

    A resumed run keeps the complete rows logged before the checkpoint's step and drops those at
    or after it: a killed run logged them after its last checkpoint and the resumed run logs those
    steps again, so every step appears exactly once. Rows are appended; when a new column appears
    the file is rewritten through a temporary (a kill then would otherwise lose the history).
    """

    def __init__(
        self,
        save_dir: str | Path,
        name: str = "logs",
        version: str = "",
        resume_from: Path | None = None,
    ) -> None:
        super().__init__()
        self._save_dir = str(save_dir)
        self._name = name
        self._version = version
        self._resume_from = resume_from
        self._keys: list[str] | None = None  # None: the file has not been opened yet
        self._pending: list[dict[str, Any]] = []

    @property
    def name(self) -> str:
        return self._name

    @property
    def version(self) -> str:
        return self._version

    @property
    def save_dir(self) -> str:
        return self._save_dir

    @property
    def root_dir(self) -> str:
        return os.path.join(self._save_dir, self._name)

    @property
    def log_dir(self) -> str:
        return os.path.join(self.root_dir, self._version)

    @property
    def metrics_path(self) -> Path:
        return Path(self.log_dir) / METRICS_FILE

    @rank_zero_only
    def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
        """Not written: the run folder's config.yaml and the checkpoint hold them."""

    @rank_zero_only
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        row = {k: v.item() if isinstance(v, torch.Tensor) else v for k, v in metrics.items()}
        row["step"] = len(self._pending) if step is None else step
        self._pending.append(row)

    @rank_zero_only
    def save(self) -> None:
        """Write the rows logged since the last save (Lightning calls this after every log)."""
        if self._keys is None:
            self._keys = self._start()
        if not self._pending:
            return
        new = set().union(*self._pending) - set(self._keys)
        path = self.metrics_path
        if new or not path.is_file():
            keys = sorted({*self._keys, *new})
            _write_csv(path, keys, [*_read_rows(path), *self._pending])
            self._keys = keys
        else:
            with open(path, "a", newline="") as f:
                csv.DictWriter(f, fieldnames=self._keys).writerows(self._pending)
        self._pending = []

    @rank_zero_only
    def finalize(self, status: str) -> None:
        self.save()

    def _start(self) -> list[str]:
        """The columns of the file this run continues: the kept history of a resumed run, or
        none (an earlier file is replaced) for a new one."""
        path = self.metrics_path
        path.parent.mkdir(parents=True, exist_ok=True)
        if self._resume_from is None or not path.is_file():
            path.unlink(missing_ok=True)
            return []
        step = int(
            torch.load(self._resume_from, map_location="cpu", weights_only=True, mmap=True)[
                "global_step"
            ]
        )
        kept = [
            r for r in _read_rows(path) if (r.get("step") or "").isdigit() and int(r["step"]) < step
        ]
        keys = sorted(set().union(*kept)) if kept else []
        _write_csv(path, keys, kept)
        return keys


def _read_rows(path: Path) -> list[dict[str, str]]:
    """The complete rows of a metrics CSV: a last line a kill cut short is left out."""
    if not path.is_file():
        return []
    text = path.read_text()
    if text and not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    rows = csv.DictReader(io.StringIO(text, newline=""))
    return [r for r in rows if None not in r.values() and None not in r]


def _write_csv(path: Path, fieldnames: list[str], rows: list[dict[str, Any]]) -> None:
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames)
        writer.writeheader()
        writer.writerows(rows)


def tensorboard_available() -> bool:
    """Lightning's TensorBoardLogger writes through tensorboard or tensorboardX (the
    ``segkit[tensorboard]`` extra); without either, training logs to CSV alone."""
    return any(
        importlib.util.find_spec(name) is not None for name in ("tensorboard", "tensorboardX")
    )


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
    # Lightning's rank (from its launcher's, torchrun's or srun's variables), read as the
    # rank_zero_only decorator reads it
    if os.environ.get(_RUN_DIR_ENV) and getattr(rank_zero_only, "rank", 0) != 0:
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


@rank_zero_only
def _start_run_dir(config: SegkitConfig, run_dir: Path, resuming: bool) -> None:
    """Rank 0 creates the run folder, writes config.yaml and hands the folder to the processes
    Lightning's launcher starts next (through the environment they inherit)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if resuming:
        remove_stale_temporaries(run_dir)
    save_config(config, run_dir / "config.yaml")
    os.environ[_RUN_DIR_ENV] = str(run_dir)


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
    from segkit.models.module import SegmentationModule
    from segkit.training.diagnostics import training_warnings

    L.seed_everything(config.run.seed, workers=True, verbose=False)
    opened_by_caller = torch.distributed.is_available() and torch.distributed.is_initialized()
    if torch.cuda.is_available():  # TF32 matmuls for fp32 work on tensor-core GPUs
        torch.set_float32_matmul_precision("high")
    run_dir = resolve_run_dir(config, config_path)
    ckpt_path = _resume_path(config, run_dir)
    rank_zero_only(check_or_raise)(config)  # the other ranks trust rank 0's data check
    plan = None
    if config.run.plan:
        config, plan = plan_config(config)
    module = SegmentationModule(config, pretrained=ckpt_path is None)
    datamodule = SegmentationDataModule(config, stride=module.card.stride)
    datamodule.setup("fit")
    if not datamodule.val_pairs:
        raise ConfigError(
            "no validation images: set data.val, or data.val_fraction > 0 to hold out part of data.train"
        )
    _start_run_dir(config, run_dir, resuming=ckpt_path is not None)
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
        payload = _finish_best(
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


def _finish_best(
    best: Path,
    pairs: list[tuple[Path, Path]],
    device: str,
    plan: Plan | None,
    run_dir: Path,
    augment: AugmentConfig,
) -> SegmentationMetrics:
    """The decisions made on the validation set after training, stored in ``best`` (each an
    atomic rewrite), then its metrics (``metrics.json``): the TTA mode where the plan measures
    that it pays, then the temperature, fitted on the predictions users will get."""
    from segkit.bundle import update_card
    from segkit.evaluation import evaluate_pairs, fit_checkpoint_temperature
    from segkit.training.plan import measured_tta

    if plan is not None and "predict.tta" in plan.reasons():
        without = evaluate_pairs(best, pairs, device=device, tta="none").miou
        decision = measured_tta(best, pairs, without, device, augment)
        if decision is not None:
            update_card(best, lambda card: card.updated(predict={"tta": decision.value}))
            plan.decisions = [d for d in plan.decisions if d.key != decision.key] + [decision]
    fit_checkpoint_temperature(best, pairs, device)
    return evaluate_pairs(best, pairs, device=device, json_path=run_dir / "metrics.json")


def _logged(trainer: L.Trainer, key: str) -> float | None:
    """The last value Lightning logged under ``key`` (its epoch mean), or None."""
    value = trainer.callback_metrics.get(key)
    return float(value) if value is not None else None
