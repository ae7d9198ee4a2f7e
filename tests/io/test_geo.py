"""GeoTIFF inputs: every raster output keeps the CRS, transform and nodata; large ones are COGs."""

from __future__ import annotations

import builtins

import numpy as np
import pytest

from segkit.io import geo
from segkit.io.sources import open_image
from segkit.io.windows import ArrayWindows
from segkit.pipeline.run import predict_source
from tests.fixtures import shapes_image

rasterio = pytest.importorskip("rasterio")
from affine import Affine  # noqa: E402  (rasterio's dependency)

CRS = "EPSG:32633"  # WGS 84 / UTM zone 33N: projected, metres
TRANSFORM = Affine(0.5, 0.0, 500000.0, 0.0, -0.5, 4649776.0)


def _geotiff(path, height=90, width=120, nodata=None, tiled=False):
    pixels = shapes_image(height, width, seed=7)
    if nodata is not None:
        pixels[:20, :30] = nodata  # a corner with no data
    profile = {"driver": "GTiff", "height": height, "width": width, "count": 3, "dtype": "uint8"}
    profile |= {"crs": CRS, "transform": TRANSFORM, "nodata": nodata}
    if tiled:
        profile |= {"tiled": True, "blockxsize": 32, "blockysize": 32, "compress": "deflate"}
    with rasterio.open(path, "w", **profile) as ds:
        ds.write(pixels.transpose(2, 0, 1))
    return pixels


def test_outputs_keep_crs_and_transform(bundle_path, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _geotiff(src / "scene.tif", tiled=True)
    assert isinstance(open_image(src / "scene.tif", 3), ArrayWindows)  # read by windows
    out = tmp_path / "out"
    save = ["index", "entropy", "confidence", "color"]
    summary = predict_source(bundle_path, src, out, save=save, device="cpu", progress=False)
    assert summary.ok == 1, summary.failures
    for name in ("scene.tif", "scene_entropy.tif", "scene_confidence.tif", "scene_color.tif"):
        with rasterio.open(out / name) as ds:
            assert ds.crs == rasterio.crs.CRS.from_string(CRS), name
            assert ds.transform == TRANSFORM, name
            assert (ds.height, ds.width) == (90, 120), name
            if name == "scene_entropy.tif":
                entropy = ds.read(1)
    assert entropy.dtype == np.float32 and 0 <= entropy.min() and entropy.max() <= 1


def test_nodata_pixels_are_nodata_in_the_outputs(bundle_path, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    _geotiff(src / "scene.tif", nodata=0)
    out = tmp_path / "out"
    predict_source(bundle_path, src, out, save=["index", "entropy"], device="cpu", progress=False)
    with rasterio.open(out / "scene.tif") as ds:
        assert ds.nodata == 255
        labels = ds.read(1)
    with rasterio.open(out / "scene_entropy.tif") as ds:
        assert np.isnan(ds.nodata)
        entropy = ds.read(1)
    assert (labels[:20, :30] == 255).all() and (labels[20:] < 4).all()
    assert np.isnan(entropy[:20, :30]).all() and not np.isnan(entropy[20:]).any()


@pytest.mark.slow
def test_large_outputs_are_cloud_optimized(bundle_path, tmp_path, monkeypatch):
    monkeypatch.setattr(geo, "COG_MIN_PIXELS", 64 * 64)
    src = tmp_path / "in"
    src.mkdir()
    _geotiff(src / "scene.tif", height=600, width=700)
    out = tmp_path / "out"
    predict_source(bundle_path, src, out, save=["index", "entropy"], device="cpu", progress=False)
    for name in ("scene.tif", "scene_entropy.tif"):
        with rasterio.open(out / name) as ds:
            assert ds.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG", name
            assert ds.block_shapes[0] == (512, 512) and ds.overviews(1), name
            assert ds.crs == rasterio.crs.CRS.from_string(CRS) and ds.transform == TRANSFORM
    assert sorted(p.name for p in out.iterdir()) == [
        "manifest.jsonl",
        "scene.tif",
        "scene_entropy.tif",
    ]  # no scratch file left


def test_geotiff_without_rasterio_is_one_clear_line(bundle_path, tmp_path, monkeypatch):
    src = tmp_path / "in"
    src.mkdir()
    _geotiff(src / "scene.tif")
    real_import = builtins.__import__

    def no_rasterio(name, *args, **kwargs):
        if name == "rasterio" or name.startswith("rasterio."):
            raise ImportError("No module named 'rasterio'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_rasterio)
    out = tmp_path / "out"
    summary = predict_source(bundle_path, src, out, save=["index"], device="cpu", progress=False)
    assert summary.ok == 0 and len(summary.failures) == 1
    assert summary.failures[0].endswith(
        "needs rasterio, which is not installed: pip install 'segkit[geo]'"
    )
    assert "scene.tif: keeping this GeoTIFF's CRS" in summary.failures[0]
