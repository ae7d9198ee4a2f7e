"""Mask encodings decode to the same class indices; every bad value is named with its file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from segkit.data.masks import decode_mask, load_mask, mask_histogram
from segkit.errors import DataError
from segkit.io.images import write_image
from tests.data.conftest import make_data_config

PALETTE = {
    "background": (0, 0, 0),
    "road": (128, 64, 128),
    "car": (0, 0, 142),
    "sky": (70, 130, 180),
}
CLASSES = list(PALETTE)


@pytest.fixture
def labels(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 4, (24, 32), dtype=np.uint8)


def test_index_palette_and_indexed_png_decode_identically(
    tmp_path: Path, labels: np.ndarray
) -> None:
    colours = np.array([PALETTE[c] for c in CLASSES], dtype=np.uint8)
    write_image(tmp_path / "index.png", labels)
    write_image(tmp_path / "rgb.png", colours[labels])
    write_image(tmp_path / "indexed.png", labels, palette=colours)  # VOC style: P-mode PNG
    index_cfg = make_data_config(classes=CLASSES)
    palette_cfg = make_data_config(classes=CLASSES, mask_encoding="palette", palette=PALETTE)
    expected = labels.astype(np.int64)
    for decoded in (
        load_mask(tmp_path / "index.png", index_cfg),
        load_mask(tmp_path / "indexed.png", index_cfg),  # indices read as classes
        load_mask(tmp_path / "rgb.png", palette_cfg),
        load_mask(tmp_path / "indexed.png", palette_cfg),  # colours read as classes
    ):
        assert decoded.dtype == np.int64
        np.testing.assert_array_equal(decoded, expected)


def test_binary_encodings_match_index(tmp_path: Path, rng: np.random.Generator) -> None:
    fg = rng.random((20, 20)) > 0.5
    index_cfg = make_data_config()
    binary_cfg = make_data_config(mask_encoding="binary")
    write_image(tmp_path / "b255.png", np.where(fg, 255, 0).astype(np.uint8))
    write_image(tmp_path / "b01.png", fg.astype(np.uint8))
    write_image(tmp_path / "idx.png", fg.astype(np.uint8))
    write_image(tmp_path / "bool.png", fg)  # written as 0/255
    expected = load_mask(tmp_path / "idx.png", index_cfg)
    for name in ("b255.png", "b01.png", "bool.png"):
        np.testing.assert_array_equal(load_mask(tmp_path / name, binary_cfg), expected)


def test_ignore_index_survives_every_encoding() -> None:
    raw = np.array([[0, 1, 255], [255, 1, 0]], dtype=np.uint8)
    expected = raw.astype(np.int64)
    np.testing.assert_array_equal(decode_mask(raw, make_data_config()), expected)
    # binary: with 1 present, 255 cannot be foreground, so it is ignore_index
    np.testing.assert_array_equal(
        decode_mask(raw, make_data_config(mask_encoding="binary")), expected
    )
    # binary 0/255 with a separate ignore value
    raw2 = np.array([[0, 255, 128]], dtype=np.uint8)
    out = decode_mask(raw2, make_data_config(mask_encoding="binary", ignore_index=128))
    np.testing.assert_array_equal(out, [[0, 1, 128]])


def test_index_out_of_range_names_file_and_values() -> None:
    raw = np.array([[0, 1, 3], [7, 255, 7]], dtype=np.uint8)
    with pytest.raises(DataError) as err:
        decode_mask(raw, make_data_config(), Path("masks/a.png"))
    assert (
        str(err.value)
        == "masks/a.png: mask values [3, 7] (3 pixels) are not classes 0..1 or ignore_index 255"
    )


def test_index_uint16_and_large_ignore() -> None:
    raw = np.array([[0, 2, 65535]], dtype=np.uint16)
    cfg = make_data_config(classes=["a", "b", "c"], ignore_index=65535)
    np.testing.assert_array_equal(decode_mask(raw, cfg), [[0, 2, 65535]])


def test_binary_rejects_other_values() -> None:
    raw = np.array([[0, 255, 128, 128]], dtype=np.uint8)
    with pytest.raises(
        DataError,
        match=r"m\.png: mask values \[128\] \(2 pixels\) are not binary 0/255 values or ignore_index 255",
    ):
        decode_mask(raw, make_data_config(mask_encoding="binary"), Path("m.png"))


def test_palette_unknown_colour_named_with_pixel_count(labels: np.ndarray) -> None:
    colours = np.array([PALETTE[c] for c in CLASSES], dtype=np.uint8)
    rgb = colours[labels]
    rgb[0, :5] = (1, 2, 3)  # e.g. an anti-aliased edge
    cfg = make_data_config(classes=CLASSES, mask_encoding="palette", palette=PALETTE)
    with pytest.raises(
        DataError, match=r"x\.png: mask colours \(1, 2, 3\): 5 px are not in data\.palette"
    ):
        decode_mask(rgb, cfg, Path("x.png"))


def test_colour_mask_with_index_encoding_suggests_palette() -> None:
    rgb = np.zeros((4, 4, 3), dtype=np.uint8)
    rgb[0, 0] = (255, 0, 0)
    with pytest.raises(
        DataError, match=r"c\.png: mask has colour pixels .* set mask_encoding: palette"
    ):
        decode_mask(rgb, make_data_config(), Path("c.png"))
    gray_as_rgb = np.repeat(np.array([[0, 1], [1, 0]], dtype=np.uint8)[:, :, None], 3, axis=2)
    np.testing.assert_array_equal(decode_mask(gray_as_rgb, make_data_config()), [[0, 1], [1, 0]])


def test_single_channel_mask_with_palette_encoding_is_an_error() -> None:
    cfg = make_data_config(classes=CLASSES, mask_encoding="palette", palette=PALETTE)
    with pytest.raises(DataError, match="needs RGB colour masks"):
        decode_mask(np.zeros((4, 4), dtype=np.uint8), cfg, Path("p.png"))


def test_mask_histogram_excludes_ignore() -> None:
    mask = np.array([[0, 0, 2], [255, 2, 2]], dtype=np.int64)
    np.testing.assert_array_equal(mask_histogram(mask, 3, 255), [2, 0, 3])
    assert mask_histogram(mask, 3, 255).dtype == np.int64


@settings(max_examples=30, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 12), st.integers(1, 12)), elements=st.integers(0, 3))
)
def test_palette_roundtrip_property(labels: np.ndarray) -> None:
    colours = np.array([PALETTE[c] for c in CLASSES], dtype=np.uint8)
    cfg = make_data_config(classes=CLASSES, mask_encoding="palette", palette=PALETTE)
    np.testing.assert_array_equal(decode_mask(colours[labels], cfg), labels.astype(np.int64))
