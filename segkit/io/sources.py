"""What ``segkit predict`` reads: an image file, a ``.zarr`` store, a folder (recursive) or a glob,
and how to open one.

Uncompressed TIFFs are memory-mapped (tifffile), so a huge image is read tile by tile from the page
cache; tiled or striped TIFFs (OME-TIFF included) and ``.zarr`` stores are read by windows through
zarr (:mod:`segkit.io.windows`); everything else is decoded once by ``segkit.io.images``.
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from segkit.errors import DataError, check_pixel_limit
from segkit.io.images import IMAGE_SUFFIXES, check_pixel_type, list_images, read_image
from segkit.io.windows import ArrayWindows, is_zarr_store, open_tiff_windows, open_zarr
from segkit.utils import is_temporary_file

_MAGIC = ("*", "?", "[")


@dataclass(frozen=True)
class InputImage:
    """One input: its path and its path relative to the source root (kept under the output)."""

    path: Path
    rel: Path


def _glob_root(pattern: str) -> Path:
    parts = Path(pattern).parts
    for i, part in enumerate(parts):
        if any(m in part for m in _MAGIC):
            return Path(*parts[:i]) if i else Path(".")
    return Path(pattern).parent


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def find_inputs(source: str | Path, exclude: Path | None = None) -> list[InputImage]:
    """The images of ``source`` in sorted order; files under ``exclude`` (the output) are skipped
    unless ``exclude`` is the source folder itself."""
    text = os.path.expanduser(str(source))
    path = Path(text)
    if path.is_file() or is_zarr_store(path):
        return [InputImage(path, Path(path.name))]
    if path.is_dir():
        root, paths = path, list_images(path)
    elif any(m in text for m in _MAGIC):
        root = _glob_root(text)
        paths = sorted(
            Path(p)
            for p in glob.glob(text, recursive=True)
            if (Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
            or is_zarr_store(Path(p))
            and not is_temporary_file(p)
        )
    else:
        raise DataError(f"{source}: no such image file, folder or glob pattern")
    if exclude is not None and exclude.exists() and not _inside(root, exclude):
        paths = [p for p in paths if not _inside(p, exclude)]
    if not paths:
        raise DataError(
            f"{source}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))} files and "
            ".zarr stores, recursively)"
        )
    return [
        InputImage(p, p.relative_to(root) if _is_relative(p, root) else Path(p.name)) for p in paths
    ]


def _is_relative(path: Path, root: Path) -> bool:
    try:
        path.relative_to(root)
        return True
    except ValueError:
        return False


def _tiff_memmap(path: Path, max_pixels: int | None) -> np.ndarray | None:
    """A read-only memory map of an uncompressed, contiguous 1- or 3-channel TIFF, else None."""
    import tifffile

    try:
        array = tifffile.memmap(path, mode="r")
    except Exception:  # compressed, tiled, planar, not a TIFF ...: decode it normally
        return None
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3))):
        return None
    check_pixel_limit(path, array.shape[0], array.shape[1], max_pixels)
    return array


def open_image(
    path: Path, in_channels: int, max_pixels: int | None = None
) -> np.ndarray | ArrayWindows:
    """``H x W [x C]`` pixels of ``path``: memory-mapped (uncompressed TIFF), read by windows
    (tiled or striped TIFF, ``.zarr`` store), else decoded once."""
    if is_zarr_store(path):
        windows = open_zarr(path, max_pixels)
        check_pixel_type(path, windows.dtype)
        return windows
    if path.suffix.lower() in (".tif", ".tiff"):
        lazy: np.ndarray | ArrayWindows | None = _tiff_memmap(path, max_pixels)
        if lazy is None:
            lazy = open_tiff_windows(path, max_pixels)
        if lazy is not None:
            check_pixel_type(path, lazy.dtype)
            return lazy
    return read_image(path, in_channels=in_channels, max_pixels=max_pixels)
