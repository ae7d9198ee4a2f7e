"""Export a segkit bundle to a verified, self-describing ONNX file (read back: engine.onnx_metadata).

The graph is checked with ``onnx.checker`` and run with onnxruntime against the eager torch model
on two input shapes before it is moved into place, so a file under the final name has passed
verification. Its ``metadata_props`` carry the checkpoint's model card (classes, colours,
normalisation, stride, recommended tiling, the training config) and what the graph is
(:mod:`segkit.engine.onnx_metadata`), so ``segkit predict model.onnx`` needs no config.

Exporter choice: the TorchScript exporter (``dynamo=False``) is 10-50x faster than the
torch.export-based one on smp models and keeps batch/height/width dynamic for every smp
architecture tried (the dynamo exporter specialised Segformer's batch dimension); the dynamo
exporter is the fallback when tracing fails.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import io
import math
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from segkit.card import ModelCard
from segkit.engine.onnx_metadata import (
    CARD_METADATA_KEY,
    GRAPH_METADATA_KEY,
    HEADS,
    GraphFacts,
    onnx_card,
    read_onnx_metadata,
)
from segkit.errors import ConfigError, ModelError, first_line
from segkit.utils import atomic_path

__all__ = ["export_onnx", "onnx_card", "read_onnx_metadata"]

INPUT_NAME = "image"
DEFAULT_TOLERANCE = 1e-3
DEFAULT_TOLERANCE_FP16 = 1e-1


class _ExportWrapper(nn.Module):
    """The graph segkit exports: optional in-graph normalisation, the model, then the head.

    Input ``(N, C, H, W)`` float32 (normalised, or raw 0..255 with ``normalize_in_graph``).
    Output ``(N, K, H, W)`` float32 logits or probabilities, or ``(N, H, W)`` labels (uint8 when
    K <= 256, else int64). With ``fp16`` the weights are half precision but input and output stay
    float32, so callers never change.
    """

    mean: torch.Tensor  # buffers, registered in __init__
    std: torch.Tensor

    def __init__(
        self,
        model: nn.Module,
        head: str,
        mean: list[float],
        std: list[float],
        normalize_in_graph: bool,
        fp16: bool,
        num_classes: int,
    ) -> None:
        super().__init__()
        self.model = model
        self.head = head
        self.normalize_in_graph = normalize_in_graph
        self.fp16 = fp16
        self.label_dtype = torch.uint8 if num_classes <= 256 else torch.int64
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.normalize_in_graph:
            x = (x / 255.0 - self.mean) / self.std
        y = self.model(x.half() if self.fp16 else x).float()
        if self.head == "probs":
            return torch.softmax(y, dim=1)
        if self.head == "labels":
            return y.argmax(dim=1).to(self.label_dtype)
        return y


def export_onnx(
    model_path: str | Path,
    output: str | Path,
    *,
    opset: int = 17,
    head: str = "logits",
    dynamic: bool = True,
    normalize_in_graph: bool = False,
    fp16: bool = False,
    tolerance: float | None = None,
) -> float:
    """Export the bundle at ``model_path`` to ``output`` and verify it; returns the difference found.

    The difference is the max abs difference of the graph output versus eager torch (fp32) over
    the verification inputs, or for ``head="labels"`` the fraction of pixels whose label differs.
    Above ``tolerance`` (default 1e-3, 1e-1 with ``fp16``) a ModelError is raised and no file is
    left behind. ``dynamic=False`` fixes the input to ``(1, C, tile, tile)``.

    Graph input ``image``: ``(N, C, H, W)`` float32, normalised (or raw 0..255 with
    ``normalize_in_graph``). Output ``logits``/``probs`` ``(N, K, H, W)`` float32, or ``labels``
    ``(N, H, W)`` uint8 (int64 past 256 classes). ``fp16`` halves the weights for GPU deployment
    (input and output stay float32); it is verified on onnxruntime's CPU provider against the
    fp32 torch model.
    """
    from segkit.bundle import load_bundle

    if head not in HEADS:
        raise ConfigError(f"export: unknown head '{head}' (allowed: {', '.join(HEADS)})")
    tol = (
        tolerance
        if tolerance is not None
        else (DEFAULT_TOLERANCE_FP16 if fp16 else DEFAULT_TOLERANCE)
    )
    model_path, output = Path(model_path), Path(output)
    if output.resolve() == model_path.resolve():
        raise ConfigError(f"export: --output {output} would overwrite the checkpoint it exports")
    bundle = load_bundle(model_path)
    card = bundle.card
    if normalize_in_graph and card.normalization == "image":
        raise ConfigError(
            f"export: {model_path} normalises each image by its own statistics, which a graph "
            "that sees one tile cannot compute: export without --normalize-in-graph"
        )
    model = bundle.build_model().float().eval()

    def wrap(net: nn.Module, half: bool) -> _ExportWrapper:
        return _ExportWrapper(
            net, head, card.mean, card.std, normalize_in_graph, half, card.num_classes
        ).eval()

    reference = wrap(model, False)
    graph = wrap(copy.deepcopy(model).half(), True) if fp16 else reference
    shapes = _verification_shapes(card.in_channels, card.stride, card.tile, dynamic)
    facts = GraphFacts(
        head=head,  # checked against HEADS above
        normalize_in_graph=normalize_in_graph,
        fp16=fp16,
        dynamic=dynamic,
        source_sha256=_sha256(model_path),
    )
    with atomic_path(output) as tmp:
        _torch_export(
            graph, shapes[0], tmp, opset=opset, head=head, dynamic=dynamic, source=model_path
        )
        write_onnx_metadata(tmp, card, facts)
        diff = _verify(
            tmp,
            reference,
            shapes,
            head=head,
            normalize_in_graph=normalize_in_graph,
            name=output,
        )
        if not diff <= tol:
            what = "fraction of differing labels" if head == "labels" else "max abs difference"
            raise ModelError(
                f"{model_path}: ONNX verification failed: onnxruntime vs torch {what} {diff:.3g} > tolerance {tol:g} "
                f"(shapes {', '.join('x'.join(map(str, s)) for s in shapes)}); nothing was written to {output}"
            )
    return diff


def _verification_shapes(
    channels: int, stride: int, tile: int, dynamic: bool
) -> list[tuple[int, ...]]:
    """Two shapes (one non-square, one with batch 2), multiples of the stride; one for static graphs."""
    if not dynamic:
        size = max(stride, tile // stride * stride)  # as the tiler rounds its tiles
        return [(1, channels, size, size)]
    unit = stride * math.ceil(32 / stride)
    return [(1, channels, 2 * unit, 3 * unit), (2, channels, 3 * unit, 2 * unit)]


def _torch_export(
    graph: nn.Module,
    shape: tuple[int, ...],
    path: Path,
    *,
    opset: int,
    head: str,
    dynamic: bool,
    source: Path,
) -> None:
    example = torch.zeros(shape)
    out_name = head
    spatial = (
        {0: "batch", 1: "height", 2: "width"}
        if head == "labels"
        else {0: "batch", 2: "height", 3: "width"}
    )
    axes = (
        {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}, out_name: spatial} if dynamic else None
    )
    errors = []
    # The chatter of both exporters (deprecation notice, progress lines) is not the user's business.
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[out_name],
                opset_version=opset,
                dynamic_axes=axes,
                do_constant_folding=True,
                dynamo=False,
            )
            return
        except Exception as e:  # noqa: BLE001 - any tracing failure falls through to the other exporter
            errors.append(f"TorchScript exporter: {first_line(e)}")
        try:
            from torch.export import Dim

            shapes = ({0: Dim("batch"), 2: Dim("height"), 3: Dim("width")},) if dynamic else None
            example = (
                torch.zeros((2, *shape[1:])) if dynamic else example
            )  # batch 1 would be specialised
            torch.onnx.export(
                graph,
                (example,),
                str(path),
                input_names=[INPUT_NAME],
                output_names=[out_name],
                opset_version=opset,
                dynamic_shapes=shapes,
                dynamo=True,
                verbose=False,
            )
            return
        except Exception as e:  # noqa: BLE001
            errors.append(f"dynamo exporter: {first_line(e)}")
    raise ModelError(f"{source}: ONNX export failed (opset {opset}): " + "; ".join(errors))


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _verify(
    path: Path,
    reference: nn.Module,
    shapes: list[tuple[int, ...]],
    *,
    head: str,
    normalize_in_graph: bool,
    name: Path,
) -> float:
    """Check the file with onnx.checker, then compare onnxruntime (CPU) with eager torch.

    ``path`` is the temporary file; messages name ``name``, the file the user asked for.
    """
    import onnx
    import onnxruntime as ort

    try:
        onnx.checker.check_model(str(path), full_check=True)
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001 - checker and onnxruntime raise their own types
        raise ModelError(
            f"{name}: the exported graph does not pass onnx.checker/onnxruntime: {first_line(e)}"
        ) from e
    generator = torch.Generator().manual_seed(0)
    worst = 0.0
    for shape in shapes:
        x = torch.randn(shape, generator=generator)
        if normalize_in_graph:  # raw pixel values; the reference normalises in the same wrapper
            x = torch.rand(shape, generator=generator) * 255.0
        with torch.no_grad():
            expected = reference(x).numpy()
        try:
            got = session.run(None, {INPUT_NAME: x.numpy()})[0]
        except Exception as e:  # noqa: BLE001
            raise ModelError(
                f"{name}: onnxruntime cannot run the exported graph on {shape}: {first_line(e)}"
            ) from e
        if got.shape != expected.shape:
            raise ModelError(
                f"{name}: onnxruntime output shape {got.shape} != torch {expected.shape} for input {shape}"
            )
        if head == "labels":
            diff = float(np.mean(got.astype(np.int64) != expected.astype(np.int64)))
        else:
            diff = float(np.max(np.abs(got.astype(np.float32) - expected))) if got.size else 0.0
        worst = max(worst, diff) if not math.isnan(diff) else math.inf
    return worst


def write_onnx_metadata(path: Path, card: ModelCard, graph: GraphFacts) -> None:
    """Replace the ``metadata_props`` of the ONNX file at ``path`` with the two segkit entries."""
    import onnx

    proto = onnx.load(str(path))
    del proto.metadata_props[:]
    proto.metadata_props.add(key=CARD_METADATA_KEY, value=card.model_dump_json())
    proto.metadata_props.add(key=GRAPH_METADATA_KEY, value=graph.model_dump_json())
    proto.doc_string = (
        f"segkit export: the model card is JSON in metadata_props['{CARD_METADATA_KEY}']"
    )
    onnx.save(proto, str(path))
