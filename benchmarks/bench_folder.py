"""``segkit predict`` on a folder of small images vs a hand-written loop with the same network call.

What a folder of photos costs end to end: decoding, the network, the arg-max and the PNG mask
written for every image. The loop is what one writes by hand: for each file, PIL decode,
normalise, one forward pass, arg-max, PIL save. It calls segkit's own backend (the same Unet,
the same channels_last + autocast on CUDA, the same onnxruntime session), so only the pipeline
around the network differs: segkit decodes and writes in background threads and, when each image
fits one tile, runs several per forward pass (as many as fit in ``--batch-size`` full tiles).

Every measurement runs in a fresh subprocess, after an untimed warm-up (one image for the loop,
one full batch for segkit); ``--rounds`` alternates the two tools and reports the median ratio.
The masks of both are compared at the end.

    pip install -e .[benchmark]
    python benchmarks/bench_folder.py --images 64 --size 512 --device cuda
    python benchmarks/bench_folder.py --images 32 --size 256 --device cpu --backend onnx
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from bench_predict import make_model, peak_rss_gb  # the same model as the tiler benchmark


def make_images(folder: Path, count: int, size: int, seed: int = 0) -> list[Path]:
    """``count`` RGB PNGs of ``size`` x ``size``: smooth blobs and noise, seeded."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for i in range(count):
        coarse = rng.integers(0, 256, size=(size // 32 + 1, size // 32 + 1, 3), dtype=np.uint8)
        blobs = np.repeat(np.repeat(coarse, 32, 0), 32, 1)[:size, :size].astype(np.float32)
        noisy = np.clip(blobs + rng.normal(0, 12, blobs.shape), 0, 255).astype(np.uint8)
        paths.append(folder / f"{i:05d}.png")
        Image.fromarray(noisy).save(paths[-1])
    return paths


def segkit_child(args: argparse.Namespace) -> dict:
    """``predict_source`` over the folder (what ``segkit predict`` runs), timed after a warm-up
    batch (cuDNN and onnxruntime plan each batch shape once)."""
    from PIL import Image

    from segkit.engine.predictor import Predictor
    from segkit.pipeline.run import predict_source

    predictor = Predictor.from_path(args.model, device=args.device, batch_size=args.batch_size)
    paths = sorted(args.images.glob("*.png"))
    key = predictor.batch_key(np.asarray(Image.open(paths[0]).convert("RGB")))
    per_pass = predictor.images_per_pass(key) if key is not None else 1
    warm = Path(tempfile.mkdtemp(prefix="segkit-bench-warm-"))
    for path in paths[:per_pass]:
        (warm / "in").mkdir(exist_ok=True)
        (warm / "in" / path.name).symlink_to(path)
    predict_source(predictor, warm / "in", warm / "out", progress=False)  # one full batch
    shutil.rmtree(warm)
    start = time.perf_counter()
    summary = predict_source(
        predictor, args.images, args.output, save=["index"], workers=args.workers, progress=False
    )
    _synchronize(predictor.backend)
    seconds = time.perf_counter() - start
    if summary.failures:
        raise SystemExit(f"segkit failed on {summary.failures[0]}")
    return {"seconds": seconds, "images": summary.ok, "images_per_pass": per_pass}


def loop_child(args: argparse.Namespace) -> dict:
    """The hand-written loop: decode, normalise, one forward pass, arg-max, save; image by image."""
    import torch
    from PIL import Image

    from segkit.engine.predictor import Predictor

    backend = Predictor.from_path(args.model, device=args.device).backend
    device = torch.device(getattr(backend, "device", "cpu"))
    mean = torch.tensor(backend.card.mean, device=device).view(1, -1, 1, 1)
    std = torch.tensor(backend.card.std, device=device).view(1, -1, 1, 1)
    args.output.mkdir(parents=True, exist_ok=True)

    def one(path: Path) -> None:
        pixels = np.asarray(Image.open(path).convert("RGB"))
        x = torch.from_numpy(pixels).to(device).permute(2, 0, 1)[None].float().div_(255)
        with torch.inference_mode():
            probs = backend((x - mean) / std)  # sizes here are multiples of the stride
        mask = probs[0].argmax(0).to(torch.uint8).cpu().numpy()
        Image.fromarray(mask).save(args.output / path.name)

    paths = sorted(args.images.glob("*.png"))
    one(paths[0])  # warm-up
    start = time.perf_counter()
    for path in paths:
        one(path)
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "images": len(paths), "images_per_pass": 1}


def _synchronize(backend) -> None:
    import torch

    if getattr(backend, "device", torch.device("cpu")).type == "cuda":
        torch.cuda.synchronize()


def run_child(tool: str, ns: argparse.Namespace, images: Path, output: Path, model: Path) -> dict:
    cmd = [sys.executable, __file__, "--child", tool, "--model", str(model)]
    cmd += ["--image-dir", str(images), "--output", str(output)]
    cmd += ["--device", ns.device] if ns.device else []
    cmd += ["--batch-size", str(ns.batch_size)] if ns.batch_size else []
    cmd += ["--workers", str(ns.workers)]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise SystemExit(f"{tool} child failed (exit {proc.returncode}): {' | '.join(tail)}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--images", type=int, default=64, help="how many images in the folder")
    p.add_argument("--size", type=int, default=512, help="square image side (one tile at 512)")
    p.add_argument("--backend", choices=["torch", "onnx"], default="torch")
    p.add_argument("--encoder", default="resnet34", help="the Unet's smp encoder (random init)")
    p.add_argument("--device", default=None, help="cpu, cuda (default: cuda when available)")
    p.add_argument(
        "--batch-size",
        type=int,
        default=None,
        help="segkit's batch in full tiles (default: the device's, 8 on a GPU, 1 on a CPU); "
        "smaller images pack more per pass",
    )
    p.add_argument(
        "--workers", type=int, default=2, help="segkit's decoding and writing threads (--workers)"
    )
    p.add_argument("--rounds", type=int, default=1, help="alternating pairs of fresh processes")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    p.add_argument("--child", choices=["segkit", "loop"], help=argparse.SUPPRESS)
    p.add_argument("--model", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--image-dir", dest="image_dir", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--output", type=Path, help=argparse.SUPPRESS)
    ns = p.parse_args(argv)
    if ns.child:
        ns.images = ns.image_dir
        result = (segkit_child if ns.child == "segkit" else loop_child)(ns)
        print(json.dumps({**result, "peak_rss_gb": peak_rss_gb()}))
        return 0

    from PIL import Image

    workdir = Path(tempfile.mkdtemp(prefix="segkit-bench-folder-"))
    try:
        model = make_model(workdir, ns.backend, ns.encoder)
        images = workdir / "images"
        make_images(images, ns.images, ns.size)
        runs: dict[str, list[dict]] = {"segkit": [], "loop": []}
        for r in range(ns.rounds):
            order = ("segkit", "loop") if r % 2 == 0 else ("loop", "segkit")
            for tool in order:
                runs[tool].append(run_child(tool, ns, images, workdir / f"out_{tool}", model))
        masks = [
            (np.array(Image.open(workdir / "out_segkit" / f.name)), np.array(Image.open(f)))
            for f in sorted((workdir / "out_loop").glob("*.png"))
        ]
        agree = float(np.mean([np.mean(a == b) for a, b in masks]))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    ratios = [
        s["seconds"] / lp["seconds"] for s, lp in zip(runs["segkit"], runs["loop"], strict=True)
    ]
    print(
        f"\n{ns.images} images of {ns.size}x{ns.size}, Unet-{ns.encoder}, backend={ns.backend}, "
        f"device={ns.device or 'auto'}, segkit images per pass={runs['segkit'][0]['images_per_pass']}, "
        f"workers={ns.workers}"
    )
    print(f"{'tool':>7} {'time s':>8} {'images/s':>9} {'peak RSS GB':>12}")
    for tool, rs in runs.items():
        seconds = float(np.median([r["seconds"] for r in rs]))
        rss = max(r["peak_rss_gb"] for r in rs)
        print(f"{tool:>7} {seconds:8.2f} {ns.images / seconds:9.2f} {rss:12.2f}")
    print(
        f"  ratio {float(np.median(ratios)):.2f}x  (segkit / loop time; rounds "
        f"{', '.join(f'{x:.2f}' for x in ratios)}); masks equal on {agree:.4%} of pixels"
    )
    if ns.json:
        ns.json.write_text(json.dumps({"runs": runs, "ratios": ratios, "agreement": agree}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
