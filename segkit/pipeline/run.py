"""``segkit predict``: a folder of any-size images through the tiled engine into mask files.

Decoding runs ahead of the model and encoding/writing runs behind it, each in background threads,
so the model is never idle on I/O. Consecutive images that each fit one tile of the same shape
share forward passes (as many as fit in ``batch_size`` full tiles), so small images fill them.
A bad image is recorded as failed and the run goes on. With ``devices > 1`` the images are
sharded over processes (:mod:`segkit.pipeline.sharding`). Its options are one typed model,
:class:`~segkit.engine.options.PredictOptions`, whose fields are also ``segkit predict``'s flags.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from segkit.engine.options import PredictOptions
from segkit.engine.predictor import (
    BatchKey,
    Predictor,
    consecutive_batches,
)
from segkit.errors import ConfigError, DataError, ModelError, SegkitError, first_line
from segkit.io.geo import GeoReference, read_georeference
from segkit.io.readahead import HELD, default_workers, header_pixels, read_ahead
from segkit.io.sources import InputImage, find_inputs, open_image
from segkit.pipeline.sharding import run_sharded
from segkit.pipeline.writers import (
    MANIFEST,
    OutputWriter,
    output_path,
    outputs_exist,
    remove_stale_temporaries,
    write_manifest,
)


@dataclass
class PredictSummary:
    """What a predict run did: counts, the failures as ``"path: reason"`` and where outputs went."""

    output: Path
    ok: int = 0
    skipped: int = 0
    failures: list[str] = field(default_factory=list)
    tiles: int = 0
    seconds: float = 0.0

    def describe(self) -> str:
        """One line for the CLI."""
        parts = [f"{self.ok} image{'s' if self.ok != 1 else ''} predicted"]
        if self.skipped:
            parts.append(f"{self.skipped} skipped (outputs exist)")
        if self.failures:
            parts.append(f"{len(self.failures)} failed")
        return f"{', '.join(parts)} in {self.seconds:.1f}s ({self.tiles} tiles); outputs in {self.output} (manifest: {self.output / MANIFEST})"

    @classmethod
    def from_records(
        cls, output: Path, records: Sequence[dict[str, Any]], seconds: float
    ) -> PredictSummary:
        s = cls(output=output, seconds=seconds)
        for r in records:
            if r["status"] == "ok":
                s.ok += 1
                s.tiles += int(r.get("tiles") or 0)
            elif r["status"] == "skipped":
                s.skipped += 1
            else:
                s.failures.append(f"{r['input']}: {r['error']}")
        return s


def _reason(e: BaseException, path: Path) -> str:
    return first_line(e).removeprefix(f"{path}: ")


def _record(
    item: InputImage,
    status: str,
    *,
    outputs: dict[str, Path] | None = None,
    error: str | None = None,
    height: int | None = None,
    width: int | None = None,
    tiles: int = 0,
    seconds: float = 0.0,
) -> dict[str, Any]:
    return {
        "input": str(item.path),
        "outputs": {k: str(v) for k, v in (outputs or {}).items()},
        "height": height,
        "width": width,
        "tiles": tiles,
        "seconds": round(seconds, 3),
        "status": status,
        "error": error,
    }


@dataclass
class _Job:
    """One decoded image on its way through the model."""

    index: int
    item: InputImage
    base: Path
    image: Any
    t0: float
    tiles: int = 0
    key: BatchKey | None = None  # images with one key share forward passes
    geo: GeoReference | None = None  # a GeoTIFF's georeferencing, kept in its outputs


class _Progress:
    """rich's progress bars of images and tiles on stderr; rich draws nothing when disabled."""

    def __init__(self, enabled: bool, images: int) -> None:
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
        )

        self._bar = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=Console(stderr=True),
            transient=True,
            disable=not enabled,
        )
        self._images = self._bar.add_task("images", total=images)
        self._tiles = self._bar.add_task("tiles", total=0)

    def __enter__(self) -> _Progress:
        self._bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._bar.stop()

    def image(self) -> None:
        self._bar.advance(self._images)

    def plan_tiles(self, n: int) -> None:
        self._bar.update(self._tiles, total=(self._bar.tasks[self._tiles].total or 0) + n)

    def tiles(self, n: int) -> None:
        self._bar.advance(self._tiles, n)


_Write = tuple[int, InputImage, Future[dict[str, Path]], dict[str, Any]]
"""A commit under way: (record index, input, the writer's future, what the record needs)."""


def run_items(
    predictor: Predictor,
    items: Sequence[InputImage],
    output: Path,
    *,
    save: Sequence[str] = ("index",),
    probs_dtype: str = "float16",
    pyramid_format: str = "ome-tiff",
    skip_existing: bool = False,
    workers: int | None = None,
    progress: bool = True,
    max_pixels: int | None = None,
) -> list[dict[str, Any]]:
    """Predict ``items`` into ``output``; returns one manifest record per item, in input order.

    Images with more than ``max_pixels`` pixels (default: the model's ``data.max_image_pixels``)
    fail with that reason.
    """
    records, todo = _plan(items, output, save, predictor.card.num_classes, skip_existing)
    workers = max(1, workers if workers is not None else default_workers())
    with (
        ThreadPoolExecutor(workers, thread_name_prefix="segkit-write") as writers,
        _Progress(progress, len(items)) as bar,
    ):
        for _ in range(len(items) - len(todo)):
            bar.image()
        run = _ImageRun(
            predictor, records, bar, writers, workers, save, probs_dtype, pyramid_format
        )
        run.predict(todo, max_pixels if max_pixels is not None else predictor.card.max_image_pixels)
    return [r for r in records if r is not None]


def _plan(
    items: Sequence[InputImage],
    output: Path,
    save: Sequence[str],
    num_classes: int,
    skip_existing: bool,
) -> tuple[list[dict[str, Any] | None], list[tuple[int, InputImage, Path]]]:
    """Records of the items that will not run (name clashes, finished with ``skip_existing``) and
    ``(index, item, output stem)`` of the rest; removes what a killed run left of their outputs."""
    records: list[dict[str, Any] | None] = [None] * len(items)
    owners: dict[Path, Path] = {}
    todo: list[tuple[int, InputImage, Path]] = []
    for i, item in enumerate(items):
        base = output / item.rel.parent / item.rel.stem
        tiff = item.path.suffix.lower() in (".tif", ".tiff")  # a GeoTIFF's outputs are TIFFs
        clash = [
            output_path(base, kind, num_classes, tiff=t)
            for kind in save
            for t in {False, tiff}
            if output_path(base, kind, num_classes, tiff=t).resolve() == item.path.resolve()
        ]
        if base in owners:
            error = f"its outputs would overwrite those of {owners[base]} (same name)"
            records[i] = _record(item, "failed", error=error)
        elif clash:
            error = f"writing {clash[0]} would overwrite the input; choose another --output"
            records[i] = _record(item, "failed", error=error)
        elif skip_existing and outputs_exist(base, save, num_classes):
            records[i] = _record(item, "skipped")
            owners[base] = item.path
        else:
            owners[base] = item.path
            todo.append((i, item, base))
    remove_stale_temporaries(list(owners), save, num_classes, also=[output / MANIFEST])
    return records, todo


class _ImageRun:
    """The images of one run through the model, in this thread; decoding runs ahead and writing
    behind it in worker threads. Each image ends as a record: ok, or failed with the reason.

    Images wait decoded ahead of the model (readahead.py) or written behind it a few at a time,
    whatever their size, and more while they fit in two forward passes' pixels: a folder of
    small images is decoded a pass ahead and written a pass behind while the model runs.
    """

    def __init__(
        self,
        predictor: Predictor,
        records: list[dict[str, Any] | None],
        bar: _Progress,
        writers: ThreadPoolExecutor,
        workers: int,
        save: Sequence[str],
        probs_dtype: str,
        pyramid_format: str,
    ) -> None:
        self.predictor, self.records, self.bar = predictor, records, bar
        self.writers, self.workers = writers, workers
        self.save, self.probs_dtype, self.pyramid_format = save, probs_dtype, pyramid_format
        self.passes = predictor.passes_per_tile()
        self.spare_pixels = 2 * predictor.pixels_per_pass()
        self.writes: deque[_Write] = deque()

    def predict(self, todo: list[tuple[int, InputImage, Path]], max_pixels: int) -> None:
        """Every image of ``todo``: small ones of one shape share passes, others go alone."""
        decoded = self._decoded(todo, max_pixels)
        for group in consecutive_batches(
            decoded, lambda job: job.key, self.predictor.images_per_pass
        ):
            if group[0].key is not None:
                self._predict_group(group)
            else:
                self._predict_alone(group[0])
        while self.writes:
            self._finish(self.writes.popleft())

    def _decoded(self, todo: list[tuple[int, InputImage, Path]], max_pixels: int) -> Iterator[_Job]:
        """The images in input order, decoded ahead by the readers; failures are recorded."""
        in_channels = self.predictor.card.in_channels
        for (i, item, base), fut in read_ahead(
            todo,
            lambda job: (
                open_image(job[1].path, in_channels, max_pixels),
                read_georeference(job[1].path),
            ),
            lambda job: header_pixels(job[1].path, max_pixels),
            workers=self.workers,
            spare_pixels=self.spare_pixels,
        ):
            t0 = time.perf_counter()
            try:
                image, geo = fut.result()
            except Exception as e:  # noqa: BLE001 - any decoder failure is this image's failure
                self.records[i] = _record(item, "failed", error=_reason(e, item.path))
                self.bar.image()
                continue
            job = _Job(i, item, base, image, t0, geo=geo)
            del image
            try:
                job.tiles = len(self.predictor.grid(*job.image.shape[:2])) * self.passes
                job.key = self.predictor.batch_key(job.image)
            except SegkitError as e:
                self._fail(job, e)
                continue
            self.bar.plan_tiles(job.tiles // self.passes)  # tiles of the image, not TTA passes
            yield job

    def _predict_group(self, group: list[_Job]) -> None:
        """Images that each fit one tile of the same shape: one forward pass for all."""
        try:
            probs = self.predictor.probs_together([job.image for job in group])
        except (SegkitError, RuntimeError, MemoryError) as e:
            for job in group:
                self._fail(job, e)
            return
        self.bar.tiles(len(group))
        for job, p in zip(group, probs, strict=True):
            self._write(job, [(0, 0, p)])

    def _predict_alone(self, job: _Job) -> None:
        """An image of several tiles (or a shape of its own): its blocks as the stitcher ends them."""
        blocks = self.predictor.iter_blocks(
            job.image,
            on_tiles=self.bar.tiles,
            as_tensor=True,
            copy=False,  # add_block uses each block at once
        )
        self._write(job, blocks)

    def _write(self, job: _Job, blocks: Iterable[tuple[int, int, Any]]) -> None:
        """Hand one image's probability blocks to its writer; the commit runs in the background."""
        h, w = job.image.shape[:2]
        try:
            writer = OutputWriter(
                job.base,
                self.save,
                self.predictor.card,
                h,
                w,
                self.probs_dtype,
                geo=job.geo,
                pyramid=self.pyramid_format,
            ).__enter__()
            try:
                for row, col, block in blocks:
                    writer.add_block(row, col, block)
            except BaseException:
                writer.abort()
                raise
        except (SegkitError, RuntimeError, MemoryError) as e:
            self._fail(job, e)
            return
        pixels = job.image if writer.needs_image() else None
        meta = {"t0": job.t0, "height": h, "width": w, "tiles": job.tiles}
        self.writes.append((job.index, job.item, self.writers.submit(writer.commit, pixels), meta))
        job.image = None  # free the pixels now, not when the next image has been decoded
        while len(self.writes) > HELD and (
            sum(m["height"] * m["width"] for *_, m in self.writes) > self.spare_pixels
        ):
            self._finish(self.writes.popleft())

    def _finish(self, entry: _Write) -> None:
        """Wait for a commit and record how it went."""
        i, item, fut, meta = entry
        try:
            outputs = fut.result()
            seconds = time.perf_counter() - meta.pop("t0")
            self.records[i] = _record(item, "ok", outputs=outputs, seconds=seconds, **meta)
        except (SegkitError, OSError) as e:
            self.records[i] = _record(
                item,
                "failed",
                error=_reason(e, item.path),
                height=meta["height"],
                width=meta["width"],
            )
        self.bar.image()

    def _fail(self, job: _Job, e: BaseException) -> None:
        h, w = job.image.shape[:2]
        self.records[job.index] = _record(
            job.item, "failed", error=_reason(e, job.item.path), height=h, width=w
        )
        job.image = None  # free the pixels now, not when the next image has been decoded
        self.bar.image()


def _run_options(options: PredictOptions) -> dict[str, Any]:
    """The keyword arguments of :func:`run_items` among the options."""
    return {
        "save": options.save,
        "probs_dtype": options.probs_dtype,
        "pyramid_format": options.pyramid_format,
        "skip_existing": options.skip_existing,
        "workers": options.workers,
        "max_pixels": options.max_pixels,
    }


def _predict_shard(
    model: str,
    options: PredictOptions,
    progress: bool,
    items: list[InputImage],
    output: Path,
    device: str | None,
    rank: int,
    world: int,
) -> list[dict[str, Any]]:
    """One process's share of a ``devices > 1`` run (the ``job`` of :func:`run_sharded`)."""
    predictor = Predictor.from_path(model, device, **options.tiling(), **options.model_facts())
    run_options = _run_options(options)
    if run_options["workers"] is None:  # the processes share the host's CPUs
        run_options["workers"] = max(2, default_workers() // world)
    return run_items(predictor, items, output, progress=progress and rank == 0, **run_options)


def predict_source(
    model: str | Path | Predictor,
    source: str | Path,
    output: str | Path,
    options: PredictOptions | None = None,
    *,
    progress: bool = True,
    **values: Any,
) -> PredictSummary:
    """Predict every image of ``source`` (file, folder or glob) into ``output``; see the module doc.

    ``options``, or the :class:`PredictOptions` fields as keyword arguments (``save=["index"],
    tile=512, ...``; a bad one is a ConfigError naming it). Raises DataError when the source holds
    no images; per-image problems are in the summary's ``failures`` and in
    ``output/manifest.jsonl``.
    """
    start = time.perf_counter()
    output = Path(output)
    if options is None:
        options = PredictOptions.parse(**values)
    elif values:
        raise ConfigError(f"predict: give options or {', '.join(values)}, not both")
    items = find_inputs(source, exclude=output)
    try:
        output.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DataError(f"cannot write {output}: {e.strerror or e}") from None
    device = options.device
    if options.devices > 1 and len(items) > 1:
        if isinstance(model, Predictor):
            raise ConfigError(
                "devices > 1 needs a model path (each process loads its own copy), not a Predictor"
            )
        if not Path(model).is_file():
            raise ModelError(f"{model}: model file not found")
        job = partial(_predict_shard, str(model), options, progress)
        records = run_sharded(job, items, output, min(options.devices, len(items)), device)
    else:
        if isinstance(model, Predictor):
            if options.model_facts():
                raise ConfigError(
                    "classes/mean/std describe a model file; a Predictor already carries them"
                )
            predictor = model.with_options(**options.tiling())
        else:
            predictor = Predictor.from_path(
                model, device, **options.tiling(), **options.model_facts()
            )
        records = run_items(predictor, items, output, progress=progress, **_run_options(options))
        write_manifest(output, records)
    return PredictSummary.from_records(output, records, time.perf_counter() - start)
