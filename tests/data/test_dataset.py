"""Pairing, the Dataset and the DataModule (seeded, disjoint split; loader settings)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from segkit.data.datamodule import SegmentationDataModule
from segkit.data.dataset import SegmentationDataset, find_pairs
from segkit.data.transforms import train_transforms
from segkit.errors import ConfigError, DataError
from tests.data.conftest import make_config, make_data_config, save_png


def test_find_pairs_by_subfolder_and_stem(
    pair_folders: tuple[Path, Path], rng: np.random.Generator
) -> None:
    images, masks = pair_folders
    # an image in JPEG with a PNG mask still pairs by stem
    save_png(images / "photo 1 é.jpg", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    save_png(masks / "photo 1 é.png", np.zeros((8, 8), dtype=np.uint8))
    pairs = find_pairs(images, masks)
    assert len(pairs) == 7
    for image, mask in pairs:
        assert image.relative_to(images).with_suffix("") == mask.relative_to(masks).with_suffix("")
    assert pairs == sorted(pairs)


def test_find_pairs_names_first_unmatched(pair_folders: tuple[Path, Path]) -> None:
    images, masks = pair_folders
    (masks / "img_2.png").unlink()
    with pytest.raises(DataError, match=r"images/img_2\.png: no mask named 'img_2\.\*' in .*masks"):
        find_pairs(images, masks)
    shutil.copy(masks / "img_0.png", masks / "img_2.png")
    shutil.copy(masks / "img_0.png", masks / "sub" / "extra.png")
    with pytest.raises(DataError, match=r"masks/sub/extra\.png: no image named 'sub/extra\.\*'"):
        find_pairs(images, masks)


def test_find_pairs_rejects_duplicate_stems_and_empty(
    pair_folders: tuple[Path, Path], tmp_path: Path
) -> None:
    images, masks = pair_folders
    shutil.copy(images / "img_0.png", images / "img_0.bmp")
    with pytest.raises(DataError, match="has the same name as"):
        find_pairs(images, masks)
    (tmp_path / "none").mkdir()
    with pytest.raises(DataError, match="none: no images found"):
        find_pairs(tmp_path / "none", masks)


def test_dataset_item(pair_folders: tuple[Path, Path]) -> None:
    pairs = find_pairs(*pair_folders)
    data = make_data_config(patch_size=32)
    raw = SegmentationDataset(pairs, data)[0]
    assert raw["image"].shape == (3, 40, 48) and raw["image"].dtype == torch.float32
    assert 0.0 <= float(raw["image"].min()) and float(raw["image"].max()) <= 1.0
    assert raw["mask"].shape == (40, 48) and raw["mask"].dtype == torch.int64
    assert raw["name"] == "img_0"
    config = make_config({"patch_size": 32})
    item = SegmentationDataset(pairs, config.data, train_transforms(config))[0]
    assert item["image"].shape == (3, 32, 32) and item["mask"].dtype == torch.int64


def test_dataset_size_mismatch_names_both_files(pair_folders: tuple[Path, Path]) -> None:
    images, masks = pair_folders
    save_png(masks / "img_1.png", np.zeros((40, 47), dtype=np.uint8))
    ds = SegmentationDataset(find_pairs(images, masks), make_data_config())
    with pytest.raises(
        DataError, match=r"img_1\.png: image is 48x40 but its mask .*img_1\.png is 47x40"
    ):
        ds[1]


def _module(images: Path, masks: Path, **data: Any) -> SegmentationDataModule:
    return SegmentationDataModule(
        make_config({"train": {"images": str(images), "masks": str(masks)}, **data})
    )


def test_split_is_seeded_disjoint_and_complete(pair_folders: tuple[Path, Path]) -> None:
    images, masks = pair_folders
    a, b = _module(images, masks, val_fraction=0.34), _module(images, masks, val_fraction=0.34)
    a.setup("fit")
    b.setup("fit")
    assert a.val_pairs == b.val_pairs and len(a.val_pairs) == 2
    assert not set(a.train_pairs) & set(a.val_pairs)
    assert sorted(a.train_pairs + a.val_pairs) == find_pairs(images, masks)
    other_seeds = []
    for seed in range(1, 6):
        dm = SegmentationDataModule(
            make_config(
                {"train": {"images": str(images), "masks": str(masks)}, "val_fraction": 0.34},
                run={"seed": seed},
            )
        )
        dm.setup("fit")
        other_seeds.append(dm.val_pairs)
    assert any(v != a.val_pairs for v in other_seeds)


def test_loaders(pair_folders: tuple[Path, Path]) -> None:
    images, masks = pair_folders
    dm = _module(images, masks, val_fraction=0.34, batch_size=3)
    dm.setup("fit")
    train = dm.train_dataloader()
    assert train.batch_size == 3 and train.drop_last  # 4 train pairs > batch: no ragged last batch
    batches = list(train)
    assert len(batches) == 1 and batches[0]["image"].shape == (3, 3, 64, 64)
    val = list(dm.val_dataloader())
    assert len(val) == 2
    assert val[0]["image"].shape == (1, 3, 40, 48)  # the whole raw image, in [0, 1]
    assert 0 <= float(val[0]["image"].min()) and float(val[0]["image"].max()) <= 1
    small = _module(images, masks, val_fraction=0.34, batch_size=4)
    small.setup("fit")
    assert not small.train_dataloader().drop_last  # not more pairs than a batch: keep them all
    assert len(list(small.train_dataloader())) == 1


def _fake_process_group(monkeypatch: pytest.MonkeyPatch, world: int, rank: int) -> None:
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: world)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: rank)


def test_val_loader_under_ddp_gives_each_image_to_one_process(
    pair_folders: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """5 val images on 2 processes: 3 + 2, none repeated (Lightning's sampler would pad to 3 + 3)."""
    from torch.utils.data.distributed import DistributedSampler

    images, masks = pair_folders
    dm = _module(images, masks, val_fraction=0.8)
    dm.setup("fit")
    assert len(dm.val_pairs) == 5
    assert dm.val_dataloader().sampler.__class__.__name__ == "SequentialSampler"  # no DDP
    seen = []
    for rank in (0, 1):
        _fake_process_group(monkeypatch, world=2, rank=rank)
        loader = dm.val_dataloader()
        assert isinstance(loader.sampler, DistributedSampler)  # so Lightning keeps it
        seen.append([batch["name"][0] for batch in loader])
    assert [len(names) for names in seen] == [3, 2]
    assert sorted(seen[0] + seen[1]) == sorted(image.stem for image, _ in dm.val_pairs)
    assert dm.train_dataloader().sampler.__class__.__name__ == "RandomSampler"  # Lightning's job
    _fake_process_group(monkeypatch, world=8, rank=0)
    with pytest.warns(UserWarning, match="5 validation image.*8 processes"):
        assert dm.val_dataloader().sampler.__class__.__name__ == "SequentialSampler"


def test_explicit_val_and_no_io_in_init(pair_folders: tuple[Path, Path], tmp_path: Path) -> None:
    images, masks = pair_folders
    config = make_config(
        {
            "train": {"images": str(images), "masks": str(masks)},
            "val": {"images": str(images), "masks": str(masks)},
        }
    )
    dm = SegmentationDataModule(config)
    dm.setup("fit")
    assert dm.val_pairs == dm.train_pairs == find_pairs(images, masks)
    missing = SegmentationDataModule(
        make_config({"train": {"images": str(tmp_path / "x"), "masks": str(tmp_path / "y")}})
    )
    with pytest.raises(DataError, match="folder not found"):
        missing.setup("fit")  # nothing was touched before setup
    with pytest.raises(ConfigError, match="data.train is not set"):
        SegmentationDataModule(make_config()).setup("fit")


def test_split_needs_two_pairs(tmp_path: Path, rng: np.random.Generator) -> None:
    save_png(tmp_path / "i" / "a.png", rng.integers(0, 256, (8, 8, 3), dtype=np.uint8))
    save_png(tmp_path / "m" / "a.png", np.zeros((8, 8), dtype=np.uint8))
    with pytest.raises(DataError, match="cannot hold out"):
        _module(tmp_path / "i", tmp_path / "m").setup("fit")


def test_workers_get_distinct_augmentation_streams(
    tmp_path: Path, rng: np.random.Generator
) -> None:
    """albumentations keeps its own RNG: without reseeding, every worker would repeat the same crops."""
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    for i in range(6):
        save_png(tmp_path / "i" / f"{i}.png", image)
        save_png(tmp_path / "m" / f"{i}.png", np.zeros((64, 64), dtype=np.uint8))
    dm = _module(
        tmp_path / "i", tmp_path / "m", val_fraction=0.0, patch_size=16, batch_size=1, num_workers=2
    )
    dm.setup("fit")
    loader = dm.train_dataloader()
    assert loader.persistent_workers
    torch.manual_seed(0)
    crops = [batch["image"] for batch in loader]
    assert len(crops) == 6
    assert len({tuple(c.flatten()[:64].tolist()) for c in crops}) == 6


def test_per_image_normalisation_uses_the_whole_images_statistics(
    pair_folders: tuple[Path, Path], tmp_path: Path
) -> None:
    """Each training sample is normalised by its own image's mean/std, taken from the whole image
    before cropping (as predict takes them); a darker copy of the image gives the same sample."""
    images, masks = pair_folders
    steady = {"hflip": 0, "vflip": 0, "rotate90": 0, "color_jitter": 0, "gamma": 0}
    config = make_config({"normalization": "image", "patch_size": 32}, augment=steady)
    pairs = find_pairs(images, masks)[:1]
    x = SegmentationDataset(pairs, config.data, train_transforms(config))[0]["image"]
    whole = np.asarray(Image.open(pairs[0][0])).astype(np.float32) / 255
    mean, std = whole.reshape(-1, 3).mean(0), whole.reshape(-1, 3).std(0)
    crop = x.numpy().transpose(1, 2, 0) * std + mean  # back to [0, 1]: a window of the image
    windows = np.lib.stride_tricks.sliding_window_view(whole, (32, 32, 3))[..., :, :, :]
    assert np.abs(windows - crop).max(axis=(-3, -2, -1)).min() < 1e-4

    darker = tmp_path / "darker"
    save_png(darker / "images" / "a.png", (np.asarray(Image.open(pairs[0][0])) // 2))
    (darker / "masks").mkdir()
    shutil.copy(pairs[0][1], darker / "masks" / "a.png")
    dark = SegmentationDataset(
        find_pairs(darker / "images", darker / "masks"), config.data, train_transforms(config)
    )[0]["image"]
    assert torch.allclose(dark, x, atol=0.05)  # the same crop, equal up to the halving's rounding
