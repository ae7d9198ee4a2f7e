"""The run folder: which one a run writes to (numbered, resumed, shared by processes started
together), the checkpoint it resumes from, and what rank 0 writes there before training
(``config.yaml``) or clears (a killed run's temporaries)."""

from __future__ import annotations

import os
from pathlib import Path

from lightning.pytorch.utilities import rank_zero_only

from segkit.config import SegkitConfig, save_config
from segkit.errors import ConfigError
from segkit.utils import temporary_target

_RUN_DIR_ENV = "SEGKIT_RUN_DIR"  # hands rank 0's run folder to DDP processes Lightning re-launches


def remove_stale_temporaries(run_dir: Path) -> None:
    """Delete the temporaries a killed run left in its folder (a half-written ``.last.*.tmp.ckpt``)."""
    for path in run_dir.rglob(".*"):
        if path.is_file() and temporary_target(path) is not None:
            path.unlink(missing_ok=True)


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


def resume_path(config: SegkitConfig, run_dir: Path) -> Path | None:
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


@rank_zero_only
def start_run_dir(config: SegkitConfig, run_dir: Path, resuming: bool) -> None:
    """Rank 0 creates the run folder, writes config.yaml and hands the folder to the processes
    Lightning's launcher starts next (through the environment they inherit)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    if resuming:
        remove_stale_temporaries(run_dir)
    save_config(config, run_dir / "config.yaml")
    os.environ[_RUN_DIR_ENV] = str(run_dir)
