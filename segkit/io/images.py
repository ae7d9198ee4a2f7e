"""Reading and writing images and masks: one place that turns any file into a clean array.

Every reader returns ``H x W x C`` (images) or ``H x W`` / ``H x W x 3`` (masks) in the file's
native dtype, and every failure becomes one :class:`~segkit.errors.DataError` line that names the
file and the problem. PIL reads PNG/JPEG/BMP, tifffile reads TIFF (chosen by the file's magic
bytes, so a misnamed file still reads), OpenCV only 16-bit colour PNGs, which PIL truncates, and
zarr a ``.zarr`` store (a folder, read as one image: :mod:`segkit.io.windows`).
"""

from __future__ import annotations

import os
import struct
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image, ImageOps

from segkit.errors import DataError, check_pixel_limit
from segkit.io.palette import palette_image
from segkit.io.windows import ZARR_SUFFIX, is_zarr_store, open_zarr
from segkit.utils import atomic_path, is_temporary_file

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp"})
"""Lower-case suffixes of the files segkit reads (matched case-insensitively); ``.zarr`` stores
(folders) are read too."""

LOSSY_SUFFIXES = frozenset({".jpg", ".jpeg"})

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float64)  # ITU-R BT.601, as PIL's "L" mode
_alpha_warned = False
_PIL_MAX_PIXELS = Image.MAX_IMAGE_PIXELS
_PIL_GUARD_LOCK = threading.Lock()  # decoder threads set and restore PIL's global in turn
_SIGNED_HINT = (
    "pixels are signed integers ({dtype}), which segkit does not read; save the image as uint8 or "
    "uint16 (scaled to [0, 1] by 255 or 65535) or as float32 (used as is: set data.mean and "
    "data.std to its per-band statistics)"
)


class ImageHeader(NamedTuple):
    """What a file's header says, read without decoding the pixels."""

    height: int
    width: int
    channels: int
    mode: str  # PIL mode ("RGB", "RGBA", "P", "I;16", ...) or "tiff"


def list_images(folder: Path) -> list[Path]:
    """All image files under ``folder`` (recursive, sorted), skipping hidden and temporary files.

    Symlinked folders are followed once: a link that points back up the tree is not re-entered.
    """
    folder = Path(folder)
    if not folder.is_dir():
        problem = "is a file, not a folder" if folder.exists() else "folder not found"
        raise DataError(f"{folder}: {problem}")
    return sorted(_walk(folder, set()))


def _walk(folder: Path, seen: set[tuple[int, int]]) -> Iterator[Path]:
    try:
        st = folder.stat()
        key = (st.st_dev, st.st_ino)
        if key in seen:
            return
        seen.add(key)
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError as e:
        raise DataError(f"{folder}: cannot list folder ({e.strerror or e})") from None
    for entry in entries:
        if entry.name.startswith(".") or is_temporary_file(entry.name):
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir() and path.suffix.lower() == ZARR_SUFFIX:
                yield path  # a zarr store is one image, not a folder of them
            elif entry.is_dir():
                yield from _walk(path, seen)
            elif entry.is_file() and path.suffix.lower() in IMAGE_SUFFIXES:
                yield path
        except OSError:  # a dangling or looping symlink: not an image we can use
            continue


def _open_checks(path: Path) -> bytes:
    """Fail early, with a clear reason, on missing, unreadable and empty files; return magic bytes."""
    try:
        with open(path, "rb") as f:
            head = f.read(32)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found") from None
    except PermissionError:
        raise DataError(f"{path}: permission denied (cannot read the file)") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a folder, not an image file") from None
    except OSError as e:
        raise DataError(f"{path}: cannot read the file ({e.strerror or e})") from None
    if not head:
        raise DataError(f"{path}: empty file (0 bytes)")
    return head


def _png_bit_depth(head: bytes) -> tuple[int, int] | None:
    """(bit depth, colour type) from a PNG's IHDR, or None for other formats."""
    if head.startswith(_PNG_MAGIC) and len(head) >= 26:
        return head[24], head[25]
    return None


def _pil_open(path: Path, max_pixels: int | None) -> Image.Image:
    # PIL's own bomb guard is a module global. With a segkit limit, it is off while this header is
    # read, so the limit is segkit's alone (checked below, with its message), neither PIL's default
    # (~179 MP, which would refuse images the user allowed) nor twice ours; the caller's setting
    # is restored afterwards. Without a limit, PIL's default applies.
    with _PIL_GUARD_LOCK:
        saved = Image.MAX_IMAGE_PIXELS
        Image.MAX_IMAGE_PIXELS = None if max_pixels is not None else _PIL_MAX_PIXELS
        try:
            im = _open_header(path)  # the header only: the size is checked before decoding
        finally:
            Image.MAX_IMAGE_PIXELS = saved
    try:
        check_pixel_limit(path, im.height, im.width, max_pixels)
    except DataError:
        im.close()
        raise
    return im


def _open_header(path: Path) -> Image.Image:
    """``Image.open`` with PIL's errors turned into one-line DataErrors naming ``path``."""
    try:
        return Image.open(path)
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: refused as a possible decompression bomb ({e})") from None
    except Image.UnidentifiedImageError:
        raise DataError(f"{path}: not an image file (format not recognised)") from None
    except (OSError, SyntaxError, ValueError, struct.error, EOFError) as e:
        raise DataError(f"{path}: cannot read image header ({e})") from None


def _pil_load(path: Path, im: Image.Image) -> Image.Image:
    try:
        im.load()
    except (OSError, SyntaxError, ValueError, struct.error, EOFError, MemoryError) as e:
        reason = (
            "file is truncated or corrupt" if "truncat" in str(e) else f"corrupt image data ({e})"
        )
        raise DataError(f"{path}: {reason}") from None
    return im


def _read_tiff(path: Path, max_pixels: int | None) -> np.ndarray:
    """A TIFF as ``H x W x C``: samples, planes or pages all become channels."""
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            axes, shape = series.axes, series.shape
            if "Y" not in axes or "X" not in axes:
                raise DataError(f"{path}: TIFF has no image plane (axes {axes})")
            check_pixel_limit(path, shape[axes.index("Y")], shape[axes.index("X")], max_pixels)
            array = series.asarray()
    except DataError:
        raise
    except (tifffile.TiffFileError, OSError, ValueError, struct.error, EOFError, IndexError) as e:
        raise DataError(f"{path}: cannot read TIFF ({e})") from None
    # Put Y, X first and fold every other (non-singleton) axis into channels.
    order = [axes.index("Y"), axes.index("X")] + [i for i, a in enumerate(axes) if a not in "YX"]
    array = np.transpose(array, order)
    array = array.reshape(array.shape[0], array.shape[1], -1)
    return array


def _read_png16_color(path: Path) -> np.ndarray:
    """16-bit RGB(A) PNGs: PIL would truncate them to 8 bits, OpenCV keeps them."""
    import cv2

    data = np.fromfile(path, dtype=np.uint8)
    array = cv2.imdecode(data, cv2.IMREAD_UNCHANGED)
    if array is None:
        raise DataError(f"{path}: file is truncated or corrupt (16-bit PNG)")
    if array.ndim == 3:
        array = cv2.cvtColor(
            array, cv2.COLOR_BGRA2RGBA if array.shape[2] == 4 else cv2.COLOR_BGR2RGB
        )
    return array


def _pil_to_array(im: Image.Image) -> np.ndarray:
    """Pixels in the file's native dtype (uint8, uint16, float32 or int32)."""
    if im.mode == "1":
        return np.asarray(im, dtype=np.uint8)
    if im.mode.startswith("I;16"):
        return np.asarray(im).astype(np.uint16, copy=False)
    if im.mode == "I":
        array = np.asarray(im)
        if array.size and array.min() >= 0 and array.max() <= 65535:
            return array.astype(np.uint16)
        return array.astype(np.int32, copy=False)
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    return np.asarray(im)


def _warn_alpha(path: Path) -> None:
    global _alpha_warned
    if not _alpha_warned:
        _alpha_warned = True
        warnings.warn(
            f"{path}: alpha channel dropped (images with transparency are read as RGB; "
            "this is reported once)",
            stacklevel=3,
        )


def _as_hwc(array: np.ndarray) -> np.ndarray:
    return array[:, :, None] if array.ndim == 2 else array


def read_header(path: Path, max_pixels: int | None = None) -> ImageHeader:
    """Size, channel count and mode of an image without decoding its pixels."""
    path = Path(path)
    if is_zarr_store(path):
        h, w, c = open_zarr(path, max_pixels).shape
        return ImageHeader(h, w, c, "zarr")
    head = _open_checks(path)
    if head.startswith(_TIFF_MAGIC):
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                series = tif.series[0]
                axes, shape = series.axes, series.shape
        except (
            tifffile.TiffFileError,
            OSError,
            ValueError,
            struct.error,
            EOFError,
            IndexError,
        ) as e:
            raise DataError(f"{path}: cannot read TIFF ({e})") from None
        if "Y" not in axes or "X" not in axes:
            raise DataError(f"{path}: TIFF has no image plane (axes {axes})")
        h, w = shape[axes.index("Y")], shape[axes.index("X")]
        channels = int(np.prod([s for s, a in zip(shape, axes, strict=True) if a not in "YX"]))
        check_pixel_limit(path, h, w, max_pixels)
        return ImageHeader(h, w, channels, "tiff")
    im = _pil_open(path, max_pixels)
    with im:
        return ImageHeader(im.height, im.width, len(im.getbands()), im.mode)


def _read_native(path: Path, max_pixels: int | None) -> np.ndarray:
    """The decoded pixels with alpha dropped, palettes expanded and CMYK/YCbCr as RGB."""
    if is_zarr_store(path):
        return open_zarr(path, max_pixels)[:]
    head = _open_checks(path)
    if head.startswith(_TIFF_MAGIC):
        return _read_tiff(path, max_pixels)
    png = _png_bit_depth(head)
    im = _pil_open(path, max_pixels)
    with im:
        if png is not None and png[0] == 16 and png[1] in (2, 6):
            array = _read_png16_color(path)
        else:
            _pil_load(path, im)
            if im.format == "JPEG":
                im = ImageOps.exif_transpose(im)  # photos are labelled as they are displayed
            if im.mode == "P":
                im = im.convert("RGBA" if "transparency" in im.info else "RGB")
            elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                im = im.convert("RGB")
            elif im.mode == "PA":
                im = im.convert("RGBA")
            elif im.mode == "1":
                im = im.convert("L")  # a bilevel image is black/white (0/255), not 0/1 intensities
            elif im.mode == "La":
                im = im.convert("LA")
            elif im.mode == "RGBa":
                im = im.convert("RGBA")
            array = _pil_to_array(im)
    if array.ndim == 3 and array.shape[2] in (2, 4):  # LA / RGBA: transparency is not an input
        _warn_alpha(path)
        array = array[:, :, :-1]
    return array


def read_image(
    path: Path, in_channels: int | None = None, max_pixels: int | None = None
) -> np.ndarray:
    """An image as ``H x W x C`` in its native dtype (uint8, uint16 or float32).

    With ``in_channels``, channels are adapted by :func:`adapt_channels`. Alpha is dropped (with
    a one-time warning). Signed integer pixels are refused here, so check-data reports them (see
    :func:`image_to_float`).
    """
    path = Path(path)
    array = _as_hwc(_read_native(path, max_pixels))
    check_pixel_type(path, array.dtype)
    if in_channels is not None:
        array = adapt_channels(array, in_channels, str(path))
    return np.ascontiguousarray(array)


def adapt_channels(image: np.ndarray, in_channels: int, where: str | None = None) -> np.ndarray:
    """``H x W x C`` -> ``H x W x in_channels``, the one rule of reading and predicting: gray is
    repeated to 3 channels, RGB becomes its :func:`luminance` for 1; any other mismatch is a
    DataError that starts with ``where`` (the file) when given."""
    channels = image.shape[2]
    if channels == in_channels:
        return image
    if channels == 1 and in_channels == 3:
        return np.repeat(image, 3, axis=2)
    if channels == 3 and in_channels == 1:
        return luminance(image)
    prefix = f"{where}: " if where else ""
    raise DataError(
        f"{prefix}image has {channels} channels but the model takes {in_channels} "
        "(data.in_channels); convert the image, or train with data.in_channels set to match it"
    )


def luminance(rgb: np.ndarray) -> np.ndarray:
    """``H x W x 3+`` -> ``H x W x 1`` BT.601 luminance, as PIL's "L" (integers stay integers,
    rounded): the one RGB-to-gray rule of reading and predicting."""
    luma = rgb[..., :3].astype(np.float64) @ _LUMA
    if np.issubdtype(rgb.dtype, np.integer):
        info = np.iinfo(rgb.dtype)
        luma = np.clip(np.rint(luma), info.min, info.max)
    return luma.astype(rgb.dtype)[..., None]


def check_pixel_type(path: str | Path, dtype: np.dtype) -> None:
    """Refuse signed-integer pixels, naming the file (see :func:`image_to_float` for why)."""
    if np.issubdtype(dtype, np.signedinteger):
        raise DataError(f"{path}: {_SIGNED_HINT.format(dtype=np.dtype(dtype))}")


def image_to_float(image: np.ndarray) -> np.ndarray:
    """Scale an image to float32: unsigned integers to [0, 1] by their dtype's maximum, floats as
    they are. Signed integers are refused: no scale fits both elevations and reflectances, and
    treating them unlike uint16 would change a model's input with the file's dtype."""
    if np.issubdtype(image.dtype, np.floating):
        return image.astype(np.float32, copy=False)
    if image.dtype == np.bool_:
        return image.astype(np.float32)
    check_pixel_type("image", image.dtype)
    if np.issubdtype(image.dtype, np.integer):
        info = np.iinfo(image.dtype)
        return (image.astype(np.float32) / np.float32(info.max)).astype(np.float32, copy=False)
    raise DataError(f"unsupported image dtype {image.dtype}")


def read_mask(
    path: Path, max_pixels: int | None = None, palette_to_rgb: bool = False
) -> np.ndarray:
    """Raw mask values: ``H x W`` for index/binary masks, ``H x W x 3`` for colour masks.

    Palette-mode PNGs give their indices (the Pascal VOC convention: index = class) unless
    ``palette_to_rgb`` asks for the colours (for ``mask_encoding: palette``). Alpha is dropped.
    """
    path = Path(path)
    if is_zarr_store(path):
        array = open_zarr(path, max_pixels)[:]
    elif _open_checks(path).startswith(_TIFF_MAGIC):
        array = _read_tiff(path, max_pixels)
    else:
        im = _pil_open(path, max_pixels)
        with im:
            _pil_load(path, im)
            if im.mode == "P" and palette_to_rgb:
                im = im.convert("RGB")
            elif im.mode in ("CMYK", "YCbCr"):
                im = im.convert("RGB")
            elif im.mode in ("PA", "La", "LA"):
                im = im.convert("L")
            elif im.mode in ("RGBA", "RGBa"):
                im = im.convert("RGB")
            array = _pil_to_array(im)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    elif array.ndim == 3 and array.shape[2] in (2, 4):
        array = array[:, :, :-1] if array.shape[2] == 4 else array[:, :, 0]
    return np.ascontiguousarray(array)


def write_image(path: Path, array: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write an image or mask atomically: PNG (indexed with ``palette`` when given), TIFF, JPEG or BMP.

    ``palette`` is a ``(K, 3)`` uint8 colour table; the array then holds indices < 256 and the
    PNG shows colours in any viewer while keeping the class indices as pixel values.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    array = np.asarray(array)
    if suffix not in IMAGE_SUFFIXES:
        raise DataError(
            f"{path}: cannot write '{suffix}' files (use one of {', '.join(sorted(IMAGE_SUFFIXES))})"
        )
    with atomic_path(path) as tmp:
        if suffix in (".tif", ".tiff"):
            import tifffile

            photometric = (
                "rgb"
                if array.ndim == 3 and array.shape[2] == 3 and array.dtype in (np.uint8, np.uint16)
                else "minisblack"
            )
            # H x W x C, not C pages
            extra: dict[str, Any] = {"planarconfig": "contig"} if array.ndim == 3 else {}
            tifffile.imwrite(tmp, array, photometric=photometric, compression="zlib", **extra)
            return
        if array.ndim == 3 and array.shape[2] == 1:
            array = array[:, :, 0]
        if palette is not None:
            if array.ndim != 2 or array.size and (array.min() < 0 or array.max() > 255):
                raise DataError(f"{path}: a palette PNG needs a 2-D array of indices 0..255")
            im = palette_image(array, palette)
        elif array.dtype == np.uint16 and array.ndim == 3:
            _write_png16_color(tmp, array, path)
            return
        else:
            if array.dtype == np.bool_:
                array = array.astype(np.uint8) * 255
            elif array.dtype not in (np.uint8, np.uint16):
                if (
                    array.size
                    and (array.min() < 0 or array.max() > 65535)
                    or np.issubdtype(array.dtype, np.floating)
                ):
                    raise DataError(
                        f"{path}: cannot write {array.dtype} data as {suffix}; use .tif"
                    )
                array = array.astype(np.uint8 if array.max(initial=0) <= 255 else np.uint16)
            im = Image.fromarray(array)
        fmt = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP"}[suffix]
        try:
            im.save(tmp, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: cannot write image ({e})") from None


def _write_png16_color(tmp: Path, array: np.ndarray, path: Path) -> None:
    import cv2

    if path.suffix.lower() != ".png" or array.shape[2] not in (3, 4):
        raise DataError(
            f"{path}: 16-bit colour images can be written as .png (3 or 4 channels) or .tif"
        )
    code = cv2.COLOR_RGBA2BGRA if array.shape[2] == 4 else cv2.COLOR_RGB2BGR
    ok, buf = cv2.imencode(".png", cv2.cvtColor(array, code))
    if not ok:
        raise DataError(f"{path}: cannot encode 16-bit PNG")
    tmp.write_bytes(buf.tobytes())
