"""The whole config (``SegkitConfig``, one field per section) and what its shape answers: the
section at a dotted key, the keys a section allows, the reference rows of every key."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any, get_args

from pydantic import BaseModel, Field, field_validator

from segkit.config.base import Section
from segkit.config.data import AugmentConfig, DataConfig
from segkit.config.model import ModelConfig
from segkit.config.optimization import LossConfig, OptimizerConfig, SchedulerConfig
from segkit.config.predict import PredictConfig
from segkit.config.run import RunConfig, TrainerConfig


class SegkitConfig(Section):
    """The whole configuration of a run."""

    data: DataConfig = Field(default_factory=DataConfig)
    augment: AugmentConfig = Field(default_factory=AugmentConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    loss: LossConfig = Field(default_factory=LossConfig)
    optimizer: OptimizerConfig = Field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = Field(default_factory=SchedulerConfig)
    trainer: TrainerConfig = Field(default_factory=TrainerConfig)
    run: RunConfig = Field(default_factory=RunConfig)
    predict: PredictConfig = Field(default_factory=PredictConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (paths as str): what goes into YAML, checkpoints and ONNX metadata."""
        return json.loads(self.model_dump_json())

    @field_validator("trainer", mode="before")
    @classmethod
    def _trainer_dict(cls, v: Any) -> Any:
        return v if v is not None else {}


def _trainer_arguments() -> list[str]:
    """Names ``lightning.Trainer`` accepts: extra ``trainer.*`` keys are checked against them."""
    import inspect

    from lightning import Trainer

    return [p for p in inspect.signature(Trainer.__init__).parameters if p != "self"]


def _submodel(annotation: Any) -> type[BaseModel] | None:
    """The config section an annotation holds: ``SplitConfig | None`` -> SplitConfig, else None."""
    for t in (annotation, *get_args(annotation)):
        if isinstance(t, type) and issubclass(t, BaseModel):
            return t
    return None


def section_at(keys: Sequence[str]) -> type[BaseModel] | None:
    """The config section at a dotted path (``["data", "train"]``); None for any other key."""
    section: type[BaseModel] | None = SegkitConfig
    for key in keys:
        field = section.model_fields.get(key) if section is not None else None
        section = _submodel(field.annotation) if field is not None else None
    return section


def allowed_keys(section: type[BaseModel]) -> list[str]:
    allowed = set(section.model_fields)
    if section is TrainerConfig:
        allowed |= set(_trainer_arguments())
    return sorted(allowed)


def config_reference() -> list[tuple[str, str, str]]:
    """(key, default, description) rows of every config key: docs/config.md's reference."""
    rows = []
    for section_name, field in SegkitConfig.model_fields.items():
        section = field.annotation
        assert isinstance(section, type) and issubclass(section, BaseModel)
        for key, sub in section.model_fields.items():
            default = sub.get_default(call_default_factory=True)
            rows.append(
                (f"{section_name}.{key}", json.dumps(default, default=str), sub.description or "")
            )
    return rows
