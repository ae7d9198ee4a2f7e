"""What a run logs: ``logs/metrics.csv`` through a logger that survives kills and resumes, and
whether TensorBoard can log beside it."""

from __future__ import annotations

import csv
import importlib.util
import io
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch.loggers import Logger
from lightning.pytorch.utilities import rank_zero_only

from segkit.utils import atomic_path

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
