"""Where ``Predictor.predict`` spends its time on one generated image: timed runs, then the
main thread's Python profile (cProfile) and, on CUDA, the torch profiler's CPU and GPU tables.

The model is the tiler benchmark's (Unet-resnet34, random init, 12 classes, tile 512, overlap
0.25, gaussian); ``--backend none`` swaps the network for a fixed probability tile, as there.

    python benchmarks/profile_predict.py --size 4096 --device cuda
    python benchmarks/profile_predict.py --size 1024 --device cpu --backend none
"""

from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from bench_predict import OVERLAP, TILE, FixedProbs, make_model

from segkit.engine.predictor import Predictor


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--size", type=int, default=4096, help="square image side")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--backend", choices=["torch", "none"], default="torch")
    p.add_argument("--runs", type=int, default=5, help="timed runs after one warm-up")
    p.add_argument("--rows", type=int, default=20, help="rows of each profile table")
    p.add_argument("--trace", type=Path, default=None, help="write a Chrome trace here (CUDA)")
    ns = p.parse_args(argv)

    predictor = Predictor.from_path(
        make_model(Path(tempfile.mkdtemp(prefix="segkit-profile-")), "torch"), device=ns.device
    )
    if ns.backend == "none":
        predictor = Predictor(
            FixedProbs(predictor.backend), tile=TILE, overlap=OVERLAP, blend="gaussian"
        )
    image = np.random.default_rng(0).integers(0, 256, (ns.size, ns.size, 3), dtype=np.uint8)
    cuda = torch.device(ns.device).type == "cuda"
    sync = torch.cuda.synchronize if cuda else (lambda: None)

    predictor.predict(image)
    sync()
    times = []
    for _ in range(ns.runs):
        start = time.perf_counter()
        predictor.predict(image)
        sync()
        times.append(time.perf_counter() - start)
    print(
        f"{ns.size}² on {ns.device}, backend {ns.backend}: runs "
        + ", ".join(f"{t * 1000:.1f}" for t in times)
        + f" ms (median {np.median(times) * 1000:.1f})"
    )

    profile = cProfile.Profile()
    profile.enable()
    predictor.predict(image)
    sync()
    profile.disable()
    text = io.StringIO()
    pstats.Stats(profile, stream=text).sort_stats("tottime").print_stats(ns.rows)
    print(text.getvalue())

    if cuda:
        from torch.profiler import ProfilerActivity, profile

        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            predictor.predict(image)
            sync()
        for key in ("self_cpu_time_total", "self_cuda_time_total"):
            print(prof.key_averages().table(sort_by=key, row_limit=ns.rows))
        if ns.trace:
            prof.export_chrome_trace(str(ns.trace))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
