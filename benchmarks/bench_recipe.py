"""Recipe benchmark on the ISBI 2012 membrane data: segkit's planned defaults vs a plain loop.

Same data, same machine, same wall-clock budget, one after the other:

- segkit: ``segkit train`` on a config that sets only the data paths (slices 0-24), the classes,
  ``mask_encoding: binary``, ``in_channels: 1``, ``model.encoder_weights: null`` and
  ``trainer.max_time``; everything else comes from the plan. Then ``segkit predict best.ckpt
  --save index`` on slices 25-29.
- plain: the loop a user would write (bench_train.py's): smp Unet-resnet18, AdamW 1e-3, dice +
  cross-entropy, random 256 crops with flips, all 25 training slices, for the same budget; then
  whole-slice prediction.

Both are scored by bench_train's numpy code on slices 25-29 (membrane = mask value 0): pixel
error, membrane and cell IoU. Each side runs in its own process.

    python benchmarks/bench_recipe.py --budget 00:00:10:00
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_train  # noqa: E402  (the plain loop, the slices and the scoring)

CLASSES = ["membrane", "cell"]  # mask value 0 -> membrane, 255 -> cell


def _seconds(budget: str) -> float:
    days, hours, minutes, seconds = (int(v) for v in budget.split(":"))
    return timedelta(days=days, hours=hours, minutes=minutes, seconds=seconds).total_seconds()


def run_segkit(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    """``segkit train`` with the plan, then ``segkit predict --save index``; scored."""
    from PIL import Image

    train = bench_train._link_split(args.data, bench_train.TRAIN_SLICES, work / "train")
    held_out = bench_train._link_split(args.data, bench_train.EVAL_SLICES, work / "eval")
    config = {
        "data": {
            "train": train,
            "classes": CLASSES,
            "mask_encoding": "binary",
            "in_channels": 1,
        },
        "model": {"encoder_weights": None},
        "trainer": {"max_time": args.budget},
        "run": {"dir": str(work / "runs"), "name": "recipe", "seed": args.seed},
    }
    cfg = work / "recipe.yaml"
    cfg.write_text(yaml.safe_dump(config, sort_keys=False))
    segkit = [sys.executable, "-m", "segkit"]
    t0 = time.perf_counter()
    subprocess.run([*segkit, "train", str(cfg)], check=True, stdout=subprocess.DEVNULL)
    train_s = time.perf_counter() - t0
    run = work / "runs" / "recipe"
    subprocess.run(
        [
            *segkit,
            "predict",
            str(run / "best.ckpt"),
            held_out["images"],
            "--save",
            "index",
            "-o",
            str(work / "pred"),
            "--device",
            "cpu",
        ],  # fmt: skip
        check=True,
        stdout=subprocess.DEVNULL,
    )
    _, labels = bench_train.load_slices(args.data, bench_train.EVAL_SLICES)
    preds = np.stack(
        [np.asarray(Image.open(work / "pred" / f"{i}.png")) for i in bench_train.EVAL_SLICES]
    )
    planned = yaml.safe_load((run / "config.yaml").read_text())
    recipe = {
        "encoder": planned["model"]["encoder"],
        "patch": planned["data"]["patch_size"],
        "batch": planned["data"]["batch_size"],
        "loss": {k: v for k, v in planned["loss"].items() if v},
        "flips": {k: planned["augment"][k] for k in ("hflip", "vflip", "rotate90")},
        "tta": _stored_tta(run / "best.ckpt"),
    }
    steps = _optimizer_steps(run / "last.ckpt")
    return {"train_s": train_s, "steps": steps, "recipe": recipe} | bench_train.score(preds, labels)


def _stored_tta(checkpoint: Path) -> str:
    """The TTA mode training measured and stored as the model's predict default."""
    from segkit.bundle import load_bundle

    return load_bundle(checkpoint).config.predict.tta


def _optimizer_steps(checkpoint: Path) -> int:
    import torch

    return int(torch.load(checkpoint, map_location="cpu", weights_only=True)["global_step"])


def run_plain(args: argparse.Namespace) -> dict[str, Any]:
    """bench_train's plain loop for the same budget; scored on whole slices."""
    plain = bench_train.parse_args(
        [
            *("--budget-s", str(_seconds(args.budget))),
            *("--batch-size", str(args.plain_batch), "--patch", str(args.plain_patch)),
            *("--seed", str(args.seed), "--threads", str(args.threads)),
        ]
    )
    plain.data = args.data
    result = bench_train.run_plain(plain)
    keys = ("train_s", "steps", "pixel_error", "membrane_iou", "cell_iou")
    return {k: result[k] for k in keys}


def _child(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="segkit-recipe-") as tmp:
        result = run_segkit(args, Path(tmp)) if args._side == "segkit" else run_plain(args)
    args._out.write_text(json.dumps(result))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=bench_train.DEFAULT_DATA, help="membrane folder")
    p.add_argument(
        "--budget", default="00:00:10:00", help="training time of each side (DD:HH:MM:SS)"
    )
    p.add_argument("--plain-batch", type=int, default=8, help="the plain loop's batch size")
    p.add_argument("--plain-patch", type=int, default=256, help="the plain loop's crop size")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sides", nargs="+", choices=["segkit", "plain"], default=["segkit", "plain"])
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--_side", choices=["segkit", "plain"], help=argparse.SUPPRESS)
    p.add_argument("--_out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.data = args.data.expanduser().resolve()
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    if args._side:
        _child(args)
        return {}
    results: dict[str, Any] = {}
    for side in args.sides:
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            child = [sys.executable, __file__, *(argv or sys.argv[1:]), "--_side", side]
            subprocess.run([*child, "--_out", out.name], check=True)
            results[side] = json.loads(Path(out.name).read_text())
    print(f"budget {args.budget} per side, {args.threads} threads, seed {args.seed}")
    print(f"{'side':8} {'pixel error':>11} {'IoU membrane':>12} {'IoU cell':>9} {'steps':>6}")
    for side, r in results.items():
        print(
            f"{side:8} {r['pixel_error']:11.4f} {r['membrane_iou']:12.4f} "
            f"{r['cell_iou']:9.4f} {r['steps']:6d}"
        )
    if {"segkit", "plain"} <= set(results):
        ratio = results["segkit"]["pixel_error"] / results["plain"]["pixel_error"]
        print(f"pixel error ratio segkit / plain: {ratio:.3f}")
        print(f"segkit's plan: {results['segkit']['recipe']}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
