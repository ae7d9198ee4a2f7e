"""Mask encodings (index, binary, palette) decoded to one form: ``H x W`` int64 class indices.

``ignore_index`` survives decoding, so loss and metrics can drop those pixels. Every check is
vectorised and every violation is a DataError that names the file, the bad values and the fix.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from segkit.config import DataConfig
from segkit.errors import DataError

_SHOW = 8  # bad values / colours listed in an error message


def _where(path: Path | None) -> str:
    return str(path) if path is not None else "mask"


def _unique_counts(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Distinct values and their counts; bincount for small unsigned ints (much faster than sort)."""
    flat = values.reshape(-1)
    if flat.dtype in (np.uint8, np.uint16, np.bool_) and flat.size:
        counts = np.bincount(flat.astype(np.int64, copy=False) if flat.dtype == np.bool_ else flat)
        uniq = np.flatnonzero(counts)
        return uniq, counts[uniq]
    return np.unique(flat, return_counts=True)


def _single_channel(raw: np.ndarray, data: DataConfig, path: Path | None) -> np.ndarray:
    """Index/binary masks saved as gray-looking RGB are accepted; real colours are not."""
    if raw.ndim == 2:
        return raw
    if raw.ndim == 3 and raw.shape[2] == 1:
        return raw[:, :, 0]
    if raw.ndim == 3 and raw.shape[2] >= 3:
        first = raw[:, :, 0]
        if all(np.array_equal(first, raw[:, :, c]) for c in range(1, raw.shape[2])):
            return first
        raise DataError(
            f"{_where(path)}: mask has colour pixels but data.mask_encoding is '{data.mask_encoding}' "
            "(for colour masks set mask_encoding: palette and data.palette)"
        )
    raise DataError(
        f"{_where(path)}: mask has shape {raw.shape}; expected H x W (or H x W x 3 colours)"
    )


def _not_classes(
    path: Path | None, bad: np.ndarray, counts: np.ndarray, data: DataConfig, allowed: str
) -> DataError:
    shown = ", ".join(f"{int(v) if float(v).is_integer() else float(v)}" for v in bad[:_SHOW])
    more = f" and {len(bad) - _SHOW} more" if len(bad) > _SHOW else ""
    return DataError(
        f"{_where(path)}: mask values [{shown}{more}] ({int(counts.sum())} pixels) are not {allowed} "
        f"or ignore_index {data.ignore_index}"
    )


def _decode_index(raw: np.ndarray, data: DataConfig, path: Path | None) -> np.ndarray:
    mask = _single_channel(raw, data, path)
    values, counts = _unique_counts(mask)
    bad = (
        (values < 0)
        | ((values >= data.num_classes) & (values != data.ignore_index))
        | (values != np.round(values))
    )
    if bad.any():
        raise _not_classes(
            path, values[bad], counts[bad], data, f"classes 0..{data.num_classes - 1}"
        )
    return mask.astype(np.int64)


def _decode_binary(raw: np.ndarray, data: DataConfig, path: Path | None) -> np.ndarray:
    """0 → 0 and 255 (or 1) → 1. In a mask that also holds 1, 255 is read as ignore_index."""
    mask = _single_channel(raw, data, path)
    values, counts = _unique_counts(mask)
    present = set(values.tolist())
    ones = 1 in present
    if ones:
        allowed = {0, 1, data.ignore_index}
    else:
        allowed = {0, 255, data.ignore_index}
    bad = np.array([v not in allowed for v in values.tolist()], dtype=bool)
    if bad.any():
        pair = "0/1" if ones else "0/255"
        raise _not_classes(path, values[bad], counts[bad], data, f"binary {pair} values")
    out = np.zeros(mask.shape, dtype=np.int64)
    if ones:
        out[mask == 1] = 1
        out[(mask == data.ignore_index) & (mask != 1)] = data.ignore_index
    else:
        ignored = (mask == data.ignore_index) & (data.ignore_index != 255)
        out[mask == 255] = 1
        out[ignored] = data.ignore_index
    return out


def _decode_palette(raw: np.ndarray, data: DataConfig, path: Path | None) -> np.ndarray:
    if raw.ndim != 3 or raw.shape[2] < 3:
        raise DataError(
            f"{_where(path)}: mask has shape {raw.shape} but data.mask_encoding 'palette' needs RGB "
            "colour masks (for single-channel masks use mask_encoding: index)"
        )
    assert data.palette is not None  # guaranteed by DataConfig's validator
    rgb = raw[:, :, :3].astype(np.int64)
    codes = (rgb[:, :, 0] << 16) | (rgb[:, :, 1] << 8) | rgb[:, :, 2]
    table = np.array(
        [(c[0] << 16) | (c[1] << 8) | c[2] for c in (data.palette[n] for n in data.classes)],
        dtype=np.int64,
    )
    order = np.argsort(table, kind="stable")
    sorted_table = table[order]
    pos = np.clip(np.searchsorted(sorted_table, codes), 0, len(table) - 1)
    known = sorted_table[pos] == codes
    if not known.all():
        uniq, counts = np.unique(codes[~known], return_counts=True)
        top = np.argsort(-counts)[:_SHOW]
        colours = ", ".join(
            f"({u >> 16}, {(u >> 8) & 255}, {u & 255}): {c} px"
            for u, c in zip(uniq[top].tolist(), counts[top].tolist(), strict=True)
        )
        more = f" and {len(uniq) - _SHOW} more" if len(uniq) > _SHOW else ""
        raise DataError(
            f"{_where(path)}: mask colours {colours}{more} are not in data.palette "
            f"({', '.join(f'{n}={list(data.palette[n])}' for n in data.classes)}); "
            "save masks losslessly (PNG) with exactly the palette colours"
        )
    return order[pos].astype(np.int64)


_DECODERS = {"index": _decode_index, "binary": _decode_binary, "palette": _decode_palette}


def decode_mask(raw: np.ndarray, data: DataConfig, path: Path | None = None) -> np.ndarray:
    """Raw mask values → ``H x W`` int64 class indices (``ignore_index`` kept) per ``data.mask_encoding``.

    Raises DataError naming ``path`` and the offending values or colours.
    """
    return _DECODERS[data.mask_encoding](np.asarray(raw), data, path)


def load_mask(path: Path, data: DataConfig) -> np.ndarray:
    """Read and decode a mask file in one step (palette PNGs give colours only for palette encoding)."""
    from segkit.io.images import read_mask

    raw = read_mask(
        path, max_pixels=data.max_image_pixels, palette_to_rgb=data.mask_encoding == "palette"
    )
    return decode_mask(raw, data, path)


def mask_histogram(mask: np.ndarray, num_classes: int, ignore_index: int) -> np.ndarray:
    """Pixel count of each class (length ``num_classes``, int64); ignore_index pixels are not counted."""
    flat = np.asarray(mask).reshape(-1)
    valid = flat[(flat != ignore_index) & (flat >= 0) & (flat < num_classes)]
    return np.bincount(valid.astype(np.int64), minlength=num_classes)[:num_classes].astype(np.int64)
