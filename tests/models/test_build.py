"""build_model: local encoder weights, offline imagenet (names: tests/config/test_validation.py)."""

from __future__ import annotations

import pytest
import segmentation_models_pytorch as smp
import torch
from huggingface_hub.errors import LocalEntryNotFoundError
from safetensors.torch import save_file

from segkit.config import ModelConfig
from segkit.errors import ModelError
from segkit.models.build import build_model, model_stride
from tests.conftest import TINY_MODEL


def _cfg(**kw) -> ModelConfig:
    return ModelConfig(**{**TINY_MODEL, **kw})


def test_tiny_model_shapes_and_stride():
    model = build_model(_cfg(), num_classes=5, in_channels=4)
    assert model_stride(model) == 8
    out = model(torch.randn(2, 4, 40, 24))
    assert out.shape == (2, 5, 40, 24)


def test_default_depth_stride_is_32():
    model = build_model(ModelConfig(arch="FPN", encoder="resnet18", encoder_weights=None), 2, 3)
    assert model_stride(model) == 32


def test_bad_kwargs_name_the_section():
    with pytest.raises(ModelError, match="model.kwargs"):
        build_model(_cfg(kwargs={"no_such_argument": 1}), 2, 3)


def test_imagenet_offline_suggests_local_file_or_null(monkeypatch):
    def offline(*args, **kwargs):
        raise LocalEntryNotFoundError("cannot reach huggingface.co (offline mode)")

    monkeypatch.setattr(smp.encoders, "hf_hub_download", offline)
    with pytest.raises(ModelError) as err:
        build_model(ModelConfig(arch="Unet", encoder="resnet18", encoder_weights="imagenet"), 2, 3)
    msg = str(err.value)
    assert "encoder_weights" in msg and "local" in msg and "null" in msg
    assert "\n" not in msg


def test_imagenet_with_the_network_down_fails_at_once_in_one_line(tmp_path, monkeypatch):
    """No network (every connection refused), nothing cached, offline mode not set: the real hub
    client is never left to retry; one line names the way out."""
    import socket
    import time

    from huggingface_hub import constants

    def refused(*args, **kwargs):
        raise ConnectionRefusedError("network is down (test)")

    monkeypatch.setattr(socket, "create_connection", refused)
    monkeypatch.setattr(socket.socket, "connect", refused)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    start = time.perf_counter()
    with pytest.raises(ModelError) as err:
        build_model(ModelConfig(arch="Unet", encoder="resnet18", encoder_weights="imagenet"), 2, 3)
    assert time.perf_counter() - start < 5
    msg = str(err.value)
    assert msg.startswith("model.encoder_weights: 'imagenet' weights for resnet18 are not cached")
    assert "model.encoder_weights=null" in msg and "local weights file" in msg
    assert "\n" not in msg and len(msg) < 300
    assert constants.HF_HUB_OFFLINE is False  # the switch is put back


def test_unknown_weight_set_is_a_model_error():
    with pytest.raises(ModelError, match="encoder_weights"):
        build_model(
            ModelConfig(arch="Unet", encoder="resnet18", encoder_weights="no-such-set"), 2, 3
        )


def _resnet18_file(tmp_path, **extra):
    state = smp.encoders.get_encoder("resnet18", weights=None).state_dict()
    state = {**state, "fc.weight": torch.randn(1000, 512), "fc.bias": torch.randn(1000), **extra}
    path = tmp_path / "resnet18.pth"
    torch.save(state, path)
    return path, state


def test_local_weights_file_loads_into_the_encoder(tmp_path):
    path, state = _resnet18_file(tmp_path)
    model = build_model(
        ModelConfig(arch="Unet", encoder="resnet18", encoder_weights=str(path)), 3, 3
    )
    for key, value in model.encoder.state_dict().items():
        torch.testing.assert_close(value, state[key])  # every tensor from the file; fc.* skipped


def test_local_weights_adapt_the_first_conv_to_one_channel(tmp_path):
    path, state = _resnet18_file(tmp_path)
    model = build_model(
        ModelConfig(arch="Unet", encoder="resnet18", encoder_weights=str(path)), 3, 1
    )
    torch.testing.assert_close(
        model.encoder.conv1.weight, state["conv1.weight"].sum(1, keepdim=True)
    )


def test_local_weights_shape_mismatch_is_named(tmp_path):
    path, _ = _resnet18_file(tmp_path, **{"layer1.0.conv1.weight": torch.randn(64, 64, 5, 5)})
    with pytest.raises(
        ModelError, match=r"resnet18.pth: tensor 'layer1.0.conv1.weight' has shape \(64, 64, 5, 5\)"
    ):
        build_model(ModelConfig(arch="Unet", encoder="resnet18", encoder_weights=str(path)), 3, 3)


def test_local_weights_missing_tensors_are_an_error(tmp_path):
    state = smp.encoders.get_encoder("resnet18", weights=None).state_dict()
    state.pop("layer4.1.bn2.weight")
    path = tmp_path / "partial.pt"
    torch.save(state, path)
    with pytest.raises(ModelError, match="missing from the file.*layer4.1.bn2.weight"):
        build_model(ModelConfig(arch="Unet", encoder="resnet18", encoder_weights=str(path)), 3, 3)


def test_timm_classifier_weights_load_into_a_shallow_tu_encoder(tmp_path):
    """A plain timm state_dict (no 'model.' prefix, with fc and unused deeper stages) as safetensors."""
    import timm

    state = timm.create_model("resnet10t", pretrained=False).state_dict()
    path = tmp_path / "resnet10t.safetensors"
    save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    with pytest.warns(UserWarning, match="not used by the encoder"):
        model = build_model(_cfg(encoder_weights=str(path)), 2, 3)
    torch.testing.assert_close(model.encoder.model.conv1[0].weight, state["conv1.0.weight"])


def test_missing_or_corrupt_weights_file(tmp_path):
    with pytest.raises(ModelError, match="not found"):
        build_model(_cfg(encoder_weights=str(tmp_path / "nope.pth")), 2, 3)
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ModelError, match="bad.pth: cannot read encoder weights"):
        build_model(_cfg(encoder_weights=str(bad)), 2, 3)
