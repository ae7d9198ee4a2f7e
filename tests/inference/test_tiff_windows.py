"""Tiled and striped TIFFs are read by windows: the same pixels, and only the segments touched."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from segkit.errors import DataError
from segkit.inference.predictor import Predictor
from segkit.inference.run import predict_source
from segkit.inference.sources import open_image
from segkit.inference.tiff_windows import MAX_SEGMENT_ROWS, TiffWindows
from segkit.inference.tiling import extract_tile
from segkit.inference.writers import read_manifest

from .conftest import shapes_image


@pytest.fixture
def tiled_rgb(tmp_path):
    image = shapes_image(150, 130, seed=7)
    path = tmp_path / "tiled.tif"
    tifffile.imwrite(path, image, tile=(32, 48), compression="zlib", photometric="rgb")
    return path, image


@pytest.fixture
def striped_gray16(tmp_path):
    image = shapes_image(90, 70, seed=8)[..., 0].astype(np.uint16) * 257
    path = tmp_path / "striped.tif"
    tifffile.imwrite(path, image, rowsperstrip=7, compression="zlib")
    return path, image[..., None]


@pytest.mark.parametrize("which", ["tiled_rgb", "striped_gray16"])
def test_windows_equal_the_decoded_image(request, which):
    path, image = request.getfixturevalue(which)
    windows = open_image(path, 3)
    assert isinstance(windows, TiffWindows)
    assert windows.shape == image.shape and windows.dtype == image.dtype
    h, w = image.shape[:2]
    for y, x, th, tw in [(0, 0, 40, 40), (33, 47, 64, 17), (h - 5, w - 9, 5, 9), (10, 0, 1, w)]:
        np.testing.assert_array_equal(
            windows[y : y + th, x : x + tw], image[y : y + th, x : x + tw]
        )
    np.testing.assert_array_equal(windows[20:50], image[20:50])  # rows only (overlays)
    # past the border the tiler reflects with np.ix_ index arrays
    for y, x in [(h - 30, w - 20), (0, w - 10), (h - 3, 0)]:
        np.testing.assert_array_equal(
            extract_tile(windows, y, x, 64, 64), extract_tile(image, y, x, 64, 64)
        )


def test_only_the_segments_a_window_touches_are_read(tiled_rgb, monkeypatch):
    path, image = tiled_rgb
    windows = open_image(path, 3)
    read = []
    original = tifffile.FileHandle.read_segments

    def counting(self, offsets, *args, **kwargs):
        read.append(len(offsets))
        return original(self, offsets, *args, **kwargs)

    monkeypatch.setattr(tifffile.FileHandle, "read_segments", counting)
    windows[40:60, 40:60]  # rows in tile row 1 (32-63), columns in tile columns 0 and 1
    assert read == [2]
    # The tiler's next window overlaps this one: the tiles of its last tile row are reused.
    rows = windows[50:100, 40:60]  # tile rows 1 (kept) and 2, 3 (read)
    assert read == [2, 4]
    np.testing.assert_array_equal(rows, image[50:100, 40:60])


def test_layouts_that_are_decoded_whole(tmp_path):
    image = shapes_image(60, 50, seed=1)
    tifffile.imwrite(tmp_path / "plain.tif", image)  # uncompressed: memory-mapped instead
    assert isinstance(open_image(tmp_path / "plain.tif", 3), np.memmap)
    tifffile.imwrite(tmp_path / "one_strip.tif", image, compression="zlib", rowsperstrip=60)
    whole = open_image(tmp_path / "one_strip.tif", 3)
    assert isinstance(whole, np.ndarray)  # one strip: every window would decode all of it
    np.testing.assert_array_equal(whole, image)
    tall = np.zeros((MAX_SEGMENT_ROWS + 8, 4), np.uint8)
    tifffile.imwrite(
        tmp_path / "tall.tif", tall, compression="zlib", rowsperstrip=MAX_SEGMENT_ROWS + 1
    )
    assert isinstance(open_image(tmp_path / "tall.tif", 1), np.ndarray)
    planes = np.ascontiguousarray(image.transpose(2, 0, 1))
    for name, kwargs in {
        "planar.tif": {"photometric": "rgb", "planarconfig": "separate"},
        "pages.tif": {"photometric": "minisblack"},
    }.items():
        tifffile.imwrite(tmp_path / name, planes, compression="zlib", tile=(32, 32), **kwargs)
        whole = open_image(tmp_path / name, 3)
        assert isinstance(whole, np.ndarray) and whole.shape == (60, 50, 3)  # planes -> channels


def test_pixel_limit_applies_before_reading(tiled_rgb):
    path, _ = tiled_rgb
    with pytest.raises(DataError, match="more than the limit of 100 "):
        open_image(path, 3, max_pixels=100)


def test_prediction_through_windows_equals_the_in_memory_image(bundle_path, tiled_rgb, tmp_path):
    path, image = tiled_rgb
    p = Predictor.from_path(bundle_path, device="cpu")
    windows = open_image(path, 3)
    np.testing.assert_array_equal(p.predict(windows, tile=64), p.predict(image, tile=64))
    out = tmp_path / "out"
    summary = predict_source(p, path, out, save=["index", "overlay"], tile=64, progress=False)
    assert summary.ok == 1 and not summary.failures
    assert (out / "tiled_overlay.png").is_file()


def test_a_damaged_tile_fails_that_image_only(bundle_path, tiled_rgb, tmp_path):
    path, image = tiled_rgb
    with tifffile.TiffFile(path) as tif:
        page = tif.pages.first
        offset, count = page.dataoffsets[-1], page.databytecounts[-1]
    data = bytearray(path.read_bytes())
    data[offset : offset + count] = b"\xff" * count  # the last tile is no longer zlib data
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "bad.tif").write_bytes(bytes(data))
    tifffile.imwrite(tmp_path / "src" / "good.tif", image, tile=(32, 48), compression="zlib")
    windows = open_image(tmp_path / "src" / "bad.tif", 3)
    with pytest.raises(DataError, match=r"bad\.tif: cannot read rows"):
        windows[140:150, 120:130]
    out = tmp_path / "out"
    summary = predict_source(bundle_path, tmp_path / "src", out, tile=64, progress=False)
    assert summary.ok == 1 and len(summary.failures) == 1
    assert "bad.tif: " in summary.failures[0] and "cannot read rows" in summary.failures[0]
    records = {r["input"].rsplit("/", 1)[-1]: r for r in read_manifest(out)}
    assert records["bad.tif"]["status"] == "failed" and records["good.tif"]["status"] == "ok"
    assert not (out / "bad.png").exists() and (out / "good.png").is_file()
