"""check-data finds each kind of problem (one line per file, path first) and passes clean data."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from segkit.data.checks import check_config_data, check_folders, check_or_raise
from segkit.errors import ConfigError, DataError
from segkit.io import images as image_io
from tests.data.conftest import make_config, make_data_config, save_png


def _text(report: Any) -> str:
    console = Console(record=True, width=200)
    console.print(report.render())
    return console.export_text()


def test_clean_synthetic_set(shapes: dict[str, Any]) -> None:
    data = make_data_config(classes=shapes["classes"])
    report = check_folders(shapes["train_images"], shapes["train_masks"], data, name="train")
    assert report.ok and report.problems == [] and report.warnings == []
    assert (report.n_images, report.n_masks, report.n_pairs) == (6, 6, 6)
    assert sum(report.class_pixels.values()) + report.ignored_pixels == 6 * 64 * 64
    assert all(report.class_pixels[c] > 0 for c in shapes["classes"])
    text = _text(report)
    assert "train" in text and "ok" in text and "circle" in text and "%" in text


def test_each_problem_kind(
    pair_folders: tuple[Path, Path], rng: np.random.Generator, monkeypatch: pytest.MonkeyPatch
) -> None:
    images, masks = pair_folders
    (masks / "img_0.png").unlink()  # image without mask
    save_png(masks / "orphan.png", np.zeros((40, 48), dtype=np.uint8))  # mask without image
    save_png(masks / "img_1.png", np.zeros((30, 48), dtype=np.uint8))  # size mismatch
    data = (images / "img_2.png").read_bytes()
    (images / "img_2.png").write_bytes(data[: len(data) // 2])  # truncated image
    bad = np.zeros((40, 48), dtype=np.uint8)
    bad[0, :3] = 7
    save_png(masks / "img_3.png", bad)  # not a class
    Image.fromarray(np.zeros((40, 48), dtype=np.uint8)).save(masks / "sub" / "img_5.jpg")
    (masks / "sub" / "img_5.png").unlink()  # lossy mask (warning)
    save_png(
        images / "img_4.png", rng.integers(0, 256, (40, 48, 4), dtype=np.uint8)
    )  # RGBA (warning)

    monkeypatch.setattr(image_io, "_alpha_warned", False)
    with pytest.warns(UserWarning, match="alpha"):  # read_image's own one-time warning
        report = check_folders(images, masks, make_data_config())
    assert not report.ok
    expected = {
        images / "img_0.png": "no mask named 'img_0.*'",
        masks / "orphan.png": "no image named 'orphan.*'",
        images / "img_1.png": "image is 48x40 but its mask",
        images / "img_2.png": "truncated or corrupt",
        masks / "img_3.png": "mask values [7] (3 pixels) are not classes 0..1",
    }
    assert len(report.problems) == len(expected)
    for path, problem in expected.items():
        assert any(p.startswith(f"{path}: ") and problem in p for p in report.problems), (
            path,
            report.problems,
        )
    assert any(
        w.startswith(str(masks / "sub" / "img_5.jpg")) and "lossy" in w for w in report.warnings
    )
    assert any(w.startswith(str(images / "img_4.png")) and "alpha" in w for w in report.warnings)
    text = _text(report)
    assert "5 problem(s)" in text and "orphan.png" in text


def test_signed_integer_image_is_a_problem_and_a_dataset_error(
    pair_folders: tuple[Path, Path],
) -> None:
    import tifffile

    from segkit.data.dataset import SegmentationDataset, find_pairs

    images, masks = pair_folders
    (images / "img_0.png").unlink()
    tifffile.imwrite(images / "img_0.tif", np.zeros((40, 48), dtype=np.int16))
    data = make_data_config(in_channels=1)
    report = check_folders(images, masks, data)
    assert [p for p in report.problems if "int16" in p] == [
        f"{images / 'img_0.tif'}: pixels are signed integers (int16), which segkit does not read; "
        "save the image as uint8 or uint16 (scaled to [0, 1] by 255 or 65535) or as float32 "
        "(used as is: set data.mean and data.std to its per-band statistics)"
    ]
    with pytest.raises(DataError, match=rf"^{re.escape(str(images / 'img_0.tif'))}: .*int16"):
        SegmentationDataset(find_pairs(images, masks), data)[0]


def test_missing_and_empty_folders(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    report = check_folders(tmp_path / "empty", tmp_path / "gone", make_data_config())
    assert report.problems == [
        f"{tmp_path / 'empty'}: no images found (looked for png, jpg, tif, bmp files)",
        f"{tmp_path / 'gone'}: folder not found",
    ]
    assert report.n_pairs == 0 and not report.ok
    _text(report)  # renders without a histogram


def test_unused_class_warned(pair_folders: tuple[Path, Path]) -> None:
    report = check_folders(*pair_folders, make_data_config(classes=["bg", "fg", "never"]))
    assert report.ok
    assert any("['never'] have no pixels" in w for w in report.warnings)


def test_check_config_data_and_or_raise(pair_folders: tuple[Path, Path]) -> None:
    images, masks = pair_folders
    split = {"images": str(images), "masks": str(masks)}
    reports = check_config_data(make_config({"train": split, "val": split}))
    assert [r.name for r in reports] == ["train", "val"] and all(r.ok for r in reports)
    assert len(check_or_raise(make_config({"train": split}))) == 1
    with pytest.raises(ConfigError, match="data.train is not set"):
        check_config_data(make_config())
    for i in range(25):  # many problems: the error lists 20 and counts the rest
        save_png(images / f"extra_{i:02d}.png", np.zeros((4, 4, 3), dtype=np.uint8))
    with pytest.raises(DataError) as err:
        check_or_raise(make_config({"train": split}))
    message = str(err.value)
    assert message.startswith("25 problem(s) in the data")
    assert f"{images / 'extra_00.png'}: no mask named" in message
    assert message.endswith("... and 5 more")
    assert len(message.splitlines()) == 22


def test_check_data_and_training_refuse_a_pair_in_the_same_words(
    pair_folders: tuple[Path, Path],
) -> None:
    """Pairing and size rules are one each: check-data's problem line is the DataError that
    training (find_pairs, the Dataset) and evaluate raise for the same file."""
    from segkit.data.dataset import SegmentationDataset, find_pairs
    from segkit.evaluation import _load_pair

    images, masks = pair_folders
    data = make_data_config()
    save_png(masks / "img_1.png", np.zeros((30, 48), dtype=np.uint8))  # size mismatch
    (size_problem,) = check_folders(images, masks, data).problems
    pairs = find_pairs(images, masks)
    with pytest.raises(DataError) as by_dataset:
        SegmentationDataset(pairs, data)[[p[0].name for p in pairs].index("img_1.png")]
    with pytest.raises(DataError) as by_evaluate:
        _load_pair(images / "img_1.png", masks / "img_1.png", data)
    assert str(by_dataset.value) == str(by_evaluate.value) == size_problem

    (masks / "img_0.png").unlink()
    pairing = [p for p in check_folders(images, masks, data).problems if "no mask" in p]
    with pytest.raises(DataError) as by_pairing:
        find_pairs(images, masks)
    assert pairing == [str(by_pairing.value)]
