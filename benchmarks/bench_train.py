"""Training benchmark on the ISBI 2012 membrane data: segkit's ``train`` vs a plain PyTorch + smp loop.

Both sides train the same smp model (encoder_weights None, 1 input channel, 2 classes) on slices
0-24 with the same random 256x256 crops + flips, batch size, AdamW learning rate, dice + CE loss,
worker count, torch threads and wall-clock budget; then both are scored by the same numpy code on
whole 512x512 slices 25-29 (membrane = mask value 0 = the positive class). Each side runs in its
own subprocess so neither inherits the other's warm caches, threads or memory.

Throughput is training images / training seconds, where training seconds run from the first
batch request to the end of the last optimiser step and exclude validation (the plain loop has
none; segkit is configured to validate only after the budget, and a Lightning callback pauses the
clock during any validation). Each step's time is recorded too: on a shared machine the median
step is the steadier comparison, and ``--max-load`` waits for a quiet moment before each run.

    python benchmarks/bench_train.py --budget-s 90
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = (REPO / ".." / "shared" / "data" / "membrane").resolve()
TRAIN_SLICES = range(0, 25)
EVAL_SLICES = range(25, 30)
MEAN, STD = 0.5, 0.25  # segkit's default normalisation for 1-channel images
MEMBRANE = 0  # class index of the membrane (mask value 0); cell interior (255) is class 1


# ---------------------------------------------------------------------------------------------
# data and scoring, shared by both sides
# ---------------------------------------------------------------------------------------------
def _slice_paths(data: Path, index: int) -> tuple[Path, Path]:
    image, label = (
        data / "train" / "image" / f"{index}.png",
        data / "train" / "label" / f"{index}.png",
    )
    for p in (image, label):
        if not p.is_file():
            raise SystemExit(
                f"{p}: missing; --data must point at the membrane folder (train/image, train/label)"
            )
    return image, label


def load_slices(data: Path, indices: range) -> tuple[np.ndarray, np.ndarray]:
    """``(N, H, W)`` uint8 images and ``(N, H, W)`` int64 labels (0 membrane, 1 cell)."""
    import cv2

    images, labels = [], []
    for i in indices:
        image_path, label_path = _slice_paths(data, i)
        images.append(cv2.imread(str(image_path), cv2.IMREAD_GRAYSCALE))
        labels.append((cv2.imread(str(label_path), cv2.IMREAD_GRAYSCALE) > 127).astype(np.int64))
    return np.stack(images), np.stack(labels)


def predict_masks(
    model: Any, images: np.ndarray, mean: float = MEAN, std: float = STD
) -> np.ndarray:
    """Arg-max class of whole ``(N, H, W)`` uint8 images, one at a time, fp32 on CPU."""
    import torch

    model.eval()
    out = []
    with torch.inference_mode():
        for image in images:
            x = torch.from_numpy((image.astype(np.float32) / 255.0 - mean) / std)[None, None]
            out.append(model(x).argmax(1)[0].numpy())
    return np.stack(out)


def score(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    """Pixel error (fraction misclassified), membrane and cell IoU over all pixels of all slices."""
    out = {"pixel_error": float((pred != truth).mean())}
    for name, k in (("membrane_iou", MEMBRANE), ("cell_iou", 1 - MEMBRANE)):
        p, t = pred == k, truth == k
        union = np.logical_or(p, t).sum()
        out[name] = float(np.logical_and(p, t).sum() / union) if union else float("nan")
    return out


class Meter:
    """Training images and seconds from the first batch request to the end of the last optimiser
    step, paused spans (validation) excluded; also each step's seconds (batch wait included) and
    the CPU seconds of this process and its DataLoader workers.

    Both sides use it, so both are measured alike. The median step is what to compare when other
    programs load the machine in bursts; the whole span is what a user gets.
    """

    def __init__(self) -> None:
        import psutil

        self._proc = psutil.Process()
        self.images = 0
        self.step_s: list[float] = []
        self.start = self.end = (0.0, 0.0)
        self.paused = self.paused_in_span = (0.0, 0.0)
        self._pause_start = (0.0, 0.0)

    @property
    def steps(self) -> int:
        return len(self.step_s)

    def now(self) -> tuple[float, float]:
        """(wall seconds, CPU seconds of this process and all its children)."""
        cpu = 0.0
        for proc in [self._proc, *self._proc.children(recursive=True)]:
            try:
                t = proc.cpu_times()
            except Exception:  # noqa: BLE001  (a worker that just exited)
                continue
            cpu += t.user + t.system
        return time.perf_counter(), cpu

    def begin(self) -> None:
        if self.start == (0.0, 0.0):
            self.start = self.end = self.now()

    def step(self, images: int) -> None:
        now = self.now()
        pause = self.paused[0] - self.paused_in_span[0]
        self.step_s.append(now[0] - self.end[0] - pause)
        self.end, self.paused_in_span = now, self.paused
        self.images += images

    def pause(self) -> None:
        self._pause_start = self.now()

    def resume(self) -> None:
        now = self.now()
        self.paused = tuple(
            p + n - s for p, n, s in zip(self.paused, now, self._pause_start, strict=True)
        )

    def result(self) -> dict[str, Any]:
        """What the report needs (``step_s``: the wall seconds of every step)."""
        (wall0, cpu0), (wall, cpu) = self.start, self.end
        pw, pc = self.paused_in_span
        return {
            "images": self.images,
            "steps": self.steps,
            "train_s": wall - wall0 - pw,
            "cpu_s": cpu - cpu0 - pc,
            "paused_s": pw,
            "step_s": self.step_s,
        }


# ---------------------------------------------------------------------------------------------
# the plain PyTorch + smp loop
# ---------------------------------------------------------------------------------------------
class CropDataset:
    """One random ``patch`` crop of each slice per epoch, random h/v flips, normalised like segkit."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, patch: int) -> None:
        self.images, self.labels, self.patch = images, labels, patch
        self._calls = 0

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> tuple[Any, Any]:
        import torch

        # torch gives every worker of every epoch its own seed (derived from torch.manual_seed)
        rng = np.random.default_rng([torch.initial_seed() % 2**32, i, self._calls])
        self._calls += 1
        h, w = self.images.shape[1:]
        y, x = rng.integers(0, h - self.patch + 1), rng.integers(0, w - self.patch + 1)
        image = self.images[i, y : y + self.patch, x : x + self.patch]
        label = self.labels[i, y : y + self.patch, x : x + self.patch]
        if rng.random() < 0.5:
            image, label = image[:, ::-1], label[:, ::-1]
        if rng.random() < 0.5:
            image, label = image[::-1], label[::-1]
        image = (image.astype(np.float32) / 255.0 - MEAN) / STD
        return torch.from_numpy(np.ascontiguousarray(image[None])), torch.from_numpy(
            np.ascontiguousarray(label)
        )


def run_plain(args: argparse.Namespace) -> dict[str, Any]:
    """Train the plain loop for ``budget_s`` seconds; return throughput and held-out scores."""
    import segmentation_models_pytorch as smp
    import torch
    from torch.utils.data import DataLoader

    torch.manual_seed(args.seed)
    images, labels = load_slices(args.data, TRAIN_SLICES)
    loader = DataLoader(
        CropDataset(images, labels, args.patch),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.num_workers,
        persistent_workers=args.num_workers > 0,
    )
    model = smp.create_model(
        args.arch, encoder_name=args.encoder, encoder_weights=None, in_channels=1, classes=2
    )
    # The same parameter groups as segkit (the usual practice): no weight decay on norms and biases.
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.ndim > 1], "weight_decay": args.weight_decay},
        {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0},
    ]
    optimizer = torch.optim.AdamW(groups, lr=args.lr)
    dice = smp.losses.DiceLoss(smp.losses.MULTICLASS_MODE, from_logits=True)
    ce = torch.nn.CrossEntropyLoss()

    model.train()
    meter = Meter()
    meter.begin()
    while meter.steps == 0 or meter.end[0] - meter.start[0] < args.budget_s:
        for x, y in loader:
            logits = model(x)
            loss = dice(logits, y) + ce(logits, y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            meter.step(len(x))
            if meter.end[0] - meter.start[0] >= args.budget_s:
                break
    eval_images, eval_labels = load_slices(args.data, EVAL_SLICES)
    result = meter.result() | {"final_loss": float(loss.detach())}
    return result | score(predict_masks(model, eval_images), eval_labels)


# ---------------------------------------------------------------------------------------------
# segkit, through its public path
# ---------------------------------------------------------------------------------------------
def _link_split(data: Path, indices: range, root: Path) -> dict[str, str]:
    """A folder pair of symlinks to some slices: segkit reads the real files, unchanged."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    for i in indices:
        image, label = _slice_paths(data, i)
        (root / "images" / image.name).symlink_to(image)
        (root / "masks" / label.name).symlink_to(label)
    return {"images": str(root / "images"), "masks": str(root / "masks")}


def segkit_config(args: argparse.Namespace, workdir: Path) -> Any:
    """The SegkitConfig that matches the plain loop: same model, crops, flips, optimiser, budget."""
    from segkit.config import load_config

    return load_config(
        {
            "data": {
                "train": _link_split(args.data, TRAIN_SLICES, workdir / "train"),
                "val": _link_split(args.data, EVAL_SLICES, workdir / "val"),
                "classes": ["membrane", "cell"],
                "mask_encoding": "binary",
                "in_channels": 1,
                "patch_size": args.patch,
                "batch_size": args.batch_size,
                "num_workers": args.num_workers,
            },
            "augment": {
                "hflip": 0.5,
                "vflip": 0.5,
                "rotate90": 0.0,
                "color_jitter": 0.0,
                "scale": None,
            },
            "model": {"arch": args.arch, "encoder": args.encoder, "encoder_weights": None},
            "loss": {"dice": 1.0, "ce": 1.0},
            "optimizer": {"name": "adamw", "lr": args.lr, "weight_decay": args.weight_decay},
            "scheduler": {"name": "constant", "warmup_epochs": 0},
            "trainer": {
                "max_epochs": 100_000,
                "max_time": {"seconds": args.budget_s},
                # No validation inside the budget (the plain loop has none): last.ckpt is
                # written when the time is up, and train() then evaluates it on val once.
                "check_val_every_n_epoch": 100_000,
                "num_sanity_val_steps": 0,
                "accelerator": "cpu",
                "devices": 1,
                "precision": "32",
            },
            "run": {
                "dir": str(workdir / "runs"),
                "name": "bench",
                "seed": args.seed,
                "plan": False,
            },
        }
    )


def _throughput_callback() -> Any:
    """A Lightning callback feeding a :class:`Meter`; validation loops are paused out."""
    import lightning as L

    class Throughput(L.Callback):
        def __init__(self) -> None:
            self.meter = Meter()

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.meter.begin()

        def on_train_batch_end(
            self, trainer: Any, module: Any, outputs: Any, batch: Any, batch_idx: int
        ) -> None:
            self.meter.step(len(batch["image"]))

        def on_validation_start(self, trainer: Any, module: Any) -> None:
            self.meter.pause()

        def on_validation_end(self, trainer: Any, module: Any) -> None:
            self.meter.resume()

    return Throughput()


def run_segkit(args: argparse.Namespace) -> dict[str, Any]:
    """Train with ``segkit.train`` for ``budget_s`` seconds; score its last checkpoint."""
    import torch

    import segkit.training
    from segkit.bundle import load_bundle

    meter = _throughput_callback()
    torch.manual_seed(args.seed)
    with tempfile.TemporaryDirectory(prefix="segkit-bench-") as tmp:
        config = segkit_config(args, Path(tmp))
        t0 = time.perf_counter()
        result = segkit.training.train(config, callbacks=[meter])
        fit_s = time.perf_counter() - t0
        # The last weights (not the "best" by val mIoU): val = the scored slices, and the plain
        # loop's score is of its last weights too.
        bundle = load_bundle(result.last_checkpoint)
        model = bundle.build_model()
        eval_images, eval_labels = load_slices(args.data, EVAL_SLICES)
        scores = score(
            predict_masks(model, eval_images, bundle.card.mean[0], bundle.card.std[0]), eval_labels
        )
    return meter.meter.result() | {"fit_s": fit_s} | scores


# ---------------------------------------------------------------------------------------------
# the harness
# ---------------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="membrane folder (train/image, train/label)"
    )
    p.add_argument(
        "--budget-s", type=float, default=90.0, help="training wall-clock budget of each side"
    )
    p.add_argument("--arch", default="Unet")
    p.add_argument("--encoder", default="resnet18")
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--patch", type=int, default=256, help="random crop size")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--num-workers", type=int, default=2)
    p.add_argument(
        "--threads",
        type=int,
        default=os.cpu_count() or 1,
        help="torch.set_num_threads of both sides",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--sides",
        nargs="+",
        choices=["plain", "segkit"],
        default=["plain", "segkit"],
        help="run order",
    )
    p.add_argument("--repeats", type=int, default=1, help="runs of each side (alternating order)")
    p.add_argument(
        "--max-load",
        type=float,
        default=None,
        help="before each run, wait until the 1-minute load average is below this (shared machines)",
    )
    p.add_argument("--max-wait-s", type=float, default=600.0, help="longest wait for --max-load")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--_side", choices=["plain", "segkit"], help=argparse.SUPPRESS)
    p.add_argument("--_out", type=Path, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.data = args.data.expanduser().resolve()
    return args


def _child(args: argparse.Namespace) -> None:
    """One side, in this (fresh) process; the result goes to ``args._out`` as JSON."""
    import torch

    torch.set_num_threads(args.threads)
    result = (run_plain if args._side == "plain" else run_segkit)(args)
    result |= {
        "threads": torch.get_num_threads(),
        "batch_size": args.batch_size,
        "load_avg_after_1m": os.getloadavg()[0],
    }
    args._out.write_text(json.dumps(result))


def _wait_for_quiet(max_load: float | None, max_wait_s: float) -> None:
    """On a shared machine, wait (up to ``max_wait_s``) until the 1-minute load is below ``max_load``."""
    deadline = time.monotonic() + max_wait_s
    while max_load is not None and os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(5)


def _run_side(side: str, argv: list[str]) -> dict[str, Any]:
    """Run one side in a fresh interpreter; its console output is shown only if it fails."""
    with tempfile.TemporaryDirectory() as tmp:
        out, log = Path(tmp) / "result.json", Path(tmp) / "log.txt"
        env = os.environ | {"NO_ALBUMENTATIONS_UPDATE": "1", "HF_HUB_OFFLINE": "1"}
        load = os.getloadavg()[0]
        with log.open("w") as f:
            proc = subprocess.run(
                [sys.executable, __file__, *argv, "--_side", side, "--_out", str(out)],
                env=env,
                stdout=f,
                stderr=subprocess.STDOUT,
            )
        if proc.returncode != 0 or not out.is_file():
            tail = "\n".join(log.read_text(errors="replace").splitlines()[-30:])
            raise SystemExit(f"{tail}\nthe {side} side failed (exit code {proc.returncode})")
        result = json.loads(out.read_text()) | {"load_avg_before_1m": load}
        result["ips"] = result["images"] / result["train_s"]
        result["cpu_per_image"] = result["cpu_s"] / result["images"]
        # Every step but the first (warm-up) holds batch_size images (drop_last on both sides).
        later = result["step_s"][1:] or result["step_s"]
        result["median_step_ips"] = float(result["batch_size"] / np.median(later))
        return result


ROWS = [
    ("images/s", "ips", "{:.3f}"),
    ("images/s, median step", "median_step_ips", "{:.3f}"),
    ("CPU s / image", "cpu_per_image", "{:.3f}"),
    ("training images", "images", "{:.0f}"),
    ("optimizer steps", "steps", "{:.0f}"),
    ("training seconds", "train_s", "{:.1f}"),
    ("pixel error (25-29)", "pixel_error", "{:.4f}"),
    ("membrane IoU (25-29)", "membrane_iou", "{:.4f}"),
    ("load avg before (1 min)", "load_avg_before_1m", "{:.2f}"),
    ("load avg after (1 min)", "load_avg_after_1m", "{:.2f}"),
]


def report(runs: dict[str, list[dict[str, Any]]], command: str) -> str:
    """The table (medians over repeats), the segkit/plain ratios and the command that made them."""
    med = {
        side: {k: float(np.median([r[k] for r in rs])) for _, k, _ in ROWS}
        for side, rs in runs.items()
    }
    sides = list(runs)
    lines = [f"{'':26}" + "".join(f"{s:>12}" for s in sides)]
    for label, key, fmt in ROWS:
        lines.append(f"{label:26}" + "".join(f"{fmt.format(med[s][key]):>12}" for s in sides))
    if any(len(rs) > 1 for rs in runs.values()):
        lines.append(
            "(medians over runs; images/s of each run: "
            + "; ".join(f"{s} " + ", ".join(f"{r['ips']:.3f}" for r in runs[s]) for s in sides)
            + ")"
        )
        for key in ("pixel_error", "membrane_iou"):
            lines.append(
                f"{key} per run (seed order): "
                + "; ".join(
                    f"{s} "
                    + ", ".join(f"{r[key]:.4f}" for r in runs[s])
                    + f" (mean {np.mean([r[key] for r in runs[s]]):.4f}"
                    + f" ± {np.std([r[key] for r in runs[s]], ddof=1):.4f})"
                    for s in sides
                )
            )
    if {"plain", "segkit"} <= set(runs) and len(runs["plain"]) == len(runs["segkit"]) > 1:
        # Repeat r of both sides shares a seed: the per-seed differences pair the runs up.
        for key in ("pixel_error", "membrane_iou"):
            diff = np.array(
                [s[key] - p[key] for s, p in zip(runs["segkit"], runs["plain"], strict=True)]
            )
            lines.append(
                f"{key} segkit - plain, same seed: mean {diff.mean():+.4f}, "
                f"std {diff.std(ddof=1):.4f}, standard error {diff.std(ddof=1) / np.sqrt(len(diff)):.4f}"
            )
    if {"plain", "segkit"} <= set(runs):
        p, s = med["plain"], med["segkit"]
        lines += [
            "",
            f"throughput ratio segkit/plain:   {s['ips'] / p['ips']:.3f} (target >= 0.95)",
            f"  median step ratio:             {s['median_step_ips'] / p['median_step_ips']:.3f}"
            " (less sensitive to bursts of load from other programs)",
            f"pixel error ratio segkit/plain:  {s['pixel_error'] / p['pixel_error']:.3f} (<= 1: as good or better)",
            f"membrane IoU ratio segkit/plain: {s['membrane_iou'] / p['membrane_iou']:.3f} (>= 1: as good or better)",
        ]
    lines += ["", f"command: {command}"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args._side:
        _child(args)
        return 0
    runs: dict[str, list[dict[str, Any]]] = {side: [] for side in args.sides}
    for r in range(args.repeats):
        # Alternate the order (A B, B A, ...) so a drifting machine load hits both sides alike.
        for side in args.sides if r % 2 == 0 else args.sides[::-1]:
            _wait_for_quiet(args.max_load, args.max_wait_s)
            # Repeat r of both sides uses seed + r: init, data order and crops vary between
            # repeats, so the spread over repeats is the run-to-run noise of each side.
            runs[side].append(_run_side(side, [*argv, "--seed", str(args.seed + r)]))
    command = " ".join(["python benchmarks/bench_train.py", shlex.join(argv)]).strip()
    print(report(runs, command))
    if args.json:
        args.json.write_text(json.dumps({"runs": runs, "command": command}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
