"""Pixels read by windows through zarr, so a huge image is never decoded whole.

Two kinds of input are opened as zarr arrays: a tiled or striped TIFF (OME-TIFF included; its
level 0 when it is pyramidal) through tifffile's ``aszarr`` store, which decodes only the tiles or
strips a window touches, and a ``.zarr`` store (a plain array, or an OME-Zarr multiscales group,
of which level 0 is read). :class:`ArrayWindows` presents either as ``H x W x C`` pixels that the
tiler and the writers slice like a numpy array.
"""

from __future__ import annotations

import math
import threading
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segkit.errors import DataError, check_pixel_limit

MAX_SEGMENT_ROWS = 1024
"""TIFFs in taller strips are decoded whole instead: every window would decode most of the image
again."""
ZARR_SUFFIX = ".zarr"


def is_zarr_store(path: Path) -> bool:
    """True for a folder named ``*.zarr`` (a zarr array or group, read as one image)."""
    return path.suffix.lower() == ZARR_SUFFIX and path.is_dir()


@dataclass
class _Kept:
    """The decoded rows ``[y0, y1)`` x columns ``[x0, x1)`` of the last read's last chunk row."""

    y0: int
    y1: int
    x0: int
    x1: int
    pixels: np.ndarray


class ArrayWindows:
    """``H x W x C`` pixels of a zarr array, read window by window on indexing.

    ``axes`` names the array's dimensions; ``Y`` and ``X`` become the first two, every other
    dimension is folded into channels (as a TIFF read whole folds them). Indexing takes what the
    tiler and the writers use: ``[rows]`` and ``[rows, cols]`` with slices, or the integer arrays
    of ``np.ix_`` (reflection past the border); it returns a new ``h x w x C`` array in the
    array's dtype. Reads are thread-safe. The rows of the last read's last chunk row are kept: the
    tiler's next row of tiles overlaps them, and they would otherwise be decoded twice.
    """

    ndim = 3

    def __init__(self, path: Path, array: Any, axes: str, closer: Any = None) -> None:
        self.path, self._array = path, array
        self._y, self._x = axes.index("Y"), axes.index("X")
        self._rest = [i for i, a in enumerate(axes) if a not in "YX"]
        shape = tuple(int(s) for s in array.shape)
        channels = math.prod(shape[i] for i in self._rest)
        self.shape = (shape[self._y], shape[self._x], channels)
        self.dtype = np.dtype(array.dtype)
        self.chunk_rows = int(array.chunks[self._y])
        self._kept: _Kept | None = None
        self._lock = threading.Lock()
        self._closer = weakref.finalize(self, closer) if closer is not None else None

    def close(self) -> None:
        if self._closer is not None:
            self._closer()

    def __getitem__(self, key: Any) -> np.ndarray:
        rows, cols = key if isinstance(key, tuple) else (key, slice(None))
        row_pick, y0, y1 = _span(rows, self.shape[0])
        col_pick, x0, x1 = _span(cols, self.shape[1])
        window = self._read(y0, y1, x0, x1)
        if row_pick is not None:
            window = window[row_pick - y0]
        if col_pick is not None:
            window = window[:, col_pick - x0]
        return window

    def _read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """Rows ``[y0, y1)`` x columns ``[x0, x1)``: kept rows reused, the rest read from zarr."""
        if y1 <= y0 or x1 <= x0:
            return np.zeros((max(0, y1 - y0), max(0, x1 - x0), self.shape[2]), self.dtype)
        with self._lock:
            parts, top, kept = [], y0, self._kept
            if kept and kept.x0 <= x0 and x1 <= kept.x1 and kept.y0 <= y0 < kept.y1:
                top = min(y1, kept.y1)
                parts.append(kept.pixels[y0 - kept.y0 : top - kept.y0, x0 - kept.x0 : x1 - kept.x0])
            if top < y1:
                # whole chunk rows are decoded anyway: read to the end of the last one, keep it
                end = min(self.shape[0], -(-y1 // self.chunk_rows) * self.chunk_rows)
                fresh = self._zarr_read(top, end, x0, x1)
                keep_from = max(top, (y1 - 1) // self.chunk_rows * self.chunk_rows)
                self._kept = _Kept(keep_from, end, x0, x1, fresh[keep_from - top :].copy())
                parts.append(fresh[: y1 - top])
            elif len(parts) == 1:  # all from the kept rows: the caller gets its own copy
                return parts[0].copy()
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def _zarr_read(self, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        selection: list[Any] = [slice(None)] * len(self._array.shape)
        selection[self._y], selection[self._x] = slice(y0, y1), slice(x0, x1)
        try:
            window = np.asarray(self._array[tuple(selection)])
        except Exception as e:  # noqa: BLE001 - any decoder or store failure is this file's problem
            reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(f"{self.path}: cannot read rows {y0}-{y1} ({reason})") from None
        window = np.moveaxis(window, [self._y, self._x], [0, 1])
        return window.reshape(y1 - y0, x1 - x0, self.shape[2])


def _span(key: Any, length: int) -> tuple[np.ndarray | None, int, int]:
    """``(indices or None, start, stop)`` of one axis key: a slice gives its range, an index array
    (``np.ix_``) its bounding range plus the indices to pick from it."""
    if isinstance(key, slice):
        start, stop, step = key.indices(length)
        if step != 1:
            raise IndexError("windows are contiguous (slice step 1)")
        return None, start, max(start, stop)
    picks = np.asarray(key).ravel()
    if picks.size == 0:
        return picks, 0, 0
    return picks, int(picks.min()), int(picks.max()) + 1


def open_tiff_windows(path: Path, max_pixels: int | None = None) -> ArrayWindows | None:
    """A windowed reader of a TIFF's first series (level 0), or None when it is better decoded
    whole (it is not a TIFF tifffile parses, or it is stored in strips taller than
    :data:`MAX_SEGMENT_ROWS`)."""
    import tifffile
    import zarr

    try:
        tif = tifffile.TiffFile(path)
    except Exception:  # noqa: BLE001 - not a TIFF tifffile can parse: read_image reports it
        return None
    try:
        series = tif.series[0]
        store = series.aszarr(level=0)
        array = zarr.open_array(store, mode="r")
        axes = series.axes
        usable = (
            len(axes) == array.ndim
            and "Y" in axes
            and "X" in axes
            and array.chunks[axes.index("Y")] <= MAX_SEGMENT_ROWS
        )
    except Exception:  # noqa: BLE001 - a damaged header: read_image gives the clear error
        usable = False
    if not usable:
        tif.close()
        return None
    reader = ArrayWindows(path, array, axes, closer=tif.close)
    try:
        check_pixel_limit(path, reader.shape[0], reader.shape[1], max_pixels)
    except DataError:
        reader.close()
        raise
    return reader


def open_zarr(path: Path, max_pixels: int | None = None) -> ArrayWindows:
    """A windowed reader of a ``.zarr`` store: a 2-D or 3-D array (channels first or last), or
    level 0 of an OME-Zarr image (singleton time/z axes dropped)."""
    import zarr

    try:
        node = zarr.open(path, mode="r")
    except Exception as e:  # noqa: BLE001 - no zarr metadata, unreadable JSON ...
        raise DataError(f"{path}: not a zarr array or OME-Zarr image ({_first_line(e)})") from None
    names: list[str] | None = None
    array: Any = node
    if isinstance(node, zarr.Group):
        attrs: dict[str, Any] = dict(node.attrs)
        try:  # NGFF 0.5 keeps its metadata under "ome"
            image = dict(attrs.get("ome", attrs))["multiscales"][0]
            array = node[image["datasets"][0]["path"]]
        except Exception:  # noqa: BLE001 - a group that is not an OME-Zarr image
            raise DataError(
                f"{path}: a zarr group without OME-Zarr multiscales metadata, not an image"
            ) from None
        if image.get("axes"):  # NGFF 0.4+: dicts with a name; 0.3: names
            names = [str(a["name"] if isinstance(a, dict) else a) for a in image["axes"]]
        elif array.ndim == 5:  # NGFF 0.1/0.2: always t, c, z, y, x
            names = list("tczyx")
    else:
        dims = dict(array.attrs).get("_ARRAY_DIMENSIONS")  # the xarray convention
        if isinstance(dims, list) and len(dims) == array.ndim:
            names = [str(d) for d in dims]
    if not isinstance(array, zarr.Array):
        raise DataError(f"{path}: its OME-Zarr level 0 is not a zarr array")
    reader = ArrayWindows(path, array, _zarr_axes(path, tuple(array.shape), names))
    dtype = reader.dtype
    if not (
        np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating) or dtype == np.bool_
    ):
        raise DataError(f"{path}: zarr array of {dtype} values, not image pixels")
    check_pixel_limit(path, reader.shape[0], reader.shape[1], max_pixels)
    return reader


def _zarr_axes(path: Path, shape: tuple[int, ...], names: list[str] | None) -> str:
    """The ``Y``/``X``/``C`` axes string of a zarr array: from its axis names where it has them,
    else channels are the smallest of three dimensions, first or last."""
    what = "x".join(str(s) for s in shape)
    if names is not None:
        lowered = [n.lower() for n in names]
        if "y" in lowered and "x" in lowered:
            axes = "".join("Y" if n == "y" else "X" if n == "x" else "C" for n in lowered)
            extra = [s for s, a in zip(shape, axes, strict=True) if a == "C" and s > 1]
            if len(extra) <= 1:
                return axes
            raise DataError(
                f"{path}: a {len(shape)}-D array ({', '.join(names)}: {what}) with more than "
                "one non-singleton axis besides y and x; segkit reads 2-D images with channels"
            )
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3 and shape[2] < min(shape[:2]):
        return "YXC"
    if len(shape) == 3 and shape[0] < min(shape[1:]):
        return "CYX"
    raise DataError(
        f"{path}: a {len(shape)}-D array ({what}), not an image: segkit reads 2-D arrays and "
        "3-D ones with channels first or last (or an OME-Zarr image with named axes)"
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
