"""Windowed reading of tiled or striped TIFFs, so a huge compressed image is never decoded whole.

The tiler reads an image one row of tiles at a time, and the writers read rows for overlays. For a
TIFF stored in tiles or short strips (any compression tifffile decodes), :class:`TiffWindows`
answers those reads by decoding only the segments a window touches.
"""

from __future__ import annotations

import math
import threading
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from segkit.errors import DataError, check_pixel_limit, first_line

MAX_SEGMENT_ROWS = 1024
"""Taller strips are decoded whole instead: every window would decode most of the image again."""


class TiffWindows:
    """``H x W x C`` pixels of one TIFF page, decoded window by window on indexing.

    Indexing takes what the tiler and the writers use: ``[rows]`` and ``[rows, cols]`` with
    slices, or the integer arrays of ``np.ix_`` (reflection past the border); it returns a new
    ``h x w x C`` array in the file's dtype. Reads are thread-safe.
    """

    ndim = 3

    def __init__(self, path: Path, tif: Any) -> None:
        self.path = path
        self._tif = tif
        self._closer = weakref.finalize(self, tif.close)  # the file closes with the last reference
        page = tif.pages.first
        self._page = page
        self.dtype = np.dtype(page.dtype)
        self.shape = (int(page.imagelength), int(page.imagewidth), int(page.samplesperpixel))
        if page.is_tiled:
            self._seg_h, self._seg_w = int(page.tilelength), int(page.tilewidth)
        else:
            self._seg_h, self._seg_w = min(int(page.rowsperstrip), self.shape[0]), self.shape[1]
        self._per_row = math.ceil(self.shape[1] / self._seg_w)
        self._kept: dict[int, np.ndarray | None] = {}  # decoded segments reused by the next read
        self._lock = threading.Lock()

    @classmethod
    def open(cls, path: Path, max_pixels: int | None = None) -> TiffWindows | None:
        """A windowed reader of ``path``, or None when its layout calls for decoding it whole:
        several pages or planes, separate sample planes, or strips taller than
        :data:`MAX_SEGMENT_ROWS`."""
        import tifffile

        try:
            tif = tifffile.TiffFile(path)
        except Exception:  # noqa: BLE001 - not a TIFF tifffile can parse: read_image reports it
            return None
        try:
            series = tif.series[0]
            page = tif.pages.first
            windowed = (
                series.axes in ("YX", "YXS")
                and len(series.pages) == 1
                and page.imagedepth == 1
                and (page.samplesperpixel == 1 or page.planarconfig == 1)  # contiguous samples
                and (page.is_tiled or page.rowsperstrip < page.imagelength)
                and (page.tilelength if page.is_tiled else page.rowsperstrip) <= MAX_SEGMENT_ROWS
                and page.dtype is not None
            )
        except Exception:  # noqa: BLE001 - a damaged header: read_image gives the clear error
            windowed = False
        if not windowed:
            tif.close()
            return None
        reader = cls(path, tif)
        h, w, _ = reader.shape
        try:
            check_pixel_limit(path, h, w, max_pixels)
        except DataError:
            reader.close()
            raise
        return reader

    def close(self) -> None:
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
        """Rows ``[y0, y1)`` x columns ``[x0, x1)``, decoding only the segments they touch.

        The segments of the window's last segment row are kept for the next call: the tiler's
        windows overlap by the tile overlap, and without them most segments would be decoded twice.
        """
        out = np.zeros((y1 - y0, x1 - x0, self.shape[2]), dtype=self.dtype)
        if y1 <= y0 or x1 <= x0:
            return out
        last_row = (y1 - 1) // self._seg_h
        indices = [
            r * self._per_row + c
            for r in range(y0 // self._seg_h, last_row + 1)
            for c in range(x0 // self._seg_w, (x1 - 1) // self._seg_w + 1)
        ]
        with self._lock:
            segments = {i: self._kept[i] for i in indices if i in self._kept}
            segments.update(self._decode([i for i in indices if i not in segments], y0, y1))
            self._kept = {i: seg for i, seg in segments.items() if i // self._per_row == last_row}
        for index, segment in segments.items():
            if segment is None:  # an empty segment: zeros
                continue
            sy, sx = index // self._per_row * self._seg_h, index % self._per_row * self._seg_w
            top, left = max(sy, y0), max(sx, x0)
            bottom, right = min(sy + segment.shape[0], y1), min(sx + segment.shape[1], x1)
            out[top - y0 : bottom - y0, left - x0 : right - x0] = segment[
                top - sy : bottom - sy, left - sx : right - sx
            ]
        return out

    def _decode(self, indices: list[int], y0: int, y1: int) -> dict[int, np.ndarray | None]:
        """Segment index -> its ``rows x cols x samples`` pixels (None: empty segment)."""
        page, fh = self._page, self._tif.filehandle
        decoded: dict[int, np.ndarray | None] = {}
        try:
            for data, index in fh.read_segments(
                [page.dataoffsets[i] for i in indices],
                [page.databytecounts[i] for i in indices],
                indices=indices,
                lock=fh.lock,
            ):
                segment, _, _ = page.decode(data, index, jpegtables=page.jpegtables)
                decoded[index] = None if segment is None else segment.reshape(segment.shape[-3:])
        except Exception as e:  # noqa: BLE001 - any decoder failure is this file's problem
            raise DataError(
                f"{self.path}: cannot read rows {y0}-{y1} of the TIFF ({first_line(e)})"
            ) from None
        return decoded


def _span(key: Any, length: int) -> tuple[np.ndarray | None, int, int]:
    """``(indices or None, start, stop)`` of one axis key: a slice gives its range, an index array
    (``np.ix_``) its bounding range plus the indices to pick from it."""
    if isinstance(key, slice):
        start, stop, step = key.indices(length)
        if step != 1:
            raise IndexError("TiffWindows reads contiguous windows (slice step 1)")
        return None, start, max(start, stop)
    picks = np.asarray(key).ravel()
    if picks.size == 0:
        return picks, 0, 0
    return picks, int(picks.min()), int(picks.max()) + 1
