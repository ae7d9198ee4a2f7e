"""``segkit train`` (temporary: one module, split next)."""

from segkit.training.loggers import (
    METRICS_FILE,
    MONITOR,
    AtomicCheckpointIO,
    ResumableCSVLogger,
    TrainResult,
    build_trainer,
    remove_stale_temporaries,
    resolve_precision,
    resolve_run_dir,
    tensorboard_available,
    train,
)

__all__ = [
    "METRICS_FILE",
    "MONITOR",
    "AtomicCheckpointIO",
    "ResumableCSVLogger",
    "TrainResult",
    "build_trainer",
    "remove_stale_temporaries",
    "resolve_precision",
    "resolve_run_dir",
    "tensorboard_available",
    "train",
]
