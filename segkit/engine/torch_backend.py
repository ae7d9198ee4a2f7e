"""The PyTorch backend: a bundle's smp model in eval mode, fast on GPU, exact fp32 on CPU."""

from __future__ import annotations

import contextlib
import copy
from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segkit.bundle import Bundle, load_bundle
from segkit.card import ModelCard
from segkit.errors import ModelError


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``None`` = CUDA when available, else CPU; a CUDA request without CUDA is a clear error."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ModelError(f"unknown device '{device}' (use cpu, cuda or cuda:N): {e}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelError(
            f"device '{device}' requested but CUDA is not available here; use --device cpu"
        )
    return dev


def fold_batch_norms(model: nn.Module) -> int:
    """Fold each eval-mode ``BatchNorm2d`` into the ``Conv2d`` whose output only it reads, in
    place: the same function with one kernel less per convolution. On an H100, batch-norm took 13%
    of Unet-resnet34's GPU time and 46 of its ~300 kernels per pass, launched one by one from
    the CPU, which was the bottleneck (benchmarks/profile_predict.py). Returns how many.

    torch.fx finds the pairs; a module it cannot trace (smp's models check the input shape in
    ``forward``) is searched child by child. The module tree and its Python code stay as they
    are: folded convolutions get new weights and their batch-norms become ``Identity``.
    """
    from torch.fx import Node, symbolic_trace
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    try:
        graph = symbolic_trace(model).graph
    except Exception:  # noqa: BLE001 - untraceable Python in forward: look inside instead
        return sum(fold_batch_norms(child) for child in model.children())
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    folded = 0
    for node in graph.nodes:
        source = node.args[0] if node.op == "call_module" and node.args else None
        if not (
            isinstance(source, Node)
            and source.op == "call_module"
            and len(source.users) == 1
            and calls[node.target] == calls[source.target] == 1
        ):
            continue
        conv, bn = model.get_submodule(str(source.target)), model.get_submodule(str(node.target))
        if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d or bn.training:
            continue  # exact types: subclasses (timm's BatchNormAct2d ...) do more than this
        if bn.running_mean is None or bn.running_var is None:
            continue
        model.set_submodule(str(source.target), fuse_conv_bn_eval(conv, bn))
        model.set_submodule(str(node.target), nn.Identity())
        folded += 1
    return folded


class TorchBackend:
    """Runs a torch model on normalised tiles and returns float32 softmax probabilities.

    The model runs channels_last on every device: oneDNN's NHWC convolutions are about a fifth
    faster on a CPU too (0.52 vs 0.66 s per 512² tile for Unet-resnet34 on 2 cores). On CUDA it
    also runs under autocast (bf16 where supported, else fp16), with its batch-norms folded into
    the convolutions (:func:`fold_batch_norms`); on CPU it stays fp32 (bf16 autocast is far slower
    there). Softmax is always taken in float32.
    """

    def __init__(
        self,
        bundle: Bundle | None = None,
        device: str | torch.device | None = None,
        *,
        model: nn.Module | None = None,
        card: ModelCard | None = None,
    ) -> None:
        if bundle is None and (model is None or card is None):
            raise ValueError("TorchBackend needs a bundle, or both model= and card=")
        self.device = resolve_device(device)
        self.card: ModelCard = card or bundle.card  # type: ignore[union-attr]
        cuda = self.device.type == "cuda"
        if model is None:
            model = bundle.build_model()  # type: ignore[union-attr]
        elif cuda:
            model = copy.deepcopy(model)  # folded below: the caller's module keeps its layers
        model = model.eval()
        if cuda:  # on a CPU oneDNN is as fast without (benchmarks/bench_onnx.py)
            fold_batch_norms(model)
        # torch takes a device and a memory format together; its type stubs list them apart
        self.model = model.to(self.device, memory_format=torch.channels_last)  # type: ignore[call-overload]
        self._amp_dtype: torch.dtype | None = None
        if cuda:
            self._amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16

    @classmethod
    def from_path(cls, path: str | Path, device: str | torch.device | None = None) -> TorchBackend:
        """Load a segkit ``.ckpt`` bundle (safely, ``weights_only=True``)."""
        return cls(load_bundle(path), device)

    def __call__(self, tiles: torch.Tensor) -> torch.Tensor:
        """``(N, C, h, w)`` float32 normalised tiles -> ``(N, K, h, w)`` float32 probabilities."""
        if tiles.shape[1] != self.card.in_channels:
            raise ModelError(
                f"the model takes {self.card.in_channels} channels, got tiles with {tiles.shape[1]}"
            )
        x = tiles.to(self.device, non_blocking=True).contiguous(memory_format=torch.channels_last)
        amp: contextlib.AbstractContextManager[Any] = contextlib.nullcontext()
        if self._amp_dtype is not None:
            amp = torch.autocast("cuda", dtype=self._amp_dtype)
        with torch.inference_mode(), amp:
            logits = self.model(x)
        # Back to plain NCHW, as the onnxruntime backend returns it: callers of either backend
        # (the tiler, MONAI in the benchmark) see one layout. It costs a copy (~7 ms per
        # 12 x 512² tile on a CPU) and saves the stitcher's strided adds (~3 ms).
        return logits_to_probs(logits.float(), self.card.num_classes).contiguous()


def logits_to_probs(logits: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Softmax over classes; a single-channel binary head becomes ``[1 - sigmoid, sigmoid]``."""
    if logits.shape[1] == 1 and num_classes == 2:
        p = torch.sigmoid(logits)
        return torch.cat([1 - p, p], dim=1)
    if logits.shape[1] != num_classes:
        raise ModelError(
            f"the model outputs {logits.shape[1]} channels but has {num_classes} classes"
        )
    return torch.softmax(logits, dim=1)
