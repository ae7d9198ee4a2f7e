"""The tile grid, blend windows and the streaming stitcher shared by every backend.

An image of any size is covered by a grid of equal tiles spread evenly so the last tile ends at the
(stride-padded) border. Pixels outside the image are read by reflection, so no padded copy of the
image is ever made. Tiles are run in row-major order and a block of pixels is handed on as soon
as no pending tile touches it, so memory grows with ``classes x (overlap x width + tile height x
block width)``, not with the area.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np
import torch

from segkit.errors import ConfigError
from segkit.io.windows import ArrayWindows

GAUSSIAN_SIGMA = 0.125  # of the tile side, as in nnU-Net / MONAI's sliding window
_MIN_WEIGHT = 1e-3  # per axis: windows stay strictly positive, products stay far from denormals


def overlap_pixels(overlap: float, tile: int) -> int:
    """Overlap in pixels: a fraction (< 1) of the tile, or pixels (>= 1). Must leave a step > 0."""
    if overlap < 0:
        raise ConfigError(f"overlap must be >= 0 (a fraction < 1 or pixels), got {overlap}")
    px = int(round(overlap * tile)) if overlap < 1 else int(overlap)
    if px >= tile:
        raise ConfigError(f"overlap {overlap} ({px} px) must be smaller than the tile ({tile} px)")
    return px


def axis_starts(length: int, tile: int, overlap_px: int, stride: int = 1) -> list[int]:
    """Start offsets of tiles of size ``tile`` covering ``[0, length)``; the last ends at ``length``.

    ``length`` and ``tile`` are multiples of ``stride`` and ``tile <= length``. Starts are snapped to
    the stride, so every tile sees the same pooling phase as the whole image would.
    """
    if tile >= length:
        return [0]
    units, tile_u, overlap_u = (
        length // stride,
        tile // stride,
        min(overlap_px / stride, tile // stride - 1e-9),
    )
    n = max(2, math.ceil((units - overlap_u) / (tile_u - overlap_u)))
    starts = np.rint(np.linspace(0, units - tile_u, n)).astype(int) * stride
    return sorted({int(s) for s in starts})


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of one image go. Tiles are ``tile_h x tile_w`` and start at ``ys x xs``."""

    height: int
    width: int
    padded_height: int
    padded_width: int
    tile_h: int
    tile_w: int
    ys: tuple[int, ...]
    xs: tuple[int, ...]

    def __len__(self) -> int:
        return len(self.ys) * len(self.xs)

    def tiles(self) -> Iterator[tuple[int, int]]:
        """``(y, x)`` of every tile in row-major order (the order the stitcher relies on)."""
        for y in self.ys:
            for x in self.xs:
                yield y, x


def make_grid(height: int, width: int, tile: int, overlap: float, stride: int) -> TileGrid:
    """The tile grid of an ``height x width`` image for a model of output ``stride``.

    The image is (virtually) reflect-padded on the bottom/right to a multiple of ``stride``. The tile
    is rounded down to a multiple of ``stride`` and shrinks to the padded image when that is smaller.
    """
    if height < 1 or width < 1:
        raise ConfigError(f"cannot tile an empty image of {height}x{width} pixels")
    if tile < 1 or stride < 1:
        raise ConfigError(f"tile ({tile}) and stride ({stride}) must be positive")
    tile = max(stride, tile // stride * stride)
    ph, pw = -(-height // stride) * stride, -(-width // stride) * stride
    th, tw = min(tile, ph), min(tile, pw)
    ov = overlap_pixels(overlap, tile)
    return TileGrid(
        height=height,
        width=width,
        padded_height=ph,
        padded_width=pw,
        tile_h=th,
        tile_w=tw,
        ys=tuple(axis_starts(ph, th, min(ov, th - 1), stride)),
        xs=tuple(axis_starts(pw, tw, min(ov, tw - 1), stride)),
    )


def reflect_indices(start: int, size: int, n: int) -> np.ndarray:
    """Indices ``start .. start+size-1`` mapped into ``[0, n)`` by reflection (``np.pad`` 'reflect')."""
    idx = np.arange(start, start + size)
    if n == 1:
        return np.zeros(size, dtype=np.intp)
    period = 2 * (n - 1)
    idx = idx % period
    return np.where(idx >= n, period - idx, idx).astype(np.intp)


def extract_tile(image: np.ndarray | ArrayWindows, y: int, x: int, h: int, w: int) -> np.ndarray:
    """The ``h x w`` window of ``image`` (``H x W [x C]``) at ``(y, x)``, reflected past the border.

    Inside the image this is a view (no copy of a memory-mapped image is made).
    """
    height, width = image.shape[:2]
    if y + h <= height and x + w <= width:
        return image[y : y + h, x : x + w]
    rows, cols = reflect_indices(y, h, height), reflect_indices(x, w, width)
    return image[np.ix_(rows, cols)]


def _window_1d(n: int, kind: str) -> np.ndarray:
    """``kind`` is one of BLENDS (validated with the options that carry it)."""
    if kind == "constant":
        return np.ones(n, dtype=np.float64)
    centres = np.arange(n) + 0.5
    if kind == "gaussian":
        sigma = max(GAUSSIAN_SIGMA * n, 1e-6)
        w = np.exp(-0.5 * ((centres - n / 2) / sigma) ** 2)
    else:  # cosine
        w = np.sin(np.pi * centres / n) ** 2
    return np.maximum(w / w.max(), _MIN_WEIGHT)


def blend_window(h: int, w: int, kind: str = "gaussian") -> np.ndarray:
    """``(h, w)`` float32 weights of a tile's pixels: 1 at the centre, strictly positive everywhere."""
    return np.outer(_window_1d(h, kind), _window_1d(w, kind)).astype(np.float32)


def _coverage(starts: tuple[int, ...], length: int, window: np.ndarray) -> np.ndarray:
    """Sum of the 1-D ``window`` placed at every start: one factor of the weight normaliser."""
    total = np.zeros(length)
    for s in starts:
        total[s : s + len(window)] += window
    return total.astype(np.float32)


class BlockStitcher:
    """Blends tile probabilities and hands out finished blocks, holding a small part of the image.

    Tiles arrive in row-major order. Rows ``[ys[i], ys[i+1])`` are final once tile row ``i`` is done,
    and columns ``[.., xs[j+1])`` of them once its tile ``j`` is added. So the stitcher holds only

    - a work area ``K x tile_h x (block_width + tile_w)`` for the current tile row, and
    - a carry ``K x overlap rows x padded width``: what earlier tile rows added below them,

    (``block_width=None``: one block per tile row, the work area spans the width). The blend
    window is a product of a row and a column window placed on a product grid, so the weight sum
    is the outer product of two 1-D sums: no weight-sum buffer is kept. Everything lives on the
    device the probabilities come from, so on a GPU blending never leaves it.

    ``add`` returns the block a tile completed, normalised in place as a view of the work area:
    it stays valid until the next ``add`` (copy it to keep it), so handing out allocates nothing.
    A grid of one tile needs no blending: its block is the tile's probabilities, cropped.
    """

    def __init__(
        self,
        grid: TileGrid,
        num_classes: int,
        blend: str = "gaussian",
        *,
        device: str | torch.device | None = None,
        block_width: int | None = None,
    ) -> None:
        if block_width is not None and block_width < 1:
            raise ConfigError(f"block_width must be >= 1, got {block_width}")
        self.grid = grid
        device = torch.device(device or "cpu")
        opts: dict[str, Any] = {"dtype": torch.float32, "device": device}
        win_y, win_x = _window_1d(grid.tile_h, blend), _window_1d(grid.tile_w, blend)
        # Through pinned memory to a GPU: a plain copy would wait for the network's queued work.
        self.window = to_device(blend_window(grid.tile_h, grid.tile_w, blend), device)
        self._sum_y = to_device(_coverage(grid.ys, grid.padded_height, win_y), device)
        self._sum_x = to_device(_coverage(grid.xs, grid.padded_width, win_x), device)
        self.block_width = block_width or grid.padded_width
        width = min(grid.padded_width, self.block_width + grid.tile_w)
        self.work = torch.zeros((num_classes, grid.tile_h, width), **opts)
        carry_rows = max((a + grid.tile_h - b for a, b in pairwise(grid.ys)), default=0)
        self.carry = torch.zeros((num_classes, carry_rows, grid.padded_width), **opts)
        self._next = (0, 0)  # (tile row, tile column) expected next
        self.left = 0  # absolute column of work column 0
        self._handed_out: tuple[int, int] | None = None  # (columns, pending) of the last block

    def add(self, y: int, x: int, probs: torch.Tensor) -> tuple[int, int, torch.Tensor] | None:
        """Add one tile's ``(K, tile_h, tile_w)`` probabilities at ``(y, x)``; return the block
        ``(row, col, (K, h, w))`` this tile completed (cropped to the image), else None."""
        g = self.grid
        i, j = self._next
        if i >= len(g.ys) or (y, x) != (g.ys[i], g.xs[j]):
            raise ValueError(f"tile ({y}, {x}) arrives out of row-major order")
        self._next = (i, j + 1) if j + 1 < len(g.xs) else (i + 1, 0)
        if len(g) == 1:  # the weight sum is the window itself: p * w / w is p
            return 0, 0, probs[:, : g.height, : g.width]
        self._drop_handed_out()
        if j == 0:
            self.left = 0
        c = x - self.left
        self.work[:, :, c : c + g.tile_w].addcmul_(probs, self.window)
        upto = g.xs[j + 1] if j + 1 < len(g.xs) else g.padded_width
        if upto < g.padded_width and upto - self.left < self.block_width:
            return None
        return self._finish_columns(i, upto, pending=x + g.tile_w - upto)

    def _finish_columns(
        self, i: int, upto: int, pending: int
    ) -> tuple[int, int, torch.Tensor] | None:
        """Columns ``[left, upto)`` of tile row ``i`` are final: merge the carry, keep what falls
        below the next tile row, normalise the final rows."""
        g = self.grid
        y, left, n = g.ys[i], self.left, upto - self.left
        work = self.work[:, :, :n]
        if i > 0:
            carried = g.ys[i - 1] + g.tile_h - y
            work[:, :carried] += self.carry[:, :carried, left:upto]
        final = g.ys[i + 1] - y if i + 1 < len(g.ys) else g.tile_h
        if final < g.tile_h:
            self.carry[:, : g.tile_h - final, left:upto] = work[:, final:]
        self._handed_out, self.left = (n, pending), upto
        rows, cols = min(final, g.height - y), min(upto, g.width) - left
        if rows <= 0 or cols <= 0:  # stride padding only
            return None
        block = work[:, :rows, :cols]
        block.div_(self._sum_y[y : y + rows, None] * self._sum_x[left : left + cols])
        return y, left, block

    def _drop_handed_out(self) -> None:
        """Move the pending columns (tiles reaching past the last block) to the front, zero the rest."""
        if self._handed_out is None:
            return
        n, pending = self._handed_out
        self._handed_out = None
        if pending > 0:
            self.work[:, :, :pending] = self.work[:, :, n : n + pending].clone()
        self.work[:, :, pending : n + pending] = 0


def iter_stitched(
    image: np.ndarray | ArrayWindows,
    grid: TileGrid,
    run: Callable[[torch.Tensor], torch.Tensor | np.ndarray],
    num_classes: int,
    *,
    blend: str = "gaussian",
    batch_size: int = 8,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    on_tiles: Callable[[int], None] | None = None,
    device: str | torch.device | None = None,
    block_width: int | None = None,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Run ``run`` over the tiles of ``image`` and yield finished ``(row, col, (K, h, w))`` blocks.

    ``image`` is ``H x W [x C]`` in any dtype, or a windowed reader that slices like one. It is read
    one row of tiles at a time: the rows are cut (reflected past the border), turned by
    ``prepare`` into ``tile_h x padded_W x C`` pixels (default: float32) and copied to ``device``
    once (channels-first there) in a background thread, one row ahead, so reading, decoding and
    the copy into pinned memory run beside the model. Tiles are views of that row band, stacked into
    ``(N, C, h, w)`` batches on the device, so a GPU gets one copy per row of tiles and the CPU
    does no per-tile work. ``run`` maps a batch to ``(N, K, h, w)`` float32 probabilities (a
    tensor on any device, or numpy).

    Blocks are float32 tensors on ``run``'s device, in row-major order, and cover every pixel of
    the image exactly once; a block spans the rows between two tile rows and, except the last of
    a row, at least ``block_width`` columns (``None``: the whole width, one block per tile row).
    Each is a view of the stitching buffer, valid until the next block is requested (copy one to
    keep it).
    """
    if image.shape[0] != grid.height or image.shape[1] != grid.width:
        raise ValueError(
            f"image {image.shape[:2]} does not match the grid {grid.height}x{grid.width}"
        )
    prepare = prepare or _default_prepare
    device = torch.device(device or "cpu")
    stitcher: BlockStitcher | None = None
    row_bands: dict[int, torch.Tensor] = {}  # tile-row start -> its (C, tile_h, W) pixels on device
    ahead: dict[int, Future[torch.Tensor]] = {}  # tile-row start -> its pixels being cut and copied
    next_row = dict(pairwise(grid.ys))

    def cut(y: int) -> torch.Tensor:
        rows = prepare(extract_tile(image, y, 0, grid.tile_h, grid.padded_width))
        return to_device(rows, device).permute(2, 0, 1)

    def load_rows(chunk: list[tuple[int, int]], pool: ThreadPoolExecutor) -> None:
        for y in sorted({y for y, _ in chunk} - row_bands.keys()):
            row_bands[y] = (ahead.pop(y, None) or pool.submit(cut, y)).result()
            if y in next_row and next_row[y] not in ahead:  # read/decode the next row meanwhile
                ahead[next_row[y]] = pool.submit(cut, next_row[y])

    tiles = list(grid.tiles())
    chunks = [tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)]
    with ThreadPoolExecutor(1, thread_name_prefix="segkit-rows") as pool:
        load_rows(chunks[0], pool)
        for i, chunk in enumerate(chunks):
            batch = torch.stack([row_bands[y][:, :, x : x + grid.tile_w] for y, x in chunk])
            probs = torch.as_tensor(run(batch))  # on a GPU this only queues the work
            if stitcher is None:
                stitcher = BlockStitcher(
                    grid, num_classes, blend, device=probs.device, block_width=block_width
                )
            following = chunks[i + 1] if i + 1 < len(chunks) else None
            if following:  # cut the next rows now: the block's consumer below waits for the GPU
                row_bands = {y: band for y, band in row_bands.items() if y >= chunk[-1][0]}
                load_rows(following, pool)
            for (y, x), p in zip(chunk, probs, strict=True):
                block = stitcher.add(y, x, p.float())
                if block is not None:
                    yield block
            if on_tiles is not None:
                on_tiles(len(chunk))


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host array -> tensor on ``device``; through pinned memory to a GPU, so the copy is async.

    A read-only band (a view of a memory-mapped image) is copied first: torch has no read-only
    tensors and would warn on every run.
    """
    array = np.ascontiguousarray(array) if array.flags.writeable else array.copy()
    tensor = torch.from_numpy(array)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _default_prepare(rows: np.ndarray) -> np.ndarray:
    rows = rows[..., None] if rows.ndim == 2 else rows
    return rows.astype(np.float32, copy=False)
