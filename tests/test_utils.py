"""Atomic writes of files and folders: all or nothing, with ordinary permissions."""

from __future__ import annotations

import pytest

from segkit.utils import (
    atomic_dir,
    atomic_path,
    atomic_write_text,
    is_temporary_file,
    temporary_target,
)


def test_atomic_write_replaces_whole_and_uses_umask_permissions(tmp_path, monkeypatch):
    import segkit.utils

    monkeypatch.setattr(segkit.utils, "_UMASK", 0o027)  # the process's umask, read at import
    target = tmp_path / "out.txt"
    target.write_text("old")
    atomic_write_text(target, "new")
    assert target.read_text() == "new"
    assert target.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in tmp_path.iterdir()] == ["out.txt"]


def test_only_atomic_write_temporaries_count_as_temporary(tmp_path):
    with atomic_path(tmp_path / "a.png") as tmp:
        assert is_temporary_file(tmp)
        assert temporary_target(tmp) == tmp_path / "a.png"
    for name in (".notes.tmp", ".a.png", "a.tmp.png", ".a.abc.tmp.png"):
        assert not is_temporary_file(tmp_path / name), name


def test_a_failing_writer_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "mask.png"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert is_temporary_file(tmp) and tmp.suffix == ".png"
        tmp.write_bytes(b"half")
        raise RuntimeError("killed")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["mask.png"]


def test_atomic_dir_swaps_a_whole_folder_in_or_leaves_the_old_one(tmp_path, monkeypatch):
    import segkit.utils

    monkeypatch.setattr(segkit.utils, "_UMASK", 0o022)
    target = tmp_path / "scene.ome.zarr"
    with atomic_dir(target) as tmp:
        assert temporary_target(tmp) == target and tmp.is_dir()
        (tmp / "0").mkdir()
        (tmp / "0" / "0.0").write_bytes(b"first")
    assert (target / "0" / "0.0").read_bytes() == b"first"
    assert target.stat().st_mode & 0o777 == 0o755
    with pytest.raises(RuntimeError), atomic_dir(target) as tmp:
        (tmp / ".zgroup").write_text("{}")
        raise RuntimeError("killed")
    assert (target / "0" / "0.0").read_bytes() == b"first"  # the old store, untouched
    with atomic_dir(target) as tmp:
        (tmp / ".zgroup").write_text("{}")
    assert sorted(p.name for p in target.iterdir()) == [".zgroup"]  # replaced whole
    assert [p.name for p in tmp_path.iterdir()] == ["scene.ome.zarr"]
