"""Decoding ahead of the model, in order, bounded by pixels: what ``segkit predict`` and
``segkit evaluate`` feed the predictor from.

A few images may wait decoded whatever their size (they may be gigapixels), and more only while
they fit in a pixel budget: a folder of small images is then decoded a forward pass or two
ahead, by all the workers, so a fast GPU does not wait for its next pass; large ones are held a
few at a time. Sizes come from the image headers, read before decoding.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from segkit.io.images import read_header

T = TypeVar("T")
R = TypeVar("R")

HELD = 2
"""Images that may wait decoded (or written, behind the model) beyond the pixel budget."""


def default_workers() -> int:
    """Decoding and writing threads: one per CPU this process may use, 2 to 8. A fast GPU eats a
    pass of eight 512² images in ~8 ms, which takes more than two threads to decode."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(2, min(8, cpus or 2))


def header_pixels(path: Path, max_pixels: int | None = None) -> float:
    """The pixel count in ``path``'s header, read without decoding; infinite when it cannot be
    read (the decoder then reports why)."""
    try:
        header = read_header(path, max_pixels)
    except Exception:  # noqa: BLE001 - any problem is the decoder's to report
        return math.inf
    return float(header.height * header.width)


def read_ahead(
    items: Iterable[T],
    load: Callable[[T], R],
    pixels: Callable[[T], float],
    *,
    workers: int,
    spare_pixels: float,
) -> Iterator[tuple[T, Future[R]]]:
    """``(item, future of load(item))`` in input order, the loads started ahead in ``workers``
    threads: up to :data:`HELD` + 1 items of any size, more while their ``pixels`` (asked just
    before each load starts) fit in ``spare_pixels``. A load's exception is its future's."""
    queue = iter(items)
    pending: deque[tuple[T, Future[R], float]] = deque()
    next_up: tuple[T, float] | None = None  # sized, not started
    with ThreadPoolExecutor(max(1, workers), thread_name_prefix="segkit-read") as pool:

        def top_up() -> None:
            nonlocal next_up
            while True:
                if next_up is None:
                    try:
                        item = next(queue)
                    except StopIteration:
                        return
                    next_up = (item, pixels(item))
                item, size = next_up
                waiting = sum(entry[2] for entry in pending)
                if len(pending) > HELD and waiting + size > spare_pixels:
                    return
                next_up = None
                pending.append((item, pool.submit(load, item), size))

        try:
            top_up()
            while pending:
                item, future, _ = pending.popleft()
                top_up()
                yield item, future
        finally:  # closed early: drop what has not started
            for _, future, _ in pending:
                future.cancel()
