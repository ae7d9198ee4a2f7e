"""Entropy and confidence maps: their values, the streamed files, and tiled == whole image."""

from __future__ import annotations

import math

import numpy as np
import pytest
import tifffile
import torch

from segkit.engine.predictor import Predictor
from segkit.engine.uncertainty import apply_temperature, max_probability, normalised_entropy
from segkit.pipeline.run import predict_source
from segkit.pipeline.writers import OutputWriter
from tests.fixtures import model_card, shapes_image


class PixelBackend:
    """A per-pixel model (a 1x1 linear map and softmax): no receptive field, so any tiling of an
    image gives exactly the whole image's probabilities."""

    device = torch.device("cpu")

    def __init__(self, classes: int = 3, uniform: bool = False) -> None:
        self.card = model_card(classes)
        self.uniform = uniform
        self.weight = torch.linspace(-2, 2, classes * 3).view(classes, 3)

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        logits = torch.einsum("kc,nchw->nkhw", self.weight, tiles)
        return torch.softmax(logits * (0 if self.uniform else 1), dim=1)


def test_known_probabilities():
    k = 4
    uniform = torch.full((k, 2, 3), 1 / k)
    assert torch.allclose(normalised_entropy(uniform), torch.ones(2, 3))
    assert torch.allclose(max_probability(uniform), torch.full((2, 3), 1 / k))
    one_hot = torch.zeros(k, 2, 3)
    one_hot[2] = 1
    assert torch.equal(normalised_entropy(one_hot), torch.zeros(2, 3))
    assert torch.equal(max_probability(one_hot), torch.ones(2, 3))
    two = np.array([[[0.25]], [[0.75]]], dtype=np.float32)  # numpy in, binary entropy out
    expected = -(0.25 * math.log(0.25) + 0.75 * math.log(0.75)) / math.log(2)
    assert normalised_entropy(two).item() == pytest.approx(expected, rel=1e-6)


def test_temperature_keeps_the_argmax_and_softens():
    logits = torch.randn(5, 8, 8, generator=torch.Generator().manual_seed(0)) * 4
    probs = torch.softmax(logits, 0)
    scaled = apply_temperature(probs.clone(), 2.0)
    torch.testing.assert_close(scaled, torch.softmax(logits / 2, 0), atol=1e-6, rtol=1e-5)
    assert torch.equal(scaled.argmax(0), probs.argmax(0))
    assert (normalised_entropy(scaled) >= normalised_entropy(probs) - 1e-6).all()
    assert apply_temperature(probs, 1.0) is probs


def _read(path):
    with tifffile.TiffFile(path) as tif:
        return tif.asarray()


def test_saved_maps_are_the_whole_images_maps(bundle_path, tmp_path):
    image = shapes_image(100, 150, seed=4)
    src = tmp_path / "in"
    src.mkdir()
    tifffile.imwrite(src / "a.tif", image)
    out = tmp_path / "out"
    summary = predict_source(
        bundle_path,
        src,
        out,
        save=["index", "entropy", "confidence"],
        device="cpu",
        progress=False,
        tile=64,
    )
    assert summary.ok == 1
    entropy, confidence = _read(out / "a_entropy.tif"), _read(out / "a_confidence.tif")
    assert entropy.shape == confidence.shape == image.shape[:2]
    assert entropy.dtype == confidence.dtype == np.float32
    assert entropy.min() >= 0 and entropy.max() <= 1 and entropy.max() > entropy.min()
    assert confidence.min() >= 1 / 4 - 1e-6 and confidence.max() <= 1
    probs = Predictor.from_path(bundle_path, device="cpu", tile=64).predict_proba(image)
    np.testing.assert_allclose(entropy, normalised_entropy(probs).numpy(), atol=1e-6)
    np.testing.assert_allclose(confidence, probs.max(0), atol=1e-7)


def test_tiled_maps_equal_the_whole_image_where_tiling_is_exact(tmp_path):
    image = shapes_image(96, 160, seed=5)
    maps = {}
    for tile in (32, 256):  # many overlapping tiles vs one tile
        predictor = Predictor(PixelBackend(), tile=tile, overlap=0.5, blend="gaussian")
        with OutputWriter(
            tmp_path / f"t{tile}", ["entropy", "confidence"], predictor.card, 96, 160
        ) as writer:
            for row, col, block in predictor.iter_blocks(image):
                writer.add_block(row, col, block)
            paths = writer.commit()
        maps[tile] = {kind: _read(p) for kind, p in paths.items()}
    for kind in ("entropy", "confidence"):
        np.testing.assert_allclose(maps[32][kind], maps[256][kind], atol=1e-5)


def test_uniform_probabilities_give_entropy_one(tmp_path):
    predictor = Predictor(PixelBackend(classes=5, uniform=True), tile=32, overlap=0.25)
    with OutputWriter(tmp_path / "u", ["entropy", "confidence"], predictor.card, 50, 70) as w:
        for row, col, block in predictor.iter_blocks(shapes_image(50, 70, seed=6)):
            w.add_block(row, col, block)
        paths = w.commit()
    np.testing.assert_allclose(_read(paths["entropy"]), 1.0, atol=1e-6)
    np.testing.assert_allclose(_read(paths["confidence"]), 0.2, atol=1e-6)


def test_an_aborted_image_leaves_no_map(tmp_path):
    info = model_card(3)
    with pytest.raises(RuntimeError), OutputWriter(tmp_path / "x", ["entropy"], info, 8, 8) as w:
        w.add_block(0, 0, np.full((3, 8, 8), 1 / 3, np.float32))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []
