"""Bad input files, one case each, seen from the CLI: ``check-data`` (training refuses them up
front) and ``predict`` (the bad file is skipped and reported, the rest is predicted, exit 1).

Each case asserts the one line the user sees (it names the file and the problem) and the exit code.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from segkit.cli import main
from segkit.pipeline.writers import MANIFEST, read_manifest

from .conftest import config_dict, error_lines, picture, save_png, temporaries, write_config

BIG = 100_000  # sides of the decompression bomb: 10^10 pixels declared in a 100-byte file


def _noise_png(path: Path) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buf, format="PNG"
    )
    return buf.getvalue()


def _noise_jpeg() -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(2).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
        buf, format="JPEG", quality=95
    )
    return buf.getvalue()


def _chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def bomb_png() -> bytes:
    """A valid-looking PNG header declaring BIG x BIG gray pixels (10 GB decoded) in ~100 bytes."""
    ihdr = struct.pack(">IIBBBBB", BIG, BIG, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", ihdr)
        + _chunk(b"IDAT", zlib.compress(b"\x00" * 1024))
        + _chunk(b"IEND", b"")
    )


# name -> (writes the bad file at the given path, what the error line says about it)
BAD_FILES: dict[str, tuple[Callable[[Path], None], str]] = {
    "zero-byte": (lambda p: p.write_bytes(b""), "empty file (0 bytes)"),
    "truncated-png": (
        lambda p: p.write_bytes(_noise_png(p)[:2000]),
        "file is truncated or corrupt",
    ),
    "truncated-jpeg": (
        lambda p: p.with_suffix(".jpg").write_bytes(_noise_jpeg()[:3000]),
        "file is truncated or corrupt",
    ),
    "text-named-png": (
        lambda p: p.write_text("hello, I am not an image\n"),
        "not an image file (format not recognised)",
    ),
    "decompression-bomb": (
        lambda p: p.write_bytes(bomb_png()),
        "image is 100000x100000 = 10000000000 pixels, more than the limit of 1000000000 "
        "(data.max_image_pixels, or predict's --max-pixels; a guard against decompression bombs)",
    ),
}


def _bad_file(folder: Path, case: str) -> tuple[Path, str]:
    write, problem = BAD_FILES[case]
    path = folder / "bad.png"
    folder.mkdir(parents=True, exist_ok=True)
    write(path)
    if not path.exists():  # the JPEG case writes bad.jpg
        path = path.with_suffix(".jpg")
    return path, problem


def _pairs(root: Path, n: int = 2) -> tuple[Path, Path]:
    images, masks = root / "images", root / "masks"
    for i in range(n):
        save_png(images / f"good_{i}.png", picture(seed=i))
        save_png(masks / f"good_{i}.png", (picture(seed=10 + i)[..., 0] > 127).astype(np.uint8))
    return images, masks


def _check_data(images: Path, masks: Path, *extra: str) -> list[str]:
    return ["check-data", "--images", str(images), "--masks", str(masks), *extra]


def _predict(bundle: Path, src: Path, out: Path, *extra: str) -> list[str]:
    return ["predict", str(bundle), str(src), "--output", str(out), "--workers", "1", *extra]


# --- files that must be refused ------------------------------------------------------------


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_check_data_names_the_bad_image(case, tmp_path, capsys):
    images, masks = _pairs(tmp_path)
    bad, problem = _bad_file(images, case)
    save_png(masks / "bad.png", np.zeros((64, 64), np.uint8))
    assert main(_check_data(images, masks)) == 1
    err = capsys.readouterr().err
    assert error_lines(err) == [f"error: {bad}: " + err.split(f"error: {bad}: ", 1)[1].strip()], err
    assert problem in err


@pytest.mark.parametrize("case", list(BAD_FILES))
def test_predict_skips_the_bad_image_and_predicts_the_rest(case, bundle, tmp_path, capsys):
    src = tmp_path / "src"
    for i in range(2):
        save_png(src / f"good_{i}.png", picture(seed=i))
    bad, problem = _bad_file(src, case)
    out = tmp_path / "out"
    assert main(_predict(bundle, src, out)) == 1
    captured = capsys.readouterr()
    assert error_lines(captured.err) == [
        f"error: {bad}: {problem}" + captured.err.split(problem, 1)[1].rstrip()
    ]
    assert "2 images predicted" in captured.out and "1 failed" in captured.out
    records = {Path(r["input"]).name: r for r in read_manifest(out)}
    assert records[bad.name]["status"] == "failed" and problem in records[bad.name]["error"]
    assert records[bad.name]["outputs"] == {}
    assert [records[f"good_{i}.png"]["status"] for i in range(2)] == ["ok", "ok"]
    assert sorted(p.name for p in out.iterdir()) == ["good_0.png", "good_1.png", MANIFEST]
    assert not temporaries(out)


def test_bomb_is_refused_from_the_header_in_training_too(tmp_path, capsys):
    """data.max_image_pixels bounds every image read for training; the bomb is never decoded."""
    images, masks = _pairs(tmp_path)
    (images / "bomb.png").write_bytes(bomb_png())
    save_png(masks / "bomb.png", np.zeros((64, 64), np.uint8))
    assert main(_check_data(images, masks, "data.max_image_pixels=5000")) == 1
    err = capsys.readouterr().err
    # segkit's limit alone decides (PIL's guard is off while the header is read), from the header
    assert (
        f"error: {images / 'bomb.png'}: image is {BIG}x{BIG} = {BIG * BIG} pixels, more than the limit of 5000"
        in err
    )
    # the same limit refuses ordinary images that are bigger than the user allows
    assert main(_check_data(images, masks, "data.max_image_pixels=4000")) == 1
    assert (
        f"{images / 'good_0.png'}: image is 64x64 = 4096 pixels, more than the limit of 4000"
        in capsys.readouterr().err
    )


def test_unreadable_file(tmp_path, capsys, monkeypatch, bundle):
    """chmod 000 does not stop root, so the PermissionError is simulated when running as root."""
    images, masks = _pairs(tmp_path)
    locked = images / "good_1.png"
    if os.geteuid() == 0:
        real_open = builtins.open

        def guarded_open(file, *args, **kwargs):
            if Path(str(file)) == locked:
                raise PermissionError(13, "Permission denied", str(file))
            return real_open(file, *args, **kwargs)

        monkeypatch.setattr(builtins, "open", guarded_open)
    else:
        locked.chmod(0)
    try:
        assert main(_check_data(images, masks)) == 1
        assert (
            f"error: {locked}: permission denied (cannot read the file)" in capsys.readouterr().err
        )
        assert main(_predict(bundle, images, tmp_path / "out")) == 1
        captured = capsys.readouterr()
        assert error_lines(captured.err) == [
            f"error: {locked}: permission denied (cannot read the file)"
        ]
        assert "1 image predicted" in captured.out and (tmp_path / "out" / "good_0.png").is_file()
    finally:
        locked.chmod(0o644)


def test_empty_folders(tmp_path, capsys, bundle):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "notes.txt").write_text("no images here")
    assert main(_check_data(empty, empty)) == 1
    assert (
        f"error: {empty}: no images found (looked for png, jpg, tif, bmp files)"
        in capsys.readouterr().err
    )
    assert main(_predict(bundle, empty, tmp_path / "out")) == 1
    err = capsys.readouterr().err
    assert error_lines(err) == [
        f"error: {empty}: no images found (looked for .bmp, .jpeg, .jpg, .png, .tif, .tiff files and "
        ".zarr stores, recursively)"
    ]
    assert main(_predict(bundle, tmp_path / "missing", tmp_path / "out")) == 1
    assert (
        f"error: {tmp_path / 'missing'}: no such image file, folder or glob pattern"
        in capsys.readouterr().err
    )


# --- masks that must be refused (training side) --------------------------------------------


def test_mask_of_another_size(tmp_path, capsys):
    images, masks = _pairs(tmp_path)
    save_png(masks / "good_1.png", np.zeros((32, 48), np.uint8))
    assert main(_check_data(images, masks)) == 1
    err = capsys.readouterr().err
    assert (
        f"error: {images / 'good_1.png'}: image is 64x64 but its mask {masks / 'good_1.png'} is 48x32 (width x height)"
        in err
    )


def test_mask_values_neither_class_nor_ignore_index(tmp_path, capsys):
    images, masks = _pairs(tmp_path)
    mask = np.zeros((64, 64), np.uint8)
    mask[:2, :3] = 7
    mask[5, 5] = 255  # ignore_index: allowed
    save_png(masks / "good_0.png", mask)
    assert main(_check_data(images, masks)) == 1
    err = capsys.readouterr().err
    assert (
        f"error: {masks / 'good_0.png'}: mask values [7] (6 pixels) are not classes 0..1 or ignore_index 255"
        in err
    )


def test_palette_colour_not_in_the_palette(tmp_path, capsys):
    images, masks = _pairs(tmp_path)
    rgb = np.zeros((64, 64, 3), np.uint8)
    rgb[:4, :4] = (255, 0, 0)
    rgb[10:12, :4] = (1, 2, 3)
    save_png(masks / "good_0.png", rgb)
    save_png(masks / "good_1.png", np.zeros((64, 64, 3), np.uint8))
    cfg = [
        "data.mask_encoding=palette",
        "data.palette={background: [0, 0, 0], foreground: [255, 0, 0]}",
    ]
    assert main(_check_data(images, masks, *cfg)) == 1
    err = capsys.readouterr().err
    assert (
        f"error: {masks / 'good_0.png'}: mask colours (1, 2, 3): 8 px are not in data.palette (background=[0, 0, 0], foreground=[255, 0, 0])"
        in err
    )


def test_training_refuses_bad_data_before_it_starts(shapes, tmp_path, capsys):
    """Several problems at once: all named in one error, exit 1, no run folder or checkpoint."""
    train_images, train_masks = Path(shapes["train_images"]), Path(shapes["train_masks"])
    (train_images / "000.png").write_bytes(b"")
    save_png(train_masks / "001.png", np.full((64, 64), 9, np.uint8))
    save_png(train_masks / "002.png", np.zeros((10, 10), np.uint8))
    runs = tmp_path / "runs"
    assert main(["train", str(write_config(tmp_path / "c.yaml", config_dict(shapes, runs)))]) == 1
    err = capsys.readouterr().err
    assert err.startswith("error: 3 problem(s) in the data (see `segkit check-data CONFIG`):")
    assert f"{train_images / '000.png'}: empty file (0 bytes)" in err
    assert f"{train_masks / '001.png'}: mask values [9] (4096 pixels) are not classes 0..3" in err
    assert f"{train_images / '002.png'}: image is 64x64 but its mask" in err
    assert "Traceback" not in err
    assert not runs.exists()


# --- files that must work --------------------------------------------------------------------


def _special_images(folder: Path) -> dict[str, np.ndarray]:
    """CMYK JPEG, 16-bit TIFF, RGBA PNG and odd names; returns name -> the RGB the model should see."""
    rgb = picture(seed=5)
    Image.fromarray(rgb).convert("CMYK").save(folder / "cmyk.jpg", quality=95)
    tifffile.imwrite(folder / "deep.tif", rgb.astype(np.uint16) * 257)
    rgba = np.dstack([rgb, np.full((64, 64), 7, np.uint8)])
    Image.fromarray(rgba, "RGBA").save(folder / "alpha.png")
    Image.fromarray(rgba, "RGBA").save(folder / "alpha 2.png")
    save_png(folder / "with space ü ñ 日本.png", rgb)
    return {
        "cmyk.jpg": rgb,
        "deep.tif": rgb,
        "alpha.png": rgb,
        "alpha 2.png": rgb,
        "with space ü ñ 日本.png": rgb,
    }


def test_special_images_pass_check_data(tmp_path, capsys, monkeypatch):
    import segkit.io.images as sio

    monkeypatch.setattr(sio, "_alpha_warned", False)
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    for name in _special_images(images):
        save_png(
            masks / (Path(name).stem + ".png"), (picture(seed=3)[..., 0] > 127).astype(np.uint8)
        )
    with pytest.warns(UserWarning, match="alpha channel dropped") as caught:
        assert main(_check_data(images, masks)) == 0
    assert (
        len([w for w in caught if "alpha" in str(w.message)]) == 1
    )  # said once for two RGBA files
    out = capsys.readouterr().out
    assert "image has an alpha channel, which is dropped (and 1 more files)" in out.replace(
        "\n", ""
    )


def test_special_images_are_predicted(bundle, tmp_path, capsys, monkeypatch):
    import segkit.io.images as sio
    from segkit.engine.predictor import Predictor

    monkeypatch.setattr(sio, "_alpha_warned", False)
    src = tmp_path / "src"
    src.mkdir()
    expected = _special_images(src)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="alpha channel dropped") as caught:
        assert main(_predict(bundle, src, out)) == 0
    assert len([w for w in caught if "alpha" in str(w.message)]) == 1
    assert "5 images predicted" in capsys.readouterr().out
    predictor = Predictor.from_path(bundle, device="cpu")
    reference = predictor.predict(expected["alpha.png"])
    for name in expected:
        mask = np.array(Image.open(out / (Path(name).stem + ".png")))
        assert mask.shape == (64, 64), name
        if (
            name != "cmyk.jpg"
        ):  # lossless: exactly the RGB picture's prediction (alpha dropped, 16 bit scaled)
            np.testing.assert_array_equal(mask, reference, err_msg=name)
    manifest = [
        json.loads(line) for line in (out / MANIFEST).read_text(encoding="utf-8").splitlines()
    ]
    assert {Path(r["input"]).name for r in manifest} == set(expected)


@pytest.mark.timeout(60)
def test_symlink_loops_do_not_hang(bundle, tmp_path, capsys):
    images, masks = _pairs(tmp_path)
    (images / "loop").symlink_to(images, target_is_directory=True)
    (images / "self").symlink_to(images / "self")  # a link to itself
    (images / "sub").mkdir()
    (images / "sub" / "up").symlink_to(images, target_is_directory=True)
    (images / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    assert main(_check_data(images, masks)) == 0
    assert "pairs" in capsys.readouterr().out
    assert main(_predict(bundle, images, tmp_path / "out")) == 0
    assert "2 images predicted" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "out").rglob("*.png")) == ["good_0.png", "good_1.png"]
