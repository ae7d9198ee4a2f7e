"""The training pipeline: crops to patch_size with ignore-filled padding, seeded, aligned."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from segkit.data.transforms import train_transforms
from tests.data.conftest import make_config


def _sample(rng: np.random.Generator, h: int, w: int, c: int = 3) -> tuple[np.ndarray, np.ndarray]:
    return rng.random((h, w, c)).astype(np.float32), rng.integers(0, 2, (h, w)).astype(np.int32)


def test_train_pads_small_images_with_ignore(rng: np.random.Generator) -> None:
    config = make_config()
    image, mask = _sample(rng, 40, 50)
    out = train_transforms(config)(image=image, mask=mask)
    assert out["image"].shape == (3, 64, 64) and out["image"].dtype == torch.float32
    assert out["mask"].shape == (64, 64)
    # every original pixel survives (flips/rotations only move them); padding is ignore_index
    assert int((out["mask"] == 255).sum()) == 64 * 64 - 40 * 50
    assert int((out["mask"] == 1).sum()) == int(mask.sum())


def test_train_crops_large_images_to_patch(rng: np.random.Generator) -> None:
    image, mask = _sample(rng, 100, 130)
    out = train_transforms(make_config())(image=image, mask=mask)
    assert out["image"].shape == (3, 64, 64)
    assert not bool((out["mask"] == 255).any())


def test_train_is_seeded(rng: np.random.Generator) -> None:
    """The same seed gives the same sequence of augmentations; the augmentation is random all
    the same: another seed, or the next call, gives another crop/flip."""
    image, mask = _sample(rng, 100, 130)

    def draws(seed: int, n: int = 4) -> list[torch.Tensor]:
        pipeline = train_transforms(make_config(run={"seed": seed}))
        return [pipeline(image=image, mask=mask)["image"] for _ in range(n)]

    a, b, other = draws(3), draws(3), draws(4)
    for x, y in zip(a, b, strict=True):
        torch.testing.assert_close(x, y)
    assert not any(torch.equal(x, y) for x, y in zip(a, other, strict=True))
    assert not torch.equal(a[0], a[1])  # each call draws anew


def test_train_normalises_per_dataset_and_leaves_per_image_to_the_dataset(
    rng: np.random.Generator,
) -> None:
    image, mask = _sample(rng, 64, 64)
    config = make_config(
        augment={"hflip": 0, "vflip": 0, "rotate90": 0, "color_jitter": 0, "gamma": 0}
    )
    out = train_transforms(config)(image=image, mask=mask)["image"].numpy()
    mean = np.array(config.data.resolved_mean(), dtype=np.float32)
    std = np.array(config.data.resolved_std(), dtype=np.float32)
    np.testing.assert_allclose(out, ((image - mean) / std).transpose(2, 0, 1), atol=1e-5)
    own = make_config({"normalization": "image"}, augment=config.augment.model_dump())
    raw = train_transforms(own)(image=image, mask=mask)["image"].numpy()
    np.testing.assert_allclose(raw, image.transpose(2, 0, 1), atol=1e-6)


@pytest.mark.parametrize("channels", [1, 5])
def test_any_channel_count(rng: np.random.Generator, channels: int) -> None:
    config = make_config(
        {"in_channels": channels}, augment={"scale": [0.75, 1.25], "color_jitter": 1.0}
    )
    image, mask = _sample(rng, 50, 70, channels)
    train = train_transforms(config)(image=image, mask=mask)
    assert train["image"].shape == (channels, 64, 64)
    assert torch.isfinite(train["image"]).all()
    assert set(np.unique(train["mask"].numpy())) <= {0, 1, 255}


def test_geometric_augmentation_keeps_the_mask_on_the_image(rng: np.random.Generator) -> None:
    """Zoom, rotation, flips and turns move image and mask alike: the mask stays where the image
    says it is, to a fraction of a pixel (a half-pixel slip would teach the model an offset)."""
    import cv2

    field = cv2.GaussianBlur(rng.random((160, 160)).astype(np.float32), (0, 0), 4)
    field = (field - field.min()) / (field.max() - field.min())
    image, mask = np.repeat(field[..., None], 3, axis=2), (field > 0.5).astype(np.int32)
    config = make_config(
        data={"mean": [0.0] * 3, "std": [1.0] * 3},
        augment={"scale": [0.8, 1.25], "rotate": 30, "color_jitter": 0, "gamma": 0},
    )
    pipeline = train_transforms(config)
    slips = {shift: 0.0 for shift in [(0, 0), (1, 0), (-1, 0), (0, 1), (0, -1)]}
    for _ in range(40):
        out = pipeline(image=image, mask=mask)
        truth = out["image"][0].numpy() > 0.5
        for shift in slips:
            moved = np.roll(out["mask"].numpy() == 1, shift, (0, 1))
            slips[shift] += (moved != truth)[4:-4, 4:-4].mean() / 40
    aligned = slips.pop((0, 0))
    assert aligned < 0.04 and aligned < 0.6 * min(slips.values()), (aligned, slips)
