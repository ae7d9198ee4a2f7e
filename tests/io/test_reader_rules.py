"""Rules every reader shares, each written once: the pixel limit (one message, whichever reader
meets the image first) and channel adaptation (reading a file and predicting an array agree)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile

from segkit.errors import DataError
from segkit.io.images import read_header, read_image
from segkit.io.sources import open_image
from segkit.io.windows import ArrayWindows
from tests.data.conftest import save_png


def _files(tmp_path: Path) -> dict[str, Path]:
    """A 200 x 100 (width x height) image as every kind of file a different reader opens."""
    image = np.zeros((100, 200, 3), np.uint8)
    files = {"png": save_png(tmp_path / "a.png", image)}
    files["memmap"] = tmp_path / "plain.tif"  # uncompressed, contiguous: memory-mapped
    tifffile.imwrite(files["memmap"], image, photometric="rgb")
    files["windows"] = tmp_path / "tiled.tif"  # tiled: read by windows
    tifffile.imwrite(files["windows"], image, photometric="rgb", tile=(32, 32), compression="zlib")
    return files


READERS = {
    "read_header": lambda path: read_header(path, 19_999),
    "read_image": lambda path: read_image(path, 3, 19_999),
    "open_image": lambda path: open_image(path, 3, 19_999),
}


@pytest.mark.parametrize("kind", ["png", "memmap", "windows"])
@pytest.mark.parametrize("reader", list(READERS))
def test_every_reader_refuses_with_the_same_message(tmp_path, kind, reader):
    path = _files(tmp_path)[kind]
    with pytest.raises(DataError) as info:
        READERS[reader](path)
    assert str(info.value) == (
        f"{path}: image is 200x100 = 20000 pixels, more than the limit of 19999 "
        "(data.max_image_pixels, or predict's --max-pixels; a guard against decompression bombs)"
    )


def test_the_files_do_reach_the_readers_named(tmp_path):
    files = _files(tmp_path)
    assert isinstance(open_image(files["memmap"], 3), np.memmap)
    assert isinstance(open_image(files["windows"], 3), ArrayWindows)


def test_reading_and_predicting_adapt_channels_alike(tmp_path, bundle_path, gray_bundle_path):
    from segkit.engine.predictor import Predictor

    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    path = save_png(tmp_path / "rgb.png", rgb)
    gray_model = Predictor.from_path(gray_bundle_path, device="cpu")
    np.testing.assert_array_equal(  # RGB -> luminance, whether the file or the array is given
        gray_model.predict(read_image(path, 1)), gray_model.predict(rgb)
    )
    bands = tmp_path / "bands.tif"
    tifffile.imwrite(
        bands, np.zeros((16, 16, 5), np.uint8), photometric="minisblack", planarconfig="contig"
    )
    with pytest.raises(DataError) as by_file:
        read_image(bands, 3)
    with pytest.raises(DataError) as by_array:
        Predictor.from_path(bundle_path, device="cpu").predict(np.zeros((16, 16, 5), np.uint8))
    assert str(by_file.value) == f"{bands}: {by_array.value}"
    assert str(by_array.value).startswith("image has 5 channels but the model takes 3")
