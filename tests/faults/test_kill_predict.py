"""``segkit predict`` killed with SIGKILL mid-run, then re-run with ``--skip-existing``: every
output ends up present and byte-identical to an uninterrupted run's, and no temporary is left."""

from __future__ import annotations

from pathlib import Path

import pytest

from segkit.cli import main
from segkit.pipeline.writers import MANIFEST, read_manifest
from segkit.utils import is_temporary_file

from .conftest import kill_when, picture, python_cmd, save_png, segkit_cmd, start, temporaries

N = 60
OPTIONS = ["--save", "index", "color", "--workers", "1", "--tta", "flip"]

# Runs the CLI with the colour writer stalled half-way through the 5th image's file, after
# touching a marker: the test kills the process at exactly that moment.
STALL_MID_WRITE = """
import sys, time
from pathlib import Path
import segkit.pipeline.writers as w
real, calls = w._write_rgb, []
def stalled(tmp, *args):
    calls.append(tmp)
    real(tmp, *args)
    if len(calls) == 5:
        data = Path(tmp).read_bytes()
        Path(tmp).write_bytes(data[: len(data) // 2])
        Path(sys.argv[1]).touch()
        time.sleep(300)
w._write_rgb = stalled
from segkit.cli import main
sys.exit(main(sys.argv[2:]))
"""


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Path:
    src = tmp_path_factory.mktemp("kill-src") / "images"
    for i in range(N):
        sub = Path("sub dir") if i % 3 == 0 else Path()
        save_png(src / sub / f"img_{i:03d}.png", picture(seed=i))
    return src


@pytest.fixture(scope="module")
def reference(source, bundle, tmp_path_factory) -> dict[str, bytes]:
    """The outputs of an uninterrupted run, by relative path."""
    out = tmp_path_factory.mktemp("kill-ref") / "out"
    assert main(["predict", str(bundle), str(source), "--output", str(out), *OPTIONS]) == 0
    return _outputs(out)


def _outputs(out: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*.png"))
        if not is_temporary_file(p)
    }


def _differences(got: dict[str, bytes], reference: dict[str, bytes]) -> list[str]:
    """Names missing, unexpected or not byte-identical (short, for readable failures)."""
    return sorted(k for k in got.keys() | reference.keys() if got.get(k) != reference.get(k))


def _finished(out: Path) -> int:
    """Images with both outputs in place (the two renames of one image are not one atomic step)."""
    return sum(
        1
        for p in out.rglob("*_color.png")
        if not is_temporary_file(p) and p.with_name(p.name.replace("_color", "")).is_file()
    )


def _resume_and_compare(
    bundle: Path, source: Path, out: Path, reference: dict[str, bytes], capsys
) -> None:
    done_before = _finished(out)
    assert (
        main(
            ["predict", str(bundle), str(source), "--output", str(out), *OPTIONS, "--skip-existing"]
        )
        == 0
    )
    assert f"{N - done_before} images predicted, {done_before} skipped" in capsys.readouterr().out
    assert _differences(_outputs(out), reference) == []  # every output present and byte-identical
    assert not temporaries(out), temporaries(out)
    statuses = [r["status"] for r in read_manifest(out)]
    assert len(statuses) == N and set(statuses) <= {"ok", "skipped"}


@pytest.mark.slow
def test_killed_mid_run_then_skip_existing(bundle, source, reference, tmp_path, capsys):
    out = tmp_path / "out"
    proc = start(
        segkit_cmd("predict", str(bundle), str(source), "--output", str(out), *OPTIONS),
        tmp_path,
        tmp_path / "log",
    )
    kill_when(proc, lambda: out.is_dir() and _finished(out) >= 5, timeout=180, log=tmp_path / "log")
    done = _outputs(out)
    assert 10 <= len(done) < 2 * N, f"{len(done)} outputs: the kill came too late to test anything"
    assert not (out / MANIFEST).exists()  # written at the end of a run
    assert (
        _differences(done, {k: reference[k] for k in done}) == []
    )  # whatever carries a final name is complete
    _resume_and_compare(bundle, source, out, reference, capsys)


@pytest.mark.slow
def test_killed_mid_file_write_then_skip_existing(bundle, source, reference, tmp_path, capsys):
    out, marker = tmp_path / "out", tmp_path / "stalled"
    cmd = python_cmd(
        STALL_MID_WRITE,
        str(marker),
        "predict",
        str(bundle),
        str(source),
        "--output",
        str(out),
        *OPTIONS,
    )
    proc = start(cmd, tmp_path, tmp_path / "log")
    kill_when(proc, marker.exists, timeout=180, log=tmp_path / "log")
    left = temporaries(out)
    assert any(p.name.endswith(".tmp.png") and "_color" in p.name for p in left), (
        left
    )  # the half-written file
    assert _finished(out) == 4
    done = _outputs(out)
    assert _differences(done, {k: reference[k] for k in done}) == []
    _resume_and_compare(bundle, source, out, reference, capsys)
