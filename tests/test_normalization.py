"""Per-image statistics: exact for small images, sampled rows for large ones, finite when flat."""

from __future__ import annotations

import numpy as np
import pytest

from segkit.normalization import MIN_STD, STAT_ROWS, image_statistics, statistic_rows


def test_small_images_give_their_exact_per_channel_statistics():
    rng = np.random.default_rng(0)
    image = rng.random((40, 30, 3)).astype(np.float32)
    mean, std = image_statistics(image)
    assert mean == pytest.approx(image.reshape(-1, 3).mean(0), abs=1e-6)
    assert std == pytest.approx(image.reshape(-1, 3).std(0), abs=1e-6)
    gray_mean, _ = image_statistics(image[..., 0])  # H x W counts as one channel
    assert gray_mean.shape == (1,) and gray_mean[0] == pytest.approx(mean[0], abs=1e-6)


def test_large_images_are_sampled_on_evenly_spaced_rows_and_columns():
    rows = statistic_rows(10_000)
    assert len(rows) == STAT_ROWS and rows[0] == 0 and rows[-1] == 9_999
    read: list[tuple] = []

    class Reader:  # a windowed reader: records what is asked of it
        shape = (10_000, 4_000, 1)

        def __getitem__(self, key):
            read.append(key)
            r = key[0].start
            return np.full((1, len(range(*key[1].indices(4_000))), 1), r % 2, np.float32)

    mean, std = image_statistics(Reader())
    assert len(read) == STAT_ROWS and all(k[0].stop - k[0].start == 1 for k in read)
    assert mean[0] == pytest.approx(np.mean(rows % 2), abs=1e-6)
    assert std[0] > 0.4


def test_a_flat_image_has_a_floor_std_and_prepare_is_applied_to_the_sample():
    flat = np.full((8, 8, 2), 7, np.uint8)
    mean, std = image_statistics(flat, prepare=lambda rows: rows.astype(np.float32) / 255)
    assert mean == pytest.approx([7 / 255] * 2) and std.tolist() == pytest.approx([MIN_STD] * 2)
