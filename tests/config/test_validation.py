"""Config checks that must happen at load time (exit 2 before any work), and dotted overrides
that reach into mappings without dropping their other entries."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from segkit.config import is_weights_file, load_config
from segkit.errors import ConfigError


def _error(*overrides: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(None, list(overrides))
    return str(info.value)


def test_unknown_arch_is_a_config_error_with_close_matches_and_choices():
    msg = _error("model.arch=Unett")
    assert "model.arch: unknown architecture 'Unett' — did you mean Unet" in msg
    assert "DeepLabV3Plus" in msg and "Segformer" in msg  # smp's own names are listed
    assert "(got " not in msg  # the value is named once


def test_arch_names_are_case_insensitive_like_smp():
    assert load_config(None, ["model.arch=unetplusplus"]).model.arch == "unetplusplus"


def test_unknown_encoder_is_a_config_error_with_close_matches():
    msg = _error("model.encoder=resnet19")
    assert "model.encoder: unknown encoder 'resnet19' — did you mean resnet18" in msg
    assert "more; or 'tu-<timm model name>')" in msg  # the long list is cut, the note kept
    assert len(msg) < 300, msg
    assert "did you mean resnet34" in _error("model.encoder=Resnet34")


def test_unknown_timm_encoder_suggests_timm_names():
    msg = _error("model.encoder=tu-resnet10x")
    assert "unknown timm encoder 'tu-resnet10x' — did you mean tu-resnet10t" in msg
    assert load_config(None, ["model.encoder=tu-resnet10t"]).model.encoder == "tu-resnet10t"


@pytest.mark.parametrize("colour", ["[300, 0, 0]", "[-1, 0, 0]"])
def test_palette_colours_are_in_0_to_255(colour):
    msg = _error("data.classes=[a, b]", f"data.palette={{a: {colour}, b: [0, 0, 0]}}")
    assert f"data.palette: a colour is 3 integers 0-255 ([r, g, b]); bad: a={colour}" in msg
    assert "b=" not in msg


@pytest.mark.parametrize("colour", ["[1, 2]", "[1, 2, 3, 4]", "[0.5, 0, 0]", "red"])
def test_palette_colours_are_three_integers(colour):
    msg = _error("data.classes=[a, b]", f"data.palette={{a: {colour}, b: [0, 0, 0]}}")
    assert "data.palette.a" in msg  # pydantic's own message, naming the entry


def test_palette_colours_may_come_from_numpy():
    """Python callers build palettes from arrays (default_colors rows): numpy integers coerce."""
    import numpy as np

    from segkit.config import DataConfig

    colours = np.array([[1, 2, 3], [255, 0, 0]], dtype=np.uint8)
    data = DataConfig(classes=["a", "b"], palette={"a": tuple(colours[0]), "b": tuple(colours[1])})
    assert data.palette == {"a": (1, 2, 3), "b": (255, 0, 0)}


def test_palette_bounds_are_accepted():
    c = load_config(
        None, ["data.classes=[a, b]", "data.palette={a: [0, 0, 0], b: [255, 255, 255]}"]
    )
    assert c.data.palette == {"a": (0, 0, 0), "b": (255, 255, 255)}


def test_dotted_override_changes_one_palette_entry_and_keeps_the_others(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "data": {
                    "classes": ["a", "b"],
                    "mask_encoding": "palette",
                    "palette": {"a": [1, 1, 1], "b": [2, 2, 2]},
                },
                "model": {
                    "kwargs": {"decoder_channels": [8, 8, 8, 8, 8], "decoder_use_norm": False}
                },
            }
        )
    )
    c = load_config(path, ["data.palette.a=[9,9,9]", "model.kwargs.decoder_channels=[4,4,4,4,4]"])
    assert c.data.palette == {"a": (9, 9, 9), "b": (2, 2, 2)}
    assert c.model.kwargs == {"decoder_channels": [4, 4, 4, 4, 4], "decoder_use_norm": False}


def test_override_of_the_mapping_itself_replaces_it():
    source = {"data": {"classes": ["a", "b"], "palette": {"a": [1, 1, 1], "b": [2, 2, 2]}}}
    c = load_config(source, ["data.palette={a: [9, 9, 9]}", "model.kwargs={}"])
    assert c.data.palette == {"a": (9, 9, 9)}  # b is gone: the whole palette was given
    assert c.model.kwargs == {}
    assert source["data"]["palette"] == {"a": [1, 1, 1], "b": [2, 2, 2]}  # caller's dict untouched


def test_override_of_a_section_with_a_mapping_merges_into_it():
    c = load_config(
        {"trainer": {"max_epochs": 3, "accelerator": "cpu"}}, ["trainer={max_epochs: 5}"]
    )
    assert (c.trainer.max_epochs, c.trainer.accelerator) == (5, "cpu")


def test_override_below_a_plain_value_is_refused():
    with pytest.raises(ConfigError, match=r"override 'data.classes.x=1': 'data.classes' is not a"):
        load_config({"data": {"classes": ["a", "b"]}}, ["data.classes.x=1"])


@pytest.mark.parametrize("key", ["data.train.imagez", "data.val.maskz"])
def test_unknown_key_in_an_optional_section_lists_the_allowed_keys(key):
    msg = _error(f"{key}=x")
    assert f"unknown key '{key}' — did you mean" in msg
    assert "(allowed: images, masks)" in msg


def test_unknown_key_below_a_plain_value_has_no_empty_allowed_list():
    from segkit.config.messages import unknown_key_message

    assert unknown_key_message("data.classes.x") == "unknown key 'data.classes.x'"


def _write(folder: Path, body: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "c.yaml"
    path.write_text(yaml.safe_dump(body))
    return path


@pytest.mark.parametrize("name", ["enc.pth", "enc.ckpt", "enc.PTH", "weights/enc.safetensors"])
def test_local_encoder_weights_resolve_against_the_config_folder(tmp_path, name):
    path = _write(tmp_path / "cfg", {"model": {"encoder_weights": name}})
    assert load_config(path).model.encoder_weights == str((tmp_path / "cfg" / name).resolve())


def test_a_suffixless_weights_file_next_to_the_config_is_found(tmp_path):
    path = _write(tmp_path / "cfg", {"model": {"encoder_weights": "my_encoder"}})
    assert load_config(path).model.encoder_weights == "my_encoder"  # a weight-set name
    (tmp_path / "cfg" / "my_encoder").write_bytes(b"")
    assert load_config(path).model.encoder_weights == str(tmp_path / "cfg" / "my_encoder")


def test_weight_set_names_are_not_files():
    assert not is_weights_file(None) and not is_weights_file("imagenet")
    assert is_weights_file("enc.CKPT") and is_weights_file("sub\\enc")


def test_run_paths_stay_relative_to_the_working_directory(tmp_path):
    path = _write(tmp_path / "cfg", {"run": {"dir": "runs", "resume": "runs/x/last.ckpt"}})
    c = load_config(path)
    assert c.run.dir == Path("runs") and c.run.resume == "runs/x/last.ckpt"


@pytest.mark.slow
def test_a_config_with_declared_trainer_keys_does_not_import_lightning(tmp_path):
    """Opening a bundle to predict validates its config; listing Lightning's Trainer arguments
    (for keys the trainer section does not declare) imports lightning, ~0.1-0.2 GB of RSS."""
    import subprocess
    import sys

    code = (
        "import sys; from segkit.config import load_config; "
        "load_config({'trainer': {'max_epochs': 2}}); "
        "assert 'lightning' not in sys.modules, 'lightning imported'; "
        "load_config({'trainer': {'gradient_clip_val': 1.0}}); "
        "assert 'lightning' in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]


@pytest.mark.slow
def test_importing_the_schema_imports_no_model_library():
    """smp and timm are imported by the name checks of `model.arch`/`model.encoder` only, so
    `import segkit.config` (the CLI's start, a bundle's facts) stays light."""
    import subprocess
    import sys

    code = (
        "import sys; import segkit.config; "
        "heavy = [m for m in ('torch', 'segmentation_models_pytorch', 'timm', 'lightning') "
        "if m in sys.modules]; "
        "assert not heavy, heavy; "
        "segkit.config.load_config({'model': {'arch': 'FPN'}}); "
        "assert 'segmentation_models_pytorch' in sys.modules"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-2000:]
