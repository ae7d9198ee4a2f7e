"""CPU inference benchmark: onnxruntime (segkit's verified export) vs torch eager, same model.

The model is built and exported through segkit itself (``build_model`` -> ``save_bundle`` ->
``export_onnx``, which verifies the graph against torch), then the runtimes run the same
network on the same 512x512 tiles at batch 1 and 4, with the same thread count (torch
``set_num_threads`` = onnxruntime ``intra_op_num_threads``, one inter-op thread each). torch runs
three times: in the default NCHW layout, channels_last (what segkit's torch backend runs on a
CPU), and channels_last with batch-norm folded into the convolutions (what it runs on a GPU). Each
configuration is warmed up, then timed over ``--repeats`` alternating runs; medians are reported.

    python benchmarks/bench_onnx.py --repeats 5
    python benchmarks/bench_onnx.py --opt-level basic --threads 1 --batch-sizes 1
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

OPT_LEVELS = ("disable", "basic", "extended", "all")


def _parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--arch", default="Unet", help="smp architecture (default Unet)")
    p.add_argument(
        "--encoder", default="resnet34", help="smp encoder (default resnet34; weights are random)"
    )
    p.add_argument("--classes", type=int, default=2, help="output classes (default 2)")
    p.add_argument("--size", type=int, default=512, help="tile size in pixels (default 512)")
    p.add_argument(
        "--batch-sizes", type=int, nargs="+", default=[1, 4], help="batch sizes (default 1 4)"
    )
    p.add_argument(
        "--repeats", type=int, default=5, help="timed runs per configuration (median reported)"
    )
    p.add_argument("--warmup", type=int, default=2, help="untimed runs first")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="threads for both runtimes (default: torch's default)",
    )
    p.add_argument(
        "--opt-level",
        default="all",
        choices=OPT_LEVELS,
        help="onnxruntime graph optimisation level",
    )
    return p.parse_args()


def _time_alternating(runs: list[Callable[[], object]], warmup: int, repeats: int) -> list[float]:
    """Median seconds of each; runs alternate, so a load change on the machine hits all alike."""
    for _ in range(warmup):
        for run in runs:
            run()
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, out in zip(runs, times, strict=True):
            start = time.perf_counter()
            run()
            out.append(time.perf_counter() - start)
    return [statistics.median(t) for t in times]


def main() -> None:
    args = _parse()
    import onnxruntime as ort

    from segkit.bundle import save_bundle
    from segkit.config import load_config
    from segkit.engine.torch_backend import fold_batch_norms
    from segkit.export import export_onnx
    from segkit.models.build import build_model

    threads = args.threads or torch.get_num_threads()
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    classes = [f"class{i}" for i in range(args.classes)]
    config = load_config(
        {
            "model": {"arch": args.arch, "encoder": args.encoder, "encoder_weights": None},
            "data": {"classes": classes, "patch_size": args.size},
        }
    )
    model = build_model(config.model, len(classes), 3).eval()
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last)
    model_folded = copy.deepcopy(model)
    fold_batch_norms(model_folded)
    model_folded = model_folded.to(memory_format=torch.channels_last)

    with tempfile.TemporaryDirectory() as tmp:
        bundle = save_bundle(Path(tmp) / "model.ckpt", config, model)
        start = time.perf_counter()
        diff = export_onnx(bundle, Path(tmp) / "model.onnx")
        export_s = time.perf_counter() - start
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[args.opt_level]
        session = ort.InferenceSession(
            str(Path(tmp) / "model.onnx"), options, providers=["CPUExecutionProvider"]
        )

    print(
        f"{args.arch}-{args.encoder}, {args.size}x{args.size} tiles, {threads} threads (torch {torch.get_num_threads()}, "
        f"onnxruntime intra-op {threads}), ORT opt level {args.opt_level}, median of {args.repeats} after {args.warmup} warm-up"
    )
    print(f"export + verification: {export_s:.1f} s, max abs difference {diff:.2e}\n")
    header = (
        f"{'batch':>5}  {'torch img/s':>11}  {'torch NHWC img/s':>16}  {'onnxruntime img/s':>17}"
        f"  {'NHWC folded img/s':>17}  {'ort/torch':>9}  {'ort/torch NHWC':>14}"
    )
    print(header)
    print("-" * len(header))
    generator = torch.Generator().manual_seed(0)
    for batch in args.batch_sizes:
        x = torch.randn(batch, 3, args.size, args.size, generator=generator)
        feed = {session.get_inputs()[0].name: x.numpy()}

        def run_torch(x: torch.Tensor = x) -> object:
            with torch.inference_mode():
                return model(x)

        def run_torch_cl(x: torch.Tensor = x) -> object:
            with torch.inference_mode():
                return model_cl(x.contiguous(memory_format=torch.channels_last))

        def run_torch_folded(x: torch.Tensor = x) -> object:
            with torch.inference_mode():
                return model_folded(x.contiguous(memory_format=torch.channels_last))

        def run_ort(feed: dict[str, np.ndarray] = feed) -> object:
            return session.run(None, feed)

        t_torch, t_cl, t_ort, t_folded = _time_alternating(
            [run_torch, run_torch_cl, run_ort, run_torch_folded], args.warmup, args.repeats
        )
        print(
            f"{batch:>5}  {batch / t_torch:>11.2f}  {batch / t_cl:>16.2f}  {batch / t_ort:>17.2f}"
            f"  {batch / t_folded:>17.2f}  {t_torch / t_ort:>8.2f}x  {t_cl / t_ort:>13.2f}x"
        )


if __name__ == "__main__":
    main()
