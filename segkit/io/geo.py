"""Georeferenced outputs: a GeoTIFF input's CRS, transform and nodata go into every raster output.

rasterio (the optional extra ``segkit[geo]``) reads the georeferencing from the input's header
only; the pixels are still read by windows (:mod:`segkit.io.windows`), so a huge
GeoTIFF is never loaded whole. Outputs are written as before (into TIFFs, block by block) and then
georeferenced in place; rasters of at least :data:`COG_MIN_PIXELS` pixels become Cloud-Optimized
GeoTIFFs (tiled, deflate, with overviews), which GIS tools and web viewers read by parts.
"""

from __future__ import annotations

import math
import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from segkit.errors import DataError

GEO_EXTRA = "pip install 'segkit[geo]'"
COG_MIN_PIXELS = 4096 * 4096
"""Georeferenced rasters with at least this many pixels are written as Cloud-Optimized GeoTIFFs."""
_GEO_TAGS = (33550, 33922, 34264, 34735)  # ModelPixelScale, ModelTiepoint, ModelTransformation,
# GeoKeyDirectory: any of them makes a TIFF a GeoTIFF


def require_rasterio(what: str) -> Any:
    """``import rasterio``, or one clear DataError naming the extra to install."""
    try:
        import rasterio
        import rasterio.crs
        import rasterio.errors
        import rasterio.shutil
    except ImportError:
        raise DataError(f"{what} needs rasterio, which is not installed: {GEO_EXTRA}") from None
    return rasterio


@dataclass(frozen=True)
class GeoReference:
    """Where a raster lies: its CRS (WKT), affine transform (a, b, c, d, e, f) and nodata value."""

    crs: str | None
    transform: tuple[float, ...]
    nodata: float | None


def is_geotiff(path: Path) -> bool:
    """True for a TIFF whose first page carries GeoTIFF tags (read with tifffile, no rasterio)."""
    if path.suffix.lower() not in (".tif", ".tiff"):
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            tags = tif.pages.first.tags
            return any(code in tags for code in _GEO_TAGS)
    except Exception:  # noqa: BLE001 - not a readable TIFF: the reader reports it
        return False


def read_georeference(path: Path) -> GeoReference | None:
    """The georeferencing of a GeoTIFF (header only), None for any other image."""
    if not is_geotiff(path):
        return None
    rasterio = require_rasterio(f"{path}: keeping this GeoTIFF's CRS and transform")

    try:
        with rasterio.open(path) as ds:
            crs, transform, nodata = ds.crs, ds.transform, ds.nodata
    except rasterio.errors.RasterioError as e:
        raise DataError(f"{path}: cannot read its georeferencing: {e}") from None
    return GeoReference(
        crs=crs.to_wkt() if crs is not None else None,
        transform=tuple(float(v) for v in tuple(transform)[:6]),
        nodata=None if nodata is None else float(nodata),
    )


def nodata_mask(pixels: np.ndarray, nodata: float) -> np.ndarray:
    """``(h, w)`` True where every band of ``h x w [x C]`` pixels is ``nodata`` (NaN matches NaN)."""
    pixels = pixels[..., None] if pixels.ndim == 2 else pixels
    same = np.isnan(pixels) if math.isnan(nodata) else pixels == nodata
    return same.all(axis=2)


def label_nodata(dtype: np.dtype, num_classes: int) -> int | None:
    """The nodata value of an index output: the largest value no class uses, None if none is free."""
    top = int(np.iinfo(dtype).max)
    return top if top >= num_classes else None


def georeference(tmp: Path, final: Path, geo: GeoReference, nodata: float | None) -> None:
    """Give the TIFF at ``tmp`` (to become ``final``) the input's CRS and transform, and
    ``nodata``; one of :data:`COG_MIN_PIXELS` or more pixels is rewritten as a COG."""
    rasterio = require_rasterio(f"{final}: a georeferenced output")
    from affine import Affine

    def tag(path: Path) -> tuple[int, int]:
        with warnings.catch_warnings():  # it has no georeferencing yet: that is what we add
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            ds = rasterio.open(path, "r+")
        with ds:
            if geo.crs is not None:
                ds.crs = rasterio.crs.CRS.from_wkt(geo.crs)
            ds.transform = Affine(*geo.transform)
            if nodata is not None:
                ds.nodata = nodata
            return ds.height, ds.width

    height, width = tag(tmp)
    if height * width < COG_MIN_PIXELS:
        return
    # The COG driver copies from a finished dataset: move the plain TIFF aside (under a name a
    # killed run's clean-up recognises) and write the COG where the writer commits from.
    fd, scratch = tempfile.mkstemp(
        prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent
    )
    os.close(fd)
    try:
        os.replace(tmp, scratch)
        with rasterio.open(scratch) as src:
            float_data = np.dtype(src.dtypes[0]).kind == "f"
        rasterio.shutil.copy(
            scratch,
            tmp,
            driver="COG",
            COMPRESS="DEFLATE",
            BLOCKSIZE=512,
            BIGTIFF="IF_SAFER",
            # labels and colours must stay values that exist; float maps may be averaged
            RESAMPLING="AVERAGE" if float_data else "NEAREST",
            PREDICTOR="YES",
        )
    finally:
        Path(scratch).unlink(missing_ok=True)
