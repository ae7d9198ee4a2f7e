"""Bad configs are refused before any work starts: the error names the key and what is allowed,
exit 2 for config errors and 1 for data/model problems, and no run folder is created."""

from __future__ import annotations

from pathlib import Path

import pytest

from segkit.cli import main

from .conftest import config_dict, error_lines, write_config


@pytest.fixture
def cfg_path(shapes, tmp_path) -> Path:
    return write_config(tmp_path / "c.yaml", config_dict(shapes, tmp_path / "runs"))


def _train(cfg_path: Path, *overrides: str) -> int:
    return main(["train", str(cfg_path), *overrides])


CASES = [
    # (overrides, exit code, fragments of the one error line)
    (
        ["model.encodr=resnet18"],
        2,
        [
            "unknown key 'model.encodr' — did you mean model.encoder?",
            "(allowed: arch, encoder, encoder_weights, kwargs)",
        ],
    ),
    (["optimiser.lr=0.1"], 2, ["unknown key 'optimiser' — did you mean optimizer?"]),
    (
        ["trainer.max_epoch=3"],
        2,
        ["unknown key 'trainer.max_epoch' — did you mean trainer.max_epochs"],
    ),
    (
        ["trainer.max_epochs=many"],
        2,
        ["trainer.max_epochs: Input should be a valid integer", "(got 'many')"],
    ),
    (["data.val_fraction=1.5"], 2, ["data.val_fraction: Input should be less than 1", "(got 1.5)"]),
    (
        ["data.mask_encoding=rgb"],
        2,
        ["data.mask_encoding: Input should be 'index', 'binary' or 'palette'", "(got 'rgb')"],
    ),
    (["data.classes=[a, a]"], 2, ["classes must be unique, got ['a', 'a']"]),
    (["data.ignore_index=1"], 2, ["ignore_index 1 collides with a class index (0..3); use 255"]),
    (
        ["predict.blend=smooth"],
        2,
        ["predict.blend: Input should be 'constant', 'gaussian' or 'cosine'", "(got 'smooth')"],
    ),
    (
        ["model.arch=Unett"],
        2,
        ["model.arch: unknown architecture 'Unett' — did you mean Unet", "(valid: "],
    ),
    (
        ["model.encoder=resnet343"],
        2,
        ["model.encoder: unknown encoder 'resnet343' — did you mean resnet34", "(valid: "],
    ),
    (
        ["model.encoder=tu-resnet10x"],
        2,
        ["model.encoder: unknown timm encoder 'tu-resnet10x' — did you mean tu-resnet10t"],
    ),
    (
        ["data.palette={background: [300, 0, 0]}"],
        2,
        ["data.palette: a colour is 3 integers 0-255 ([r, g, b]); bad: background=[300, 0, 0]"],
    ),
    (
        ["data.train.imagez=x"],
        2,
        [
            "unknown key 'data.train.imagez' — did you mean data.train.images?",
            "(allowed: images, masks)",
        ],
    ),
    (
        ["data.classes=[background, circle]"],
        1,
        ["mask values [2, 3]", "are not classes 0..1 or ignore_index 255"],
    ),
    (["data.train.images=/nonexistent/images"], 1, ["/nonexistent/images: folder not found"]),
    (
        ["run.resume=last"],
        2,
        [
            "run.resume=last: checkpoint",
            "last.ckpt not found (set run.name to the run folder to resume)",
        ],
    ),
]


@pytest.mark.parametrize(
    ("overrides", "code", "fragments"),
    CASES,
    ids=[c[0][0].split("=")[0] + "=" + c[0][0].split("=")[1][:12] for c in CASES],
)
def test_bad_config_is_refused_before_work(cfg_path, tmp_path, capsys, overrides, code, fragments):
    assert _train(cfg_path, *overrides) == code
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err
    for fragment in fragments:
        assert fragment in err, err
    if code == 2:
        assert len(error_lines(err)) == 1, err
    assert not (tmp_path / "runs").exists()  # nothing was started


def test_bad_values_in_the_yaml_file_name_the_file_and_key(shapes, tmp_path, capsys):
    cfg = config_dict(shapes, tmp_path / "runs")
    cfg["optimizer"]["lr"] = "fast"
    cfg["loss"] = {"dice": 0, "ce": 0}
    path = write_config(tmp_path / "bad.yaml", cfg)
    assert _train(path) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {path}: ")
    assert (
        "optimizer.lr: Input should be a valid number" in err
        and "at least one loss weight must be > 0" in err
    )
    assert len(error_lines(err)) == 1


def test_broken_yaml_and_missing_config(tmp_path, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("data:\n  classes: [a, b\n")
    assert _train(broken) == 2
    assert capsys.readouterr().err.startswith(f"error: {broken}: not valid YAML")
    assert _train(tmp_path / "nope.yaml") == 2
    assert (
        capsys.readouterr().err.strip() == f"error: {tmp_path / 'nope.yaml'}: config file not found"
    )
    listing = tmp_path / "list.yaml"
    listing.write_text("- a\n- b\n")
    assert _train(listing) == 2
    assert "expected a mapping of sections" in capsys.readouterr().err


def test_override_that_is_not_key_value(cfg_path, capsys):
    assert _train(cfg_path, "=5") == 2
    assert (
        "override '=5' is not KEY=VALUE (example: trainer.max_epochs=5)" in capsys.readouterr().err
    )


@pytest.mark.parametrize("content", [b"", b"not a torch file"])
def test_unreadable_local_encoder_weights(cfg_path, tmp_path, capsys, content):
    weights = tmp_path / "enc.pth"
    weights.write_bytes(content)
    assert _train(cfg_path, f"model.encoder_weights={weights}") == 2  # a model error
    err = capsys.readouterr().err
    assert len(error_lines(err)) == 1 and err.startswith(
        f"error: {weights}: cannot read encoder weights ("
    )
    assert not (tmp_path / "runs").exists()
