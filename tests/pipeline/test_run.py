"""``predict_source`` / ``segkit predict``: folders, globs, failures, resume, sharding, ONNX."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from segkit.cli import main
from segkit.engine.predictor import Predictor
from segkit.errors import DataError
from segkit.io.readahead import header_pixels
from segkit.io.sources import find_inputs, open_image
from segkit.pipeline.run import predict_source
from segkit.pipeline.writers import MANIFEST, read_manifest
from tests.fixtures import CountingBackend, make_bundle, shapes_image


@pytest.fixture
def folder(tmp_path):
    """Three good images of different kinds (RGB PNG, gray PNG in a subfolder, TIFF) and a corrupt one."""
    src = tmp_path / "images"
    (src / "sub").mkdir(parents=True)
    Image.fromarray(shapes_image(70, 90, seed=1)).save(src / "a.png")
    Image.fromarray(shapes_image(40, 33, seed=2)[..., 0]).save(src / "sub" / "b.png")
    tifffile.imwrite(src / "c.tif", (shapes_image(50, 64, seed=3).astype(np.uint16) * 257))
    (src / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 20)
    return src


def test_folder_with_a_corrupt_file(bundle_path, folder, tmp_path):
    out = tmp_path / "out"
    summary = predict_source(
        bundle_path, folder, out, save=["index", "color"], device="cpu", progress=False
    )  # the device of the API call below: a GPU's bf16 breaks this random net's near-ties apart
    assert summary.ok == 3 and len(summary.failures) == 1
    assert summary.failures[0].startswith(str(folder / "broken.png") + ": ")
    assert str(out) in summary.describe() and "1 failed" in summary.describe()
    for rel in ["a.png", "a_color.png", "sub/b.png", "sub/b_color.png", "c.png", "c_color.png"]:
        assert (out / rel).is_file(), rel
    assert not (out / "broken.png").exists()
    with Image.open(out / "sub" / "b.png") as im:
        assert im.size == (33, 40)  # the input's size, layout kept
    records = {r["input"]: r for r in read_manifest(out)}
    assert len(records) == 4
    bad = records[str(folder / "broken.png")]
    assert bad["status"] == "failed" and bad["error"] and bad["outputs"] == {}
    good = records[str(folder / "a.png")]
    assert (
        good["status"] == "ok"
        and good["height"] == 70
        and good["width"] == 90
        and good["tiles"] >= 1
    )
    assert set(good["outputs"]) == {"index", "color"} and good["seconds"] >= 0
    # the saved mask is what the Python API predicts
    expected = Predictor.from_path(bundle_path, device="cpu").predict(
        np.array(Image.open(folder / "a.png"))
    )
    np.testing.assert_array_equal(np.array(Image.open(out / "a.png")), expected)


def test_skip_existing_finishes_a_partial_run(bundle_path, folder, tmp_path):
    out = tmp_path / "out"
    predict_source(bundle_path, folder, out, save=["index", "probs"], progress=False)
    (out / "sub" / "b_probs.npy").unlink()  # as if killed before b was written
    before = {p: p.stat().st_mtime_ns for p in [out / "a.png", out / "c_probs.npy"]}
    summary = predict_source(
        bundle_path, folder, out, save=["index", "probs"], skip_existing=True, progress=False
    )
    assert (summary.ok, summary.skipped, len(summary.failures)) == (1, 2, 1)
    assert (out / "sub" / "b_probs.npy").is_file()
    assert {p: p.stat().st_mtime_ns for p in before} == before  # not redone
    status = {r["input"]: r["status"] for r in read_manifest(out)}
    assert (
        status[str(folder / "sub" / "b.png")] == "ok" and status[str(folder / "a.png")] == "skipped"
    )


@pytest.mark.slow
def test_two_cpu_processes_write_every_output_once(bundle_path, folder, tmp_path):
    (folder / "broken.png").unlink()
    for i in range(3):
        Image.fromarray(shapes_image(30, 40, seed=10 + i)).save(folder / f"d{i}.png")
    out = tmp_path / "out"
    summary = predict_source(
        bundle_path, folder, out, devices=2, device="cpu", save=["index"], progress=False
    )
    assert summary.ok == 6 and not summary.failures
    records = read_manifest(out)
    inputs = [r["input"] for r in records]
    assert len(inputs) == len(set(inputs)) == 6  # each image exactly once, merged from both ranks
    assert inputs == [str(p.path) for p in find_inputs(folder)]  # in input order
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted(["a.png", "c.png", "sub/b.png", "d0.png", "d1.png", "d2.png"])
    assert not [p for p in out.rglob(".*")]  # no temporaries left


def test_glob_and_single_file_sources(bundle_path, folder, tmp_path):
    summary = predict_source(
        bundle_path, str(folder / "**" / "*.png"), tmp_path / "g", progress=False
    )
    assert summary.ok == 2 and len(summary.failures) == 1  # a.png, sub/b.png; broken.png fails
    assert (tmp_path / "g" / "sub" / "b.png").is_file()
    summary = predict_source(
        bundle_path, folder / "a.png", tmp_path / "one", save=["overlay"], progress=False
    )
    assert summary.ok == 1 and (tmp_path / "one" / "a_overlay.png").is_file()


def test_no_images_and_overwriting_the_input(bundle_path, folder, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        predict_source(bundle_path, tmp_path / "empty", tmp_path / "out", progress=False)
    with pytest.raises(DataError, match="no such image file, folder or glob"):
        predict_source(bundle_path, tmp_path / "missing", tmp_path / "out", progress=False)
    summary = predict_source(bundle_path, folder / "a.png", folder, progress=False)
    assert "would overwrite the input" in summary.failures[0]


def test_uncompressed_tiff_is_memory_mapped_not_copied(bundle_path, tmp_path):
    image = shapes_image(120, 100, seed=5)
    tifffile.imwrite(tmp_path / "big.tif", image)
    mapped = open_image(tmp_path / "big.tif", 3)
    assert isinstance(mapped, np.memmap)
    p = Predictor.from_path(bundle_path, device="cpu")
    np.testing.assert_array_equal(p.predict(mapped), p.predict(image))


@pytest.mark.slow
def test_cli_predict_exit_codes(bundle_path, folder, tmp_path, capsys):
    code = main(
        [
            "predict",
            str(bundle_path),
            str(folder),
            "--output",
            str(tmp_path / "out"),
            "--tile",
            "64",
            "--tta",
            "flip",
            "--batch-size",
            "2",
        ]
    )
    captured = capsys.readouterr()
    assert code == 1
    assert "broken.png" in captured.err and "3 images predicted" in captured.out
    (folder / "broken.png").unlink()
    code = main(
        [
            "predict",
            str(bundle_path),
            str(folder),
            "-o",
            str(tmp_path / "out2"),
            "--save",
            "probs",
            "--probs-dtype",
            "uint8",
        ]
    )
    assert code == 0
    assert np.load(tmp_path / "out2" / "a_probs.npy").dtype == np.uint8
    lines = (tmp_path / "out2" / MANIFEST).read_text().splitlines()
    assert all(json.loads(line)["status"] == "ok" for line in lines)


def test_onnx_model_gives_the_same_masks(bundle_path, folder, tmp_path):
    from segkit.export.onnx import export_onnx

    onnx_path = tmp_path / "model.onnx"
    export_onnx(bundle_path, onnx_path)
    image = shapes_image(70, 90, seed=1)
    torch_p, onnx_p = (
        Predictor.from_path(bundle_path, device="cpu"),
        Predictor.from_path(onnx_path, device="cpu"),
    )
    assert onnx_p.card.classes == torch_p.card.classes and onnx_p.card.stride == torch_p.card.stride
    np.testing.assert_allclose(onnx_p.predict_proba(image), torch_p.predict_proba(image), atol=1e-4)
    summary = predict_source(onnx_path, folder / "a.png", tmp_path / "out", progress=False)
    assert summary.ok == 1


@pytest.mark.slow
def test_small_images_of_a_folder_share_forward_passes(bundle_path, tmp_path):
    """Consecutive images that fit one tile of the same shape are predicted batch_size at a time;
    another shape, a multi-tile image or a broken file in between only ends a batch. The masks
    and the manifest are those of one image per pass."""
    src = tmp_path / "images"
    src.mkdir()
    sizes = [(60, 60), (64, 64), (57, 58), (40, 64), (60, 62), (64, 60), (150, 100), (62, 62)]
    for n, (h, w) in enumerate(sizes):
        Image.fromarray(shapes_image(h, w, seed=n)).save(src / f"{n}.png")
    (src / "4b.png").write_bytes(b"not a png")  # sorts between 4.png and 5.png

    def run(batch_size: int, out):
        counting = CountingBackend(Predictor.from_path(bundle_path, device="cpu").backend)
        predictor = Predictor(counting, batch_size=batch_size)
        summary = predict_source(predictor, src, out, save=["index", "probs"], progress=False)
        return summary, counting.batches

    one, one_passes = run(1, tmp_path / "one")
    four, four_passes = run(4, tmp_path / "four")
    assert (four.ok, len(four.failures)) == (one.ok, len(one.failures)) == (8, 1)
    assert four.failures == one.failures and "4b.png" in four.failures[0]
    # 0-2 share one pass; 3 has another tile shape; 4, (broken 4b), 5 share one; 6 is 3 x 2 tiles
    # (stitched, in batches of 4); 7 alone
    assert one_passes == [1] * 13
    assert four_passes == [3, 1, 2, 4, 2, 1]
    for n in range(len(sizes)):
        np.testing.assert_array_equal(
            np.array(Image.open(tmp_path / "four" / f"{n}.png")),
            np.array(Image.open(tmp_path / "one" / f"{n}.png")),
        )
        np.testing.assert_allclose(
            np.load(tmp_path / "four" / f"{n}_probs.npy").astype(np.float32),
            np.load(tmp_path / "one" / f"{n}_probs.npy").astype(np.float32),
            atol=1e-3,  # float16 on disk
        )
    manifest = {r["input"]: r for r in read_manifest(tmp_path / "four")}
    assert manifest[str(src / "0.png")]["tiles"] == 1 and manifest[str(src / "6.png")]["tiles"] == 6


@pytest.mark.slow
def test_small_images_are_decoded_a_pass_ahead_large_ones_one_per_worker(
    bundle_path, tmp_path, monkeypatch
):
    """While a forward pass of small images runs, the images of the next passes are already
    handed to the decoders (else the model waits for them on a fast GPU); large images are read
    at most three ahead, however many workers decode and however many images follow."""
    import segkit.pipeline.run as run_module

    probed: list[str] = []  # each input's header is read just before it is handed to a decoder

    def counting_pixels(path, max_pixels):
        probed.append(path.name)
        return header_pixels(path, max_pixels)

    monkeypatch.setattr(run_module, "header_pixels", counting_pixels)

    class Watching(CountingBackend):
        probed_at_pass: list[int]

        def __call__(self, tiles):
            self.probed_at_pass.append(len(probed))
            return super().__call__(tiles)

    def run(sizes: list[tuple[int, int]], name: str, workers: int) -> list[int]:
        src = tmp_path / name
        src.mkdir()
        for n, (h, w) in enumerate(sizes):
            Image.fromarray(shapes_image(h, w, seed=n)).save(src / f"{n:02d}.png")
        probed.clear()
        backend = Watching(Predictor.from_path(bundle_path, device="cpu").backend)
        backend.probed_at_pass = []
        predictor = Predictor(backend, batch_size=1)  # tile 64: four 32 x 32 images per pass
        summary = predict_source(
            predictor, src, tmp_path / f"{name}_out", workers=workers, progress=False
        )
        assert summary.ok == len(sizes)
        return backend.probed_at_pass

    small = run([(32, 32)] * 24, "small", workers=1)
    # at the first pass its 4 images and the next two passes' 8 (two passes' pixels) are handed
    # out (the header of one more may have been read); the old read-ahead had workers + 1 = 2
    assert small[0] >= 12
    big = run([(150, 100)] * 8, "big", workers=4)  # 3 x 2 tiles each
    # the image in the model, three handed out, maybe one more header read (was workers + 1)
    assert max(n - i for i, n in enumerate(big[::6])) == 5


def test_a_failing_forward_pass_fails_the_images_in_it_and_the_run_goes_on(bundle_path, tmp_path):
    """A pass that raises (a GPU out of memory, say) fails exactly the images it held, each
    named with the reason; the images before and after are written."""

    class FailsOnSmallTiles(CountingBackend):
        def __call__(self, tiles):
            if tiles.shape[-1] == 32 or tiles.shape[-2] == 40:
                raise RuntimeError("CUDA out of memory (simulated)")
            return super().__call__(tiles)

    src = tmp_path / "images"
    src.mkdir()
    for n, (h, w) in enumerate([(60, 60), (30, 30), (31, 29), (150, 100), (64, 64), (40, 200)]):
        Image.fromarray(shapes_image(h, w, seed=n)).save(src / f"{n}.png")
    backend = FailsOnSmallTiles(Predictor.from_path(bundle_path, device="cpu").backend)
    out = tmp_path / "out"
    summary = predict_source(Predictor(backend, batch_size=1), src, out, progress=False)
    assert summary.ok == 3 and len(summary.failures) == 3
    records = {Path(r["input"]).name: r for r in read_manifest(out)}
    # 30 x 30 and 31 x 29 share one 32 x 32 pass; 40 x 200 is stitched from 40 x 64 tiles
    for name in ("1.png", "2.png", "5.png"):
        assert records[name]["status"] == "failed"
        assert records[name]["error"] == "CUDA out of memory (simulated)"
        assert not (out / name).exists()
    assert all((out / f"{n}.png").is_file() for n in (0, 3, 4))
    assert not [p for p in out.rglob(".*")]  # no temporaries left


def test_the_pixel_limit_is_the_models_and_can_be_set(tmp_path, folder, capsys):
    """``data.max_image_pixels`` of training guards predict too (and travels in the ONNX file);
    ``--max-pixels`` overrides it. a.png is 70 x 90 = 6300 pixels."""
    from segkit.export.onnx import export_onnx

    strict = make_bundle(tmp_path / "strict.ckpt", data={"max_image_pixels": 2000})
    onnx_path = tmp_path / "strict.onnx"
    export_onnx(strict, onnx_path)
    assert Predictor.from_path(onnx_path).card.max_image_pixels == 2000
    image = folder / "a.png"
    for model in (strict, onnx_path):
        summary = predict_source(model, image, tmp_path / f"out_{model.suffix}", progress=False)
        assert summary.ok == 0 and len(summary.failures) == 1
        assert summary.failures[0].startswith(f"{image}: ") and "2000" in summary.failures[0]
    code = main(["predict", str(strict), str(image), "-o", str(tmp_path / "o1")])
    assert code == 1 and not (tmp_path / "o1" / "a.png").exists()
    assert "more than the limit of 2000" in capsys.readouterr().err
    code = main(
        ["predict", str(strict), str(image), "-o", str(tmp_path / "o2"), "--max-pixels", "6300"]
    )
    assert code == 0 and (tmp_path / "o2" / "a.png").is_file()
    code = main(
        ["predict", str(strict), str(image), "-o", str(tmp_path / "o3"), "--max-pixels", "6299"]
    )
    assert code == 1 and "6299" in capsys.readouterr().err


def test_images_beyond_pils_own_limit_are_predicted(bundle_path, folder, tmp_path, monkeypatch):
    """PIL refuses images over twice its MAX_IMAGE_PIXELS (~179 MP) as decompression bombs;
    predict applies the model's limit instead (1e9 by default), so large PNGs are not refused."""
    import segkit.io.images

    monkeypatch.setattr(segkit.io.images, "_PIL_MAX_PIXELS", 1000)  # a tiny stand-in for PIL's
    summary = predict_source(bundle_path, folder / "a.png", tmp_path / "out", progress=False)
    assert summary.ok == 1 and not summary.failures


def test_a_signed_integer_tiff_fails_that_image_naming_it(bundle_path, folder, tmp_path):
    """Memory-mapped and windowed TIFFs skip read_image: they are checked where they are opened."""
    bad = folder / "signed.tif"
    tifffile.imwrite(bad, np.zeros((40, 40), dtype=np.int16))
    summary = predict_source(bundle_path, folder, tmp_path / "out", progress=False)
    assert summary.ok == 3
    failures = {f.split(": ")[0]: f for f in summary.failures}
    assert "pixels are signed integers (int16)" in failures[str(bad)]


@pytest.mark.parametrize("tta", ["none", "flip"])
def test_progress_counts_images_tiles_not_tta_passes(bundle_path, tmp_path, monkeypatch, tta):
    """The tiles bar counts the image's tiles once, whatever the TTA passes per tile."""
    import segkit.pipeline.run as run
    from segkit.engine.tiling import make_grid

    counted = {"planned": 0, "done": 0, "images": 0}

    class Recording(run._Progress):
        def image(self) -> None:
            counted["images"] += 1

        def plan_tiles(self, n: int) -> None:
            counted["planned"] += n

        def tiles(self, n: int) -> None:
            counted["done"] += n

    monkeypatch.setattr(run, "_Progress", Recording)
    src = tmp_path / "in"
    src.mkdir()
    Image.fromarray(shapes_image(150, 170, seed=3)).save(src / "a.png")
    predict_source(bundle_path, src, tmp_path / "out", tile=64, overlap=0.25, tta=tta, device="cpu")
    expected = len(make_grid(150, 170, 64, 0.25, 8))  # TINY_MODEL: stride 8
    assert counted == {"planned": expected, "done": expected, "images": 1}
