"""``segkit train`` SIGKILLed mid-epoch and mid-checkpoint-write, then resumed with
``run.resume=last``: it finishes, no checkpoint under a final name is ever truncated, the global
step ends where an uninterrupted run's does and metrics.csv has every step and epoch exactly once."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from lightning.pytorch.loggers.csv_logs import ExperimentWriter

from segkit.cli import main
from segkit.data.synthetic import make_shapes_dataset
from segkit.utils import temporary_target

from .conftest import (
    config_dict,
    kill_when,
    python_cmd,
    segkit_cmd,
    start,
    temporaries,
    write_config,
)

EPOCHS, STEPS_PER_EPOCH = 4, 2  # 8 training images, batch 4

# Runs the CLI with torch.save stalled half-way through the first checkpoint temporary it
# writes, after touching a marker: the test kills the process at exactly that moment.
STALL_CHECKPOINT_WRITE = """
import io, sys, time
from pathlib import Path
import torch
real = torch.save
def stalled(obj, f, *args, **kwargs):
    name = Path(str(f)).name
    if name.startswith(".") and name.endswith(".tmp.ckpt"):
        buf = io.BytesIO()
        real(obj, buf, *args, **kwargs)
        Path(f).write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
        Path(sys.argv[1]).touch()
        time.sleep(300)
    return real(obj, f, *args, **kwargs)
torch.save = stalled
from segkit.cli import main
sys.exit(main(sys.argv[2:]))
"""


def _loads(path: Path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def _checkpoints_intact(run: Path) -> dict[str, int]:
    """Every checkpoint under a final name loads safely; returns name -> global_step."""
    steps = {}
    for path in sorted(run.glob("*.ckpt")):
        if temporary_target(path) is None:
            steps[path.name] = int(_loads(path)["global_step"])
    assert "last.ckpt" in steps, sorted(p.name for p in run.iterdir())
    return steps


def _metrics(run: Path) -> list[dict[str, str]]:
    with open(run / "logs" / ExperimentWriter.NAME_METRICS_FILE, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_killed_training_resumes_and_finishes(tmp_path, capsys):
    data = make_shapes_dataset(tmp_path / "data", n_train=8, n_val=2, size=64, seed=0)
    cfg = write_config(
        tmp_path / "c.yaml",
        config_dict(data, tmp_path / "runs", trainer={"max_epochs": EPOCHS}, run={"name": "k"}),
    )
    run = tmp_path / "runs" / "k"

    # 1. the real CLI, killed as soon as the first checkpoint exists (inside the next epoch)
    proc = start(segkit_cmd("train", str(cfg)), tmp_path, tmp_path / "log1")
    kill_when(proc, (run / "last.ckpt").is_file, timeout=300, log=tmp_path / "log1")
    first = _checkpoints_intact(run)
    assert 0 < first["last.ckpt"] < EPOCHS * STEPS_PER_EPOCH

    # 2. resumed, and killed again half-way through writing its next checkpoint
    marker = tmp_path / "stalled"
    cmd = python_cmd(STALL_CHECKPOINT_WRITE, str(marker), "train", str(cfg), "run.resume=last")
    proc = start(cmd, tmp_path, tmp_path / "log2")
    kill_when(proc, marker.exists, timeout=300, log=tmp_path / "log2")
    half = [p for p in temporaries(run) if p.name.endswith(".tmp.ckpt")]
    assert len(half) == 1
    with pytest.raises(Exception):  # noqa: B017 - the temporary really is a truncated checkpoint
        _loads(half[0])
    assert _checkpoints_intact(run)["last.ckpt"] == first["last.ckpt"]  # the old one is untouched

    # 3. resumed once more: it runs to the end
    assert main(["train", str(cfg), "run.resume=last"]) == 0, capsys.readouterr().err
    assert not (tmp_path / "runs" / "k-2").exists()
    final = _checkpoints_intact(run)
    assert final["last.ckpt"] == EPOCHS * STEPS_PER_EPOCH  # where an uninterrupted run ends
    assert _loads(run / "last.ckpt")["epoch"] == EPOCHS - 1
    assert not temporaries(run), temporaries(run)  # the killed runs' temporaries were cleaned up

    # metrics.csv: the history of all three processes, every step and epoch exactly once
    rows = _metrics(run)
    train_steps = [int(r["step"]) for r in rows if r.get("train/loss_step")]
    assert train_steps == list(range(EPOCHS * STEPS_PER_EPOCH))
    val_epochs = [int(r["epoch"]) for r in rows if r.get("val/mIoU")]
    assert val_epochs == list(range(EPOCHS))
    lr_steps = [
        int(r["step"]) for r in rows if any(k.startswith("lr-") and v for k, v in r.items())
    ]
    assert lr_steps == list(range(EPOCHS * STEPS_PER_EPOCH))


def test_metrics_csv_rewrite_is_atomic(tmp_path, monkeypatch):
    """A new column makes the writer rewrite metrics.csv; dying then must not lose the history
    (Lightning truncates the file first, and the kill test above hit that window)."""
    from segkit.training import ResumableCSVLogger

    logger = ResumableCSVLogger(tmp_path, name="logs", version="")
    logger.log_metrics({"a": 1.0}, step=0)
    logger.save()
    before = (tmp_path / "logs" / "metrics.csv").read_text()
    assert before.splitlines() == ["a,step", "1.0,0"]

    def dies(self, rows):
        raise KeyboardInterrupt  # stands in for the SIGKILL that cannot be caught in-process

    monkeypatch.setattr(csv.DictWriter, "writerows", dies)
    logger.log_metrics({"b": 2.0}, step=1)  # a new column: the file is rewritten
    with pytest.raises(KeyboardInterrupt):
        logger.save()
    assert (tmp_path / "logs" / "metrics.csv").read_text() == before
    assert not temporaries(tmp_path)


def test_resumed_metrics_csv_keeps_the_rows_before_the_checkpoint(tmp_path):
    """Rows at or after the checkpoint's step, and a last line a kill cut short, are dropped;
    the resumed run's rows follow the kept ones; a new run replaces an earlier file."""
    from segkit.training import ResumableCSVLogger

    logs = tmp_path / "logs"
    logs.mkdir()
    rows = "".join(f"{0.5 + s},{s}\n" for s in range(5))
    (logs / "metrics.csv").write_text("train/loss,step\n" + rows + "0.9,")  # killed mid-row
    ckpt = tmp_path / "last.ckpt"
    torch.save({"global_step": 3}, ckpt)

    logger = ResumableCSVLogger(tmp_path, name="logs", version="", resume_from=ckpt)
    logger.log_metrics({"train/loss": torch.tensor(7.0)}, step=3)
    logger.save()
    logger.log_metrics({"lr-AdamW": 0.1}, step=4)  # a new column: rewritten with the history
    logger.finalize("success")
    got = [(r["step"], r["train/loss"], r["lr-AdamW"]) for r in _metrics(tmp_path)]
    assert got == [
        ("0", "0.5", ""),
        ("1", "1.5", ""),
        ("2", "2.5", ""),
        ("3", "7.0", ""),
        ("4", "", "0.1"),
    ]

    fresh = ResumableCSVLogger(tmp_path, name="logs", version="")
    fresh.log_metrics({"a": 1.0}, step=0)
    fresh.save()
    assert (logs / "metrics.csv").read_text().splitlines() == ["a,step", "1.0,0"]
