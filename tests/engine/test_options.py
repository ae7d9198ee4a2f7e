"""Predict and evaluate options: one typed model each, whose fields are the CLI flags and whose
validation is the only one."""

from __future__ import annotations

import argparse

import pytest
from pydantic import Field

from segkit.cli import _option_flags, _parser, main
from segkit.engine.options import InferenceOptions, PredictOptions, flag_name
from segkit.errors import ConfigError
from segkit.pipeline.run import predict_source


def _subparser(name: str) -> argparse.ArgumentParser:
    parser = _parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


@pytest.mark.parametrize(
    ("command", "options"), [("predict", PredictOptions), ("evaluate", InferenceOptions)]
)
def test_every_option_is_a_flag_with_its_help(command, options):
    flags = {a.dest: a for a in _subparser(command)._actions}
    for name, field in options.model_fields.items():
        action = flags[name]
        assert action.option_strings == [flag_name(name)]
        assert action.help == field.description and action.default == field.default
    help_text = " ".join(_subparser(command).format_help().split())
    assert all(flag_name(name) in help_text for name in options.model_fields)


def test_a_new_field_is_a_new_flag():
    class More(PredictOptions):
        sharpen: float | None = Field(None, ge=0, description="sharpen the masks")
        modes: list[str] = Field(["x"], description="several words")

    parser = argparse.ArgumentParser()
    _option_flags(parser, More)
    args = parser.parse_args(["--sharpen", "0.5", "--blend", "cosine", "--modes", "a", "b"])
    assert (args.sharpen, args.blend, args.modes, args.skip_existing) == (
        0.5,
        "cosine",
        ["a", "b"],
        False,
    )
    assert "sharpen the masks" in parser.format_help()
    with pytest.raises(SystemExit):
        parser.parse_args(["--tta", "spin"])  # choices come from the Literal


def test_flags_parse_into_the_model():
    args = _subparser("predict").parse_args(
        [
            "m.ckpt",
            "src",
            "-o",
            "out",
            "--save",
            "color",
            "index",
            "color",
            "--tta",
            "d4",
            "--tile",
            "256",
        ]
    )
    options = PredictOptions.parse(**{k: getattr(args, k) for k in PredictOptions.model_fields})
    assert options.save == ["color", "index"]  # each output once
    assert (options.tta, options.tile, options.blend, options.devices) == ("d4", 256, None, 1)
    assert options.tiling() == {
        "tile": 256,
        "overlap": None,
        "blend": None,
        "tta": "d4",
        "batch_size": None,
    }


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"blend": "box"}, "--blend 'box': Input should be 'constant', 'gaussian' or 'cosine'"),
        ({"tta": "rot"}, "--tta 'rot': Input should be 'none', 'hflip', 'flip' or 'd4'"),
        ({"tile": 8}, "--tile 8: Input should be greater than or equal to 16"),
        ({"overlap": -0.5}, "--overlap -0.5: Input should be greater than or equal to 0"),
        ({"batch_size": 0}, "--batch-size 0: Input should be greater than or equal to 1"),
        ({"save": []}, "--save []: List should have at least 1 item"),
        ({"save": ["jpeg"]}, "--save 'jpeg': Input should be 'index', 'color'"),
        ({"probs_dtype": "int8"}, "--probs-dtype 'int8': Input should be 'float16' or 'uint8'"),
        ({"devices": 0}, "--devices 0: Input should be greater than or equal to 1"),
        ({"max_pixels": 0}, "--max-pixels 0: Input should be greater than or equal to 1"),
        ({"sharpen": 1}, "--sharpen 1: Extra inputs are not permitted"),
    ],
)
def test_each_bad_option_is_one_clear_error(tmp_path, values, message):
    with pytest.raises(ConfigError) as e:
        predict_source(tmp_path / "m.ckpt", tmp_path, tmp_path / "out", **values)
    assert str(e.value).startswith(message) and "\n" not in str(e.value)
    assert not (tmp_path / "out").exists()  # refused before anything ran


def test_the_cli_reports_a_bad_option_in_one_line(tmp_path, capsys):
    argv = ["predict", str(tmp_path / "m.ckpt"), str(tmp_path), "-o", str(tmp_path / "o")]
    assert main([*argv, "--devices", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "error: --devices 0: Input should be greater than or equal to 1\n"


def test_every_uncertainty_map_can_be_saved():
    """``OutputKind`` names the maps by hand (a Literal); the maps themselves live in uncertainty."""
    from typing import get_args

    from segkit.engine.options import OutputKind
    from segkit.engine.uncertainty import UNCERTAINTY_MAPS

    assert set(UNCERTAINTY_MAPS) <= set(get_args(OutputKind))
