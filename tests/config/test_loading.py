"""The config schema: defaults, YAML, overrides, and the errors users see."""

from __future__ import annotations

import pytest
import yaml

from segkit.config import config_reference, load_config, parse_overrides, save_config
from segkit.errors import ConfigError


def test_defaults_match_the_contract():
    c = load_config()
    assert (c.model.arch, c.model.encoder, c.model.encoder_weights) == (
        "Unet",
        "resnet34",
        "imagenet",
    )
    assert c.data.ignore_index == 255 and c.data.mask_encoding == "index"
    assert c.trainer.precision == "auto" and c.predict.blend == "gaussian"
    assert c.data.resolved_mean() == pytest.approx([0.485, 0.456, 0.406])


def test_precedence_defaults_yaml_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump({"trainer": {"max_epochs": 7}, "model": {"encoder": "resnet18"}})
    )
    c = load_config(path, ["trainer.max_epochs=3"])
    assert c.trainer.max_epochs == 3  # CLI beats YAML
    assert c.model.encoder == "resnet18"  # YAML beats defaults
    assert c.optimizer.lr == 1e-3  # defaults survive


def test_relative_data_paths_resolve_against_the_config_folder(tmp_path):
    (tmp_path / "cfg").mkdir()
    path = tmp_path / "cfg" / "c.yaml"
    path.write_text(yaml.safe_dump({"data": {"train": {"images": "../imgs", "masks": "../masks"}}}))
    c = load_config(path)
    assert c.data.train.images == (tmp_path / "imgs").resolve()


def test_override_values_are_parsed_safely():
    nested = parse_overrides(["a.b=5", "a.c=[1, 2]", "d=null", "e=__import__('os')"])
    assert nested == {"a": {"b": 5, "c": [1, 2]}, "d": None, "e": "__import__('os')"}


@pytest.mark.parametrize(
    ("override", "expected"),
    [
        ("trainer.max_epoch=5", "did you mean trainer.max_epochs"),
        ("model.encodr=resnet18", "did you mean model.encoder"),
        ("datta.classes=[a]", "did you mean data"),
        ("optimizer.lr=-1", "optimizer.lr: Input should be greater than 0 (got -1)"),
        ("optimizer.name=lion", "'adamw', 'adam' or 'sgd'"),
        ("trainer.max_epochs=many", "trainer.max_epochs"),
        ("data.mask_encoding=palette", "needs data.palette"),
        ("data.ignore_index=1", "collides with a class index"),
        ("data.classes=[a,a]", "classes must be unique"),
        ("loss.dice=-1", "loss.dice: Input should be greater than or equal to 0"),
        ("oops", "is not KEY=VALUE"),
    ],
)
def test_bad_overrides_name_the_key_and_the_allowed_values(override, expected):
    with pytest.raises(ConfigError, match=None) as info:
        load_config(None, [override])
    assert expected in str(info.value)


def test_trainer_passes_any_lightning_argument_through():
    c = load_config(None, ["trainer.gradient_clip_val=1.0", "trainer.accumulate_grad_batches=2"])
    dumped = c.trainer.model_dump()
    assert dumped["gradient_clip_val"] == 1.0 and dumped["accumulate_grad_batches"] == 2


def test_yaml_errors_name_the_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("data: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    path.write_text("- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config(path)


def test_saved_config_round_trips(tmp_path):
    c = load_config(
        None,
        [
            "data.classes=[bg, cell, edge]",
            "data.palette={bg: [0,0,0], cell: [255,0,0], edge: [0,255,0]}",
        ],
    )
    save_config(c, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == c


def test_config_reference_covers_every_key():
    keys = {row[0] for row in config_reference()}
    assert {
        "data.classes",
        "model.encoder_weights",
        "trainer.precision",
        "predict.tile",
        "run.resume",
    } <= keys
    assert all(desc for _, _, desc in config_reference())


def test_a_loss_needs_a_positive_term():
    with pytest.raises(ConfigError, match="at least one loss weight"):
        load_config(None, ["loss.dice=0", "loss.ce=0"])


def test_numeric_precision_is_accepted():
    assert load_config(None, ["trainer.precision=32"]).trainer.precision == "32"
    assert load_config(None, ["trainer.precision=bf16-mixed"]).trainer.precision == "bf16-mixed"
