"""The plan: what it reads from small synthetic datasets, what it chooses, and that user keys win."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segkit.cli import main
from segkit.config import load_config
from segkit.training.fingerprint import fingerprint
from segkit.training.plan import (
    UNLIMITED_EPOCHS,
    Device,
    apply_plan,
    make_plan,
    plan_config,
)

CPU = Device("cpu", 2)
GPU = Device("gpu", 16, 80.0)


def _write(folder: Path, images: list[np.ndarray], masks: list[np.ndarray]) -> dict[str, str]:
    for i, (image, mask) in enumerate(zip(images, masks, strict=True)):
        for sub, array in (("images", image), ("masks", mask)):
            (folder / sub).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(folder / sub / f"{i:02d}.png")
    return {"images": str(folder / "images"), "masks": str(folder / "masks")}


def _config(train: dict[str, str], **data):
    return load_config(
        {
            "data": {"train": train, "val_fraction": 0.0, "num_workers": 0, **data},
            "model": {"encoder_weights": None},
        }
    )


def _decided(plan) -> dict:
    return {d.key: d.value for d in plan.decisions}


@pytest.fixture
def imbalanced(tmp_path):
    """8 gray 96x96 images; class 2 covers a 4x4 square in two of them (rare), 0/1 split halves."""
    rng = np.random.default_rng(0)
    images, masks = [], []
    for i in range(8):
        mask = np.zeros((96, 96), np.uint8)
        mask[:, 48:] = 1
        if i < 2:
            mask[10:14, 10:14] = 2
        images.append(rng.integers(0, 256, (96, 96), dtype=np.uint8))
        masks.append(mask)
    return _write(tmp_path, images, masks)


def test_fingerprint_measures_sizes_intensities_and_classes(imbalanced):
    config = _config(imbalanced, classes=["a", "b", "rare"], in_channels=1)
    fp = fingerprint(config)
    assert fp.images == 8 and fp.median_size == (96, 96)
    pixels = 8 * 96 * 96
    rare_share = 2 * 16 / pixels
    assert fp.class_share[2] == pytest.approx(rare_share)
    assert fp.class_share[1] == pytest.approx(0.5)
    assert fp.class_images == pytest.approx([1.0, 1.0, 0.25])
    # uniform 0..255 noise scaled to [0, 1]
    assert fp.mean[0] == pytest.approx(0.5, abs=0.01)
    assert fp.std[0] == pytest.approx(0.289, abs=0.01)


def test_imbalanced_data_gets_oversampling_and_dice(imbalanced):
    config, plan = plan_config(_config(imbalanced, classes=["a", "b", "rare"], in_channels=1), CPU)
    assert config.data.rare_classes == ["rare"] and config.data.oversample > 0
    assert config.loss.dice > 0 and config.loss.ce > 0
    assert "data.rare_classes" in plan.reasons()


def test_balanced_binary_data_has_no_rare_class_and_trains_on_dice_plus_ce(tmp_path):
    rng = np.random.default_rng(1)
    masks = [(rng.random((64, 64)) > 0.5).astype(np.uint8) for _ in range(4)]
    images = [rng.integers(0, 256, (64, 64), dtype=np.uint8) for _ in range(4)]
    config, _ = plan_config(_config(_write(tmp_path, images, masks), in_channels=1), CPU)
    assert config.loss.dice == 1 and config.loss.ce == 1
    assert config.data.rare_classes == [] and config.data.oversample == 0


def test_gray_images_get_their_own_normalisation_rgb_pretrained_keeps_imagenet(tmp_path):
    rng = np.random.default_rng(2)
    masks = [np.zeros((64, 64), np.uint8) for _ in range(3)]
    gray = [rng.integers(100, 140, (64, 64), dtype=np.uint8) for _ in range(3)]
    config, _ = plan_config(_config(_write(tmp_path / "g", gray, masks), in_channels=1), CPU)
    assert config.data.mean[0] == pytest.approx(119.5 / 255, abs=0.01)
    assert config.data.std[0] == pytest.approx(11.5 / 255, abs=0.01)
    assert config.optimizer.lr == 3e-3  # random weights

    rgb = [rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(3)]
    train = _write(tmp_path / "c", rgb, masks)
    pretrained = load_config(
        {"data": {"train": train, "val_fraction": 0.0}, "model": {"encoder_weights": "imagenet"}}
    )
    planned, plan = plan_config(pretrained, CPU)
    assert "data.mean" not in plan.reasons()
    assert planned.data.resolved_mean() == pytest.approx([0.485, 0.456, 0.406])
    assert planned.optimizer.lr == 1e-3  # pretrained weights


def test_mixed_sizes_set_the_patch_from_the_median_side(tmp_path):
    sides = [(64, 64), (128, 96), (160, 160), (96, 128), (128, 128)]
    images = [np.zeros(s, np.uint8) for s in sides]
    masks = [np.zeros(s, np.uint8) for s in sides]
    config = _config(_write(tmp_path, images, masks), in_channels=1)
    fp = fingerprint(config)
    assert (fp.min_side, fp.max_side) == (64, 160)
    assert fp.median_size == (128, 128)
    planned = apply_plan(config, make_plan(config, fp, CPU))
    assert planned.data.patch_size == 128
    on_gpu = apply_plan(config, make_plan(config, fp, GPU))
    assert on_gpu.data.patch_size == 128  # never beyond the images, even where 512 fits
    assert on_gpu.model.encoder == "resnet34" and on_gpu.data.steps_per_epoch == 250


def test_tiny_dataset_still_gets_a_fixed_epoch_and_strong_augmentation(tmp_path):
    images = [np.full((40, 40), 50 * i, np.uint8) for i in range(3)]
    masks = [np.eye(40, dtype=np.uint8) for _ in range(3)]
    config, plan = plan_config(_config(_write(tmp_path, images, masks), in_channels=1), CPU)
    assert config.data.patch_size == 32
    assert config.data.steps_per_epoch == 100
    assert config.augment.rotate == 45.0
    assert config.model.encoder == "resnet18"
    # batch grows as the patch shrinks (about the same pixels per step), within the CPU's cap
    assert config.data.batch_size == 32


def test_user_keys_win_and_planning_twice_changes_nothing(imbalanced):
    config = load_config(
        {
            "data": {
                "train": imbalanced,
                "val_fraction": 0.0,
                "classes": ["a", "b", "rare"],
                "in_channels": 1,
                "patch_size": 48,
            },
            "model": {"encoder_weights": None},
        },
        overrides=["loss.dice=0", "trainer.max_time=00:00:01:00"],
    )
    planned, plan = plan_config(config, CPU)
    assert planned.data.patch_size == 48 and planned.loss.dice == 0
    assert {"data.patch_size", "loss.dice"} <= set(plan.kept)
    assert planned.trainer.max_epochs == UNLIMITED_EPOCHS
    again, second = plan_config(planned, CPU)
    assert again == planned and second.decisions == []


def test_plan_command_and_print_config_show_the_reasons(imbalanced, tmp_path, capsys):
    import yaml

    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        yaml.safe_dump(
            {
                "data": {"train": imbalanced, "classes": ["a", "b", "rare"], "in_channels": 1},
                "model": {"encoder_weights": None},
            }
        )
    )
    assert main(["plan", str(cfg)]) == 0
    out = capsys.readouterr().out
    assert "data.rare_classes" in out and "class rare" in out
    assert main(["train", str(cfg), "--print-config", "data.patch_size=64"]) == 0
    printed = capsys.readouterr().out
    assert "patch_size: 64\n" in printed  # the user's key, no plan comment
    assert "steps_per_epoch: 100  # plan: " in printed
    assert yaml.safe_load(printed)["data"]["rare_classes"] == ["rare"]


def test_membrane_like_slices_on_a_cpu_train_on_crops_and_predict_whole():
    from segkit.training.fingerprint import Fingerprint

    # membrane's own: brightness spread 0.23 std, contrast ratio 1.48, masks 0.62 px high
    fp = Fingerprint(
        20, 25, 20, (512, 512), 512, 512, [0.5], [0.17], [0.22, 0.78], [1.0, 1.0], 0.23, 1.48,
        (0.62, 0.19),
    )  # fmt: skip
    config = load_config(
        {
            "data": {"classes": ["membrane", "cell"], "mask_encoding": "binary", "in_channels": 1},
            "model": {"encoder_weights": None},
        }
    )
    planned = apply_plan(config, make_plan(config, fp, CPU))
    assert planned.data.patch_size == 256 and planned.data.batch_size == 8
    assert planned.predict.tile == 512  # one tile per slice
    assert planned.loss.dice == 1 and planned.optimizer.lr == 3e-3
    assert planned.augment.scale == (0.85, 1.2) and planned.augment.rotate == 45
    assert planned.data.val_fraction == 0.1  # 25 images: more of them for training
    assert planned.model.encoder == "resnet18" and planned.data.normalization == "dataset"
    assert planned.model.kwargs == {"decoder_channels": [128, 64, 32, 16, 16]}  # half width
    # horizontal flips only: vertical flips and quarter turns would hide the masks' offset
    flips = (planned.augment.hflip, planned.augment.vflip, planned.augment.rotate90)
    assert flips == (0.5, 0.0, 0.0)
    user = load_config(config.model_dump(exclude_unset=True), overrides=["augment.vflip=0.3"])
    assert apply_plan(user, make_plan(user, fp, CPU)).augment.vflip == 0.3


def test_uneven_brightness_or_contrast_gets_per_image_normalisation(tmp_path):
    """Images from different acquisitions (one dark, one bright, one flat) are normalised each by
    its own statistics; images alike in brightness and contrast share the dataset's."""
    rng = np.random.default_rng(3)
    masks = [np.zeros((64, 64), np.uint8) for _ in range(3)]
    alike = [rng.integers(100, 140, (64, 64), dtype=np.uint8) for _ in range(3)]
    config, plan = plan_config(_config(_write(tmp_path / "a", alike, masks), in_channels=1), CPU)
    assert config.data.normalization == "dataset" and "data.mean" in plan.reasons()
    assert plan.fingerprint.brightness_spread < 0.5 and plan.fingerprint.contrast_ratio < 2

    dark_bright = [rng.integers(lo, lo + 40, (64, 64), dtype=np.uint8) for lo in (10, 100, 200)]
    config, plan = plan_config(
        _config(_write(tmp_path / "b", dark_bright, masks), in_channels=1), CPU
    )
    assert config.data.normalization == "image"
    assert plan.fingerprint.brightness_spread > 0.5
    assert "data.mean" not in plan.reasons()  # unused when each image brings its own

    contrast = [rng.integers(128 - d, 128 + d, (64, 64), dtype=np.uint8) for d in (5, 20, 100)]
    config, plan = plan_config(_config(_write(tmp_path / "c", contrast, masks), in_channels=1), CPU)
    assert config.data.normalization == "image" and plan.fingerprint.contrast_ratio > 2

    user, _ = plan_config(
        _config(_write(tmp_path / "d", dark_bright, masks), in_channels=1, normalization="dataset"),
        CPU,
    )
    assert user.data.normalization == "dataset"  # the user's key wins


def test_masks_drawn_off_to_one_side_lose_the_horizontal_flip(tmp_path):
    """The plan measures where the masks sit: masks drawn 1 px to the right of bright squares
    get no horizontal flips (which would hide that offset from the model); masks on the content
    keep them. Vertical flips and quarter turns stay off either way."""
    rng = np.random.default_rng(4)
    images, aligned, shifted = [], [], []
    for _ in range(4):
        mask = np.zeros((64, 64), np.uint8)
        for y, x in rng.integers(8, 48, (4, 2)):
            mask[y : y + 8, x : x + 8] = 1
        images.append((40 + 150 * mask + rng.integers(0, 20, (64, 64))).astype(np.uint8))
        aligned.append(mask)
        shifted.append(np.roll(mask, 1, axis=1))
    on, plan = plan_config(_config(_write(tmp_path / "on", images, aligned), in_channels=1), CPU)
    assert abs(plan.fingerprint.mask_offset[1]) < 0.2 and on.augment.hflip == 0.5
    off, plan = plan_config(_config(_write(tmp_path / "off", images, shifted), in_channels=1), CPU)
    assert plan.fingerprint.mask_offset[1] == pytest.approx(-1, abs=0.25)
    assert (
        off.augment.hflip == 0 and "right of the image content" in plan.reasons()["augment.hflip"]
    )
    assert (off.augment.vflip, off.augment.rotate90) == (0, 0)
    assert off.predict.tta == "none"


def test_warm_up_reason_counts_the_steps_per_epoch_that_apply(imbalanced):
    config = _config(imbalanced, classes=["a", "b", "rare"], in_channels=1, steps_per_epoch=40)
    planned, plan = plan_config(config, CPU)
    assert planned.data.steps_per_epoch == 40  # the user's
    assert "(10 steps)" in plan.reasons()["scheduler.warmup_epochs"]
    _, default = plan_config(_config(imbalanced, classes=["a", "b", "rare"], in_channels=1), CPU)
    assert "(25 steps)" in default.reasons()["scheduler.warmup_epochs"]  # 100 planned
