"""The tile grid, blend windows and the streaming stitcher shared by every backend.

An image of any size is covered by a grid of equal tiles spread evenly so the last tile ends at the
(stride-padded) border. Pixels outside the image are read by reflection, so no padded copy of the
image is ever made. Tiles are run in row-major order and a band of rows is handed on as soon as no
pending tile touches it, so memory grows with ``width x tile height x classes``, not with the area.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from segkit.config import BLENDS
from segkit.errors import ConfigError

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


def extract_tile(image: np.ndarray, y: int, x: int, h: int, w: int) -> np.ndarray:
    """The ``h x w`` window of ``image`` (``H x W [x C]``) at ``(y, x)``, reflected past the border.

    Inside the image this is a view (no copy of a memory-mapped image is made).
    """
    height, width = image.shape[:2]
    if y + h <= height and x + w <= width:
        return image[y : y + h, x : x + w]
    rows, cols = reflect_indices(y, h, height), reflect_indices(x, w, width)
    return image[np.ix_(rows, cols)]


def _window_1d(n: int, kind: str) -> np.ndarray:
    if kind == "constant":
        return np.ones(n, dtype=np.float64)
    centres = np.arange(n) + 0.5
    if kind == "gaussian":
        sigma = max(GAUSSIAN_SIGMA * n, 1e-6)
        w = np.exp(-0.5 * ((centres - n / 2) / sigma) ** 2)
    elif kind == "cosine":
        w = np.sin(np.pi * centres / n) ** 2
    else:
        raise ConfigError(f"unknown blend '{kind}' (allowed: {', '.join(BLENDS)})")
    return np.maximum(w / w.max(), _MIN_WEIGHT)


def blend_window(h: int, w: int, kind: str = "gaussian") -> np.ndarray:
    """``(h, w)`` float32 weights of a tile's pixels: 1 at the centre, strictly positive everywhere."""
    return np.outer(_window_1d(h, kind), _window_1d(w, kind)).astype(np.float32)


class BandStitcher:
    """Accumulates weighted tile probabilities and releases finished bands of rows.

    Only the rows between the first unfinished row and the lowest tile added so far are held:
    ``K x tile height x padded width`` floats when tiles arrive one tile row at a time, as torch
    tensors on the device the probabilities come from (so on a GPU, blending never leaves it).
    A released band is normalised in place and handed out as a view of the buffer: it stays valid
    until the next ``add`` or ``release`` (copy it to keep it), so releasing allocates nothing.
    """

    def __init__(self, grid: TileGrid, num_classes: int, window: torch.Tensor) -> None:
        self.grid = grid
        self.num_classes = num_classes
        self.window = window
        self.top = 0  # absolute row of buffer row 0
        self._released = 0  # buffer rows handed out by the last release, dropped on the next call
        opts = {"dtype": torch.float32, "device": window.device}
        self._acc = torch.zeros((num_classes, grid.tile_h, grid.padded_width), **opts)
        self._wsum = torch.zeros((grid.tile_h, grid.padded_width), **opts)

    @property
    def rows_held(self) -> int:
        """Rows of the accumulation buffer (``tile_h`` unless tiles of two tile rows overlap in it)."""
        return self._wsum.shape[0]

    def _ensure(self, rows: int) -> None:
        grow = rows - self._wsum.shape[0]
        if grow > 0:
            self._acc = torch.cat(
                [self._acc, self._acc.new_zeros((self.num_classes, grow, self._acc.shape[2]))],
                dim=1,
            )
            self._wsum = torch.cat(
                [self._wsum, self._wsum.new_zeros((grow, self._wsum.shape[1]))], dim=0
            )

    def _drop_released(self) -> None:
        """Move the rows kept after the last release to the top of the buffer and zero the rest."""
        n, self._released = self._released, 0
        if n == 0:
            return
        rest = self._wsum.shape[0] - n
        for start in range(0, rest, n):  # move the kept rows up in blocks that cannot overlap,
            stop = min(start + n, rest)  # so no temporary copy of the whole buffer is made
            self._acc[:, start:stop] = self._acc[:, n + start : n + stop]
            self._wsum[start:stop] = self._wsum[n + start : n + stop]
        self._acc[:, max(rest, 0) :] = 0
        self._wsum[max(rest, 0) :] = 0

    def add(self, y: int, x: int, probs: torch.Tensor) -> None:
        """Add one tile's ``(K, tile_h, tile_w)`` probabilities at ``(y, x)`` (``y >= self.top``)."""
        if y < self.top:
            raise ValueError(f"tile at row {y} arrives after rows up to {self.top} were released")
        self._drop_released()
        g = self.grid
        r = y - self.top
        self._ensure(r + g.tile_h)
        self._acc[:, r : r + g.tile_h, x : x + g.tile_w].addcmul_(probs, self.window)
        self._wsum[r : r + g.tile_h, x : x + g.tile_w] += self.window

    def release(self, upto: int) -> tuple[int, torch.Tensor] | None:
        """Normalise rows ``[top, upto)`` in place and hand them back cropped to the image as
        ``(row, (K, n, W))``, a view valid until the next ``add``/``release``."""
        self._drop_released()
        g = self.grid
        upto = min(upto, g.padded_height)
        n = upto - self.top
        if n <= 0:
            return None
        self._ensure(n)
        keep = min(upto, g.height) - self.top
        band = None
        if keep > 0:
            band = self._acc[:, :keep, : g.width]
            band.div_(self._wsum[:keep, : g.width])
        start, self.top, self._released = self.top, upto, n
        return (start, band) if band is not None else None


def iter_stitched(
    image: np.ndarray,
    grid: TileGrid,
    run: Callable[[torch.Tensor], torch.Tensor | np.ndarray],
    num_classes: int,
    *,
    blend: str = "gaussian",
    batch_size: int = 8,
    prepare: Callable[[np.ndarray], np.ndarray] | None = None,
    on_tiles: Callable[[int], None] | None = None,
    device: str | torch.device | None = None,
) -> Iterator[tuple[int, torch.Tensor]]:
    """Run ``run`` over the tiles of ``image`` and yield finished ``(row_start, (K, rows, W))`` bands.

    ``image`` is ``H x W [x C]`` in any dtype. It is read one row of tiles at a time: the rows are
    cut (reflected past the border), turned by ``prepare`` into ``tile_h x padded_W x C`` pixels
    (default: float32), copied to ``device`` once and made channels-first there. Tiles are views of
    that row band, stacked into ``(N, C, h, w)`` batches on the device, so a GPU gets one copy per
    row of tiles and the CPU does no per-tile work; the next row is cut while the device runs the
    current batch. ``run`` maps a batch to ``(N, K, h, w)`` float32 probabilities (a tensor on any
    device, or numpy).

    A batch may hold the end of one tile row and the start of the next: the finished rows are
    handed on before the next tile row is added, so the stitching buffer stays one tile high.
    Bands are float32 tensors on ``run``'s device, cover rows ``0..H-1`` in order, exactly once,
    and are views of that buffer, valid until the next band is requested (copy one to keep it).
    """
    if image.shape[0] != grid.height or image.shape[1] != grid.width:
        raise ValueError(
            f"image {image.shape[:2]} does not match the grid {grid.height}x{grid.width}"
        )
    prepare = prepare or _default_prepare
    device = torch.device(device or "cpu")
    window = torch.from_numpy(blend_window(grid.tile_h, grid.tile_w, blend))
    stitcher: BandStitcher | None = None
    row_bands: dict[int, torch.Tensor] = {}  # tile-row start -> its (C, tile_h, W) pixels on device

    def load_rows(chunk: list[tuple[int, int]]) -> None:
        for y in sorted({y for y, _ in chunk} - row_bands.keys()):
            rows = prepare(extract_tile(image, y, 0, grid.tile_h, grid.padded_width))
            row_bands[y] = _to_device(rows, device).permute(2, 0, 1)

    tiles = list(grid.tiles())
    chunks = [tiles[i : i + batch_size] for i in range(0, len(tiles), batch_size)]
    load_rows(chunks[0])
    for i, chunk in enumerate(chunks):
        batch = torch.stack([row_bands[y][:, :, x : x + grid.tile_w] for y, x in chunk])
        probs = torch.as_tensor(run(batch))  # on a GPU this only queues the work
        if stitcher is None:
            stitcher = BandStitcher(grid, num_classes, window.to(probs.device))
        following = chunks[i + 1] if i + 1 < len(chunks) else None
        if following:  # cut the next rows now: the band's consumer below waits for the GPU
            row_bands = {y: band for y, band in row_bands.items() if y >= chunk[-1][0]}
            load_rows(following)
        for (y, x), p in zip(chunk, probs, strict=True):
            if y > stitcher.top:  # a new tile row: every row above it is final
                released = stitcher.release(y)
                if released is not None:
                    yield released
            stitcher.add(y, x, p.float())
        if on_tiles is not None:
            on_tiles(len(chunk))
    assert stitcher is not None
    released = stitcher.release(grid.padded_height)
    if released is not None:
        yield released


def _to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    """Host array -> tensor on ``device``; through pinned memory to a GPU, so the copy is async."""
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor.to(device)


def _default_prepare(rows: np.ndarray) -> np.ndarray:
    rows = rows[..., None] if rows.ndim == 2 else rows
    return rows.astype(np.float32, copy=False)
