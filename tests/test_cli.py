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
