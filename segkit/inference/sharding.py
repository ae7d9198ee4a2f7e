"""``segkit predict --devices N``: the images sharded over N processes (torch.distributed, gloo on
CPU, nccl on CUDA); each image is predicted and written by exactly one of them, and rank 0 merges
their manifest records into one, in input order."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from segkit.errors import ModelError
from segkit.inference.predictor import Predictor
from segkit.inference.readahead import default_workers
from segkit.inference.run import run_items
from segkit.inference.sources import InputImage
from segkit.inference.writers import MANIFEST, read_manifest, write_manifest


def _shard_worker(
    rank: int,
    world: int,
    rendezvous: str,
    model: str,
    items: list[InputImage],
    output: Path,
    device: str | None,
    options: dict[str, Any],
    run_options: dict[str, Any],
) -> None:
    """One process of a ``devices > 1`` run: its shard of the images, then gather to rank 0."""
    import torch
    import torch.distributed as dist

    cuda = torch.cuda.is_available() and (device is None or str(device).startswith("cuda"))
    if cuda:
        torch.cuda.set_device(rank % torch.cuda.device_count())
        device = f"cuda:{rank % torch.cuda.device_count()}"
    else:
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world))
    dist.init_process_group(
        "nccl" if cuda else "gloo",
        init_method=f"file://{rendezvous}",
        rank=rank,
        world_size=world,
    )
    try:
        predictor = Predictor.from_path(model, device, **options)
        if run_options["workers"] is None:  # the processes share the host's CPUs
            run_options["workers"] = max(2, default_workers() // world)
        records = run_items(
            predictor,
            items[rank::world],
            output,
            progress=run_options.pop("progress") and rank == 0,
            **run_options,
        )
        gathered: list[Any] | None = [None] * world if rank == 0 else None
        dist.gather_object(records, gathered, dst=0)
        if rank == 0:
            order = {str(it.path): n for n, it in enumerate(items)}
            merged = sorted(
                (r for part in gathered or [] for r in part), key=lambda r: order[r["input"]]
            )
            write_manifest(output, merged)
    finally:
        dist.destroy_process_group()


def run_sharded(
    model: str | Path,
    items: list[InputImage],
    output: Path,
    devices: int,
    device: str | None,
    options: dict[str, Any],
    run_options: dict[str, Any],
) -> list[dict[str, Any]]:
    """Predict ``items`` in ``devices`` processes (``run_items`` options in ``run_options``) and
    return the merged manifest records; a worker's crash is one ModelError line."""
    import torch.multiprocessing as mp

    (output / MANIFEST).unlink(missing_ok=True)
    # The processes meet through a file, not a TCP port: a port found free here could be taken
    # by the time the workers have started and bind it.
    with tempfile.TemporaryDirectory(prefix="segkit-predict-") as folder:
        rendezvous = str(Path(folder) / "rendezvous")
        args = (devices, rendezvous, str(model), items, output, device, options, run_options)
        try:
            mp.spawn(_shard_worker, args=args, nprocs=devices, join=True)
        except mp.ProcessRaisedException as e:
            lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
            raise ModelError(
                f"a predict worker process failed: {lines[-1] if lines else e}"
            ) from None
        except mp.ProcessExitedException as e:
            raise ModelError(f"a predict worker process died: {e}") from None
    return read_manifest(output)
