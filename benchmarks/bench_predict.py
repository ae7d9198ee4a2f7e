"""segkit's streaming tiler vs MONAI's ``sliding_window_inference``: wall time and peak memory.

Both tools run the SAME network call (segkit's backend: torch or onnxruntime, softmax in float32,
channels_last + autocast on CUDA) on the same uint8 RGB image, with tile 512, overlap 0.25 and
gaussian blending (sigma 0.125 of the tile; both use segkit's window, passed to MONAI as
``roi_weight_map``, since MONAI clamps its own at 1e-3 in 2-D), and produce an HxW label map.
Only the tiler differs: segkit reads tiles from the uint8 image and releases finished bands;
MONAI needs the image as one float tensor and keeps full-size K-channel accumulators.

``--backend none`` replaces the network by a fixed probability tile (the softmax of seeded random
logits, copied for every tile as a network's fresh output would be): what is left is what the
tilers themselves cost, without the network's run-to-run noise.

Every measurement runs in a fresh subprocess (peak RSS = the process's ``VmHWM``; on CUDA also
``torch.cuda.max_memory_allocated``). The model is Unet-resnet34 (``--encoder`` picks another smp
encoder), random init (seed 0), 12 classes.

    pip install -e .[benchmark]
    python benchmarks/bench_predict.py --sizes 4096 16384 --device cuda
    python benchmarks/bench_predict.py --sizes 2048 --device cpu          # a quick CPU check
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

K = 12
TILE, OVERLAP = 512, 0.25


def peak_rss_gb() -> float:
    """This process's peak RSS. On Linux ``VmHWM`` of /proc/self/status: ``ru_maxrss`` would
    carry the parent's peak over into a child started by fork/vfork + exec."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024**2  # kB
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024**2  # KiB on Linux


def make_model(workdir: Path, backend: str, encoder: str = "resnet34") -> Path:
    """A segkit bundle of a Unet (random init, seed 0), and its ONNX export when asked."""
    import torch

    from segkit.bundle import save_bundle
    from segkit.config import load_config
    from segkit.models.build import build_model

    cfg = load_config(
        {
            "data": {"classes": [f"class{i}" for i in range(K)], "patch_size": TILE},
            "model": {"arch": "Unet", "encoder": encoder, "encoder_weights": None},
            "predict": {"tile": TILE, "overlap": OVERLAP, "blend": "gaussian"},
        }
    )
    torch.manual_seed(0)
    ckpt = save_bundle(workdir / f"unet_{encoder}.ckpt", cfg, build_model(cfg.model, K, 3))
    if backend == "onnx":
        from segkit.export.onnx import export_onnx

        onnx_path = workdir / f"unet_{encoder}.onnx"
        export_onnx(ckpt, onnx_path)
        return onnx_path
    return ckpt


def make_image(path: Path, size: int, seed: int = 0) -> Path:
    """A ``size x size x 3`` uint8 image (smooth blobs + noise) as .npy, written in row chunks."""
    rng = np.random.default_rng(seed)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.uint8, shape=(size, size, 3))
    coarse = rng.integers(0, 256, size=(size // 64 + 2, size // 64 + 2, 3)).astype(np.float32)
    for r in range(0, size, 1024):
        rows = min(1024, size - r)
        yy = (np.arange(r, r + rows) / 64)[:, None]
        xx = (np.arange(size) / 64)[None, :]
        block = coarse[yy.astype(int)[:, 0]][:, xx.astype(int)[0]]
        noise = rng.normal(0, 12, size=(rows, size, 1)).astype(np.float32)
        out[r : r + rows] = np.clip(block + noise, 0, 255).astype(np.uint8)
    out.flush()
    del out
    return path


def _load_once(path: Path) -> np.ndarray:
    """Read a .npy into one array (``np.load`` can peak at several copies for huge files)."""
    with open(path, "rb") as f:
        version = np.lib.format.read_magic(f)
        read_header = (
            np.lib.format.read_array_header_1_0
            if version == (1, 0)
            else np.lib.format.read_array_header_2_0
        )
        shape, fortran, dtype = read_header(f)
        out = np.empty(shape, dtype=dtype, order="F" if fortran else "C")
        f.readinto(memoryview(out).cast("B"))
    return out


class FixedProbs:
    """A stand-in network for ``--backend none``: every tile gets a copy of one fixed
    ``(K, TILE, TILE)`` probability map, on the device the real backend would use."""

    def __init__(self, backend) -> None:
        import torch

        self.card, self.device = backend.card, backend.device
        logits = torch.randn(1, K, TILE, TILE, generator=torch.Generator().manual_seed(0))
        self.probs = torch.softmax(logits, 1).to(self.device)

    def __call__(self, tiles):
        return self.probs.expand(tiles.shape[0], -1, -1, -1).clone()


def _segkit(
    predictor, image: np.ndarray, args: argparse.Namespace, device
) -> tuple[np.ndarray, np.ndarray | None]:
    if args.save_probs:
        probs = predictor.predict_proba(image)
        return probs.argmax(0), probs
    return predictor.predict(image), None


def _monai(
    predictor, image: np.ndarray, args: argparse.Namespace, device
) -> tuple[np.ndarray, np.ndarray | None]:
    import torch
    from monai.inferers import sliding_window_inference

    from segkit.engine.tiling import blend_window

    mean = torch.tensor(predictor.card.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(predictor.card.std, device=device).view(1, -1, 1, 1)
    weights = torch.from_numpy(blend_window(TILE, TILE, "gaussian")).to(device)
    with torch.inference_mode():
        x = (
            torch.from_numpy(image)
            .to(device)
            .permute(2, 0, 1)[None]
            .float()
            .div_(255)
            .sub_(mean)
            .div_(std)
        )
        probs = sliding_window_inference(
            x,
            roi_size=(TILE, TILE),
            sw_batch_size=predictor.settings().batch_size,
            predictor=predictor.backend,
            overlap=OVERLAP,
            mode="gaussian",
            roi_weight_map=weights,  # segkit's gaussian: MONAI's own is clamped at 1e-3 in 2-D
            padding_mode="reflect",
        )
        labels = probs[0].argmax(0).to(torch.uint8).cpu().numpy()
        return labels, (probs[0].cpu().numpy() if args.save_probs else None)


def make_tiled_tiff(npy: Path) -> Path:
    """The image as a tiled (512²), zlib-compressed TIFF: what ``segkit predict`` reads by windows."""
    import tifffile

    path = npy.with_suffix(".tif")
    image = np.load(npy, mmap_mode="r")
    tifffile.imwrite(
        path, image, tile=(512, 512), compression="zlib", photometric="rgb", bigtiff=True
    )
    return path


def cli_child(args: argparse.Namespace) -> dict:
    """``segkit predict MODEL image.tif`` end to end in this (fresh) process: windowed TIFF read,
    tiling, the PNG label mask written; prints a JSON line."""
    from segkit.cli import main as segkit_main

    out = Path(tempfile.mkdtemp(prefix="segkit-bench-out-"))
    cmd = ["predict", str(args.model), str(args.image), "--output", str(out)]
    cmd += ["--device", args.device] if args.device else []
    cmd += ["--batch-size", str(args.batch_size)] if args.batch_size else []
    start = time.perf_counter()
    code = segkit_main(cmd)
    seconds = time.perf_counter() - start
    record = json.loads((out / "manifest.jsonl").read_text().splitlines()[0])
    shutil.rmtree(out, ignore_errors=True)
    result = {
        "tool": "cli",
        "size": record["height"],
        "seconds": seconds,
        "all_seconds": [seconds],
        "peak_rss_gb": peak_rss_gb(),
        "rss_before_gb": float("nan"),
        "tiles": record["tiles"],
        "batch_size": args.batch_size,
        "device": args.device or "auto",
        "gpu_peak_gb": None,
        "exit_code": code,
    }
    print(json.dumps(result))
    return result


def child(args: argparse.Namespace) -> dict:
    """One measurement in this (fresh) process; prints a JSON line."""
    import torch

    from segkit.engine.predictor import Predictor

    predictor = Predictor.from_path(
        args.model,
        device=args.device,
        tile=TILE,
        overlap=OVERLAP,
        blend="gaussian",
        batch_size=args.batch_size,
    )
    if args.backend == "none":
        predictor = Predictor(
            FixedProbs(predictor.backend),
            tile=TILE,
            overlap=OVERLAP,
            blend="gaussian",
            batch_size=args.batch_size,
        )
    device = torch.device(getattr(predictor.backend, "device", "cpu"))
    image = _load_once(args.image)  # both tools start from the decoded uint8 image in memory
    h, w = image.shape[:2]
    cuda = device.type == "cuda"
    run = _segkit if args.child == "segkit" else _monai
    run(
        predictor, image[:1024, :1024], args, device
    )  # warm-up (cuDNN/oneDNN plans, allocators), not timed
    rss_before = peak_rss_gb()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times = []
    for _ in range(args.repeats):  # the same call again: the median is steadier on a shared GPU
        labels = probs_out = None  # else the last run's label map is held while the next one fills
        start = time.perf_counter()
        labels, probs_out = run(predictor, image, args, device)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    result = {
        "tool": args.child,
        "size": h,
        "seconds": float(np.median(times)),
        "all_seconds": times,
        "peak_rss_gb": peak_rss_gb(),
        "rss_before_gb": rss_before,
        "tiles": len(predictor.grid(h, w)),
        "batch_size": predictor.settings().batch_size,
        "device": str(device),
        "gpu_peak_gb": torch.cuda.max_memory_allocated() / 1024**3 if cuda else None,
        "labels_checksum": int(labels.astype(np.int64).sum()),
    }
    if probs_out is not None:
        np.save(args.save_probs, probs_out.astype(np.float32))
    print(json.dumps(result))
    return result


def run_child(
    tool: str, model: Path, image: Path, ns: argparse.Namespace, save_probs: Path | None = None
) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        tool,
        "--model",
        str(model),
        "--image",
        str(image),
        *(["--batch-size", str(ns.batch_size)] if ns.batch_size else []),
        "--repeats",
        str(1 if save_probs else ns.repeats),
        "--backend",
        ns.backend,
    ]
    if ns.device:
        cmd += ["--device", ns.device]
    if save_probs:
        cmd += ["--save-probs", str(save_probs)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        return {"tool": tool, "error": f"exit {proc.returncode}: {' | '.join(tail)}"}
    return json.loads(proc.stdout.strip().splitlines()[-1])


def merge_rounds(results: list[dict]) -> dict:
    """One row from several rounds of one tool: median time over every timed run, worst memory."""
    if len(results) == 1 or any("seconds" not in r for r in results):
        return next((r for r in results if "seconds" not in r), results[0])
    merged = dict(results[0])
    merged["all_seconds"] = [t for r in results for t in r["all_seconds"]]
    merged["seconds"] = float(np.median(merged["all_seconds"]))
    merged["round_seconds"] = [r["seconds"] for r in results]
    for key in ("peak_rss_gb", "rss_before_gb", "gpu_peak_gb"):
        if merged.get(key) is not None:
            merged[key] = max(r[key] for r in results)
    return merged


def monai_estimate_gb(size: int, device: str | None) -> float:
    """Host memory MONAI needs: uint8 image + float input + K-channel output + count map + labels
    (+ the runtime). Measured at 16384² on a CPU: more than 20.7 GB before it was stopped."""
    px = size * size
    on_gpu = (device or "").startswith("cuda")
    host = px * 3 + (0 if on_gpu else px * (3 * 4 + K * 4 + 4)) + px * (8 + 1)
    return host / 1024**3 + 1.5


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--sizes", type=int, nargs="+", default=[4096, 16384], help="square image sides to test"
    )
    p.add_argument(
        "--backend",
        choices=["torch", "onnx", "none"],
        default="torch",
        help="network runtime used by both tools (none: a fixed probability tile, the tilers alone)",
    )
    p.add_argument(
        "--encoder", default="resnet34", help="the Unet's smp encoder (random init), both tools"
    )
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="tiles per forward pass, both tools (default: segkit's for the device: 8 GPU, 1 CPU)",
    )
    p.add_argument(
        "--repeats", type=int, default=1, help="timed runs per tool and size (median time reported)"
    )
    p.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="alternate fresh segkit and MONAI processes this many times (a load change on a "
        "shared machine then hits both alike); the ratio is the median of the paired rounds",
    )
    p.add_argument(
        "--tools",
        nargs="+",
        choices=["segkit", "monai", "cli"],
        default=["segkit", "monai"],
        help="which tools to run (segkit alone: a memory check at a size MONAI cannot do; cli: "
        "`segkit predict` on the image saved as a tiled zlib TIFF, read by windows, no warm-up, "
        "so its time includes start-up, model loading and writing the PNG mask)",
    )
    p.add_argument(
        "--max-rss-gb",
        type=float,
        default=None,
        help="skip MONAI where its estimated memory exceeds this (default: 80%% of RAM)",
    )
    p.add_argument(
        "--compare-size",
        type=int,
        default=4096,
        help="size whose probabilities are compared (default 4096; else the smallest size if <= 4096)",
    )
    p.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="folder for the model and images (default: a temp folder)",
    )
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--child", choices=["segkit", "monai", "cli"], help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--image", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--save-probs", type=Path, default=None, help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.child:
        (cli_child if ns.child == "cli" else child)(ns)
        return 0

    import psutil

    budget = ns.max_rss_gb or psutil.virtual_memory().total / 1024**3 * 0.8
    workdir = ns.workdir or Path(tempfile.mkdtemp(prefix="segkit-bench-"))
    workdir.mkdir(parents=True, exist_ok=True)
    model = make_model(workdir, ns.backend, ns.encoder)
    # K full-size float maps go to disk for the comparison: never for the huge sizes by default
    smallest = min(ns.sizes)
    compare = (
        ns.compare_size if ns.compare_size in ns.sizes else (smallest if smallest <= 4096 else None)
    )
    if ns.backend == "none":  # no network: nothing to compare, and the CLI would run the model
        compare = None
        if "cli" in ns.tools:
            p.error("--tools cli runs the real model: use --backend torch or onnx")
    rows, notes, cli_rows = [], [], []
    for size in ns.sizes:
        image = make_image(workdir / f"image_{size}.npy", size)
        est = monai_estimate_gb(size, ns.device)
        skipped = {
            tool: {"tool": tool, "skipped": "not asked for (--tools)"}
            for tool in ("segkit", "monai")
            if tool not in ns.tools
        }
        if "monai" in ns.tools and est > budget:
            skipped["monai"] = {
                "tool": "monai",
                "skipped": f"needs ~{est:.1f} GB host memory > budget {budget:.1f} GB",
            }
            notes.append(
                f"MONAI skipped at {size}: {skipped['monai']['skipped']} (full-size float input + {K}-class accumulators)"
            )
        runs: dict[str, list[dict]] = {tool: [] for tool in ("segkit", "monai")}
        for _ in range(ns.rounds):
            for tool in ("segkit", "monai"):
                if tool not in skipped:
                    runs[tool].append(run_child(tool, model, image, ns))
        seg, mon = (skipped.get(tool) or merge_rounds(runs[tool]) for tool in ("segkit", "monai"))
        rows.append((size, seg, mon))
        if "cli" in ns.tools:
            tiff = make_tiled_tiff(image)
            cli_rows.append((size, run_child("cli", model, tiff, ns)))
            tiff.unlink()
        if size == compare and "seconds" in seg and "seconds" in mon:
            a, b = workdir / "probs_segkit.npy", workdir / "probs_monai.npy"
            run_child("segkit", model, image, ns, save_probs=a)
            run_child("monai", model, image, ns, save_probs=b)
            pa, pb = np.load(a, mmap_mode="r"), np.load(b, mmap_mode="r")
            diff = max(float(np.abs(pa[k] - pb[k]).max()) for k in range(K))
            agree = float(np.mean(np.argmax(pa, 0) == np.argmax(pb, 0)))
            notes.append(
                f"{size}x{size}: max |p_segkit - p_monai| = {diff:.3g}, argmax agreement {agree:.4%} "
                "(same blend window; the tile starts differ unless (size - tile) is a multiple of the step: "
                "segkit spreads tiles evenly on the stride, MONAI steps by tile x (1 - overlap) and "
                "pushes the last tile back; a random-init network is very sensitive to that)"
            )
            a.unlink()
            b.unlink()
        image.unlink()

    print(
        "\ntime: median of --repeats runs after a warm-up (of every run over --rounds); RSS before: peak RSS after loading the "
        "image and the warm-up (the runtime, the model and the image), before the timed runs"
    )
    print(
        f"\nmodel=Unet-{ns.encoder} backend={ns.backend} device={rows[0][1].get('device', ns.device)} tile={TILE} overlap={OVERLAP} blend=gaussian classes={K} batch={next((r['batch_size'] for _, r, _ in rows if 'batch_size' in r), ns.batch_size) or 'the device default'}"
    )
    print(
        f"{'size':>7} {'tool':>7} {'tiles':>6} {'time s':>9} {'peak RSS GB':>12} {'RSS before':>11} {'GPU peak GB':>12}"
    )
    for size, seg, mon in rows:
        for r in (seg, mon):
            if "seconds" in r:
                gpu = f"{r['gpu_peak_gb']:.2f}" if r.get("gpu_peak_gb") is not None else "-"
                print(
                    f"{size:>7} {r['tool']:>7} {r['tiles']:>6} {r['seconds']:>9.2f} {r['peak_rss_gb']:>12.2f} {r['rss_before_gb']:>11.2f} {gpu:>12}"
                )
            else:
                print(f"{size:>7} {r['tool']:>7}  {r.get('skipped') or r.get('error')}")
        if "seconds" in seg and "seconds" in mon:
            ratio = seg["seconds"] / mon["seconds"]
            paired = ""
            if "round_seconds" in seg and "round_seconds" in mon:
                ratios = [
                    a / b for a, b in zip(seg["round_seconds"], mon["round_seconds"], strict=True)
                ]
                ratio = float(np.median(ratios))
                paired = f"; median of {len(ratios)} rounds, each {', '.join(f'{r:.2f}' for r in ratios)}"
            print(
                f"{'':>7} {'ratio':>7} {'':>6} {ratio:>8.2f}x {seg['peak_rss_gb'] / mon['peak_rss_gb']:>11.2f}x   (segkit / MONAI; time target <= 0.9{paired})"
            )
    for size, r in cli_rows:
        if "seconds" in r:
            print(
                f"{size:>7} {'CLI':>7} {r['tiles']:>6} {r['seconds']:>9.2f} {r['peak_rss_gb']:>12.2f} {'-':>11} {'-':>12}"
                "   (segkit predict on a tiled TIFF: start-up, windowed read, PNG written)"
            )
        else:
            print(f"{size:>7} {'CLI':>7}  {r.get('error')}")
    for note in notes:
        print("note:", note)
    if ns.json:
        ns.json.write_text(
            json.dumps(
                {"rows": rows, "cli_rows": cli_rows, "notes": notes, "backend": ns.backend},
                indent=2,
            )
        )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
    raise SystemExit(main())
