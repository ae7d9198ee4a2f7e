"""The error hierarchy: library code raises these; only ``segkit.cli`` turns them into exit codes.

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
