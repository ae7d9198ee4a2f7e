"""Atomic writes: all or nothing, with ordinary file permissions."""

from __future__ import annotations

import os

import pytest

from segkit.utils import atomic_path, atomic_write_text, is_temporary_file


def test_atomic_write_replaces_whole_and_uses_umask_permissions(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    old = os.umask(0o022)
    try:
        atomic_write_text(target, "new")
    finally:
        os.umask(old)
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "mask.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert is_temporary_file(tmp) and tmp.suffix == ".png"
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]
