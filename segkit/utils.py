"""Small shared helpers: atomic file and folder writes and recognising their leftovers."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it over ``path`` only if the block succeeds.

    A killed or failing writer therefore never leaves a half-written file under the final name.
    The temporary name keeps the suffix so libraries that pick a format by extension still work.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
    )
    os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """:func:`atomic_path` for a folder (a zarr store): yield a temporary folder beside ``path``
    and swap it in, replacing any folder there, only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    )
    try:
        os.chmod(tmp, 0o777 & ~_UMASK)  # mkdtemp makes 0700
        yield tmp
        for file in tmp.rglob("*"):
            if file.is_file():
                with open(file, "rb+") as f:
                    os.fsync(f.fileno())
        if path.is_dir() and not path.is_symlink():
            # a folder is renamed only over an empty one: move the old store aside first
            old = Path(
                tempfile.mkdtemp(
                    prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent
                )
            )
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            if path.is_symlink() or path.exists():
                path.unlink()  # a file where the store goes: a folder cannot replace it
            os.replace(tmp, path)
    finally:
        remove_path(tmp)


def remove_path(path: str | Path) -> None:
    """Delete a file, or a folder (a zarr store) with everything in it; absent is fine."""
    path = Path(path)
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _read_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_UMASK = _read_umask()
"""Read once at import: setting the umask to read it is process-wide, and writer threads create
files concurrently."""


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write ``text`` (UTF-8) to ``path`` atomically."""
    atomic_write_bytes(path, text.encode("utf-8"))


_TEMPORARY = re.compile(
    r"^\.(?P<stem>.+)\.[a-z0-9_]{8}\.tmp(?P<suffix>\.[^.]*)?$"
)  # mkstemp's 8 random characters (tempfile's alphabet: a-z, 0-9, _) between prefix and suffix


def temporary_target(path: str | Path) -> Path | None:
    """The final path an :func:`atomic_path` temporary was made for, or None for other files.

    A SIGKILLed writer cannot remove its temporary; a resumed run uses this to find and delete
    exactly the leftovers of the files it is about to write, and nothing else.
    """
    path = Path(path)
    match = _TEMPORARY.match(path.name)
    return path.with_name(match["stem"] + (match["suffix"] or "")) if match else None


def is_temporary_file(path: str | Path) -> bool:
    """True for the temporary files :func:`atomic_path` creates (skipped by folder scans)."""
    return temporary_target(path) is not None
