"""The torch backend on a user's own model: binary single-logit heads, heads that do not fit,
and batch-norm folding."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

from segkit.engine.predictor import Predictor
from segkit.engine.torch_backend import TorchBackend, fold_batch_norms
from segkit.errors import ModelError
from tests.fixtures import model_card


def _conv(out_channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, out_channels, 1)


def test_a_single_logit_binary_head_gives_background_and_foreground_probabilities():
    model = _conv(1)
    backend = TorchBackend(model=model, card=model_card(2), device="cpu")
    tiles = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    probs = backend(tiles)
    with torch.no_grad():
        foreground = torch.sigmoid(model(tiles))[:, 0]
    assert probs.shape == (2, 2, 32, 32)
    torch.testing.assert_close(probs[:, 1], foreground)
    torch.testing.assert_close(probs[:, 0], 1 - foreground)
    mask = Predictor(backend).predict(np.random.default_rng(0).random((40, 50, 3)))
    assert mask.shape == (40, 50) and set(np.unique(mask)) <= {0, 1}


@pytest.mark.parametrize(("out_channels", "classes"), [(3, 2), (1, 3)])
def test_a_head_that_does_not_match_the_classes_is_a_clear_error(out_channels, classes):
    backend = TorchBackend(model=_conv(out_channels), card=model_card(classes), device="cpu")
    with pytest.raises(ModelError, match=f"outputs {out_channels} channels but has {classes}"):
        backend(torch.zeros(1, 3, 32, 32))


def test_tiles_with_the_wrong_channel_count_are_a_clear_error():
    backend = TorchBackend(model=_conv(2), card=model_card(2), device="cpu")
    with pytest.raises(ModelError, match="takes 3 channels, got tiles with 1"):
        backend(torch.zeros(1, 1, 32, 32))


def _with_running_stats(model: nn.Module) -> nn.Module:
    """``model`` in eval mode with batch-norm statistics that are not the identity."""
    model.train()
    with torch.no_grad():
        for seed in range(2):
            model(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed)) * 2 + 1)
    return model.eval()


def test_batch_norms_are_folded_into_their_convolutions_and_the_function_is_kept():
    """smp's model checks the input shape in forward (fx cannot trace it): the folding looks
    inside, folds every conv -> batch-norm pair, and the outputs stay those of the original."""
    from segkit.config import ModelConfig
    from segkit.models.build import build_model
    from tests.conftest import TINY_MODEL

    torch.manual_seed(0)
    model = _with_running_stats(build_model(ModelConfig(**TINY_MODEL), 4, 3))
    folded = copy.deepcopy(model)
    batch_norms = sum(type(m) is nn.BatchNorm2d for m in model.modules())
    assert fold_batch_norms(folded) == batch_norms > 0
    assert not any(type(m) is nn.BatchNorm2d for m in folded.modules())
    x = torch.randn(2, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("arch", ["FPN", "DeepLabV3Plus", "UnetPlusPlus", "Linknet", "MAnet"])
def test_batch_norm_folding_keeps_other_architectures_outputs(arch):
    import segmentation_models_pytorch as smp

    torch.manual_seed(0)
    model = smp.create_model(arch, encoder_name="tu-resnet10t", encoder_weights=None, classes=3)
    model = _with_running_stats(model)
    folded = copy.deepcopy(model)
    assert fold_batch_norms(folded) > 0
    x = torch.randn(1, 3, 64, 96, generator=torch.Generator().manual_seed(5))
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-5)


class _ConvUsedTwice(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 3, 3, padding=1), nn.BatchNorm2d(3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y  # y is read twice: folding would change it


def test_a_batch_norm_is_not_folded_where_that_would_change_the_function():
    from timm.layers import BatchNormAct2d

    torch.manual_seed(0)
    for model in (
        _ConvUsedTwice(),
        nn.Sequential(nn.Conv2d(3, 3, 3), BatchNormAct2d(3)),  # batch-norm + activation
    ):
        model = _with_running_stats(model)
        before = copy.deepcopy(model)
        assert fold_batch_norms(model) == 0
        x = torch.randn(1, 3, 16, 16, generator=torch.Generator().manual_seed(3))
        with torch.inference_mode():
            torch.testing.assert_close(model(x), before(x))
