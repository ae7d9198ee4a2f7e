"""After training: the TTA mode is stored only where it measurably pays, and only the views the
training augmentation showed are tried."""

from __future__ import annotations

import pytest

from segkit.config import load_config


def test_flip_tta_is_stored_only_when_it_measurably_pays(tmp_path, monkeypatch):
    from types import SimpleNamespace

    import segkit.evaluation
    from segkit.bundle import load_bundle, save_bundle, update_card
    from segkit.models.build import build_model
    from segkit.training.finish import TTA_GAIN, measured_tta
    from tests.conftest import TINY_MODEL

    config = load_config({"model": TINY_MODEL, "data": {"in_channels": 1}})
    path = save_bundle(tmp_path / "best.ckpt", config, build_model(config.model, 2, 1))
    augment = config.augment  # flips and quarter turns: every mode may be tried
    gains = {"hflip": 0.0, "flip": 0.0, "d4": TTA_GAIN / 2}
    monkeypatch.setattr(
        segkit.evaluation,
        "evaluate_pairs",
        lambda *a, tta=None, **k: SimpleNamespace(miou=0.5 + gains[tta]),
    )
    assert measured_tta(path, [], 0.5, "cpu", augment) is None  # neither pays
    gains.update(hflip=TTA_GAIN / 2, flip=2 * TTA_GAIN, d4=2.5 * TTA_GAIN)
    decision = measured_tta(path, [], 0.5, "cpu", augment)
    assert decision is not None and decision.value == "flip"  # d4 adds too little over flip
    assert "0.5000 without TTA, hflip 0.5005, flip 0.5020" in decision.reason
    gains["d4"] = 3 * TTA_GAIN
    assert measured_tta(path, [], 0.5, "cpu", augment).value == "d4"
    update_card(path, lambda card: card.updated(predict={"tta": decision.value}))
    assert load_bundle(path).config.predict.tta == "flip"
    with pytest.raises(Exception, match="tta"):
        update_card(path, lambda card: card.updated(predict={"tta": "sideways"}))
    assert load_bundle(path).config.predict.tta == "flip"  # a refused change leaves the file


@pytest.mark.parametrize(
    "flips,modes",
    [
        ({}, ["hflip", "flip", "d4"]),
        ({"vflip": 0, "rotate90": 0}, ["hflip"]),
        ({"vflip": 0}, ["hflip", "flip", "d4"]),  # a half turn and a flip make the other flip
        ({"hflip": 0, "rotate90": 0}, []),
        ({"hflip": 0, "vflip": 0, "rotate90": 0}, []),
    ],
)
def test_tta_tries_only_the_views_the_training_showed(flips, modes):
    from segkit.config import AugmentConfig
    from segkit.training.finish import tta_candidates

    assert tta_candidates(AugmentConfig(**flips)) == modes
