"""Pyramidal outputs for huge images: OME-TIFF (sub-IFDs) or OME-Zarr (NGFF 0.4 multiscales).

An output of at least :data:`PYRAMID_MIN_PIXELS` pixels is written as its full resolution plus
2x, 4x, ... downsampled levels, down to one tile, so QuPath, napari and Fiji open and pan it
without reading it whole. Index and colour levels take every 2nd pixel of the level above (a
label or a class colour is never averaged into one that does not exist); float maps (entropy,
confidence) take 2 x 2 means. Levels are made and written a band of rows at a time; the float
maps' levels live in anonymous scratch files, so memory stays bounded whatever the size.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np

PyramidFormat = Literal["ome-tiff", "ome-zarr"]
"""Containers of the outputs written as pyramids."""
PYRAMID_MIN_PIXELS = 4096 * 4096
"""Outputs with at least this many pixels (of inputs that are not GeoTIFFs) are pyramids."""
PYRAMID_TILE = 512
"""Tile (OME-TIFF) and chunk (OME-Zarr) side; the smallest level's shorter side is one tile."""
PYRAMID_FORMATS: tuple[str, ...] = get_args(PyramidFormat)
PYRAMID_SUFFIXES = {"ome-tiff": ".ome.tif", "ome-zarr": ".ome.zarr"}
NGFF_VERSION = "0.4"
"""OME-Zarr on zarr format 2: what napari (napari-ome-zarr), QuPath and Bio-Formats all read."""
_BAND_ROWS = 1024  # rows of a level downsampled at a time


def pyramid_format(path: Path) -> str | None:
    """The pyramid format an output path names (``x.ome.tif``, ``x.ome.zarr``), else None."""
    for fmt, suffix in PYRAMID_SUFFIXES.items():
        if path.name.endswith(suffix):
            return fmt
    return None


def pyramid_levels(height: int, width: int) -> int:
    """Resolutions of a pyramid: halve until the smaller side would drop under one tile."""
    levels = 1
    while min(height, width) >> levels >= PYRAMID_TILE:
        levels += 1
    return levels


def scratch_array(folder: Path, shape: tuple[int, ...], dtype: np.dtype | type) -> np.memmap:
    """A zero-filled array in an anonymous file in ``folder`` (on the output's disk, not in
    memory); the file has no name, so it disappears with the array even if the run is killed."""
    with tempfile.TemporaryFile(dir=folder) as f:
        return np.memmap(f, dtype=dtype, mode="w+", shape=shape)


@dataclass(frozen=True)
class Pyramid:
    """One output as a pyramid: ``H x W`` values and how a band of them becomes pixels."""

    values: np.ndarray
    """Labels (in memory) or a float map (memory-mapped)."""
    pixels: Callable[[np.ndarray], np.ndarray] | None = None
    """A band of values -> its pixels (``h x w`` or ``h x w x 3``); None: the values."""
    mean: bool = False
    """Levels by 2 x 2 means (float maps) instead of every 2nd pixel."""

    def levels(self, scratch: Path) -> Iterator[np.ndarray]:
        """The values of each level, full resolution first."""
        level = self.values
        yield level
        for _ in range(1, pyramid_levels(*self.values.shape)):
            level = _halve_mean(level, scratch) if self.mean else level[::2, ::2]
            yield level

    def bands(self, level: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
        """``(row, pixels)`` of ``level`` one tile row at a time."""
        for y in range(0, level.shape[0], PYRAMID_TILE):
            band = np.asarray(level[y : y + PYRAMID_TILE])
            yield y, (self.pixels(band) if self.pixels is not None else band)

    def pixel_type(self) -> tuple[np.dtype, int]:
        """The pixels' dtype and samples per pixel (1, or 3 for colours)."""
        sample = (
            self.pixels(self.values[:1, :1]) if self.pixels is not None else self.values[:1, :1]
        )
        return sample.dtype, (sample.shape[2] if sample.ndim == 3 else 1)


def _halve_mean(level: np.ndarray, scratch: Path) -> np.memmap:
    """2 x 2 means of ``level`` (an odd last row or column is its own pair), in a scratch file."""
    h, w = level.shape
    out = scratch_array(scratch, (math.ceil(h / 2), math.ceil(w / 2)), np.float32)
    for y in range(0, h, 2 * _BAND_ROWS):
        band = np.asarray(level[y : y + 2 * _BAND_ROWS], dtype=np.float32)
        if band.shape[0] % 2:
            band = np.concatenate([band, band[-1:]])
        if w % 2:
            band = np.concatenate([band, band[:, -1:]], axis=1)
        rows = band.shape[0] // 2
        out[y // 2 : y // 2 + rows] = band.reshape(rows, 2, -1, 2).mean(axis=(1, 3))
    return out


def write_ome_tiff(tmp: Path, pyramid: Pyramid) -> None:
    """A tiled OME-TIFF whose sub-IFDs hold the downsampled levels, written tile by tile."""
    import tifffile

    dtype, samples = pyramid.pixel_type()
    options: dict[str, Any] = {
        "tile": (PYRAMID_TILE, PYRAMID_TILE),
        "compression": "zlib",
        "photometric": "rgb" if samples == 3 else "minisblack",
        "dtype": dtype,
    }
    n = pyramid_levels(*pyramid.values.shape)
    with tifffile.TiffWriter(tmp, bigtiff=True, ome=True) as tif:
        for i, level in enumerate(pyramid.levels(tmp.parent)):
            shape = level.shape + ((samples,) if samples > 1 else ())
            first = {"subifds": n - 1, "metadata": {"axes": "YXS" if samples > 1 else "YX"}}
            tif.write(
                _tiles(pyramid, level),
                shape=shape,
                **(first if i == 0 else {"subfiletype": 1}),
                **options,
            )


def _tiles(pyramid: Pyramid, level: np.ndarray) -> Iterator[np.ndarray]:
    for _, band in pyramid.bands(level):
        for x in range(0, band.shape[1], PYRAMID_TILE):
            yield band[:, x : x + PYRAMID_TILE]


def write_ome_zarr(
    tmp: Path, pyramid: Pyramid, name: str, attributes: dict[str, Any] | None = None
) -> None:
    """An OME-Zarr image (NGFF 0.4 multiscales on zarr format 2) in the folder ``tmp``: one
    array per level, ``y, x`` (or ``c, y, x`` for colours), written a tile row at a time.
    ``attributes`` are added to the group's (``image-label``, ``omero``)."""
    import numcodecs
    import zarr

    dtype, samples = pyramid.pixel_type()
    group = zarr.open_group(tmp, mode="w", zarr_format=2)
    datasets = []
    for i, level in enumerate(pyramid.levels(tmp.parent)):
        lead = (samples,) if samples > 1 else ()
        array = group.create_array(
            str(i),
            shape=lead + level.shape,
            chunks=(1,) * len(lead) + (PYRAMID_TILE, PYRAMID_TILE),
            dtype=dtype,
            compressors=numcodecs.Blosc(cname="zstd", clevel=5),
            chunk_key_encoding={"name": "v2", "separator": "/"},  # NGFF 0.4 asks for "/"
            fill_value=0,
        )
        for y, band in pyramid.bands(level):
            rows = slice(y, y + band.shape[0])
            if samples > 1:
                array[:, rows] = np.moveaxis(band, 2, 0)
            else:
                array[rows] = band
        scale = [1.0] * len(lead) + [float(2**i), float(2**i)]
        datasets.append(
            {"path": str(i), "coordinateTransformations": [{"type": "scale", "scale": scale}]}
        )
    axes = [{"name": "c", "type": "channel"}] if samples > 1 else []
    axes += [{"name": "y", "type": "space"}, {"name": "x", "type": "space"}]
    metadata: dict[str, Any] = {
        "multiscales": [
            {
                "version": NGFF_VERSION,
                "name": name,
                "axes": axes,
                "datasets": datasets,
                "type": "mean" if pyramid.mean else "nearest",
            }
        ],
        **(attributes or {}),
    }
    group.attrs.update(metadata)


def write_pyramid(tmp: Path, final: Path, pyramid: Pyramid, attributes: dict[str, Any]) -> None:
    """``pyramid`` at ``tmp`` in the format ``final``'s name says (see :data:`PYRAMID_SUFFIXES`);
    ``attributes`` go into an OME-Zarr's metadata."""
    if pyramid_format(final) == "ome-zarr":
        write_ome_zarr(tmp, pyramid, final.name.removesuffix(".ome.zarr"), attributes)
    else:
        write_ome_tiff(tmp, pyramid)


def label_attributes(names: list[str], colors: np.ndarray) -> dict[str, Any]:
    """NGFF ``image-label`` metadata of an index mask: each class's colour and name."""
    return {
        "image-label": {
            "version": NGFF_VERSION,
            "colors": [
                {"label-value": i, "rgba": [*map(int, colors[i]), 255]} for i in range(len(names))
            ],
            "properties": [{"label-value": i, "class": n} for i, n in enumerate(names)],
        }
    }


def rgb_attributes() -> dict[str, Any]:
    """NGFF ``omero`` rendering metadata that shows three channels as red, green and blue."""
    channel = {"window": {"start": 0, "end": 255, "min": 0, "max": 255}, "active": True}
    return {
        "omero": {
            "rdefs": {"model": "color"},
            "channels": [
                {**channel, "label": label, "color": color}
                for label, color in (("red", "FF0000"), ("green", "00FF00"), ("blue", "0000FF"))
            ],
        }
    }
