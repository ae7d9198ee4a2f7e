"""Disk full and read-only outputs during predict: one clear line naming the path, nothing partial.

Running as root, chmod cannot make a folder read-only, so both faults are injected in-process
(the writer or the temp-file creation raises the OSError the kernel would raise).
"""

from __future__ import annotations

import errno
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

import segkit.pipeline.writers as writers
from segkit.cli import main
from segkit.pipeline.writers import MANIFEST, read_manifest

from .conftest import error_lines, picture, save_png, temporaries

NO_SPACE = "No space left on device"


@pytest.fixture
def src(tmp_path: Path) -> Path:
    folder = tmp_path / "src"
    for name in ("a", "b", "c"):
        save_png(folder / f"{name}.png", picture(seed=ord(name)))
    return folder


def _predict(bundle: Path, src: Path, out: Path, *save: str) -> list[str]:
    return [
        "predict",
        str(bundle),
        str(src),
        "--output",
        str(out),
        "--workers",
        "1",
        "--save",
        *save,
    ]


def _half_then_enospc(real):
    """Wrap a writer: for image b it writes half of its bytes, then the disk is full."""

    def write(tmp: Path, array, *args):
        if not Path(tmp).name.startswith(".b"):
            return real(tmp, array, *args)
        real(tmp, array, *args)
        data = Path(tmp).read_bytes()
        Path(tmp).write_bytes(data[: len(data) // 2])
        raise OSError(errno.ENOSPC, NO_SPACE)

    return write


@pytest.mark.parametrize("failing", ["index", "color", "probs"])
def test_disk_full_mid_write_fails_that_image_and_leaves_nothing_partial(
    bundle, src, tmp_path, capsys, monkeypatch, failing
):
    out = tmp_path / "out"
    if failing == "index":
        monkeypatch.setattr(writers, "_write_labels", _half_then_enospc(writers._write_labels))
        broken = out / "b.png"
    elif failing == "color":
        monkeypatch.setattr(writers, "_write_rgb", _half_then_enospc(writers._write_rgb))
        broken = out / "b_color.png"
    else:
        real_memmap = np.lib.format.open_memmap

        def memmap(filename, *args, **kwargs):
            if Path(filename).name.startswith(".b"):
                Path(filename).write_bytes(b"\x93NUMPY partial")
                raise OSError(errno.ENOSPC, NO_SPACE)
            return real_memmap(filename, *args, **kwargs)

        monkeypatch.setattr(np.lib.format, "open_memmap", memmap)
        broken = out / "b_probs.npy"
    assert main(_predict(bundle, src, out, "index", "color", "probs")) == 1
    captured = capsys.readouterr()
    assert error_lines(captured.err) == [
        f"error: {src / 'b.png'}: cannot write {broken}: {NO_SPACE}"
    ]
    assert "2 images predicted" in captured.out and "1 failed" in captured.out
    names = sorted(p.name for p in out.iterdir())
    assert names == sorted(
        [MANIFEST] + [f"{s}{k}" for s in "ac" for k in (".png", "_color.png", "_probs.npy")]
    )
    assert not temporaries(out)  # not even the half-written temporary of b
    status = {Path(r["input"]).name: (r["status"], r["error"]) for r in read_manifest(out)}
    assert status["b.png"] == ("failed", f"cannot write {broken}: {NO_SPACE}")


def _refuse_temp_files(monkeypatch: pytest.MonkeyPatch, folder: Path, err: int, text: str) -> None:
    real = tempfile.mkstemp

    def mkstemp(*args, dir=None, **kwargs):  # noqa: A002 - tempfile's own argument name
        if dir is not None and Path(dir).resolve().is_relative_to(folder.resolve()):
            raise OSError(err, text, str(dir))
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)


def test_read_only_output_folder(bundle, src, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    if os.geteuid() == 0:
        _refuse_temp_files(monkeypatch, out, errno.EROFS, "Read-only file system")
        reason = "Read-only file system"
    else:
        out.chmod(0o555)
        reason = "Permission denied"
    try:
        assert main(_predict(bundle, src, out, "index")) == 1
    finally:
        out.chmod(0o755)
    err = capsys.readouterr().err
    # every image failed to write, and so did the manifest: the run ends on that one line
    assert error_lines(err) == [f"error: cannot write {out / MANIFEST}: {reason}"]
    assert list(out.iterdir()) == []


def test_disk_full_for_the_manifest(bundle, src, tmp_path, capsys, monkeypatch):
    out = tmp_path / "out"
    real = Path.write_text

    def write_text(self, *args, **kwargs):
        if self.name.startswith(".manifest."):  # the temporary of manifest.jsonl
            real(self, '{"input": "half a reco', encoding="utf-8")
            raise OSError(errno.ENOSPC, NO_SPACE)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", write_text)
    assert main(_predict(bundle, src, out, "index")) == 1
    err = capsys.readouterr().err
    assert error_lines(err) == [f"error: cannot write {out / MANIFEST}: {NO_SPACE}"]
    assert sorted(p.name for p in out.iterdir()) == [
        "a.png",
        "b.png",
        "c.png",
    ]  # the masks are complete
    assert not temporaries(out)


def test_output_folder_that_cannot_be_created(bundle, src, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where the output folder should go")
    assert main(_predict(bundle, src, blocker / "out", "index")) == 1
    assert error_lines(capsys.readouterr().err) == [
        f"error: cannot write {blocker / 'out'}: Not a directory"
    ]


@pytest.mark.parametrize("command", ["export", "demo"])
def test_any_command_reports_an_unwritable_path_in_one_line(command, bundle, src, tmp_path, capsys):
    """An OSError outside predict's own handling (here: a file where a folder should be) is one
    line naming the path, exit 1, no traceback."""
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder should go")
    if command == "export":
        argv = ["export", str(bundle), "--output", str(blocker / "model.onnx")]
    else:
        argv = ["demo", "--output", str(blocker / "demo")]
    assert main(argv) == 1
    lines = error_lines(capsys.readouterr().err)
    assert len(lines) == 1 and lines[0].startswith("error: ") and str(blocker) in lines[0]
    assert "Traceback" not in lines[0]
