"""The tile grid, blend windows and streaming stitcher, property-tested with an identity model."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from segkit.config import BLENDS
from segkit.engine.tiling import (
    BlockStitcher,
    blend_window,
    extract_tile,
    iter_stitched,
    make_grid,
    overlap_pixels,
    reflect_indices,
)
from segkit.errors import ConfigError

sizes = st.integers(1, 300)
strides = st.sampled_from([1, 8, 32])
tiles = st.integers(8, 160)
overlaps = st.one_of(st.floats(0, 0.9), st.integers(1, 200).map(float))


@settings(max_examples=150, deadline=None)
@given(h=sizes, w=sizes, tile=tiles, overlap=overlaps, stride=strides)
def test_grid_covers_every_pixel_with_stride_aligned_tiles(h, w, tile, overlap, stride):
    try:
        grid = make_grid(h, w, tile, overlap, stride)
    except ConfigError:  # an overlap of pixels >= the tile is refused, with a message
        assert overlap >= 1 and overlap >= max(stride, tile // stride * stride)
        return
    assert grid.padded_height % stride == 0 and grid.padded_width % stride == 0
    assert grid.padded_height >= h and grid.padded_width >= w
    assert grid.tile_h % stride == 0 and grid.tile_w % stride == 0
    count = np.zeros((grid.padded_height, grid.padded_width), dtype=int)
    for y, x in grid.tiles():
        assert y % stride == 0 and x % stride == 0
        assert y + grid.tile_h <= grid.padded_height and x + grid.tile_w <= grid.padded_width
        count[y : y + grid.tile_h, x : x + grid.tile_w] += 1
    assert count.min() >= 1
    assert (
        grid.ys[-1] + grid.tile_h == grid.padded_height
        and grid.xs[-1] + grid.tile_w == grid.padded_width
    )
    assert list(grid.ys) == sorted(set(grid.ys)) and list(grid.xs) == sorted(set(grid.xs))


@settings(max_examples=100, deadline=None)
@given(h=st.integers(1, 200), w=st.integers(1, 200), kind=st.sampled_from(BLENDS))
def test_blend_windows_are_strictly_positive_and_peak_at_one(h, w, kind):
    win = blend_window(h, w, kind)
    assert win.shape == (h, w) and win.dtype == np.float32
    assert np.all(win > 0) and np.all(np.isfinite(win))
    assert win.max() == pytest.approx(1.0)
    np.testing.assert_allclose(
        win, win[::-1, ::-1], rtol=1e-6
    )  # symmetric: no direction is favoured


def stitch(image, grid, channels, **kwargs):
    """Identity-model output of ``iter_stitched`` put back together; every pixel exactly once."""
    h, w = image.shape[:2]
    out = np.full((channels, h, w), np.nan, dtype=np.float32)
    order = []
    for row, col, block in iter_stitched(image, grid, lambda x: x, channels, **kwargs):
        assert block.shape[0] == channels
        region = out[:, row : row + block.shape[1], col : col + block.shape[2]]
        assert np.isnan(region).all()  # never written twice
        region[...] = block.numpy()
        order.append((row, col))
    assert order == sorted(order)  # row-major
    assert not np.isnan(out).any()  # every pixel
    return out


@settings(max_examples=100, deadline=None)
@given(
    h=st.integers(1, 150),
    w=st.integers(1, 150),
    tile=st.integers(8, 96),
    overlap=st.floats(0, 0.75),
    stride=st.sampled_from([1, 8]),
    kind=st.sampled_from(BLENDS),
    batch=st.integers(1, 5),
    channels=st.integers(1, 3),
    block_width=st.one_of(st.none(), st.integers(1, 120)),
)
def test_identity_model_stitches_back_to_its_input(
    h, w, tile, overlap, stride, kind, batch, channels, block_width
):
    """Overlaps above one half (three tile rows on a pixel), blocks narrower than a tile, batches
    spanning tile rows: whatever the geometry, blending an identity model gives the input back."""
    image = np.random.default_rng(h * 1000 + w).random((h, w, channels), dtype=np.float32)
    grid = make_grid(h, w, tile, overlap, stride)
    out = stitch(image, grid, channels, blend=kind, batch_size=batch, block_width=block_width)
    np.testing.assert_allclose(out, image.transpose(2, 0, 1), atol=1e-5)


def test_blocks_are_released_before_the_whole_image_is_processed():
    """Peak memory is a block, not the image: the first rows come out once the first tile row is
    done (while the batch that starts the next row is already running)."""
    h, w, tile = 400, 64, 64
    grid = make_grid(h, w, tile, 0.25, 8)
    calls = []

    def run(x):
        calls.append(len(x))
        return x

    stream = iter_stitched(np.zeros((h, w, 1), np.float32), grid, run, 1, batch_size=1)
    row, col, block = next(stream)
    assert (row, col) == (0, 0) and block.shape[1:] == (grid.ys[1], w)
    assert sum(calls) == 1 < len(grid)  # only tile row 0 (one tile) has run
    rest = list(stream)
    assert sum(calls) == len(grid)
    assert all(b.shape[1] <= tile for _, _, b in rest)


def test_stitcher_holds_a_block_and_an_overlap_strip_not_a_tile_high_band():
    """A wide image: the work area is ``block_width + tile`` columns and the carry is as high as
    the overlap, far less than the ``K x tile x W`` floats of a whole-width band."""
    grid = make_grid(1000, 6000, 128, 0.25, 8)
    st_ = BlockStitcher(grid, 2, block_width=256)
    assert st_.work.shape == (2, grid.tile_h, 256 + grid.tile_w)
    overlaps = [a + grid.tile_h - b for a, b in zip(grid.ys, grid.ys[1:], strict=False)]
    assert st_.carry.shape == (2, max(overlaps), grid.padded_width)  # 32 px overlap, stride-snapped
    held = st_.work.numel() + st_.carry.numel()
    assert held < 0.5 * 2 * grid.tile_h * grid.padded_width
    blocks = [b for y, x in grid.tiles() if (b := st_.add(y, x, torch.ones((2, 128, 128))))]
    assert sum(b.shape[1] * b.shape[2] for _, _, b in blocks) == 1000 * 6000
    assert all(b.shape[2] < 256 + grid.tile_w for _, _, b in blocks)


def test_whole_width_blocks_without_a_block_width():
    grid = make_grid(300, 200, 64, 0.25, 8)
    image = np.random.default_rng(1).random((300, 200, 2), dtype=np.float32)
    blocks = list(iter_stitched(image, grid, lambda x: x, 2, batch_size=3))
    assert [(r, c) for r, c, _ in blocks] == [(min(y, 300), 0) for y in grid.ys if y < 300]
    assert all(b.shape[2] == 200 for _, _, b in blocks)


def test_block_is_normalised_in_place_and_valid_until_the_next_add():
    grid = make_grid(40, 40, 32, 0.25, 8)
    st_ = BlockStitcher(grid, 1)
    for x in grid.xs:
        done = st_.add(0, x, torch.full((1, grid.tile_h, grid.tile_w), 0.5))
    row, col, block = done
    assert (row, col) == (0, 0) and block.shape == (1, grid.ys[1], 40)
    assert block.data_ptr() == st_.work.data_ptr()  # a view of the buffer: nothing allocated
    np.testing.assert_allclose(block.numpy(), 0.5, atol=1e-6)
    with pytest.raises(ValueError, match="row-major"):
        st_.add(0, 0, torch.zeros((1, grid.tile_h, grid.tile_w)))


@pytest.mark.parametrize("blend", ["constant", "gaussian", "cosine"])
def test_one_tile_grid_hands_back_the_tile_unblended_and_cropped(blend):
    """p * w / w rounds away from p: with one tile there is nothing to blend, so the block is the
    tile's own probabilities (what Predictor.probs_together gives packed small images)."""
    grid = make_grid(57, 60, 64, 0.25, 8)
    assert len(grid) == 1
    probs = torch.rand((3, grid.tile_h, grid.tile_w), generator=torch.Generator().manual_seed(0))
    row, col, block = BlockStitcher(grid, 3, blend).add(0, 0, probs)
    assert (row, col) == (0, 0)
    assert torch.equal(block, probs[:, :57, :60])


def test_reflect_indices_match_numpy_pad():
    for n in (1, 2, 5, 17):
        data = np.arange(n)
        padded = np.pad(data, (0, 40), mode="reflect")
        np.testing.assert_array_equal(data[reflect_indices(0, n + 40, n)], padded)


def test_extract_tile_inside_is_a_view_and_outside_reflects():
    image = np.arange(5 * 7).reshape(5, 7)
    inside = extract_tile(image, 1, 2, 3, 3)
    assert np.shares_memory(inside, image)
    outside = extract_tile(image, 0, 0, 8, 8)
    np.testing.assert_array_equal(outside, np.pad(image, ((0, 3), (0, 1)), mode="reflect"))


def test_overlap_fraction_and_pixels():
    assert overlap_pixels(0.25, 512) == 128
    assert overlap_pixels(64, 512) == 64
    with pytest.raises(ConfigError, match="smaller than the tile"):
        overlap_pixels(512, 512)
    with pytest.raises(ConfigError, match=">= 0"):
        overlap_pixels(-0.1, 512)


def test_tiles_shrink_to_small_images_and_odd_sizes_pad_to_stride():
    g = make_grid(1, 1, 512, 0.25, 32)
    assert (g.padded_height, g.padded_width, g.tile_h, g.tile_w, len(g)) == (32, 32, 32, 32, 1)
    g = make_grid(7, 1000, 256, 0.25, 8)
    assert g.tile_h == 8 and g.tile_w == 256 and len(g.ys) == 1 and g.xs[-1] + 256 == 1000
    g = make_grid(513, 513, 500, 0.25, 32)
    assert g.tile_h == 480 and g.padded_height == 544


def test_pixels_are_prepared_once_per_row_of_tiles():
    """The image is cut and copied to the device one row of tiles at a time, not once per tile:
    tiles are views of that row band (one host-to-device copy per row on a GPU)."""
    h, w = 300, 260
    grid = make_grid(h, w, 64, 0.25, 8)
    assert len(grid.xs) > 1 and len(grid.ys) > 1
    shapes = []

    def prepare(rows):
        shapes.append(rows.shape)
        return rows.astype(np.float32)

    image = np.random.default_rng(0).random((h, w, 1), dtype=np.float32)
    out = stitch(image, grid, 1, prepare=prepare, block_width=64)
    assert shapes == [(grid.tile_h, grid.padded_width, 1)] * len(grid.ys)
    np.testing.assert_allclose(out[0], image[..., 0], atol=1e-5)


def test_rows_are_cut_one_row_ahead_in_a_background_thread_and_errors_reach_the_caller():
    """Reading (a TIFF decoded by windows) runs beside the model; a failure there is the
    caller's exception, raised when that row is needed."""
    import threading

    from segkit.errors import DataError

    h, w = 300, 100
    grid = make_grid(h, w, 64, 0.25, 8)
    threads = []

    def prepare(rows):
        threads.append(threading.current_thread().name)
        if len(threads) == 3:
            raise DataError("img.tif: cannot read rows 96-160 of the TIFF (damaged)")
        return rows.astype(np.float32)

    image = np.zeros((h, w, 1), np.float32)
    stream = iter_stitched(image, grid, lambda x: x, 1, prepare=prepare, batch_size=1)
    first = next(stream)
    assert first[0] == 0
    assert all(name.startswith("segkit-rows") for name in threads)
    # row 0 is done and row 1 was cut for the next batch; row 2 is being cut ahead (and will fail,
    # which surfaces only when row 2 is needed), so it may or may not have started yet
    assert 2 <= len(threads) <= 3
    with pytest.raises(DataError, match="cannot read rows 96-160"):
        list(stream)
