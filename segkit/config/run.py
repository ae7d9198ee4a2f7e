"""The ``trainer`` and ``run`` sections: the Lightning Trainer's arguments, and where a run writes
and how it starts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from segkit.config.base import Section


class TrainerConfig(BaseModel):
    """Passed through to ``lightning.Trainer``: any Trainer argument is accepted here."""

    model_config = ConfigDict(extra="allow", validate_assignment=True)

    max_epochs: int = Field(50, ge=1, description="Training epochs.")
    precision: str = Field(
        "auto",
        description="'auto' = bf16-mixed on bf16 GPUs, 16-mixed on older GPUs, 32 on CPU; or any Lightning precision.",
    )
    accelerator: str = Field("auto", description="cpu, gpu, auto ...")
    devices: int | str | list[int] = Field(
        "auto", description="Number of devices or ids; >1 uses DDP."
    )
    strategy: str = Field("auto", description="auto, ddp, ddp_spawn, ...")
    log_every_n_steps: int = Field(10, ge=1, description="Logging interval in steps.")

    @field_validator("precision", mode="before")
    @classmethod
    def _precision_str(cls, v: Any) -> Any:
        # `trainer.precision=32` arrives from YAML as an int; Lightning takes both spellings.
        return str(v) if isinstance(v, int) else v


class RunConfig(Section):
    """Where a run writes and how it starts."""

    dir: Path = Field(
        Path("runs"),
        description="Parent folder of runs; a relative path is relative to the working directory.",
    )
    name: str | None = Field(
        None,
        description="Run folder name; default: the config file stem (or 'run'), numbered if it exists.",
    )
    seed: int = Field(0, description="Seed for splits, augmentation and init.")
    resume: str | None = Field(
        None,
        description="'last' resumes <run>/last.ckpt; or a checkpoint path (relative to the working directory).",
    )
    early_stopping_patience: int | None = Field(
        None,
        ge=1,
        description="Stop after this many validations without val mIoU improving; null disables.",
    )
    plan: bool = Field(
        True,
        description="Fill the keys the config does not set from the dataset and the device "
        "(`segkit plan CONFIG` shows the choices and why); false keeps the schema defaults.",
    )
    val_preview_images: int = Field(
        4,
        ge=0,
        description="Validation images drawn into the per-epoch preview PNG (image | truth | prediction).",
    )
