"""Every example in configs/ is valid and describes what its comments say."""

from __future__ import annotations

from pathlib import Path

import pytest

from segkit.config import load_config

CONFIGS = sorted((Path(__file__).parents[2] / "configs").glob("*.yaml"))


def test_there_are_examples_for_each_documented_case():
    names = {p.stem for p in CONFIGS}
    assert {
        "binary_membrane",
        "multiclass_void",
        "palette_rgb",
        "large_images",
        "ddp_multi_gpu",
    } <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_example_config_validates(path):
    config = load_config(path)
    assert config.data.train is not None
    assert config.data.train.images.is_absolute()  # resolved against the config's folder
    assert len(config.data.classes) >= 2


def test_membrane_example_points_at_the_shared_dataset():
    config = load_config(Path(__file__).parents[2] / "configs" / "binary_membrane.yaml")
    assert config.data.mask_encoding == "binary" and config.data.in_channels == 1
    assert config.data.train.images.parts[-3:] == ("membrane", "train", "image")


@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_example_config_builds_its_model_loss_and_augmentation(path):
    """What each example asks for exists: the smp model (random init here), the loss, the pipeline."""
    import numpy as np
    import torch

    from segkit.data.transforms import train_transforms
    from segkit.models.build import build_model, model_stride
    from segkit.models.losses import build_loss

    config = load_config(path, ["model.encoder_weights=null", "data.patch_size=64"])
    data = config.data
    model = build_model(config.model, data.num_classes, data.in_channels)
    stride = model_stride(model)
    x = torch.randn(2, data.in_channels, 64, 64)
    logits = model.train()(x)
    assert logits.shape == (2, data.num_classes, 64, 64) and 64 % stride == 0
    target = torch.randint(0, data.num_classes, (2, 64, 64))
    target[:, :4] = data.ignore_index
    loss = build_loss(config.loss, data.num_classes, data.ignore_index)(logits, target)
    loss.backward()
    assert torch.isfinite(loss)
    image = np.random.default_rng(0).random((80, 72, data.in_channels), dtype=np.float32)
    out = train_transforms(config)(image=image, mask=np.zeros((80, 72), np.uint8))
    assert tuple(out["image"].shape) == (data.in_channels, 64, 64)
