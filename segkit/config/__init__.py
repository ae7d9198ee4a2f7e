"""The typed config schema: the single home of every key, default, type and range.

One module per job: ``base`` (the strict section model, the enumerated option values), one module
per topic of sections (``data``, ``model``, ``optimization``, ``run``, ``predict``), ``schema``
(the whole ``SegkitConfig``), ``loading`` (YAML, ``key=value`` overrides, saving) and
``messages`` (the wording of config errors). Import the public names from ``segkit.config``.
"""

from segkit.config.base import (
    BLENDS,
    MASK_ENCODINGS,
    TTA,
    BatchSize,
    Blend,
    MaskEncoding,
    Overlap,
    TileSize,
)
from segkit.config.data import IMAGENET_MEAN, IMAGENET_STD, AugmentConfig, DataConfig, SplitConfig
from segkit.config.loading import load_config, parse_overrides, save_config
from segkit.config.model import WEIGHT_SUFFIXES, ModelConfig, is_weights_file
from segkit.config.optimization import LossConfig, OptimizerConfig, SchedulerConfig
from segkit.config.predict import PredictConfig
from segkit.config.run import RunConfig, TrainerConfig
from segkit.config.schema import SegkitConfig, config_reference

__all__ = [
    "BLENDS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "MASK_ENCODINGS",
    "TTA",
    "WEIGHT_SUFFIXES",
    "AugmentConfig",
    "BatchSize",
    "Blend",
    "DataConfig",
    "LossConfig",
    "MaskEncoding",
    "ModelConfig",
    "OptimizerConfig",
    "Overlap",
    "PredictConfig",
    "RunConfig",
    "SchedulerConfig",
    "SegkitConfig",
    "SplitConfig",
    "TileSize",
    "TrainerConfig",
    "config_reference",
    "is_weights_file",
    "load_config",
    "parse_overrides",
    "save_config",
]
