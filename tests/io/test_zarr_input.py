""".zarr stores as predict inputs: plain arrays and OME-Zarr images, read by windows."""

from __future__ import annotations

import re

import numpy as np
import pytest
import zarr
from PIL import Image

from segkit.cli import main
from segkit.errors import DataError
from segkit.io.images import read_header, read_image
from segkit.io.sources import find_inputs, open_image
from segkit.io.windows import ArrayWindows
from segkit.pipeline.run import predict_source
from tests.fixtures import shapes_image


def _ome_zarr(path, image: np.ndarray) -> None:
    """An OME-Zarr (NGFF 0.4) image of ``H x W x 3`` pixels: t, c, z, y, x with t = z = 1, and a
    2x level that segkit does not read."""
    group = zarr.open_group(path, mode="w", zarr_format=2)
    tczyx = image.transpose(2, 0, 1)[None, :, None]
    group.create_array("0", data=tczyx, chunks=(1, 1, 1, 32, 32))
    group.create_array("1", data=np.ascontiguousarray(tczyx[..., ::2, ::2]))
    axes = [{"name": "t", "type": "time"}, {"name": "c", "type": "channel"}]
    axes += [{"name": n, "type": "space"} for n in "zyx"]
    datasets = [
        {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": [1, 1, 1, s, s]}]}
        for i, s in enumerate((1, 2))
    ]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": datasets}]


@pytest.fixture
def scene(tmp_path):
    """The same 96 x 80 image as a PNG, a plain zarr array and an OME-Zarr image."""
    image = shapes_image(96, 80, seed=4)
    for name in ("png", "plain", "ome"):
        (tmp_path / name).mkdir()
    Image.fromarray(image).save(tmp_path / "png" / "scene.png")
    zarr.create_array(tmp_path / "plain" / "scene.zarr", data=image, chunks=(32, 32, 3))
    _ome_zarr(tmp_path / "ome" / "scene.zarr", image)
    return tmp_path, image


def test_zarr_inputs_predict_like_the_png(bundle_path, scene):
    root, image = scene
    masks = {}
    for name in ("png", "plain", "ome"):
        out = root / f"out_{name}"
        summary = predict_source(
            bundle_path, root / name, out, save=["index", "entropy"], tile=64, progress=False
        )
        assert summary.ok == 1, summary.failures
        masks[name] = np.asarray(Image.open(out / "scene.png"))
        assert (out / "scene_entropy.tif").is_file()
    assert masks["png"].shape == (96, 80)
    np.testing.assert_array_equal(masks["plain"], masks["png"])
    np.testing.assert_array_equal(masks["ome"], masks["png"])


def test_a_zarr_store_is_one_image_read_by_windows(scene):
    root, image = scene
    for name in ("plain", "ome"):
        store = root / name / "scene.zarr"
        assert find_inputs(store)[0].path == store  # the store itself as the source
        assert [i.path for i in find_inputs(root / name)] == [store]  # not a folder of files
        windows = open_image(store, 3)
        assert isinstance(windows, ArrayWindows) and windows.shape == image.shape
        np.testing.assert_array_equal(windows[10:70, 33:80], image[10:70, 33:80])
        assert read_header(store)[:3] == (96, 80, 3)
        np.testing.assert_array_equal(read_image(store, 3), image)  # training reads it whole
    with pytest.raises(DataError, match="more than the limit of 100"):
        open_image(root / "plain" / "scene.zarr", 3, max_pixels=100)


def test_bad_zarr_inputs_fail_with_one_line_naming_the_store(bundle_path, tmp_path, capsys):
    src = tmp_path / "src"
    (src / "junk.zarr").mkdir(parents=True)
    (src / "junk.zarr" / "notes.txt").write_text("not zarr")
    zarr.create_array(src / "stack.zarr", data=np.zeros((2, 3, 40, 40), np.uint8))
    zarr.open_group(src / "group.zarr", mode="w").create_array("a", data=np.zeros((8, 8)))
    zarr.create_array(src / "cube.zarr", data=np.zeros((40, 40, 40), np.uint8))
    zarr.create_array(src / "complex.zarr", data=np.zeros((8, 8), np.complex64))
    expected = {
        "junk.zarr": "not a zarr array or OME-Zarr image",
        "stack.zarr": "a 4-D array (2x3x40x40), not an image",
        "group.zarr": "a zarr group without OME-Zarr multiscales metadata, not an image",
        "cube.zarr": "a 3-D array (40x40x40), not an image",
        "complex.zarr": "zarr array of complex64 values, not image pixels",
    }
    for name, message in expected.items():
        with pytest.raises(DataError, match=f"{name}: {re.escape(message)}"):
            open_image(src / name, 3)
    code = main(["predict", str(bundle_path), str(src), "-o", str(tmp_path / "out")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(lines) == len(expected)
    for name, message in expected.items():
        assert any(f"{src / name}: " in line and message in line for line in lines), name


def test_ome_zarr_with_two_non_singleton_extra_axes_is_refused(tmp_path):
    group = zarr.open_group(tmp_path / "tz.zarr", mode="w", zarr_format=2)
    group.create_array("0", data=np.zeros((2, 3, 32, 32), np.uint8))
    axes = [{"name": "t"}, {"name": "c"}, {"name": "y"}, {"name": "x"}]
    group.attrs["multiscales"] = [{"version": "0.4", "axes": axes, "datasets": [{"path": "0"}]}]
    with pytest.raises(DataError, match=r"tz\.zarr: a 4-D array \(t, c, y, x: 2x3x32x32\)"):
        open_image(tmp_path / "tz.zarr", 3)
