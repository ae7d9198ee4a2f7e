"""Output files: palette PNGs, colours, overlays, streamed probabilities, atomic failure."""

from __future__ import annotations

import errno
from itertools import pairwise

import numpy as np
import pytest
import torch
from PIL import Image

from segkit.errors import DataError
from segkit.io.palette import default_colors
from segkit.pipeline.writers import (
    PNG_MAX_SIDE,
    OutputWriter,
    output_path,
    outputs_exist,
    read_manifest,
    write_manifest,
)
from tests.fixtures import model_card


def random_probs(k: int, h: int, w: int, seed: int = 0) -> np.ndarray:
    p = np.random.default_rng(seed).random((k, h, w), dtype=np.float32) + 1e-3
    return p / p.sum(0)


def write_all(
    tmp_path,
    k=4,
    h=37,
    w=29,
    save=("index", "color", "overlay", "probs"),
    probs_dtype="float16",
    bands=(10, 20, 37),
    cols=(12, 29),
):
    probs = random_probs(k, h, w)
    image = np.random.default_rng(1).integers(0, 255, (h, w, 3), dtype=np.uint8)
    with OutputWriter(tmp_path / "sub" / "img", save, model_card(k), h, w, probs_dtype) as writer:
        for top, bottom in zip((0, *bands), bands, strict=False):
            for left, right in zip((0, *cols), cols, strict=False):  # blocks, row-major
                writer.add_block(top, left, probs[:, top:bottom, left:right])
        paths = writer.commit(image)
    return probs, image, paths


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_labels_of_gpu_blocks_are_all_in_the_mask_at_commit(tmp_path):
    """On a GPU the labels come back a few blocks late (HostLabels): commit waits for them, and
    each block's labels are the block as it was when added, though its buffer was reused."""
    probs = random_probs(4, 37, 29)
    buffer = torch.empty(4, 37, 29, device="cuda")
    with OutputWriter(tmp_path / "img", ["index"], model_card(4), 37, 29) as writer:
        for top, bottom in pairwise((0, 10, 20, 37)):
            for left, right in pairwise((0, 12, 29)):
                view = buffer[:, : bottom - top, : right - left]  # as the stitcher hands out
                view.copy_(torch.from_numpy(probs[:, top:bottom, left:right]))
                writer.add_block(top, left, view)
        paths = writer.commit()
    with Image.open(paths["index"]) as im:
        np.testing.assert_array_equal(np.array(im), probs.argmax(0))


def test_every_output_is_right(tmp_path):
    probs, image, paths = write_all(tmp_path)
    labels = probs.argmax(0)
    colors = default_colors(4)
    assert {k: p.name for k, p in paths.items()} == {
        "index": "img.png",
        "color": "img_color.png",
        "overlay": "img_overlay.png",
        "probs": "img_probs.npy",
    }
    with Image.open(paths["index"]) as im:
        assert (
            im.mode == "P"
        )  # palette embedded: the mask shows in colour, pixel values are classes
        np.testing.assert_array_equal(np.array(im), labels)
        np.testing.assert_array_equal(np.array(im.getpalette()[:12]).reshape(4, 3), colors)
    np.testing.assert_array_equal(np.array(Image.open(paths["color"])), colors[labels])
    expected_overlay = (image.astype(np.uint16) + colors[labels]) // 2
    np.testing.assert_array_equal(np.array(Image.open(paths["overlay"])), expected_overlay)
    stored = np.load(paths["probs"])
    assert stored.dtype == np.float16 and stored.shape == (4, 37, 29)
    np.testing.assert_allclose(stored.sum(0), 1.0, atol=5e-3)
    np.testing.assert_allclose(stored, probs, atol=1e-3)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == sorted(
        p.name for p in paths.values()
    )  # no temporaries


def test_quantised_probs(tmp_path):
    probs, _, paths = write_all(tmp_path, save=("probs",), probs_dtype="uint8")
    stored = np.load(paths["probs"])
    assert stored.dtype == np.uint8
    np.testing.assert_allclose(stored / 255.0, probs, atol=0.5 / 255 + 1e-6)
    assert np.abs(stored.sum(0).astype(int) - 255).max() <= 4


def test_many_classes_give_a_tiff_of_int32_labels(tmp_path):
    import tifffile

    probs, _, paths = write_all(tmp_path, k=300, h=9, w=11, save=("index",), bands=(9,), cols=(11,))
    assert paths["index"].suffix == ".tif"
    labels = tifffile.imread(paths["index"])
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, probs.argmax(0))


def test_output_names_and_existence(tmp_path):
    base = tmp_path / "a"
    assert output_path(base, "index", 2).name == "a.png"
    assert output_path(base, "index", 2, PNG_MAX_SIDE + 1, 10).name == "a.tif"
    assert output_path(base, "color", 2, PNG_MAX_SIDE + 1, 10).name == "a_color.tif"
    assert not outputs_exist(base, ["index", "probs"], 2)
    (tmp_path / "a.tif").write_bytes(b"x")  # a big image's index went to TIFF: still counts
    (tmp_path / "a_probs.npy").write_bytes(b"x")
    assert outputs_exist(base, ["index", "probs"], 2)
    with pytest.raises(DataError, match="unknown output 'mask'"):
        output_path(base, "mask", 2)


def test_error_mid_image_leaves_nothing(tmp_path):
    with (
        pytest.raises(RuntimeError),
        OutputWriter(tmp_path / "img", ["index", "probs"], model_card(3), 20, 20) as writer,
    ):
        writer.add_block(0, 0, random_probs(3, 10, 20))
        raise RuntimeError("model crashed")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_is_one_clear_error_and_leaves_nothing(tmp_path, monkeypatch):
    def full(self, fp, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(DataError, match=r"cannot write .*img_color\.png: No space left on device"):
        write_all(tmp_path, save=("probs", "color"))
    assert list((tmp_path / "sub").iterdir()) == []


def test_unwritable_folder_is_one_clear_error(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(DataError, match=r"cannot write .*file/x\.png: "):
        OutputWriter(blocker / "x", ["index"], model_card(2), 4, 4).__enter__()


def test_manifest_round_trip(tmp_path):
    records = [
        {"input": "a.png", "status": "ok", "error": None},
        {"input": "b.png", "status": "failed", "error": "corrupt"},
    ]
    write_manifest(tmp_path, records)
    assert read_manifest(tmp_path) == records
    assert read_manifest(tmp_path / "none") == []


def test_large_colour_and_overlay_tiffs_hold_what_the_pngs_hold(tmp_path, monkeypatch):
    """Beyond PNG's side limit colour and overlay go to TIFF, written a band of tiles at a time
    (edge tiles partial): the pixels are those of the PNG path."""
    import tifffile

    import segkit.pipeline.writers as writers

    _, _, pngs = write_all(tmp_path / "png", save=("color", "overlay"))
    monkeypatch.setattr(writers, "PNG_MAX_SIDE", 20)  # 37 x 29 is "large" now
    monkeypatch.setattr(writers, "_TIFF_TILE", 16)  # 3 bands x 2 tiles, partial at the edges
    _, _, tiffs = write_all(tmp_path / "tif", save=("color", "overlay"))
    for kind in ("color", "overlay"):
        assert pngs[kind].suffix == ".png" and tiffs[kind].suffix == ".tif"
        np.testing.assert_array_equal(
            tifffile.imread(tiffs[kind]), np.asarray(Image.open(pngs[kind]))
        )
        with tifffile.TiffFile(tiffs[kind]) as tif:
            assert tif.pages[0].is_tiled and tif.pages[0].tilelength == 16
