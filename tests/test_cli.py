"""The command line: help, exit codes and one-line errors (in-process and as a real subprocess)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from segkit.cli import EXAMPLES, main


@pytest.mark.parametrize("command", sorted(EXAMPLES))
def test_every_command_has_help_with_an_example(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "example: segkit " + command in out


def test_no_command_prints_usage_and_exits_2(capsys):
    assert main([]) == 2
    assert "COMMAND" in capsys.readouterr().out


def test_unknown_config_key_is_one_line_and_exit_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("trainer: {max_epochs: 1}\n")
    assert main(["train", str(cfg), "trainer.max_epoch=3"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "did you mean trainer.max_epochs" in err[0]
        and err[0].startswith("error: ")
    )


def test_print_config_shows_the_resolved_config(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {encoder: resnet18}\n")
    assert main(["train", str(cfg), "--print-config", "optimizer.lr=0.01"]) == 0
    out = capsys.readouterr().out
    assert "encoder: resnet18" in out and "lr: 0.01" in out and "arch: Unet" in out


def test_missing_config_file_is_exit_2(tmp_path, capsys):
    assert main(["train", str(tmp_path / "nope.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err


def test_the_console_script_runs_as_a_subprocess(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "segkit", "train", str(tmp_path / "x.yaml")],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'x.yaml'}: config file not found"
    version = subprocess.run(
        [sys.executable, "-m", "segkit", "--version"], capture_output=True, text=True
    )
    assert version.stdout.startswith("segkit ")


# --- the exit-code contract: 0 ok, 1 some inputs failed, 2 usage/config/model error ----------


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    from segkit.data.synthetic import make_shapes_dataset

    return make_shapes_dataset(
        tmp_path_factory.mktemp("shapes"), n_train=2, n_val=1, size=32, seed=0
    )


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, shapes):
    from segkit.bundle import save_bundle
    from segkit.config import load_config
    from segkit.models.build import build_model
    from tests.conftest import TINY_MODEL

    config = load_config({"data": {"classes": shapes["classes"]}, "model": TINY_MODEL})
    model = build_model(config.model, len(shapes["classes"]), 3)
    return save_bundle(tmp_path_factory.mktemp("model") / "m.ckpt", config, model)


def _shapes_config(tmp_path, shapes, name="c", **model) -> str:
    import yaml

    from tests.conftest import shapes_run_config

    cfg = shapes_run_config(
        shapes,
        tmp_path / "runs",
        model=model,
        trainer={"max_epochs": 1, "limit_train_batches": 1},
    )
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def _exit_cases(tmp, shapes, bundle):
    missing = str(tmp / "missing.ckpt")
    images, masks = str(shapes["val_images"]), str(shapes["val_masks"])
    out = str(tmp / "out")
    return {
        # 2: usage, config or model errors
        "predict missing model": (["predict", missing, images, "-o", out], 2, "missing.ckpt"),
        "predict model folder": (["predict", str(tmp), images, "-o", out], 2, "model file"),
        "evaluate missing model": (
            ["evaluate", missing, "--images", images, "--masks", masks],
            2,
            "missing.ckpt",
        ),
        "export missing model": (["export", missing, "-o", str(tmp / "m.onnx")], 2, "missing"),
        "train missing weights file": (
            ["train", _shapes_config(tmp, shapes, "weights", encoder_weights=str(tmp / "w.pth"))],
            2,
            "w.pth: encoder weights file not found",
        ),
        "train override typo": (
            ["train", _shapes_config(tmp, shapes), "trainer.max_epoch=3"],
            2,
            "override 'trainer.max_epoch=3': unknown key 'trainer.max_epoch'",
        ),
        "check-data nothing to check": (["check-data"], 2, "give a config file"),
        "check-data override typo": (
            ["check-data", _shapes_config(tmp, shapes), "data.clases=[a,b]"],
            2,
            "override 'data.clases=[a,b]'",
        ),
        # 1: some inputs failed
        "predict missing source": (
            ["predict", str(bundle), str(tmp / "nope"), "-o", out],
            1,
            "nope",
        ),
        "evaluate missing masks": (
            ["evaluate", str(bundle), "--images", images, "--masks", str(tmp / "nomasks")],
            1,
            "nomasks",
        ),
        "check-data missing folders": (
            ["check-data", "--images", str(tmp / "a"), "--masks", str(tmp / "b")],
            1,
            "folder not found",
        ),
        # 0: success
        "check-data clean": (["check-data", _shapes_config(tmp, shapes)], 0, ""),
        "predict": (["predict", str(bundle), images, "-o", out], 0, ""),
        "evaluate": (["evaluate", str(bundle), "--images", images, "--masks", masks], 0, ""),
    }


CASE_NAMES = [
    "predict missing model",
    "predict model folder",
    "evaluate missing model",
    "export missing model",
    "train missing weights file",
    "train override typo",
    "check-data nothing to check",
    "check-data override typo",
    "predict missing source",
    "evaluate missing masks",
    "check-data missing folders",
    "check-data clean",
    "predict",
    "evaluate",
]


@pytest.mark.parametrize("case", CASE_NAMES)
def test_exit_codes_follow_one_contract(case, tmp_path, shapes, bundle, capsys):
    argv, code, fragment = _exit_cases(tmp_path, shapes, bundle)[case]
    assert main(argv) == code
    err = capsys.readouterr().err
    if code:
        lines = [line for line in err.splitlines() if line.startswith("error: ")]
        assert lines and fragment in lines[0], err
        assert len(lines[0]) < 300, lines[0]
    assert "Traceback" not in err


def test_check_data_prints_each_problem_once_and_no_empty_histogram(tmp_path, capsys):
    images, masks = tmp_path / "images", tmp_path / "masks"
    assert main(["check-data", "--images", str(images), "--masks", str(masks)]) == 1
    captured = capsys.readouterr()
    both = captured.out + captured.err
    assert both.count(f"{images}: folder not found") == 1, both
    assert both.count(f"{masks}: folder not found") == 1, both
    assert "pixels per class" not in captured.out
