"""The model card: one validated description of a model, stored in the checkpoint, read back
through the bundle, converted from an older segkit's separate hyper-parameters."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from segkit.bundle import load_bundle, save_bundle, set_temperature, update_card
from segkit.card import ModelCard, validate_card
from segkit.config import load_config
from segkit.errors import ModelError
from segkit.models.build import build_model
from tests.conftest import TINY_MODEL

CLASSES = ["bg", "road", "roof"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    config = load_config(
        {
            "model": TINY_MODEL,
            "data": {"classes": CLASSES, "patch_size": 96, "palette": {"roof": [9, 8, 7]}},
            "predict": {"overlap": 0.5, "tta": "flip"},
        }
    )
    torch.manual_seed(0)
    model = build_model(config.model, len(CLASSES), 3)
    return save_bundle(tmp_path_factory.mktemp("card") / "m.ckpt", config, model)


def _raw(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def test_the_checkpoint_holds_the_card_and_loads_weights_only(bundle):
    raw = _raw(bundle)
    assert list(raw["hyper_parameters"]) == ["model_card"]
    card = load_bundle(bundle).card
    assert raw["hyper_parameters"]["model_card"] == card.to_dict()
    assert (card.architecture, card.encoder) == (TINY_MODEL["arch"], TINY_MODEL["encoder"])
    assert (card.classes, card.colors[2], card.in_channels, card.stride) == (
        CLASSES,
        (9, 8, 7),
        3,
        8,
    )
    assert (card.tile, card.patch_size, card.predict.overlap, card.predict.tta) == (
        96,
        96,
        0.5,
        "flip",
    )
    assert card.data is not None and card.data.classes == CLASSES and card.temperature == 1.0


def test_decisions_after_training_update_the_card(bundle, tmp_path):
    path = tmp_path / "m.ckpt"
    path.write_bytes(bundle.read_bytes())
    set_temperature(path, 1.7)
    update_card(path, lambda card: card.updated(predict={"tta": "d4"}))
    card = load_bundle(path).card
    assert card.temperature == 1.7 and card.predict.tta == "d4"
    assert card.config is not None and card.config["predict"]["tta"] == "d4"
    assert load_bundle(path).config.predict.tta == "d4"
    with pytest.raises(ModelError, match="temperature must be > 0"):
        set_temperature(path, 0.0)


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        ({"colors": [[0, 0, 0]]}, "1 colors for 3 classes"),
        ({"mean": [0.5]}, "mean has 1 values but the model takes 3 channels"),
        ({"std": [0.2, 0.0, 0.2]}, "std must be > 0"),
        ({"temperature": 0}, "at temperature: Input should be greater than 0"),
        ({"classes": ["a", "b", "c"]}, "differ from the stored config's data section"),
        ({"surprise": 1}, "at surprise: Extra inputs are not permitted"),
    ],
)
def test_a_bad_card_is_one_line_naming_the_file(bundle, change, problem):
    data = {**load_bundle(bundle).card.to_dict(), **change}
    with pytest.raises(ModelError, match=rf"^x\.ckpt: the model card is not valid.*{problem}"):
        validate_card(data, "x.ckpt")


def _legacy(bundle: Path, tmp_path: Path, **drop: bool) -> Path:
    """``bundle`` as an older segkit (bundle format 1) wrote it: each fact its own
    hyper-parameter, the fitted temperature among them."""
    raw = _raw(bundle)
    card = raw["hyper_parameters"]["model_card"]
    old = {
        "bundle_format": 1,
        "segkit_version": "0.9.0",
        "config": card["config"],
        "classes": card["classes"],
        "colors": card["colors"],
        "in_channels": card["in_channels"],
        "mean": card["mean"],
        "std": card["std"],
        "stride": card["stride"],
        "temperature": 1.25,
    }
    raw["hyper_parameters"] = {k: v for k, v in old.items() if not drop.get(k)}
    path = tmp_path / "old.ckpt"
    torch.save(raw, path)
    return path


def test_an_older_segkits_checkpoint_is_converted(bundle, tmp_path):
    old = _legacy(bundle, tmp_path)
    card = load_bundle(old).card
    assert card == load_bundle(bundle).card.updated(temperature=1.25)
    set_temperature(old, 2.0)  # a decision after training writes the card format
    assert list(_raw(old)["hyper_parameters"]) == ["model_card"]
    assert load_bundle(old).card.temperature == 2.0


def test_an_older_checkpoint_without_its_config_is_refused_in_one_line(bundle, tmp_path):
    old = _legacy(bundle, tmp_path, config=True)
    with pytest.raises(ModelError, match=r"old\.ckpt: written by an older segkit .*re-export"):
        load_bundle(old)


def test_the_card_json_round_trips(bundle):
    card = load_bundle(bundle).card
    assert ModelCard.model_validate_json(card.model_dump_json()) == card


def test_a_module_recreated_from_a_checkpoint_keeps_its_card(bundle, tmp_path):
    """``load_from_checkpoint`` passes the stored hyper-parameters back: the module takes the
    stored card (decisions after training included) and reads no pretrained weights."""
    from segkit.training.module import SegmentationModule

    path = tmp_path / "m.ckpt"
    path.write_bytes(bundle.read_bytes())
    set_temperature(path, 1.4)
    module = SegmentationModule(**_raw(path)["hyper_parameters"])
    assert module.card == load_bundle(path).card and module.card.temperature == 1.4
    assert module.hparams["model_card"] == module.card.to_dict() and not module._pretrained
    legacy = SegmentationModule(**_raw(_legacy(bundle, tmp_path))["hyper_parameters"])
    assert legacy.card.classes == CLASSES and not legacy._pretrained
