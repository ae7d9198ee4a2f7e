"""``Predictor``: one tiled, memory-bounded engine over a torch checkpoint or an ONNX file.

Everything it knows about the model is the backend's :class:`~segkit.card.ModelCard`. Tiling
options (:class:`~segkit.engine.options.TileOptions`) left at ``None`` take the card's
``predict`` defaults, so ``Predictor.from_path(p).predict(img)`` does what training intended.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import groupby
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import torch

from segkit.card import ModelCard
from segkit.config import TTA
from segkit.engine.backend import Backend, block_width, default_batch_size
from segkit.engine.labels import HostLabels, argmax_labels, label_dtype
from segkit.engine.options import TileOptions
from segkit.engine.tiling import (
    TileGrid,
    extract_tile,
    iter_stitched,
    make_grid,
    to_device,
)
from segkit.engine.uncertainty import apply_temperature
from segkit.errors import ConfigError, DataError, ModelError
from segkit.io.images import adapt_channels, image_to_float
from segkit.io.windows import ArrayWindows
from segkit.normalization import image_statistics

Image = np.ndarray | ArrayWindows
"""What the predictor reads: an array in memory (or memory-mapped), or a TIFF read by windows."""

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)

_Transform = tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]


def _tta_transforms(mode: TTA) -> list[_Transform]:
    """(forward, inverse) pairs on the last two axes: hflip = identity and the horizontal flip,
    flip = the 4 horizontal/vertical flips, d4 = 8 (flips and quarter turns)."""
    if mode == "none":
        return [(lambda t: t, lambda t: t)]
    if mode == "hflip":
        return [(lambda t: t, lambda t: t), (lambda t: t.flip(-1), lambda t: t.flip(-1))]
    if mode == "flip":
        return [
            (lambda t, d=d: t.flip(d) if d else t, lambda t, d=d: t.flip(d) if d else t)  # type: ignore[misc]
            for d in ((), (-1,), (-2,), (-2, -1))
        ]
    out: list[_Transform] = []  # d4
    for k in range(4):
        out.append(
            (
                lambda t, k=k: torch.rot90(t, k, (-2, -1)),  # type: ignore[misc]
                lambda t, k=k: torch.rot90(t, -k, (-2, -1)),  # type: ignore[misc]
            )
        )
        out.append(
            (
                lambda t, k=k: torch.rot90(t.flip(-1), k, (-2, -1)),  # type: ignore[misc]
                lambda t, k=k: torch.rot90(t, -k, (-2, -1)).flip(-1),  # type: ignore[misc]
            )
        )
    return out


def _check_image(image: Any) -> Image:
    if isinstance(image, ArrayWindows):  # read by windows; duck-types the slicing the tiler uses
        return image
    if not isinstance(image, np.ndarray):
        raise DataError(f"expected a numpy array HxW or HxWxC, got {type(image).__name__}")
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[0] < 1 or image.shape[1] < 1 or image.shape[2] < 1:
        raise DataError(f"expected an image HxW or HxWxC, got an array of shape {image.shape}")
    if not (
        np.issubdtype(image.dtype, np.integer)
        or np.issubdtype(image.dtype, np.floating)
        or image.dtype == np.bool_
    ):
        raise DataError(f"expected an integer or float image, got dtype {image.dtype}")
    return image


@dataclass
class Settings:
    """The tiling of one call: its options, else the predictor's, else the card's defaults."""

    tile: int
    overlap: float
    blend: str
    tta: TTA
    batch_size: int


class Predictor:
    """Tiled inference with blending and TTA over any :class:`~segkit.engine.backend.Backend`."""

    def __init__(
        self,
        backend: Backend,
        *,
        tile: int | None = None,
        overlap: float | None = None,
        blend: str | None = None,
        tta: str | None = None,
        batch_size: int | None = None,
        temperature: float | None = None,
    ) -> None:
        self.backend = backend
        self.card: ModelCard = backend.card
        self.options = TileOptions.parse(
            tile=tile, overlap=overlap, blend=blend, tta=tta, batch_size=batch_size
        )
        self.temperature = float(
            temperature if temperature is not None else backend.card.temperature
        )
        """Divides the logits (applied to the blended probabilities; 1: as the network gives them).
        Defaults to the model's fitted temperature (:mod:`segkit.models.calibration`)."""
        if not self.temperature > 0:
            raise ConfigError(f"temperature must be > 0, got {self.temperature}")
        # Made once: creating them per image would wait for the GPU to finish the previous one.
        self._mean, self._std = (
            torch.tensor(v, dtype=torch.float32, device=self._device()).view(1, -1, 1, 1)
            for v in (self.card.mean, self.card.std)
        )

    @classmethod
    def from_path(
        cls,
        path: str | Path,
        device: str | None = None,
        tile: int | None = None,
        overlap: float | None = None,
        blend: str | None = None,
        tta: str | None = None,
        batch_size: int | None = None,
        temperature: float | None = None,
        **onnx_facts: Any,
    ) -> Predictor:
        """Open a ``.ckpt`` bundle (torch) or a ``.onnx`` export (onnxruntime).

        ``temperature=1.0`` gives the network's own (uncalibrated) probabilities. ``onnx_facts`` (``classes``, ``mean``, ``std``) describe an ONNX file without segkit metadata.
        """
        path = Path(path)
        facts = {k: v for k, v in onnx_facts.items() if v is not None}
        if not path.is_file():
            raise ModelError(f"{path}: model file not found")
        if path.suffix.lower() == ".onnx":
            from segkit.engine.onnx_backend import OnnxBackend

            backend: Backend = OnnxBackend.from_path(path, device=device, **facts)
        else:
            if facts:
                raise ConfigError(
                    f"{path}: {', '.join(sorted(facts))} only apply to .onnx models; a checkpoint carries its own"
                )
            from segkit.engine.torch_backend import TorchBackend

            backend = TorchBackend.from_path(path, device)
        return cls(
            backend,
            tile=tile,
            overlap=overlap,
            blend=blend,
            tta=tta,
            batch_size=batch_size,
            temperature=temperature,
        )

    def with_options(self, **options: Any) -> Predictor:
        """A predictor on the same backend whose unset (``None``) options keep this one's."""
        temperature = options.pop("temperature", None)
        merged = {
            **self.options.model_dump(),
            **{k: v for k, v in options.items() if v is not None},
        }
        return Predictor(
            self.backend,
            **merged,
            temperature=temperature if temperature is not None else self.temperature,
        )

    def settings(self, **overrides: Any) -> Settings:
        """Call options (``TileOptions`` fields), else the predictor's, else the card's defaults."""
        call = TileOptions.parse(**overrides) if overrides else TileOptions()

        def pick(key: str) -> Any:
            for source in (call, self.options, self.card.predict):
                if getattr(source, key) is not None:
                    return getattr(source, key)
            return None

        batch_size = pick("batch_size")
        return Settings(
            tile=int(pick("tile")),
            overlap=float(pick("overlap")),
            blend=str(pick("blend")),
            tta=pick("tta"),
            batch_size=int(batch_size)
            if batch_size is not None
            else default_batch_size(getattr(self.backend, "network_device", self._device())),
        )

    def passes_per_tile(self) -> int:
        """Network runs per tile: one per TTA transform (1, 4 for flip, 8 for d4)."""
        return len(_tta_transforms(self.settings().tta))

    def grid(
        self, height: int, width: int, tile: int | None = None, overlap: float | None = None
    ) -> TileGrid:
        """The tile grid an ``height x width`` image gets (``len(grid)`` = tiles per TTA pass)."""
        s = self.settings(tile=tile, overlap=overlap)
        return make_grid(height, width, s.tile, s.overlap, self.card.stride)

    def _prepare(self, pixels: np.ndarray) -> np.ndarray:
        """Raw ``h x w x C`` pixels with the model's channel count: uint8 stays uint8 (4x less to
        copy to a GPU), anything else becomes float32 in [0, 1]. Channels-first happens on the device."""
        if pixels.shape[2] in (2, 4) and pixels.shape[2] != self.card.in_channels:
            pixels = pixels[..., :-1]  # an array's gray + alpha or RGBA: transparency is no input
        x = adapt_channels(pixels, self.card.in_channels)
        if x.dtype != np.uint8:
            x = image_to_float(x)
        return x

    def _normalizer(self, images: Sequence[Image]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(N or 1, C, 1, 1)`` mean and std on the device for tiles of ``images``: the card's,
        or with per-image normalisation each image's own (:mod:`segkit.normalization`)."""
        if self.card.normalization == "dataset":
            return self._mean, self._std
        stats = [
            image_statistics(im, lambda rows: image_to_float(self._prepare(rows))) for im in images
        ]
        mean, std = (
            torch.from_numpy(np.stack(v))[:, :, None, None].to(self._device())
            for v in zip(*stats, strict=True)
        )
        return mean, std

    def _runner(
        self, tta: TTA, images: Sequence[Image]
    ) -> Callable[[torch.Tensor | np.ndarray], torch.Tensor]:
        """Batch of prepared tiles of ``images`` (one image's tiles, or one tile per image) ->
        mean over TTA passes of the probabilities, on the device."""
        transforms = _tta_transforms(tta)
        device = self._device()
        mean, std = self._normalizer(images)

        def run(batch: torch.Tensor | np.ndarray) -> torch.Tensor:
            x = torch.as_tensor(batch).to(device, non_blocking=True)
            x = x.float() / 255 if x.dtype == torch.uint8 else x.float()
            x = (x - mean) / std
            acc = None
            for fwd, inv in transforms:
                p = inv(self.backend(fwd(x).contiguous())).float()
                acc = p if acc is None else acc.add_(p)
            # acc is a fresh tensor: divide in place, and not at all for one pass
            return acc if len(transforms) == 1 else acc.div_(len(transforms))  # type: ignore[union-attr,return-value]

        return run

    def _device(self) -> torch.device:
        """Where tiles are cut and normalised: the torch backend's device (CPU for onnxruntime)."""
        return torch.device(getattr(self.backend, "device", "cpu"))

    def _blocks(
        self, image: Image, s: Settings, on_tiles: Callable[[int], None] | None = None
    ) -> Iterator[tuple[int, int, torch.Tensor]]:
        grid = make_grid(image.shape[0], image.shape[1], s.tile, s.overlap, self.card.stride)
        device = self._device()
        yield from iter_stitched(
            image,
            grid,
            self._runner(s.tta, [image]),
            self.card.num_classes,
            blend=s.blend,
            batch_size=s.batch_size,
            prepare=self._prepare,
            on_tiles=on_tiles,
            device=device,
            block_width=block_width(device),
        )

    def iter_blocks(
        self,
        image: Image,
        tile: int | None = None,
        overlap: float | None = None,
        blend: str | None = None,
        tta: str | None = None,
        *,
        on_tiles: Callable[[int], None] | None = None,
        as_tensor: bool = False,
        copy: bool = True,
    ) -> Iterator[tuple[int, int, np.ndarray]] | Iterator[tuple[int, int, torch.Tensor]]:
        """Yield ``(row, col, probs)`` blocks, ``probs`` float32 ``(K, h, w)``, in row-major order;
        together they cover the image exactly once. The streaming path of every output.

        ``image`` is ``H x W`` or ``H x W x C`` uint8/uint16/float (float assumed in [0, 1]); it is
        read one row of tiles at a time, so a memory-mapped image is never loaded whole.
        ``as_tensor`` yields torch tensors on the backend's device instead (arg-max there, copy
        less). ``copy=False`` yields views of the stitching buffer, valid only until the next block
        is requested: for consumers that use each block at once. ``on_tiles(n)`` is called after
        every batch of ``n`` tiles (progress bars).
        """
        image = _check_image(image)
        s = self.settings(tile=tile, overlap=overlap, blend=blend, tta=tta)
        for row, col, block in self._blocks(image, s, on_tiles):
            fresh = False  # a tensor of its own, not a view of the stitching buffer
            if self.temperature != 1.0:  # scales a view in place: it is used before the next
                block = apply_temperature(block.clone() if copy else block, self.temperature)
                fresh = copy
            if as_tensor:
                yield row, col, (block.clone() if copy and not fresh else block)
            else:
                on_host = block.cpu()  # a copy when the block is on a GPU, a view on the CPU
                own = copy and on_host is block and not fresh
                yield row, col, (on_host.numpy().copy() if own else on_host.numpy())

    def iter_bands(
        self,
        image: Image,
        tile: int | None = None,
        overlap: float | None = None,
        blend: str | None = None,
        tta: str | None = None,
        *,
        on_tiles: Callable[[int], None] | None = None,
    ) -> Iterator[tuple[int, np.ndarray]]:
        """Yield ``(row, probs)`` full-width bands, ``probs`` float32 ``(K, rows, W)``, top to
        bottom: the blocks of one tile row put together, for consumers that write by rows."""
        band: np.ndarray | None = None
        for row, col, block in self.iter_blocks(
            image, tile, overlap, blend, tta, on_tiles=on_tiles, copy=False
        ):
            if col == 0:
                band = np.empty((block.shape[0], block.shape[1], image.shape[1]), np.float32)
            assert band is not None
            band[:, :, col : col + block.shape[2]] = block
            if col + block.shape[2] == image.shape[1]:
                yield row, band

    def batch_key(self, image: Image) -> BatchKey | None:
        """Images with equal keys can share forward passes (:meth:`probs_together`): each fits one
        tile of the same shape and has the same pixel type. None when an image needs several tiles."""
        s = self.settings()
        grid = make_grid(image.shape[0], image.shape[1], s.tile, s.overlap, self.card.stride)
        if len(grid) != 1:
            return None
        return BatchKey(grid.tile_h, grid.tile_w, image.dtype == np.uint8)

    def pixels_per_pass(self) -> int:
        """Pixels in one forward pass of ``batch_size`` full (stride-rounded) tiles."""
        s = self.settings()
        full = make_grid(s.tile, s.tile, s.tile, s.overlap, self.card.stride)
        return s.batch_size * full.tile_h * full.tile_w

    def images_per_pass(self, key: BatchKey) -> int:
        """How many images with ``key`` share a forward pass: as many as fit in the pixels of
        ``batch_size`` full tiles (at batch 1 and tile 512: 4 images of 256², 16 of 128²), so a
        pass holds no more than a batch of full tiles does."""
        per_tile = self.pixels_per_pass() // self.settings().batch_size
        return self.settings().batch_size * max(1, per_tile // (key.tile_h * key.tile_w))

    def probs_together(self, images: Sequence[Image]) -> list[torch.Tensor]:
        """``(K, h, w)`` float32 probabilities, on the backend's device, of images with one
        :meth:`batch_key`, :meth:`images_per_pass` images per forward pass.

        Each image gets what :meth:`iter_blocks` gives it alone (the same tile; one tile needs no
        blending), but a folder of small images fills the passes instead of one small tile each.
        """
        images = [_check_image(im) for im in images]
        keys = {self.batch_key(im) for im in images}
        key = keys.pop() if len(keys) == 1 else None
        if key is None:
            raise ValueError("probs_together takes images that each fit one tile of the same shape")
        s = self.settings()
        device = self._device()
        per_pass = self.images_per_pass(key)
        out: list[torch.Tensor] = []
        for start in range(0, len(images), per_pass):
            chunk = images[start : start + per_pass]
            run = self._runner(s.tta, chunk)
            tiles = np.stack(
                [self._prepare(extract_tile(im, 0, 0, key.tile_h, key.tile_w)) for im in chunk]
            )
            probs = torch.as_tensor(run(to_device(tiles, device).permute(0, 3, 1, 2)))
            probs = apply_temperature(probs, self.temperature)  # a fresh tensor: in place
            out += [p[:, : im.shape[0], : im.shape[1]] for im, p in zip(chunk, probs, strict=True)]
        return out

    def predict_proba(
        self,
        image: Image,
        tile: int | None = None,
        overlap: float | None = None,
        blend: str | None = None,
        tta: str | None = None,
    ) -> np.ndarray:
        """``(K, H, W)`` float32 class probabilities (sums to 1 over K) for an ``H x W [x C]`` image."""
        image = _check_image(image)
        out = np.empty((self.card.num_classes, image.shape[0], image.shape[1]), dtype=np.float32)
        for row, col, block in self.iter_blocks(image, tile, overlap, blend, tta, copy=False):
            out[:, row : row + block.shape[1], col : col + block.shape[2]] = block
        return out

    def predict(
        self,
        image: Image,
        tile: int | None = None,
        overlap: float | None = None,
        blend: str | None = None,
        tta: str | None = None,
    ) -> np.ndarray:
        """``(H, W)`` class indices: uint8 when the model has <= 256 classes, else int32."""
        image = _check_image(image)
        out = np.empty(image.shape[:2], dtype=label_dtype(self.card.num_classes))
        s = self.settings(tile=tile, overlap=overlap, blend=blend, tta=tta)
        labels = HostLabels(out)
        for row, col, block in self._blocks(image, s):
            labels.add(row, col, block)
        labels.flush()
        return out

    def blocks_many(
        self, images: Iterable[Image]
    ) -> Iterator[Iterator[tuple[int, int, torch.Tensor]]]:
        """Per image, in order, its ``(row, col, (K, h, w) probabilities)`` blocks as tensors on
        the backend's device (:meth:`iter_blocks` with ``as_tensor=True, copy=False``: use each
        block, and each image's blocks, before asking for the next). ``images`` is read lazily;
        consecutive images that fit one tile of one shape share forward passes."""
        keyed = ((image, self.batch_key(_check_image(image))) for image in images)
        for group in consecutive_batches(keyed, lambda pair: pair[1], self.images_per_pass):
            if group[0][1] is None:
                yield self.iter_blocks(group[0][0], as_tensor=True, copy=False)  # type: ignore[misc]
                continue
            for probs in self.probs_together([image for image, _ in group]):
                yield iter([(0, 0, probs)])

    def predict_many(self, images: Iterable[Image]) -> Iterator[np.ndarray]:
        """:meth:`predict` of each image, in order, reading ``images`` lazily. Consecutive images
        that fit one tile of the same shape share forward passes (:meth:`probs_together`)."""
        keyed = ((image, self.batch_key(_check_image(image))) for image in images)
        for group in consecutive_batches(keyed, lambda pair: pair[1], self.images_per_pass):
            if group[0][1] is None:
                yield self.predict(group[0][0])
                continue
            yield from map(argmax_labels, self.probs_together([image for image, _ in group]))


class BatchKey(NamedTuple):
    """What images must share to go through one forward pass together."""

    tile_h: int
    tile_w: int
    uint8: bool  # uint8 pixels are normalised on the device; others arrive as float32


def consecutive_batches(
    items: Iterable[T], key: Callable[[T], K | None], size: Callable[[K], int]
) -> Iterator[list[T]]:
    """Runs of consecutive items with one key, at most ``size(key)`` at a time; an item whose key
    is None comes alone. A batch that ends a run is yielded after the next item has been read."""
    for k, same in groupby(items, key):
        if k is None:
            yield from ([item] for item in same)
            continue
        batch: list[T] = []
        for item in same:
            batch.append(item)
            if len(batch) == size(k):
                yield batch
                batch = []
        if batch:
            yield batch
