"""``segkit predict --devices N``: the images sharded over N processes (torch.distributed, gloo on
CPU, nccl on CUDA); each image is predicted and written by exactly one of them, and rank 0 merges
their manifest records into one, in input order.

What a process does with its shard is the caller's ``job`` (the folder run passes its own), so
this module knows processes and manifests only, and sits below the folder run that uses it.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from segkit.errors import ModelError
from segkit.io.sources import InputImage
from segkit.pipeline.writers import MANIFEST, read_manifest, write_manifest

ShardJob = Callable[[list[InputImage], Path, str | None, int, int], list[dict[str, Any]]]
"""``job(items, output, device, rank, world)`` -> the manifest records of ``items``, written under
``output`` on ``device``. Must be picklable (a module-level function or a ``functools.partial``
of one): each process receives it."""


def _shard_worker(
    rank: int,
    world: int,
    rendezvous: str,
    job: ShardJob,
    items: list[InputImage],
    output: Path,
    device: str | None,
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
        records = job(items[rank::world], output, device, rank, world)
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
    job: ShardJob,
    items: list[InputImage],
    output: Path,
    devices: int,
    device: str | None,
) -> list[dict[str, Any]]:
    """Run ``job`` over ``items`` split across ``devices`` processes and return the merged
    manifest records; a worker's crash is one ModelError line."""
    import torch.multiprocessing as mp

    (output / MANIFEST).unlink(missing_ok=True)
    # The processes meet through a file, not a TCP port: a port found free here could be taken
    # by the time the workers have started and bind it.
    with tempfile.TemporaryDirectory(prefix="segkit-predict-") as folder:
        rendezvous = str(Path(folder) / "rendezvous")
        args = (devices, rendezvous, job, items, output, device)
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
