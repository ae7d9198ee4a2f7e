"""Large index masks are pyramidal OME-TIFFs that tifffile (and QuPath, napari) read by level."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import zarr
from PIL import Image

from segkit.cli import main
from segkit.engine.predictor import Predictor
from segkit.io import pyramids
from segkit.io.pyramids import pyramid_levels
from segkit.pipeline.run import predict_source
from segkit.pipeline.writers import outputs_exist
from tests.fixtures import model_card


class ThresholdBackend:
    """A per-pixel two-class model on gray tiles (class 1 where the pixel is bright): cheap enough
    to predict 8192 x 8192 pixels in seconds on a CPU."""

    device = torch.device("cpu")
    card = model_card(2, in_channels=1)

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        p = torch.sigmoid(tiles[:, :1] * 4)
        return torch.cat([1 - p, p], dim=1)


@pytest.mark.slow
def test_8192_prediction_is_a_pyramid_of_at_least_three_levels(tmp_path):
    side = 8192
    src = tmp_path / "in"
    src.mkdir()
    image = np.zeros((side, side), np.uint8)
    image[:, side // 2 :] = 255  # right half: class 1
    image[: side // 4] = 255 - image[: side // 4]  # top quarter: swapped
    tifffile.imwrite(src / "big.tif", image)  # uncompressed: memory-mapped
    del image
    predictor = Predictor(ThresholdBackend(), tile=2048, overlap=0, blend="constant", batch_size=1)
    out = tmp_path / "out"
    summary = predict_source(predictor, src, out, save=["index"], progress=False)
    assert summary.ok == 1, summary.failures
    path = out / "big.ome.tif"
    assert outputs_exist(out / "big", ["index"], 2)
    with tifffile.TiffFile(path) as tif:
        assert tif.is_ome
        levels = tif.series[0].levels
        assert len(levels) >= 3 and len(levels) == pyramid_levels(side, side)
        shapes = [level.shape for level in levels]
        assert shapes[:3] == [(side, side), (side // 2, side // 2), (side // 4, side // 4)]
        full, third = levels[0].asarray(), levels[2].asarray()
    expected = np.zeros((side, side), np.uint8)
    expected[:, side // 2 :] = 1
    expected[: side // 4] = 1 - expected[: side // 4]
    np.testing.assert_array_equal(full, expected)
    np.testing.assert_array_equal(third, expected[::4, ::4])


def test_small_masks_stay_png(tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "small.tif", np.zeros((64, 96), np.uint8))
    predictor = Predictor(ThresholdBackend(), tile=64)
    predict_source(predictor, src, tmp_path / "out", save=["index"], progress=False)
    assert (tmp_path / "out" / "small.png").is_file()


def _small_pyramids(monkeypatch):
    """Pyramids from 64 x 64 pixels, in 16-pixel tiles: a 128 x 112 output gets 3 levels."""
    monkeypatch.setattr(pyramids, "PYRAMID_MIN_PIXELS", 64 * 64)
    monkeypatch.setattr(pyramids, "PYRAMID_TILE", 16)


def _gradient_scene(tmp_path):
    """A gray 128 x 112 image whose brightness varies, so the entropy map does too."""
    src = tmp_path / "in"
    src.mkdir()
    y, x = np.mgrid[0:128, 0:112]
    image = ((np.sin(y / 9) * np.cos(x / 13) + 1) * 127.5).astype(np.uint8)
    Image.fromarray(image).save(src / "scene.png")
    return src


NAMES = {
    "index": "scene",
    "color": "scene_color",
    "entropy": "scene_entropy",
    "confidence": "scene_confidence",
}
SAVE = list(NAMES)


def _predict(src, out, **options):
    predictor = Predictor(ThresholdBackend(), tile=64, overlap=0.25)
    summary = predict_source(predictor, src, out, save=SAVE, progress=False, **options)
    assert summary.ok == 1, summary.failures


def _plain_outputs(src, out):
    """The same prediction without pyramids: PNG masks and plain float TIFFs."""
    _predict(src, out)
    return {
        "index": np.asarray(Image.open(out / "scene.png")),
        "color": np.asarray(Image.open(out / "scene_color.png")),
        "entropy": tifffile.imread(out / "scene_entropy.tif"),
        "confidence": tifffile.imread(out / "scene_confidence.tif"),
    }


def _check_levels(levels, full):
    """Levels of one output: 3 halvings of the full resolution, nearest for index and colour,
    2 x 2 means for the float maps."""
    assert len(levels["index"]) == pyramid_levels(128, 112) == 3
    for kind, arrays in levels.items():
        assert [a.shape[:2] for a in arrays] == [(128, 112), (64, 56), (32, 28)], kind
        np.testing.assert_array_equal(arrays[0], full[kind])
    colors = np.asarray(ThresholdBackend.card.colors, np.uint8)
    for step, index, color in zip((1, 2, 4), levels["index"], levels["color"], strict=True):
        np.testing.assert_array_equal(index, full["index"][::step, ::step])
        np.testing.assert_array_equal(color, colors[index])
    for kind in ("entropy", "confidence"):
        means = full[kind].reshape(64, 2, 56, 2).mean(axis=(1, 3))
        np.testing.assert_allclose(levels[kind][1], means, rtol=1e-6)
        np.testing.assert_allclose(
            levels[kind][2], means.reshape(32, 2, 28, 2).mean(axis=(1, 3)), rtol=1e-5
        )
    assert 0 < levels["entropy"][0].max() <= 1 and levels["entropy"][0].std() > 0.01


def test_every_large_raster_output_is_a_pyramidal_ome_tiff(tmp_path, monkeypatch):
    src = _gradient_scene(tmp_path)
    full = _plain_outputs(src, tmp_path / "plain")
    _small_pyramids(monkeypatch)
    out = tmp_path / "out"
    _predict(src, out)
    levels = {}
    for kind, name in NAMES.items():
        with tifffile.TiffFile(out / f"{name}.ome.tif") as tif:
            assert tif.is_ome and tif.series[0].is_pyramidal
            levels[kind] = [level.asarray() for level in tif.series[0].levels]
    _check_levels(levels, full)
    assert levels["color"][0].shape == (128, 112, 3) and levels["entropy"][0].dtype == np.float32
    assert outputs_exist(out / "scene", SAVE, 2)


def test_ome_zarr_outputs_are_ngff_multiscales(tmp_path, monkeypatch):
    src = _gradient_scene(tmp_path)
    full = _plain_outputs(src, tmp_path / "plain")
    _small_pyramids(monkeypatch)
    out = tmp_path / "out"
    stale = out / ".scene.ome.a1b2c3d4.tmp.zarr"  # what a killed run leaves
    stale.mkdir(parents=True)
    (stale / ".zgroup").write_text("{}")
    _predict(src, out, pyramid_format="ome-zarr")
    assert not stale.exists() and sorted(p.name for p in out.iterdir()) == sorted(
        [f"{name}.ome.zarr" for name in NAMES.values()] + ["manifest.jsonl"]
    )
    levels = {}
    for kind, name in NAMES.items():
        group = zarr.open_group(out / f"{name}.ome.zarr", mode="r")
        (image,) = group.attrs["multiscales"]
        assert image["version"] == "0.4" and image["name"] == name
        axes = [a["name"] for a in image["axes"]]
        assert axes == (["c", "y", "x"] if kind == "color" else ["y", "x"])
        scales = [d["coordinateTransformations"][0]["scale"][-2:] for d in image["datasets"]]
        assert scales == [[1, 1], [2, 2], [4, 4]]
        arrays = [np.asarray(group[d["path"]][:]) for d in image["datasets"]]
        levels[kind] = [np.moveaxis(a, 0, 2) if kind == "color" else a for a in arrays]
    _check_levels(levels, full)
    labels = zarr.open_group(out / "scene.ome.zarr", mode="r").attrs["image-label"]
    assert [c["rgba"][:3] for c in labels["colors"]] == np.asarray(
        ThresholdBackend.card.colors
    ).tolist()
    assert outputs_exist(out / "scene", SAVE, 2)
    # a second run replaces the stores whole; with --skip-existing it leaves them
    summary = predict_source(
        Predictor(ThresholdBackend(), tile=64),
        src,
        out,
        save=SAVE,
        skip_existing=True,
        pyramid_format="ome-zarr",
        progress=False,
    )
    assert summary.skipped == 1
    _predict(src, out, pyramid_format="ome-zarr")
    assert np.array_equal(zarr.open_array(out / "scene.ome.zarr" / "0", mode="r")[:], full["index"])


def test_cli_pyramid_format(bundle_path, tmp_path, monkeypatch, capsys):
    src = _gradient_scene(tmp_path)
    _small_pyramids(monkeypatch)
    out = tmp_path / "out"
    args = ["predict", str(bundle_path), str(src), "-o", str(out), "--tile", "64"]
    assert main([*args, "--pyramid-format", "ome-zarr", "--save", "index", "entropy"]) == 0
    assert zarr.open_array(out / "scene_entropy.ome.zarr" / "2", mode="r").shape == (32, 28)
    assert main([*args, "--save", "color"]) == 0  # the default: OME-TIFF
    with tifffile.TiffFile(out / "scene_color.ome.tif") as tif:
        assert [level.shape for level in tif.series[0].levels][-1] == (32, 28, 3)
    with pytest.raises(SystemExit):
        main([*args, "--pyramid-format", "png"])
    assert "invalid choice: 'png'" in capsys.readouterr().err
