"""The demo dataset: seeded, complete, and its three mask encodings agree."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from segkit.data.dataset import find_pairs
from segkit.data.masks import load_mask
from segkit.data.synthetic import SHAPE_CLASSES, SHAPE_PALETTE, make_shapes_dataset
from segkit.errors import ConfigError
from segkit.io.images import read_image
from tests.data.conftest import make_data_config


def _masks(info: dict, encoding: str) -> list[np.ndarray]:
    data = make_data_config(
        classes=info["classes"], mask_encoding=encoding, palette=info["palette"]
    )
    return [load_mask(m, data) for _, m in find_pairs(info["train_images"], info["train_masks"])]


def test_layout_and_return_value(tmp_path: Path) -> None:
    info = make_shapes_dataset(tmp_path, n_train=3, n_val=2, size=64)
    assert info["classes"] == SHAPE_CLASSES
    assert info["palette"] == {k: list(v) for k, v in SHAPE_PALETTE.items()}
    assert info["train_images"] == tmp_path / "train" / "images"
    assert [p.name for p in sorted(info["val_masks"].iterdir())] == ["000.png", "001.png"]
    assert len(find_pairs(info["train_images"], info["train_masks"])) == 3
    image = read_image(info["train_images"] / "000.png", in_channels=3)
    assert image.shape == (64, 64, 3) and image.dtype == np.uint8
    assert image.std() > 20  # textured and noisy, not flat


def test_seeded(tmp_path: Path) -> None:
    a = make_shapes_dataset(tmp_path / "a", n_train=2, n_val=1, size=64, seed=5)
    b = make_shapes_dataset(tmp_path / "b", n_train=2, n_val=1, size=64, seed=5)
    c = make_shapes_dataset(tmp_path / "c", n_train=2, n_val=1, size=64, seed=6)
    same = (a["train_images"] / "001.png").read_bytes() == (
        b["train_images"] / "001.png"
    ).read_bytes()
    assert same
    assert (a["train_images"] / "001.png").read_bytes() != (
        c["train_images"] / "001.png"
    ).read_bytes()


def test_encodings_agree(tmp_path: Path) -> None:
    index = _masks(make_shapes_dataset(tmp_path / "i", n_train=3, n_val=0, size=64), "index")
    palette = _masks(
        make_shapes_dataset(tmp_path / "p", n_train=3, n_val=0, size=64, mask_encoding="palette"),
        "palette",
    )
    binary_info = make_shapes_dataset(
        tmp_path / "b", n_train=3, n_val=0, size=64, mask_encoding="binary"
    )
    assert binary_info["classes"] == ["background", "shape"]
    binary = _masks(binary_info, "binary")
    for i, p, b in zip(index, palette, binary, strict=True):
        np.testing.assert_array_equal(i, p)
        np.testing.assert_array_equal(b, (i > 0).astype(np.int64))
        assert set(np.unique(i)) == {0, 1, 2, 3}  # every image shows every shape class


def test_bad_encoding(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="mask_encoding 'rgb'"):
        make_shapes_dataset(tmp_path, mask_encoding="rgb")
