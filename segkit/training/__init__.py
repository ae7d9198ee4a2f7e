"""``segkit train``: check the data, plan, fit with Lightning, keep the best checkpoint, report.

One module per job: ``fit`` (``train()``), ``run_dir`` (the run folder, resume, config.yaml),
``trainer`` (the Lightning Trainer and its callbacks), ``loggers`` (logs/metrics.csv),
``progress`` (one line per epoch in logs), ``fingerprint`` and ``plan`` (the dataset's
fingerprint and the recipe chosen from it), ``finish`` (the TTA decision, temperature and
metrics of the best checkpoint), ``diagnostics`` (the warnings after a run).
"""

from segkit.training.fit import TrainResult, train
from segkit.training.loggers import METRICS_FILE, ResumableCSVLogger, tensorboard_available
from segkit.training.run_dir import remove_stale_temporaries, resolve_run_dir
from segkit.training.trainer import MONITOR, AtomicCheckpointIO, build_trainer, resolve_precision

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
