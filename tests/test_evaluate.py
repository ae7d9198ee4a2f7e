"""evaluate(): masks decoded with the model's data settings, exact counts, JSON, .ckpt == .onnx."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from segkit.bundle import load_bundle, save_bundle
from segkit.config import load_config
from segkit.errors import DataError
from segkit.evaluation import evaluate
from segkit.models.build import build_model
from tests.conftest import TINY_MODEL

CLASSES = ["bg", "cell", "edge"]
PALETTE = {"bg": [0, 0, 0], "cell": [255, 0, 0], "edge": [0, 255, 0]}
IGNORE = 255


def _bundle(tmp_path: Path, **data) -> Path:
    config = load_config({"data": {"classes": CLASSES, **data}, "model": TINY_MODEL})
    torch.manual_seed(0)
    model = build_model(config.model, len(CLASSES), 3)
    return save_bundle(tmp_path / "model.ckpt", config, model)


class EchoPredictor:
    """Stand-in for Predictor: 'predicts' the class written into the image's red channel / 100."""

    def __init__(self, path: Path) -> None:
        self.card = load_bundle(path).card

    def predict(self, image: np.ndarray) -> np.ndarray:
        return (image[..., 0] // 100).astype(np.uint8)

    def predict_many(self, images):
        return map(self.predict, images)

    def blocks_many(self, images):  # what evaluate scores: one block of one-hot probabilities
        for image in images:
            labels = torch.from_numpy(self.predict(image).astype(np.int64))
            probs = torch.nn.functional.one_hot(labels, len(self.card.classes)).permute(2, 0, 1)
            yield iter([(0, 0, probs.float())])

    def pixels_per_pass(self) -> int:  # sizes evaluate's read-ahead
        return 512 * 512


def _write_pair(root: Path, name: str, pred: np.ndarray, truth: np.ndarray, palette: bool) -> None:
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    image = np.zeros((*pred.shape, 3), np.uint8)
    image[..., 0] = pred * 100
    Image.fromarray(image).save(root / "images" / f"{name}.png")
    if palette:
        rgb = np.full(
            (*truth.shape, 3), 255, np.uint8
        )  # white = not a class colour (only for ignore below)
        for i, c in enumerate(CLASSES):
            rgb[truth == i] = PALETTE[c]
        Image.fromarray(rgb).save(root / "masks" / f"{name}.png")
    else:
        Image.fromarray(truth.astype(np.uint8)).save(root / "masks" / f"{name}.png")


@pytest.fixture
def echo_predictor(monkeypatch):
    """Predictor.from_path opens an EchoPredictor: its masks are the images' values."""
    from segkit.engine import predictor as predictor_module

    monkeypatch.setattr(
        predictor_module.Predictor,
        "from_path",
        classmethod(lambda cls, path, **kw: EchoPredictor(path)),
    )


def test_counts_match_a_hand_computed_matrix_with_the_models_mask_encoding(
    tmp_path, echo_predictor
):
    """The model was trained on palette masks, so evaluation decodes palette masks."""
    model = _bundle(tmp_path, mask_encoding="palette", palette=PALETTE)
    data = tmp_path / "val"
    # image a: 2x3; image b: 2x2 (different sizes are fine)
    _write_pair(
        data, "a", np.array([[0, 0, 1], [1, 2, 0]]), np.array([[0, 1, 1], [1, 0, 0]]), palette=True
    )
    _write_pair(data, "b", np.array([[0, 1], [0, 0]]), np.array([[0, 1], [0, 1]]), palette=True)
    out = tmp_path / "report" / "metrics.json"
    metrics = evaluate(model, data / "images", data / "masks", json_path=out)
    # (truth, pred): a: (0,0)(1,0)(1,1)(1,1)(0,2)(0,0)  b: (0,0)(1,1)(0,0)(1,0)
    expected = np.array([[4, 0, 1], [2, 3, 0], [0, 0, 0]])
    np.testing.assert_array_equal(metrics.matrix, expected)
    # class 2 predicted but never true: recall 0 (scikit-learn's zero_division=0), IoU 0
    assert metrics.recall[2] == 0.0 and metrics.iou[2] == 0.0 and metrics.precision[2] == 0.0
    stored = json.loads(out.read_text())
    assert stored["confusion_matrix"] == expected.tolist() and stored["images"] == 2
    assert stored["mIoU"] == pytest.approx(metrics.miou)


def test_ignore_index_pixels_are_not_counted(tmp_path, echo_predictor):
    model = _bundle(tmp_path)
    data = tmp_path / "val"
    _write_pair(
        data, "a", np.array([[1, 2], [2, 2]]), np.array([[1, IGNORE], [IGNORE, 2]]), palette=False
    )
    metrics = evaluate(model, data / "images", data / "masks")
    assert metrics.total_pixels == 2
    assert metrics.pixel_accuracy == 1.0


def test_size_mismatch_names_the_mask(tmp_path, echo_predictor):
    model = _bundle(tmp_path)
    data = tmp_path / "val"
    _write_pair(data, "a", np.zeros((4, 4), np.int64), np.zeros((4, 4), np.int64), palette=False)
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(data / "masks" / "a.png")
    with pytest.raises(DataError, match=r"a.png: image is 4x4 but its mask .*a.png is 4x5"):
        evaluate(model, data / "images", data / "masks")


def test_jpeg_masks_with_stray_values_say_why_and_what_to_do(tmp_path, echo_predictor):
    model = _bundle(tmp_path)
    data = tmp_path / "val"
    truth = np.zeros((32, 32), np.uint8)
    truth[8:24, 8:24] = 2  # a square of class 2: JPEG blurs its edges into values 1, 3, ...
    _write_pair(data, "a", truth.astype(np.int64), truth.astype(np.int64), palette=False)
    (data / "masks" / "a.png").unlink()
    Image.fromarray(truth * 100).save(data / "masks" / "a.jpg", quality=50)
    with pytest.raises(DataError) as err:
        evaluate(model, data / "images", data / "masks")
    msg = str(err.value)
    assert "a.jpg" in msg and "JPEG is lossy" in msg and "save masks as PNG" in msg
    assert "\n" not in msg


@pytest.fixture
def real_pairs(tmp_path):
    from segkit.data.synthetic import make_shapes_dataset

    d = make_shapes_dataset(tmp_path / "data", n_train=0, n_val=2, size=50, seed=1)
    config = load_config({"data": {"classes": d["classes"], "patch_size": 32}, "model": TINY_MODEL})
    torch.manual_seed(0)
    path = save_bundle(
        tmp_path / "shapes.ckpt", config, build_model(config.model, len(d["classes"]), 3)
    )
    return path, d["val_images"], d["val_masks"]


def test_real_predictor_and_cli(real_pairs, tmp_path):
    from segkit.cli import main

    model, images, masks = real_pairs
    metrics = evaluate(
        model, images, masks, device="cpu", tile=32, overlap=0.25
    )  # tiled, like predict
    assert metrics.total_pixels == 2 * 50 * 50
    out = tmp_path / "m.json"
    assert (
        main(
            [
                "evaluate",
                str(model),
                "--images",
                str(images),
                "--masks",
                str(masks),
                "--json",
                str(out),
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    assert json.loads(out.read_text())["total_pixels"] == 2 * 50 * 50


def test_onnx_export_evaluates_like_the_checkpoint(real_pairs, tmp_path):
    onnx_module = pytest.importorskip("segkit.export.onnx")
    model, images, masks = real_pairs
    exported = tmp_path / "model.onnx"
    onnx_module.export_onnx(model, exported)
    from_ckpt = evaluate(model, images, masks, device="cpu")
    from_onnx = evaluate(exported, images, masks, device="cpu")
    agree = np.trace(from_onnx.matrix) / from_onnx.total_pixels
    assert from_onnx.total_pixels == from_ckpt.total_pixels
    assert abs(agree - np.trace(from_ckpt.matrix) / from_ckpt.total_pixels) < 1e-3


def test_small_images_sharing_forward_passes_score_the_same(tmp_path, monkeypatch):
    """evaluate predicts through Predictor.predict_many: at batch 4 the small images share
    passes, and the confusion matrix is the one of one image per pass."""
    from segkit.engine.predictor import Predictor

    shared: list[int] = []
    together = Predictor.probs_together
    monkeypatch.setattr(
        Predictor,
        "probs_together",
        lambda self, ims: shared.append(len(ims)) or together(self, ims),
    )
    model = _bundle(tmp_path, patch_size=64)
    rng = np.random.default_rng(0)
    for n, (h, w) in enumerate([(60, 60), (64, 64), (57, 58), (100, 60), (62, 62)]):
        pred = rng.integers(0, 3, (h, w))
        _write_pair(tmp_path / "val", f"{n}", pred, rng.integers(0, 3, (h, w)), palette=False)
    metrics = {}
    for b in (1, 4):
        shared.clear()  # keep the batch-4 run's passes
        metrics[b] = evaluate(
            model, tmp_path / "val" / "images", tmp_path / "val" / "masks", batch_size=b
        )
    one, four = metrics[1], metrics[4]
    assert one.matrix.sum() == 60 * 60 + 64 * 64 + 57 * 58 + 100 * 60 + 62 * 62
    np.testing.assert_array_equal(four.matrix, one.matrix)
    assert shared == [3, 1]  # batch 4: images 0-2 together, 3 stitched from two tiles, 4 alone
