"""A fitted temperature: stored in the checkpoint and the ONNX metadata, applied at predict time,
reported by evaluate."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from segkit.bundle import load_bundle, save_bundle
from segkit.engine.predictor import Predictor
from segkit.evaluation import evaluate_pairs, fit_checkpoint_temperature
from segkit.export import export_onnx, read_onnx_metadata
from tests.export.conftest import synthetic_batch


@pytest.fixture(scope="module")
def pairs(tmp_path_factory):
    """Four 64x64 image/index-mask pairs of the training kind."""
    root = tmp_path_factory.mktemp("val")
    images, labels = synthetic_batch(torch.Generator().manual_seed(3), n=4, size=64)
    out = []
    for i in range(4):
        pixels = (images[i].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.png")
        Image.fromarray(labels[i].numpy().astype(np.uint8)).save(root / f"{i}_mask.png")
        out.append((root / f"{i}.png", root / f"{i}_mask.png"))
    return out


@pytest.fixture(scope="module")
def calibrated(trained_bundle, pairs, tmp_path_factory):
    """The trained bundle made over-confident (head x 6), then its temperature fitted on pairs."""
    bundle = load_bundle(trained_bundle)
    model = bundle.build_model()
    with torch.no_grad():
        model.segmentation_head[0].weight *= 6
        model.segmentation_head[0].bias *= 6
    path = save_bundle(tmp_path_factory.mktemp("over") / "over.ckpt", bundle.config, model)
    before = evaluate_pairs(path, pairs, device="cpu")
    return path, fit_checkpoint_temperature(path, pairs, device="cpu"), before


def test_fitted_temperature_is_in_the_checkpoint_and_lowers_ece(calibrated, pairs, tmp_path):
    path, temperature, before = calibrated
    assert temperature > 1
    raw = torch.load(path, map_location="cpu", weights_only=True)
    assert raw["hyper_parameters"]["model_card"]["temperature"] == pytest.approx(temperature)
    assert before.calibration["temperature"] == 1.0  # before the fit: no scaling
    assert before.calibration["ece_before"] == before.calibration["ece_after"]
    metrics = evaluate_pairs(path, pairs, device="cpu", json_path=tmp_path / "m.json")
    c = metrics.calibration
    assert c["temperature"] == pytest.approx(temperature) and c["bins"] == 15
    assert c["ece_after"] < c["ece_before"] and c["nll_after"] < c["nll_before"]
    assert c["ece_before"] == pytest.approx(before.calibration["ece_before"])
    assert json.loads((tmp_path / "m.json").read_text())["calibration"] == c
    np.testing.assert_array_equal(metrics.matrix, before.matrix)  # the arg-max is unchanged
    assert "ECE" in str(metrics.table().caption)


def test_predict_applies_the_temperature(calibrated, pairs):
    path, temperature, _ = calibrated
    image = np.asarray(Image.open(pairs[0][0]))
    calibrated_p = Predictor.from_path(path, device="cpu").predict_proba(image)
    raw_p = Predictor.from_path(path, device="cpu", temperature=1.0).predict_proba(image)
    expected = torch.softmax(torch.from_numpy(raw_p).log() / temperature, 0).numpy()
    np.testing.assert_allclose(calibrated_p, expected, atol=1e-5)
    assert calibrated_p.max(0).mean() < raw_p.max(0).mean()  # less sure
    np.testing.assert_array_equal(calibrated_p.argmax(0), raw_p.argmax(0))


def test_temperature_is_in_the_onnx_metadata_and_applied(calibrated, pairs, tmp_path):
    path, temperature, _ = calibrated
    onnx_path = tmp_path / "over.onnx"
    export_onnx(path, onnx_path)
    card = json.loads(read_onnx_metadata(onnx_path)["segkit.model_card"])
    assert card["temperature"] == pytest.approx(temperature)
    onnx_pred = Predictor.from_path(onnx_path, device="cpu")
    assert onnx_pred.temperature == pytest.approx(temperature)
    image = np.asarray(Image.open(pairs[1][0]))
    np.testing.assert_allclose(
        onnx_pred.predict_proba(image),
        Predictor.from_path(path, device="cpu").predict_proba(image),
        atol=1e-4,
    )


def test_a_bad_stored_temperature_is_one_clear_error(trained_bundle, tmp_path):
    from segkit.errors import ModelError

    raw = torch.load(trained_bundle, map_location="cpu", weights_only=True)
    raw["hyper_parameters"]["model_card"]["temperature"] = -1.0
    torch.save(raw, tmp_path / "bad.ckpt")
    with pytest.raises(
        ModelError, match="bad.ckpt: the model card is not valid at temperature: .*greater than 0"
    ):
        load_bundle(tmp_path / "bad.ckpt")
