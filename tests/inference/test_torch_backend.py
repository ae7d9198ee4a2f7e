"""The torch backend on a user's own model: binary single-logit heads, and heads that do not fit."""

import numpy as np
import pytest
import torch
from torch import nn

from segkit.errors import ModelError
from segkit.inference.predictor import Predictor
from segkit.inference.torch_backend import TorchBackend

from .conftest import model_info


def _conv(out_channels: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Conv2d(3, out_channels, 1)


def test_a_single_logit_binary_head_gives_background_and_foreground_probabilities():
    model = _conv(1)
    backend = TorchBackend(model=model, info=model_info(2), device="cpu")
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
    backend = TorchBackend(model=_conv(out_channels), info=model_info(classes), device="cpu")
    with pytest.raises(ModelError, match=f"outputs {out_channels} channels but has {classes}"):
        backend(torch.zeros(1, 3, 32, 32))


def test_tiles_with_the_wrong_channel_count_are_a_clear_error():
    backend = TorchBackend(model=_conv(2), info=model_info(2), device="cpu")
    with pytest.raises(ModelError, match="takes 3 channels, got tiles with 1"):
        backend(torch.zeros(1, 1, 32, 32))
