"""The error hierarchy and the messages shared by several raisers: library code raises these;
only ``segkit.cli`` turns them into exit codes.

The contract: 0 success, 1 some inputs (images, masks, data folders) failed, 2 a usage, config or
model error (nothing could run as asked).
"""

from __future__ import annotations


class SegkitError(Exception):
    """Base class of every error segkit reports to a user as one clear line."""

    exit_code = 1


class ConfigError(SegkitError):
    """A config key, value or command-line option is wrong (exit code 2)."""

    exit_code = 2


class DataError(SegkitError):
    """An input file or folder is missing, unreadable or inconsistent (exit code 1)."""


class ModelError(SegkitError):
    """A model, checkpoint or ONNX file cannot be found, built, loaded or verified (exit code 2)."""

    exit_code = 2


def first_line(e: BaseException, limit: int = 300) -> str:
    """The first line of ``e``'s message, at most ``limit`` characters, or its type's name when
    the message is empty: libraries' messages can run for pages, a segkit error is one line."""
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:limit]


def check_pixel_limit(path: object, height: int, width: int, max_pixels: int | None) -> None:
    """Raise the one DataError for an image above ``max_pixels`` (``None``: no limit); every
    reader (PIL, TIFF, memory map, TIFF windows) asks this before it decodes pixels."""
    if max_pixels is not None and height * width > max_pixels:
        raise DataError(
            f"{path}: image is {width}x{height} = {height * width} pixels, more than the limit of "
            f"{max_pixels} (data.max_image_pixels, or predict's --max-pixels; a guard against "
            "decompression bombs)"
        )
