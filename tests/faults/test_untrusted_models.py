"""Untrusted and damaged model files: pickled code never runs, truncation is one clear line."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from segkit.bundle import load_bundle
from segkit.cli import main
from segkit.errors import ModelError

from .conftest import child_env, error_lines, save_png, segkit_cmd


class _Payload:
    """Unpickling this runs ``os.system("touch MARKER")``: what a malicious checkpoint would do."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.fixture
def evil(bundle: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A real bundle with one extra entry whose unpickling would create ``marker``."""
    marker = tmp_path / "PWNED"
    ckpt = torch.load(bundle, map_location="cpu", weights_only=True)
    ckpt["hyper_parameters"]["callbacks"] = _Payload(marker)
    path = tmp_path / "evil.ckpt"
    torch.save(ckpt, path)
    return path, marker


@pytest.fixture
def image_dir(tmp_path: Path) -> Path:
    src = tmp_path / "images"
    save_png(src / "a.png", np.full((64, 64, 3), 90, np.uint8))
    return src


def test_checkpoint_with_pickled_code_is_refused_and_never_runs(evil, image_dir, tmp_path, capsys):
    path, marker = evil
    with pytest.raises(
        ModelError, match=r"evil\.ckpt: refused: the checkpoint carries pickled objects"
    ):
        load_bundle(path)
    commands = [
        ["predict", str(path), str(image_dir), "--output", str(tmp_path / "out")],
        ["evaluate", str(path), "--images", str(image_dir), "--masks", str(image_dir)],
        ["export", str(path), "--output", str(tmp_path / "evil.onnx")],
    ]
    for argv in commands:
        assert main(argv) == 2, argv  # a model error
        err = capsys.readouterr().err
        assert error_lines(err) == [err.strip()], err  # exactly one line, no traceback
        assert (
            err.startswith(f"error: {path}: refused:") and "only load checkpoints you trust" in err
        )
        assert not marker.exists(), f"the pickled payload ran during {argv[0]}"
    assert not (tmp_path / "out" / "a.png").exists() and not (tmp_path / "evil.onnx").exists()
    # The payload is live: an unsafe load would have run it (proves the test checks something).
    torch.load(path, map_location="cpu", weights_only=False)
    assert marker.exists()


def test_resuming_from_a_checkpoint_with_pickled_code_is_refused(evil, shapes, tmp_path, capsys):
    from .conftest import config_dict, write_config

    path, marker = evil
    cfg = config_dict(shapes, tmp_path / "runs", run={"resume": str(path)})
    assert main(["train", str(write_config(tmp_path / "c.yaml", cfg))]) == 2
    err = capsys.readouterr().err
    assert f"{path}: refused" in err and not marker.exists()
    assert not (tmp_path / "runs").exists()  # refused before any run folder was made


@pytest.mark.slow
def test_truncated_checkpoint_is_one_line_in_a_real_process(bundle, image_dir, tmp_path):
    cut = tmp_path / "cut.ckpt"
    data = bundle.read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    run = subprocess.run(
        segkit_cmd("predict", str(cut), str(image_dir), "--output", str(tmp_path / "out")),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    assert error_lines(run.stderr) == [
        f"error: {cut}: " + run.stderr.split(f"error: {cut}: ", 1)[1].strip()
    ]
    assert "not a readable checkpoint (truncated or corrupt?)" in run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert not (tmp_path / "out" / "a.png").exists()


@pytest.mark.parametrize("size", [0, 10, "half"])
def test_damaged_checkpoints_in_process(bundle, image_dir, tmp_path, capsys, size):
    cut = tmp_path / "cut.ckpt"
    data = bundle.read_bytes()
    cut.write_bytes(data[: len(data) // 2 if size == "half" else size])
    assert main(["predict", str(cut), str(image_dir), "--output", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and err.startswith(f"error: {cut}: not a readable checkpoint")


def test_foreign_checkpoints_are_named(tmp_path, image_dir, capsys):
    plain = tmp_path / "weights.ckpt"
    torch.save({"conv.weight": torch.zeros(1)}, plain)  # a bare state_dict, not a segkit bundle
    listed = tmp_path / "list.ckpt"
    torch.save([1, 2, 3], listed)
    for path, problem in (
        (plain, "not a segkit checkpoint (no hyper_parameters.model_card"),
        (listed, "top level is list"),
    ):
        assert main(["predict", str(path), str(image_dir), "--output", str(tmp_path / "out")]) == 2
        err = capsys.readouterr().err
        assert len(error_lines(err)) == 1 and problem in err and str(path) in err


def _tiny_onnx(path: Path) -> Path:
    """A valid 3-in / 2-out 1x1 conv ONNX graph with segkit-free metadata (built with onnx.helper)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    weight = numpy_helper.from_array(np.ones((2, 3, 1, 1), np.float32), "w")
    node = helper.make_node("Conv", ["image", "w"], ["logits"])
    graph = helper.make_graph(
        [node],
        "tiny",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["n", 3, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 2, "h", "w"])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.slow
def test_truncated_onnx_is_one_line_in_a_real_process(tmp_path, image_dir):
    good = _tiny_onnx(tmp_path / "good.onnx")
    # the intact file works (with the facts an ONNX file without segkit metadata needs)
    assert (
        main(
            [
                "predict",
                str(good),
                str(image_dir),
                "--output",
                str(tmp_path / "ok"),
                "--classes",
                "a",
                "b",
                "--mean",
                "0",
                "0",
                "0",
                "--std",
                "1",
                "1",
                "1",
            ]
        )
        == 0
    )
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(good.read_bytes()[:60])
    run = subprocess.run(
        segkit_cmd(
            "predict",
            str(cut),
            str(image_dir),
            "--output",
            str(tmp_path / "out"),
            "--classes",
            "a",
            "b",
        ),
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2, run.stderr
    assert len(error_lines(run.stderr)) == 1, run.stderr
    assert run.stderr.startswith(f"error: {cut}: not a readable ONNX model (truncated or corrupt?)")
    assert "Traceback" not in run.stderr + run.stdout
