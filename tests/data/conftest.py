"""Fixtures of the data tests: configs and small synthetic files written into tmp_path."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from segkit.config import DataConfig, SegkitConfig, load_config


def make_data_config(**overrides: Any) -> DataConfig:
    """A DataConfig with test-friendly defaults (2 classes, ignore 255)."""
    return DataConfig.model_validate({"classes": ["background", "foreground"], **overrides})


def make_config(data: dict[str, Any] | None = None, **sections: Any) -> SegkitConfig:
    """A full config with a small patch size, deterministic seed and no workers."""
    return load_config(
        {"data": {"patch_size": 64, "num_workers": 0, "batch_size": 2, **(data or {})}, **sections}
    )


def save_png(path: Path, array: np.ndarray, mode: str | None = None) -> Path:
    """Write with PIL directly (independent of segkit's writer)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array, mode=mode).save(path) if mode else Image.fromarray(array).save(path)
    return path


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)


@pytest.fixture
def pair_folders(tmp_path: Path, rng: np.random.Generator) -> tuple[Path, Path]:
    """images/ and masks/ with 6 clean 48x40 pairs of 2 classes (index masks), one in a subfolder."""
    images, masks = tmp_path / "images", tmp_path / "masks"
    for i in range(6):
        sub = Path("sub") if i == 5 else Path()
        save_png(images / sub / f"img_{i}.png", rng.integers(0, 256, (40, 48, 3), dtype=np.uint8))
        save_png(masks / sub / f"img_{i}.png", (rng.random((40, 48)) > 0.5).astype(np.uint8))
    return images, masks


@pytest.fixture(scope="session")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A small synthetic shapes dataset (index masks), written once per session."""
    from segkit.data.synthetic import make_shapes_dataset

    return make_shapes_dataset(
        tmp_path_factory.mktemp("shapes"), n_train=6, n_val=2, size=64, seed=0
    )
