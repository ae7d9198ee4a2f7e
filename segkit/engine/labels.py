"""Class labels from probabilities: the arg-max, in the narrowest dtype, without stalling a GPU."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

import numpy as np
import torch


def label_dtype(num_classes: int) -> np.dtype:
    """uint8 labels up to 256 classes (what PNG masks hold), int32 beyond."""
    return np.dtype(np.uint8) if num_classes <= 256 else np.dtype(np.int32)


def argmax_labels(probs: torch.Tensor | np.ndarray) -> np.ndarray:
    """Arg-max over classes of ``(K, h, w)`` probabilities, taken where they are (GPU or CPU)
    and narrowed to :func:`label_dtype` before the copy to the host (8x fewer bytes than int64)."""
    if isinstance(probs, np.ndarray):
        return probs.argmax(0).astype(label_dtype(probs.shape[0]))
    return _labels_in_place(probs).cpu().numpy()


def _labels_in_place(probs: torch.Tensor) -> torch.Tensor:
    """:func:`argmax_labels` left on the probabilities' device."""
    dtype = torch.uint8 if label_dtype(probs.shape[0]) == np.uint8 else torch.int32
    # max(0).indices is argmax(0) (the first maximum on ties) but ~6x faster over the class axis
    # on a CPU: 0.03 vs 0.21 s for 12 x 512 x 2048 (torch 2.14, 2 cores).
    return probs.max(0).indices.to(dtype)


class HostLabels:
    """Writes the arg-max labels of stitched blocks into a host label map without stalling a GPU.

    ``reduce`` maps ``(K, h, w)`` probabilities to another ``(h, w)`` map instead of the labels
    (the uncertainty maps), with the same lagged copies.

    On a CPU, a block's labels are written at once. On CUDA, the arg-max and an asynchronous copy
    into pinned memory are queued behind the network, and the block is written ``lag`` blocks
    later (or at :meth:`flush`). A plain ``.cpu()`` per block would make the host wait for the GPU
    to drain at the end of every row of tiles, and the GPU idle while the host queues the next.
    """

    def __init__(
        self,
        out: np.ndarray,
        lag: int = 2,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.out = out
        self.lag = lag
        self.reduce = reduce
        self._pending: deque[tuple[int, int, torch.Tensor, torch.cuda.Event]] = deque()

    def add(self, row: int, col: int, probs: torch.Tensor | np.ndarray) -> None:
        """Take the ``(K, h, w)`` probabilities of the block at ``(row, col)``."""
        if not isinstance(probs, torch.Tensor) or probs.device.type != "cuda":
            if self.reduce is None:
                values = argmax_labels(probs)
            else:
                tensor = probs if isinstance(probs, torch.Tensor) else torch.from_numpy(probs)
                values = self.reduce(tensor).cpu().numpy()
            self.out[row : row + values.shape[0], col : col + values.shape[1]] = values
            return
        on_device = _labels_in_place(probs) if self.reduce is None else self.reduce(probs)
        host = on_device.to("cpu", non_blocking=True)  # pinned, filled later
        copied = torch.cuda.Event()
        copied.record(torch.cuda.current_stream(probs.device))
        self._pending.append((row, col, host, copied))
        while len(self._pending) > self.lag:
            self._write_oldest()

    def flush(self) -> None:
        """Write every block still on its way (call before reading ``out``)."""
        while self._pending:
            self._write_oldest()

    def _write_oldest(self) -> None:
        row, col, host, copied = self._pending.popleft()
        copied.synchronize()
        self.out[row : row + host.shape[0], col : col + host.shape[1]] = host.numpy()
