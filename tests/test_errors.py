"""The shared error rules of segkit/errors.py."""

from __future__ import annotations

import pytest

from segkit.bundle import load_checkpoint_dict
from segkit.errors import ModelError, first_line


def test_first_line_keeps_one_line_of_a_long_library_message():
    e = RuntimeError("  size mismatch for conv.weight\n" + "  more detail\n" * 50)
    assert first_line(e) == "size mismatch for conv.weight"
    assert first_line(ValueError("x" * 500)) == "x" * 300
    assert first_line(ValueError("x" * 500), 20) == "x" * 20
    assert first_line(EOFError()) == "EOFError"  # an empty message names its type


def test_a_library_error_becomes_one_line_of_a_segkit_error(tmp_path):
    empty = tmp_path / "empty.ckpt"
    empty.write_bytes(b"")
    with pytest.raises(ModelError) as info:
        load_checkpoint_dict(empty)
    message = str(info.value)
    assert message.startswith(f"{empty}: not a readable checkpoint") and "\n" not in message
