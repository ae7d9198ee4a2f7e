"""Every example in configs/ is valid and describes what its comments say."""

from __future__ import annotations

from pathlib import Path

import pytest

from segkit.config import load_config

CONFIGS = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))


def test_there_are_examples_for_each_documented_case():
    names = {p.stem for p in CONFIGS}
    assert {"binary_membrane", "multiclass_void", "palette_rgb", "large_images", "ddp_multi_gpu"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_example_config_validates(path):
    config = load_config(path)
    assert config.data.train is not None
    assert config.data.train.images.is_absolute()  # resolved against the config's folder
    assert len(config.data.classes) >= 2


def test_membrane_example_points_at_the_shared_dataset():
    config = load_config(Path(__file__).parents[1] / "configs" / "binary_membrane.yaml")
    assert config.data.mask_encoding == "binary" and config.data.in_channels == 1
    assert config.data.train.images.parts[-3:] == ("membrane", "train", "image")
