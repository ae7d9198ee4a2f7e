"""Prediction outputs (index / color / overlay / probs / entropy / confidence) and the run manifest,
all written atomically; huge ones as pyramids (:mod:`segkit.io.pyramids`).

Every file of one image goes to a temporary name first and is renamed only when all of them are
complete, so a failing or killed run never leaves a half-written or partial set of outputs. Write
failures (disk full, read-only folder) become one ``DataError``: ``cannot write <path>: <reason>``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any, get_args

import numpy as np
import torch

from segkit.card import ModelCard
from segkit.engine.labels import HostLabels, label_dtype
from segkit.engine.options import OutputKind, ProbsDtype
from segkit.engine.uncertainty import MAP_FUNCTIONS, UNCERTAINTY_MAPS
from segkit.errors import DataError
from segkit.io import pyramids
from segkit.io.geo import GeoReference, georeference, label_nodata, nodata_mask
from segkit.io.images import image_to_float
from segkit.io.palette import palette_image
from segkit.io.pyramids import (
    PYRAMID_FORMATS,
    PYRAMID_SUFFIXES,
    Pyramid,
    label_attributes,
    pyramid_format,
    rgb_attributes,
    scratch_array,
    write_pyramid,
)
from segkit.utils import atomic_dir, atomic_path, remove_path, temporary_target

OUTPUT_KINDS: tuple[str, ...] = get_args(OutputKind)
PROBS_DTYPES: tuple[str, ...] = get_args(ProbsDtype)
PNG_MAX_SIDE = 65535
"""Larger images are written as TIFF: many PNG readers refuse sides beyond this."""
PYRAMID_KINDS = ("index", "color", *UNCERTAINTY_MAPS)
"""Outputs written as pyramids (OME-TIFF or OME-Zarr) from :data:`pyramids.PYRAMID_MIN_PIXELS`
pixels, for inputs that are not GeoTIFFs (those get Cloud-Optimized GeoTIFFs instead)."""
MANIFEST = "manifest.jsonl"
_ROWS = 1024  # rows converted at a time for color/overlay, to bound temporaries
_TIFF_TILE = 256  # tiles of large colour/overlay TIFFs: one band of them is made at a time
_SUFFIX = {
    "index": "",
    "color": "_color",
    "overlay": "_overlay",
    "probs": "_probs",
    "entropy": "_entropy",
    "confidence": "_confidence",
}


def output_path(
    base: Path,
    kind: str,
    num_classes: int,
    height: int | None = None,
    width: int | None = None,
    *,
    tiff: bool = False,
    pyramid: str = "ome-tiff",
) -> Path:
    """Where output ``kind`` of the image with output stem ``base`` goes (``base`` has no suffix).

    index: ``<stem>.png`` (``.tif`` for > 256 classes); color/overlay: ``<stem>_color.png`` ...;
    probs: ``<stem>_probs.npy``; entropy/confidence: ``<stem>_entropy.tif`` (float32 TIFF: PNG holds
    no floats). Images with a side > ``PNG_MAX_SIDE``, and with ``tiff`` (georeferenced outputs),
    get ``.tif`` instead of ``.png``. From :data:`pyramids.PYRAMID_MIN_PIXELS` pixels, unless
    ``tiff``, the :data:`PYRAMID_KINDS` are pyramids in the ``pyramid`` format: ``<stem>.ome.tif``
    or ``<stem>.ome.zarr`` (a folder).
    """
    if kind not in OUTPUT_KINDS:
        raise DataError(f"unknown output '{kind}' (allowed: {', '.join(OUTPUT_KINDS)})")
    name = base.name + _SUFFIX[kind]
    if kind == "probs":
        return base.with_name(name + ".npy")
    pixels = (height or 0) * (width or 0)
    if kind in PYRAMID_KINDS and not tiff and pixels >= pyramids.PYRAMID_MIN_PIXELS:
        return base.with_name(name + PYRAMID_SUFFIXES[pyramid])
    if kind in UNCERTAINTY_MAPS:
        return base.with_name(name + ".tif")
    big = height is not None and width is not None and max(height, width) > PNG_MAX_SIDE
    tiff = tiff or big or (kind == "index" and num_classes > 256)
    return base.with_name(name + (".tif" if tiff else ".png"))


def _name_variants(base: Path, kind: str, num_classes: int) -> set[Path]:
    """Every name output ``kind`` of ``base`` can have, whatever the image's size."""
    return {
        output_path(base, kind, num_classes),
        output_path(base, kind, num_classes, PNG_MAX_SIDE + 1, 1),
        *(
            output_path(base, kind, num_classes, pyramids.PYRAMID_MIN_PIXELS, 1, pyramid=fmt)
            for fmt in PYRAMID_FORMATS
        ),
    }


def outputs_exist(base: Path, save: Sequence[str], num_classes: int) -> bool:
    """True when every requested output of ``base`` exists (as PNG, TIFF or OME-Zarr, whatever
    the size was)."""
    for kind in save:
        if not any(p.exists() for p in _name_variants(base, kind, num_classes)):
            return False
    return True


def remove_stale_temporaries(
    bases: Iterable[Path], save: Sequence[str], num_classes: int, also: Iterable[Path] = ()
) -> int:
    """Delete the temporaries a killed run left for these outputs (any size variant) and for the
    files in ``also`` (the manifest); returns how many.

    Only files that :func:`atomic_path` would create for one of these outputs are touched, so
    another run writing other images into the same folder is not disturbed.
    """
    targets: dict[Path, set[str]] = {}
    for p in also:
        targets.setdefault(p.parent, set()).add(p.name)
    for base in bases:
        for kind in save:
            for p in _name_variants(base, kind, num_classes):
                targets.setdefault(p.parent, set()).add(p.name)
    removed = 0
    for folder, names in targets.items():
        if not folder.is_dir():
            continue
        for entry in folder.iterdir():
            target = temporary_target(entry)
            if target is not None and target.name in names:
                remove_path(entry)
                removed += 1
    return removed


def display_rgb(image: np.ndarray) -> np.ndarray:
    """``H x W x 3`` uint8 view of any image for overlays: gray repeated, alpha/extra bands dropped."""
    x = image_to_float(image[..., None] if image.ndim == 2 else image)
    x = np.repeat(x[..., :1], 3, axis=2) if x.shape[2] < 3 else x[..., :3]
    return np.clip(x * 255 + 0.5, 0, 255).astype(np.uint8)


def _cannot_write(path: Path, e: OSError) -> DataError:
    return DataError(f"cannot write {path}: {e.strerror or e}")


class OutputWriter:
    """The outputs of one image: fed block by block, committed all at once.

    Use as a context manager: ``add_block`` for every block, then ``commit(image)``; leaving the
    ``with`` without ``commit`` (an error) removes every temporary file.
    """

    def __init__(
        self,
        base: Path,
        save: Iterable[str],
        info: ModelCard,
        height: int,
        width: int,
        probs_dtype: str = "float16",
        geo: GeoReference | None = None,
        pyramid: str = "ome-tiff",
    ) -> None:
        self.save = tuple(dict.fromkeys(save))
        self.geo = geo
        for kind in self.save:
            output_path(base, kind, info.num_classes)  # validates the kind
        if probs_dtype not in PROBS_DTYPES:
            raise DataError(
                f"unknown probs dtype '{probs_dtype}' (allowed: {', '.join(PROBS_DTYPES)})"
            )
        self.info, self.height, self.width, self.probs_dtype = info, height, width, probs_dtype
        if pyramid not in PYRAMID_FORMATS:
            raise DataError(
                f"unknown pyramid format '{pyramid}' (allowed: {', '.join(PYRAMID_FORMATS)})"
            )
        self.paths = {
            kind: output_path(
                base, kind, info.num_classes, height, width, tiff=geo is not None, pyramid=pyramid
            )
            for kind in self.save
        }
        self.pyramids = {kind for kind, path in self.paths.items() if pyramid_format(path)}
        self.labels = np.zeros((height, width), dtype=label_dtype(info.num_classes))
        self._label_copies = HostLabels(self.labels)  # arg-max per block, lagged on a GPU
        self._stack = contextlib.ExitStack()
        self._tmp: dict[str, Path] = {}
        self._probs: np.memmap | None = None
        self._maps: dict[str, np.memmap] = {}  # entropy/confidence: memory-mapped TIFF pixels
        self._map_copies: dict[str, HostLabels] = {}
        self._current: Path | None = None

    def __enter__(self) -> OutputWriter:
        try:
            for kind, path in self.paths.items():
                self._current = path
                atomic = atomic_dir if pyramid_format(path) == "ome-zarr" else atomic_path
                self._tmp[kind] = self._stack.enter_context(atomic(path))
            if "probs" in self.paths:
                self._current = self.paths["probs"]
                self._probs = np.lib.format.open_memmap(
                    self._tmp["probs"],
                    mode="w+",
                    dtype=np.dtype(self.probs_dtype),
                    shape=(self.info.num_classes, self.height, self.width),
                )
            for kind in UNCERTAINTY_MAPS:
                if kind in self.paths:
                    self._current = self.paths[kind]
                    if kind in self.pyramids:  # the full resolution, for the levels to come
                        shape = (self.height, self.width)
                        self._maps[kind] = scratch_array(self.paths[kind].parent, shape, np.float32)
                    else:
                        self._maps[kind] = _float_tiff(self._tmp[kind], self.height, self.width)
                    self._map_copies[kind] = HostLabels(
                        self._maps[kind], reduce=MAP_FUNCTIONS[kind]
                    )
        except OSError as e:
            self._stack.__exit__(type(e), e, e.__traceback__)
            raise _cannot_write(self._current, e) from None  # type: ignore[arg-type]
        return self

    def __exit__(self, *exc: Any) -> None:
        if exc[0] is not None:
            self.abort()

    def abort(self) -> None:
        """Remove every temporary file; nothing of this image is left behind."""
        self._probs = None
        self._maps, self._map_copies = {}, {}
        err = DataError("aborted")
        self._stack.__exit__(DataError, err, None)

    def add_block(self, row: int, col: int, probs: np.ndarray | torch.Tensor) -> None:
        """Take the ``(K, h, w)`` probabilities of the block at ``(row, col)``: labels (on a GPU
        a few blocks later, see :class:`HostLabels`; :meth:`commit` waits for them), probs to
        disk. ``probs`` may be a torch tensor on any device: the arg-max then runs there."""
        self._label_copies.add(row, col, probs)
        try:
            for kind, copies in self._map_copies.items():
                self._current = self.paths[kind]
                copies.add(row, col, probs)
        except OSError as e:
            raise _cannot_write(self._current, e) from None  # type: ignore[arg-type]
        if self._probs is not None:
            rows = slice(row, row + probs.shape[1])
            cols = slice(col, col + probs.shape[2])
            if isinstance(probs, torch.Tensor):
                probs = probs.cpu().numpy()
            values = np.rint(probs * 255) if self.probs_dtype == "uint8" else probs
            try:
                self._probs[:, rows, cols] = values
            except OSError as e:
                raise _cannot_write(self.paths["probs"], e) from None

    def needs_image(self) -> bool:
        """Whether :meth:`commit` reads the input image (overlay, or a GeoTIFF's nodata pixels)."""
        return "overlay" in self.paths or (self.geo is not None and self.geo.nodata is not None)

    def commit(self, image: np.ndarray | None = None) -> dict[str, Path]:
        """Write index/color/overlay and move every file into place. ``image`` is needed when
        :meth:`needs_image` says so."""
        colors = np.asarray(self.info.colors, dtype=np.uint8)
        self._label_copies.flush()
        try:
            for kind, copies in self._map_copies.items():
                self._current = self.paths[kind]
                copies.flush()
            if self.geo is not None and self.geo.nodata is not None and image is not None:
                self._mask_nodata(image, self.geo.nodata)
            for kind in self._map_copies:
                self._current = self.paths[kind]
                self._maps[kind].flush()
                if kind in self.pyramids:
                    self._write_pyramid(kind, Pyramid(self._maps[kind], mean=True))
            self._maps, self._map_copies = {}, {}
            if self._probs is not None:
                self._current = self.paths["probs"]
                self._probs.flush()
                self._probs = None
            if "index" in self.paths:
                self._current = self.paths["index"]
                if "index" in self.pyramids:
                    names = list(self.info.classes)
                    self._write_pyramid(
                        "index", Pyramid(self.labels), label_attributes(names, colors)
                    )
                else:
                    _write_labels(self._tmp["index"], self.labels, colors)
            if "color" in self.paths:
                self._current = self.paths["color"]
                if "color" in self.pyramids:
                    self._write_pyramid(
                        "color", Pyramid(self.labels, lambda v: colors[v]), rgb_attributes()
                    )
                else:
                    _write_rgb(
                        self._tmp["color"],
                        self.height,
                        self.width,
                        lambda sl: colors[self.labels[sl]],
                    )
            if "overlay" in self.paths:
                if image is None:
                    raise DataError(
                        f"{self.paths['overlay']}: the overlay output needs the input image"
                    )
                self._current = self.paths["overlay"]
                _write_rgb(
                    self._tmp["overlay"],
                    self.height,
                    self.width,
                    lambda sl: (
                        (display_rgb(image[sl]).astype(np.uint16) + colors[self.labels[sl]]) // 2
                    ).astype(np.uint8),
                )
            if self.geo is not None:
                self._georeference()
            self._current = next(iter(self.paths.values()), None)
            self._stack.close()  # fsync + rename every temporary file
        except OSError as e:
            self._stack.__exit__(type(e), e, e.__traceback__)
            raise _cannot_write(self._current, e) from None  # type: ignore[arg-type]
        except BaseException as e:
            self._stack.__exit__(type(e), e, e.__traceback__)
            raise
        return dict(self.paths)

    def _write_pyramid(
        self, kind: str, pyramid: Pyramid, attributes: dict[str, Any] | None = None
    ) -> None:
        write_pyramid(self._tmp[kind], self.paths[kind], pyramid, attributes or {})

    def _mask_nodata(self, image: np.ndarray, nodata: float) -> None:
        """The input's nodata pixels become nodata in the labels and NaN in the maps."""
        label_value = label_nodata(self.labels.dtype, self.info.num_classes)
        for r in range(0, self.height, _ROWS):
            rows = slice(r, r + _ROWS)
            mask = nodata_mask(np.asarray(image[rows]), nodata)
            if not mask.any():
                continue
            if label_value is not None:
                self.labels[rows][mask] = label_value
            for values in self._maps.values():
                values[rows][mask] = np.nan

    def _georeference(self) -> None:
        """Every raster output gets the input's CRS and transform (and nodata where it has one)."""
        geo = self.geo
        assert geo is not None
        for kind, path in self.paths.items():
            if kind == "probs":  # a numpy array, not a raster
                continue
            self._current = path
            nodata: float | None = None
            if geo.nodata is not None and kind == "index":
                nodata = label_nodata(self.labels.dtype, self.info.num_classes)
            elif geo.nodata is not None and kind in UNCERTAINTY_MAPS:
                nodata = float("nan")
            georeference(self._tmp[kind], path, geo, nodata)


def _float_tiff(tmp: Path, height: int, width: int) -> np.memmap:
    """An ``height x width`` float32 TIFF at ``tmp``, memory-mapped: blocks are written into the
    file as they come, so a map of any size holds no more than the OS's page cache."""
    import tifffile

    return tifffile.memmap(
        tmp, shape=(height, width), dtype=np.float32, bigtiff=height * width * 4 > 2**31
    )


def _write_labels(tmp: Path, labels: np.ndarray, colors: np.ndarray) -> None:
    """Index mask: palette PNG (class indices as pixel values, colours in any viewer) or TIFF."""
    if tmp.suffix == ".tif":
        import tifffile

        tifffile.imwrite(tmp, labels, compression="zlib", bigtiff=labels.nbytes > 2**31)
        return
    palette_image(labels, colors).save(tmp, format="PNG")


def _write_rgb(tmp: Path, height: int, width: int, rows: Callable[[slice], np.ndarray]) -> None:
    """An RGB image whose ``rows(slice)`` are made on demand: a TIFF (the large ones) is written by
    bands of tiles, so only one band exists at a time; PIL encodes a PNG from the whole image."""
    if tmp.suffix == ".tif":
        import tifffile

        def tiles() -> Iterator[np.ndarray]:
            for y in range(0, height, _TIFF_TILE):
                band = rows(slice(y, y + _TIFF_TILE))
                for x in range(0, width, _TIFF_TILE):
                    yield band[:, x : x + _TIFF_TILE]

        tifffile.imwrite(
            tmp,
            tiles(),
            shape=(height, width, 3),
            dtype=np.uint8,
            tile=(_TIFF_TILE, _TIFF_TILE),
            photometric="rgb",
            compression="zlib",
            bigtiff=height * width * 3 > 2**31,
        )
        return
    from PIL import Image

    rgb = np.empty((height, width, 3), dtype=np.uint8)
    for r in range(0, height, _ROWS):
        rgb[r : r + _ROWS] = rows(slice(r, r + _ROWS))
    Image.fromarray(rgb).save(tmp, format="PNG", compress_level=1)


def write_manifest(folder: Path, records: Iterable[dict[str, Any]]) -> Path:
    """``manifest.jsonl``: one JSON line per image (input, outputs, size, tiles, seconds, status, error)."""
    path = Path(folder) / MANIFEST
    text = "".join(json.dumps(r, sort_keys=False) + "\n" for r in records)
    try:
        with atomic_path(path) as tmp:
            tmp.write_text(text, encoding="utf-8")
    except OSError as e:
        raise _cannot_write(path, e) from None
    return path


def read_manifest(folder: Path) -> list[dict[str, Any]]:
    """The records of ``folder``'s manifest (empty when there is none)."""
    path = Path(folder) / MANIFEST
    if not path.is_file():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]
