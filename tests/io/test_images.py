"""Image and mask I/O: formats, dtypes, channel conversion, and one clear error per bad file."""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from segkit.errors import DataError
from segkit.io import images as image_io
from segkit.io.images import (
    image_to_float,
    list_images,
    read_header,
    read_image,
    read_mask,
    write_image,
)
from tests.data.conftest import save_png


@pytest.fixture
def rgb(rng: np.random.Generator) -> np.ndarray:
    return rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def _png_bytes(array: np.ndarray, tmp_path: Path, name: str = "full.png") -> bytes:
    return save_png(tmp_path / name, array).read_bytes()


# --- errors: each names the file and the problem -------------------------------------------


def test_zero_byte_file(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(DataError, match=r"empty\.png: empty file \(0 bytes\)"):
        read_image(path)
    with pytest.raises(DataError, match=r"empty\.png: empty file"):
        read_mask(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nope\.png: file not found"):
        read_image(tmp_path / "nope.png")


@pytest.mark.parametrize("suffix", [".png", ".jpg"])
def test_truncated_file(tmp_path: Path, rgb: np.ndarray, suffix: str) -> None:
    full = tmp_path / f"full{suffix}"
    Image.fromarray(np.tile(rgb, (4, 4, 1))).save(full)
    data = full.read_bytes()
    path = tmp_path / f"cut{suffix}"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        read_image(path)
    message = str(err.value)
    assert message.startswith(str(path) + ": ")
    assert "truncated" in message or "corrupt" in message
    with pytest.raises(DataError, match="cut"):
        read_mask(path)


def test_text_file_named_png(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(DataError, match=r"notes\.png: not an image file"):
        read_image(path)
    with pytest.raises(DataError, match=r"notes\.png: not an image file"):
        read_mask(path)


def test_corrupt_tiff(tmp_path: Path) -> None:
    path = tmp_path / "bad.tif"
    path.write_bytes(b"II*\x00" + b"\xff" * 20)
    with pytest.raises(DataError, match=r"bad\.tif: cannot read TIFF"):
        read_image(path)


def test_unreadable_permissions(tmp_path: Path, rgb: np.ndarray) -> None:
    path = save_png(tmp_path / "secret.png", rgb)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as root: chmod 000 does not stop reading")
        with pytest.raises(DataError, match=r"secret\.png: permission denied"):
            read_image(path)
    finally:
        path.chmod(0o644)


def test_permission_error_is_reported_even_as_root(
    tmp_path: Path, rgb: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = save_png(tmp_path / "locked.png", rgb)

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(
        image_io, "open", denied, raising=False
    )  # what chmod 000 does for non-root users
    with pytest.raises(DataError, match=r"locked\.png: permission denied"):
        read_mask(path)


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_decompression_bomb_guard(tmp_path: Path) -> None:
    png = save_png(tmp_path / "big.png", np.zeros((100, 200), dtype=np.uint8))
    tif = tmp_path / "big.tif"
    tifffile.imwrite(tif, np.zeros((100, 200), dtype=np.uint8))
    for path in (png, tif):
        with pytest.raises(
            DataError,
            match=r"big\.(png|tif): image is 200x100 = 20000 pixels, more than the limit of 19999",
        ):
            read_image(path, max_pixels=19_999)
        with pytest.raises(DataError, match="decompression"):
            read_mask(path, max_pixels=10_000)
        assert read_image(path, max_pixels=20_000).shape == (100, 200, 1)
    with pytest.raises(DataError, match="decompression"):
        read_header(png, max_pixels=100)
    assert read_image(png).shape == (100, 200, 1)  # a previous call's limit does not leak


def test_the_limit_is_segkits_alone_and_pils_setting_is_restored(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PIL refuses images over twice its global MAX_IMAGE_PIXELS (~179 MP by default) before
    segkit sees them: with a segkit limit, that limit alone decides, in segkit's words, and the
    global is left as the caller had it."""
    png = save_png(tmp_path / "big.png", np.zeros((100, 200), dtype=np.uint8))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # PIL alone would refuse 20000 pixels
    assert read_image(png, max_pixels=10**9).shape == (100, 200, 1)
    with pytest.raises(DataError, match=r"20000 pixels, more than the limit of 5000 "):
        read_image(png, max_pixels=5000)  # > 2 x PIL's: PIL would have answered, with 2000
    assert Image.MAX_IMAGE_PIXELS == 1000


def test_channel_mismatch_is_named(tmp_path: Path, rng: np.random.Generator) -> None:
    path = tmp_path / "bands.tif"
    tifffile.imwrite(
        path,
        rng.integers(0, 255, (16, 16, 5), dtype=np.uint8),
        photometric="minisblack",
        planarconfig="contig",
    )
    with pytest.raises(
        DataError,
        match=r"bands\.tif: image has 5 channels but the model takes 3 \(data.in_channels\)",
    ):
        read_image(path, in_channels=3)


# --- formats, dtypes and channels ----------------------------------------------------------


def test_rgb_png_roundtrip_and_float(tmp_path: Path, rgb: np.ndarray) -> None:
    path = save_png(tmp_path / "a.png", rgb)
    image = read_image(path, in_channels=3)
    assert image.dtype == np.uint8 and image.shape == (20, 30, 3)
    np.testing.assert_array_equal(image, rgb)
    as_float = image_to_float(image)
    assert as_float.dtype == np.float32
    np.testing.assert_allclose(as_float, rgb / 255.0, atol=1e-7)


def test_gray_to_three_and_rgb_to_one(tmp_path: Path, rgb: np.ndarray) -> None:
    gray = rgb[:, :, 0]
    path = save_png(tmp_path / "g.png", gray)
    three = read_image(path, in_channels=3)
    assert three.shape == (20, 30, 3)
    for c in range(3):
        np.testing.assert_array_equal(three[:, :, c], gray)
    one = read_image(save_png(tmp_path / "c.png", rgb), in_channels=1)
    expected = np.asarray(Image.fromarray(rgb).convert("L"))  # PIL's own BT.601 luminance
    assert one.shape == (20, 30, 1) and one.dtype == np.uint8
    assert np.abs(one[:, :, 0].astype(int) - expected.astype(int)).max() <= 1


def test_bilevel_image_is_black_and_white_but_bilevel_mask_is_0_1(tmp_path: Path) -> None:
    bits = np.array([[0, 1, 1], [1, 0, 0]], dtype=bool)
    path = tmp_path / "bits.png"
    Image.fromarray(bits).save(path)
    with Image.open(path) as opened:
        assert opened.mode == "1"
    np.testing.assert_array_equal(read_image(path)[:, :, 0], bits * 255)
    np.testing.assert_array_equal(read_mask(path), bits.astype(np.uint8))


def test_cmyk_jpeg_reads_as_rgb(tmp_path: Path) -> None:
    colour = np.zeros((16, 16, 3), dtype=np.uint8)
    colour[:] = (200, 40, 60)
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(colour).convert("CMYK").save(path, quality=100)
    with Image.open(path) as opened:
        assert opened.mode == "CMYK"
    image = read_image(path, in_channels=3)
    assert image.shape == (16, 16, 3) and image.dtype == np.uint8
    assert np.abs(image.astype(int) - colour.astype(int)).max() <= 8


def test_16bit_png_and_tiff_keep_uint16(tmp_path: Path, rng: np.random.Generator) -> None:
    gray16 = rng.integers(0, 65536, (12, 14), dtype=np.uint16)
    rgb16 = rng.integers(0, 65536, (12, 14, 3), dtype=np.uint16)
    Image.fromarray(gray16).save(tmp_path / "g16.png")
    write_image(tmp_path / "c16.png", rgb16)  # PIL cannot write 16-bit colour; segkit can
    tifffile.imwrite(tmp_path / "c16.tif", rgb16, photometric="rgb")
    g = read_image(tmp_path / "g16.png")
    assert g.dtype == np.uint16 and g.shape == (12, 14, 1)
    np.testing.assert_array_equal(g[:, :, 0], gray16)
    for name in ("c16.png", "c16.tif"):
        c = read_image(tmp_path / name, in_channels=3)
        assert c.dtype == np.uint16
        np.testing.assert_array_equal(c, rgb16)
    f = image_to_float(g)
    np.testing.assert_allclose(f[:, :, 0], gray16 / 65535.0, rtol=1e-6)
    assert f.max() <= 1.0


def test_float_tiff_passes_through(tmp_path: Path, rng: np.random.Generator) -> None:
    data = rng.random((10, 11, 2)).astype(np.float32)
    tifffile.imwrite(tmp_path / "f.tif", data, photometric="minisblack", planarconfig="contig")
    image = read_image(tmp_path / "f.tif", in_channels=2)
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image_to_float(image), data)


@pytest.mark.parametrize("dtype", [np.int16, np.int32])
def test_signed_integer_tiff_is_refused_naming_file_and_dtype(
    tmp_path: Path, rng: np.random.Generator, dtype: type
) -> None:
    """Elevation-style data: refused when read (so check-data says it), not deep in training."""
    path = tmp_path / "dem.tif"
    tifffile.imwrite(path, rng.integers(-50, 3000, (10, 11)).astype(dtype))
    name = np.dtype(dtype).name
    with pytest.raises(
        DataError, match=rf"^{re.escape(str(path))}: pixels are signed integers \({name}\).*float32"
    ):
        read_image(path, in_channels=1)
    with pytest.raises(DataError, match=rf"signed integers \({name}\)"):
        image_to_float(np.zeros((2, 2, 1), dtype=dtype))


def test_multiband_planar_tiff_is_hwc(tmp_path: Path, rng: np.random.Generator) -> None:
    bands = rng.integers(0, 65535, (5, 16, 18), dtype=np.uint16)  # channels-first (planar) storage
    tifffile.imwrite(
        tmp_path / "planar.tif", bands, photometric="minisblack", planarconfig="separate"
    )
    image = read_image(tmp_path / "planar.tif", in_channels=5)
    assert image.shape == (16, 18, 5)
    for c in range(5):
        np.testing.assert_array_equal(image[:, :, c], bands[c])
    assert read_header(tmp_path / "planar.tif") == (16, 18, 5, "tiff")


def test_rgba_warns_once_and_drops_alpha(
    tmp_path: Path, rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(image_io, "_alpha_warned", False)
    rgba = rng.integers(0, 256, (10, 12, 4), dtype=np.uint8)
    path = save_png(tmp_path / "rgba.png", rgba)
    with pytest.warns(UserWarning, match=r"rgba\.png: alpha channel dropped"):
        image = read_image(path, in_channels=3)
    np.testing.assert_array_equal(image, rgba[:, :, :3])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a second RGBA image does not warn again
        read_image(path, in_channels=3)


def test_palette_png_image_is_rgb_mask_is_indices(tmp_path: Path) -> None:
    labels = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 0, 255]], dtype=np.uint8)
    path = tmp_path / "voc.png"
    write_image(path, labels, palette=colours)
    with Image.open(path) as opened:
        assert opened.mode == "P"
    np.testing.assert_array_equal(read_image(path), colours[labels])
    np.testing.assert_array_equal(read_mask(path), labels)
    np.testing.assert_array_equal(read_mask(path, palette_to_rgb=True), colours[labels])


def test_names_with_spaces_and_non_ascii(tmp_path: Path, rgb: np.ndarray) -> None:
    folder = tmp_path / "my data é"
    path = save_png(folder / "zebra 日本 ñ.png", rgb)
    assert list_images(folder) == [path]
    np.testing.assert_array_equal(read_image(path), rgb)


# --- folder listing ---------------------------------------------------------------------------


def test_list_images_recursive_sorted_filtered(tmp_path: Path, rgb: np.ndarray) -> None:
    root = tmp_path / "imgs"
    keep = [
        save_png(root / "b.PNG", rgb),
        save_png(root / "a.png", rgb),
        save_png(root / "sub" / "c.png", rgb),
    ]
    Image.fromarray(rgb).save(root / "d.JPG")
    keep.append(root / "d.JPG")
    (root / "notes.txt").write_text("x")
    save_png(root / ".hidden.png", rgb)
    save_png(root / ".a.x1y2.tmp.png", rgb)  # an atomic writer's temporary file
    save_png(root / ".cache" / "e.png", rgb)
    assert list_images(root) == sorted(keep)


def test_list_images_survives_symlink_loop(tmp_path: Path, rgb: np.ndarray) -> None:
    root = tmp_path / "imgs"
    image = save_png(root / "sub" / "a.png", rgb)
    (root / "sub" / "loop").symlink_to(root, target_is_directory=True)
    (root / "dangling.png").symlink_to(tmp_path / "missing.png")
    assert list_images(root) == [image]


def test_list_images_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"nowhere: folder not found"):
        list_images(tmp_path / "nowhere")
    (tmp_path / "file.png").write_bytes(b"x")
    with pytest.raises(DataError, match="is a file, not a folder"):
        list_images(tmp_path / "file.png")


# --- writing ----------------------------------------------------------------------------------


def test_write_image_is_atomic_and_roundtrips(tmp_path: Path, rng: np.random.Generator) -> None:
    mask = rng.integers(0, 4, (9, 7), dtype=np.uint8)
    bands = rng.random((9, 7, 4)).astype(np.float32)
    write_image(tmp_path / "out" / "m.png", mask)
    write_image(tmp_path / "out" / "b.tiff", bands)
    np.testing.assert_array_equal(read_mask(tmp_path / "out" / "m.png"), mask)
    np.testing.assert_array_equal(read_image(tmp_path / "out" / "b.tiff"), bands)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "b.tiff",
        "m.png",
    ]  # no temp files left


def test_write_image_failure_leaves_nothing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"x\.png: cannot write float"):
        write_image(tmp_path / "x.png", np.zeros((4, 4), dtype=np.float32))
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(DataError, match="cannot write '.gif'"):
        write_image(tmp_path / "x.gif", np.zeros((4, 4), dtype=np.uint8))
