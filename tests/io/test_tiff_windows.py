"""Tiled and striped TIFFs are read by windows through zarr: the same pixels, and only the chunks
touched."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import tifffile.zarr

from segkit.engine.predictor import Predictor
from segkit.engine.tiling import extract_tile
from segkit.errors import DataError
from segkit.io.sources import open_image
from segkit.io.windows import MAX_SEGMENT_ROWS, ArrayWindows
from segkit.pipeline.run import predict_source
from segkit.pipeline.writers import read_manifest
from tests.fixtures import shapes_image


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
    assert isinstance(windows, ArrayWindows)
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


def chunk_reads(monkeypatch) -> list[str]:
    """The keys of the TIFF chunks (tiles or strips) the zarr store decodes, in order."""
    read: list[str] = []
    original = tifffile.zarr.ZarrTiffStore.get

    async def counting(self, key, *args, **kwargs):
        if not key.rsplit("/", 1)[-1].startswith("."):  # .zarray, .zattrs: metadata
            read.append(key)
        return await original(self, key, *args, **kwargs)

    monkeypatch.setattr(tifffile.zarr.ZarrTiffStore, "get", counting)
    return read


def test_only_the_tiles_a_window_touches_are_read(tiled_rgb, monkeypatch):
    path, image = tiled_rgb
    windows = open_image(path, 3)
    read = chunk_reads(monkeypatch)
    windows[40:60, 40:60]  # rows in tile row 1 (32-63), columns in tile columns 0 and 1
    assert sorted(read) == ["1.0.0", "1.1.0"]
    # The tiler's next window overlaps this one: the tiles of its last tile row are reused.
    read.clear()
    rows = windows[50:100, 40:60]  # tile rows 1 (kept) and 2, 3 (read)
    assert sorted(read) == ["2.0.0", "2.1.0", "3.0.0", "3.1.0"]
    np.testing.assert_array_equal(rows, image[50:100, 40:60])


def test_predicting_a_tiled_ome_tiff_never_reads_it_whole(bundle_path, tmp_path, monkeypatch):
    """Every zarr read of a predict run is a band of tile rows, far from the whole image, and
    each tile is decoded about once (the tiler's overlapping rows reuse the kept tile row)."""
    image = shapes_image(256, 96, seed=3)
    path = tmp_path / "slide.ome.tif"
    tifffile.imwrite(path, image, tile=(16, 32), compression="zlib", photometric="rgb", ome=True)
    windows = open_image(path, 3)
    assert isinstance(windows, ArrayWindows) and windows.shape == image.shape
    bands: list[tuple[int, int]] = []
    original = ArrayWindows._zarr_read

    def spying(self, y0, y1, x0, x1):
        bands.append((y0, y1))
        return original(self, y0, y1, x0, x1)

    monkeypatch.setattr(ArrayWindows, "_zarr_read", spying)
    read = chunk_reads(monkeypatch)
    p = Predictor.from_path(bundle_path, device="cpu")
    labels = p.predict(windows, tile=64, overlap=0.25)
    np.testing.assert_array_equal(labels, p.predict(image, tile=64, overlap=0.25))
    assert len(bands) > 3 and max(y1 - y0 for y0, y1 in bands) <= 64 + 16  # a tile + a tile row
    tiles = (256 // 16) * (96 // 32)
    assert len(read) == len(set(read)) == tiles  # every tile decoded exactly once


def test_layouts_that_are_decoded_whole(tmp_path):
    image = shapes_image(60, 50, seed=1)
    tifffile.imwrite(tmp_path / "plain.tif", image)  # uncompressed: memory-mapped instead
    assert isinstance(open_image(tmp_path / "plain.tif", 3), np.memmap)
    tall = np.zeros((MAX_SEGMENT_ROWS + 8, 4), np.uint8)
    tifffile.imwrite(
        tmp_path / "tall.tif", tall, compression="zlib", rowsperstrip=MAX_SEGMENT_ROWS + 1
    )
    assert isinstance(open_image(tmp_path / "tall.tif", 1), np.ndarray)  # strips too tall


def test_planes_and_pages_are_windows_with_the_planes_as_channels(tmp_path):
    image = shapes_image(60, 50, seed=1)
    planes = np.ascontiguousarray(image.transpose(2, 0, 1))
    for name, kwargs in {
        "planar.tif": {"photometric": "rgb", "planarconfig": "separate"},
        "pages.tif": {"photometric": "minisblack"},
    }.items():
        tifffile.imwrite(tmp_path / name, planes, compression="zlib", tile=(32, 32), **kwargs)
        windows = open_image(tmp_path / name, 3)
        assert isinstance(windows, ArrayWindows) and windows.shape == (60, 50, 3)
        np.testing.assert_array_equal(windows[10:40, 5:45], image[10:40, 5:45])


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
