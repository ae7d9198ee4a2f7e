"""The benchmark scripts still run (the README's numbers come from them): each on a tiny input on
the CPU, in a fresh process as a user would start it, with its results checked."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def _run(script: str, *args: str) -> str:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / script), *args],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def test_bench_folder_masks_equal_the_hand_written_loop(tmp_path):
    out = tmp_path / "folder.json"
    _run("bench_folder.py", "--images", "3", "--size", "64", "--device", "cpu",
         "--encoder", "resnet18", "--json", str(out))  # fmt: skip
    result = json.loads(out.read_text())
    assert result["agreement"] == 1.0  # fp32 on a CPU: the same masks, pixel for pixel
    assert [r["images"] for r in result["runs"]["segkit"]] == [3]
    assert len(result["ratios"]) == 1 and result["ratios"][0] > 0


def test_bench_predict_measures_segkit_alone_without_the_network(tmp_path):
    out = tmp_path / "predict.json"
    _run("bench_predict.py", "--sizes", "256", "--device", "cpu", "--backend", "none",
         "--tools", "segkit", "--repeats", "1", "--json", str(out))  # fmt: skip
    [(size, segkit, monai)] = json.loads(out.read_text())["rows"]
    assert size == 256 and segkit["tool"] == "segkit" and segkit["tiles"] == 1
    assert segkit["seconds"] > 0 and segkit["peak_rss_gb"] > 0
    assert "skipped" in monai  # --tools segkit


def test_profile_predict_prints_runs_and_a_profile():
    stdout = _run("profile_predict.py", "--size", "128", "--device", "cpu", "--backend", "none",
                  "--runs", "2", "--rows", "3")  # fmt: skip
    assert "128² on cpu, backend none: runs" in stdout
    assert "Ordered by: internal time" in stdout


def test_bench_onnx_prints_a_row_per_batch_size():
    stdout = _run("bench_onnx.py", "--size", "64", "--batch-sizes", "1", "2", "--repeats", "1",
                  "--warmup", "1", "--encoder", "resnet18")  # fmt: skip
    rows = [line.split() for line in stdout.splitlines() if line.strip()[:1].isdigit()]
    assert [row[0] for row in rows] == ["1", "2"]
    assert all(float(cell.rstrip("x")) > 0 for row in rows for cell in row[1:])
    assert "max abs difference" in stdout  # the export was verified against torch


def _fake_membrane(root: Path, size: int = 64) -> Path:
    """30 gray slices with 0/255 labels laid out like ../shared/data/membrane."""
    from PIL import Image

    rng = __import__("numpy").random.default_rng(0)
    for sub in ("image", "label"):
        (root / "train" / sub).mkdir(parents=True)
    for i in range(30):
        label = (rng.random((size, size)) > 0.3).astype("uint8") * 255
        image = (label // 2 + rng.integers(0, 64, (size, size))).astype("uint8")
        Image.fromarray(image).save(root / "train" / "image" / f"{i}.png")
        Image.fromarray(label).save(root / "train" / "label" / f"{i}.png")
    return root


def test_bench_recipe_trains_both_sides_and_scores_them_alike(tmp_path):
    data = _fake_membrane(tmp_path / "membrane")
    out = tmp_path / "recipe.json"
    stdout = _run("bench_recipe.py", "--data", str(data), "--budget", "00:00:00:05",
                  "--plain-patch", "64", "--threads", "1", "--json", str(out))  # fmt: skip
    result = json.loads(out.read_text())
    for side in ("segkit", "plain"):
        assert 0 <= result[side]["pixel_error"] <= 1 and result[side]["steps"] > 0
    assert result["segkit"]["recipe"]["patch"] == 64  # the plan read the 64 px slices
    assert "pixel error ratio segkit / plain" in stdout


@pytest.mark.parametrize(("symmetry", "norm"), [("hflip", "image"), ("all", "fixed")])
def test_recipe_ablation_trains_the_steps_asked_and_scores_with_its_own_views(
    tmp_path, symmetry, norm
):
    data = _fake_membrane(tmp_path / "membrane")
    out = tmp_path / "ablation.jsonl"
    _run("recipe_ablation.py", "--data", str(data), "--steps", "2", "--batch", "2",
         "--crop", "32", "--threads", "1", "--deep-supervision", "1",
         "--symmetry", symmetry, "--norm", norm, "--out", str(out))  # fmt: skip
    row = json.loads(out.read_text())
    assert row["steps"] == 2 and row["symmetry"] == symmetry and row["deep_supervision"] == 1
    assert row["norm"] == norm
    assert 0 <= row["pixel_error"] <= 1 and 0 <= row["pixel_error_tta"] <= 1


def test_mask_offset_finds_masks_drawn_a_pixel_high(tmp_path):
    from PIL import Image

    rng = __import__("numpy").random.default_rng(0)
    for sub in ("image", "label"):
        (tmp_path / "train" / sub).mkdir(parents=True)
    for i in range(3):
        image = rng.integers(150, 200, (64, 64)).astype("uint8")
        rows = rng.choice(range(8, 56), 6, replace=False)
        image[rows] = 20  # dark membranes
        label = __import__("numpy").full((64, 64), 255, "uint8")
        label[rows - 1] = 0  # drawn one pixel high
        Image.fromarray(image).save(tmp_path / "train" / "image" / f"{i}.png")
        Image.fromarray(label).save(tmp_path / "train" / "label" / f"{i}.png")
    stdout = _run("mask_offset.py", "--data", str(tmp_path), "--slices", "3")
    down = float(re.search(r"masks moved ([+-][\d.]+) px down", stdout).group(1))
    assert 0.7 < down < 1.3, stdout
