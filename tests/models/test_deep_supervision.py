"""Deep supervision: auxiliary heads train the decoder's stages and never reach the bundle."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

from segkit.bundle import load_bundle
from segkit.config import load_config
from segkit.errors import ConfigError
from segkit.training.module import SegmentationModule
from tests.conftest import TINY_MODEL
from tests.training.test_module import RandomSegmentation, _fit


def _config(deep_supervision: bool = True, arch: str = "Unet"):
    return load_config(
        {
            "data": {"classes": ["a", "b", "c"], "patch_size": 32, "batch_size": 2},
            "model": TINY_MODEL | {"arch": arch},
            "loss": {"dice": 0, "ce": 1, "deep_supervision": deep_supervision},
            "run": {"val_preview_images": 0},
        }
    )


def _batch():
    return torch.utils.data.default_collate([RandomSegmentation(2)[i] for i in range(2)])


def test_the_loss_adds_each_stage_weighted_by_its_depth():
    module = SegmentationModule(_config()).train()
    heads = module.deep_supervision.heads
    assert len(heads) == 2  # TINY_MODEL's decoder has 3 stages: 2 below full resolution
    batch = _batch()
    features: list[torch.Tensor] = []
    stages = list(module.model.decoder.blocks)[:-1]
    hooks = [b.register_forward_hook(lambda m, a, out: features.append(out)) for b in stages]
    logits = module(batch["image"])
    for h in hooks:
        h.remove()
    main = F.cross_entropy(logits, batch["mask"], ignore_index=255)
    expected, weights = main, 1.0
    for depth, (head, feats) in enumerate(
        zip(reversed(heads), reversed(features), strict=True), start=1
    ):
        aux = head(feats)
        target = batch["mask"][:, None].float()
        target = F.interpolate(target, size=aux.shape[-2:], mode="nearest")[:, 0].long()
        expected = expected + 0.5**depth * F.cross_entropy(aux, target, ignore_index=255)
        weights += 0.5**depth
    loss = module.deep_supervision.loss(
        module.loss(logits, batch["mask"]), batch["mask"], module.loss
    )
    torch.testing.assert_close(loss, expected / weights)
    assert not torch.isclose(loss, main)

    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in heads.parameters())


def test_evaluation_records_nothing_and_keeps_the_plain_loss():
    module = SegmentationModule(_config()).eval()
    batch = _batch()
    with torch.no_grad():
        main = module.loss(module(batch["image"]), batch["mask"])
        assert module.deep_supervision.loss(main, batch["mask"], module.loss) == main


def test_a_deep_copy_records_into_its_own_heads():
    """Lightning's EMA callback deep-copies the module; the copy's stages must feed the copy."""
    module = SegmentationModule(_config()).train()
    twin = copy.deepcopy(module)
    twin(_batch()["image"])
    assert all(f is not None for f in twin.deep_supervision._features)
    assert all(f is None for f in module.deep_supervision._features)


def test_the_checkpoint_bundle_holds_the_plain_network(tmp_path):
    module = SegmentationModule(_config())
    trainer = _fit(module, tmp_path, max_steps=2, val=False)
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = module.eval()(x)
        network = load_bundle(path).build_model()
        assert not any("heads" in k for k in network.state_dict())
        torch.testing.assert_close(network(x), expected)


def test_a_decoder_without_stages_is_a_config_error():
    with pytest.raises(ConfigError, match="loss.deep_supervision: the FPN decoder"):
        SegmentationModule(
            load_config(
                {
                    "data": {"classes": ["a", "b"]},
                    "model": {"arch": "FPN", "encoder": "resnet18", "encoder_weights": None},
                    "loss": {"deep_supervision": True},
                }
            )
        )
