"""A segkit ONNX export's self-description: two ``metadata_props`` entries, each one JSON object.

``segkit.model_card`` is the :class:`~segkit.card.ModelCard`, the same JSON the checkpoint holds
under ``hyper_parameters["model_card"]``; ``segkit.export`` describes the graph (:class:`GraphFacts`:
its head, whether it normalises, ...), which a checkpoint does not have. Also serves ONNX files
segkit did not write (their card is made from what the caller supplies and the input shape) and
exports of older segkits (one key per fact, read through :func:`segkit.card.card_from_legacy`).

This is the reading side, which the engine's onnxruntime backend needs; the export writes the two
entries (:func:`segkit.export.onnx.write_onnx_metadata`).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal, get_args

from pydantic import BaseModel, ConfigDict, ValidationError

from segkit.card import ModelCard, card_from_legacy, is_legacy, validate_card
from segkit.config import PredictConfig
from segkit.errors import ModelError, first_line
from segkit.io.palette import default_colors

CARD_METADATA_KEY = "segkit.model_card"
GRAPH_METADATA_KEY = "segkit.export"
Head = Literal["logits", "probs", "labels"]
HEADS: tuple[str, ...] = get_args(Head)


class GraphFacts(BaseModel):
    """What the exported graph is, beyond the model it came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    head: Head = "logits"
    """Output: logits, softmax probabilities, or arg-max labels."""
    normalize_in_graph: bool = False
    """The graph takes raw 0..255 pixels and normalises itself."""
    fp16: bool = False
    dynamic: bool = True
    source_sha256: str | None = None
    """SHA-256 of the checkpoint it was exported from."""


def read_onnx_metadata(path: str | Path) -> dict[str, str]:
    """The ``metadata_props`` of an ONNX file as a dict (empty for a file segkit did not write)."""
    proto = _load_onnx(path)
    return {p.key: p.value for p in proto.metadata_props}


def _load_onnx(path: str | Path) -> Any:
    import onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: ONNX file not found")
    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf's DecodeError and friends
        raise ModelError(
            f"{path}: not a readable ONNX model (truncated or corrupt?): {first_line(e)}"
        ) from None


def _input_shape(proto: Any) -> list[Any] | None:
    if not proto.graph.input:
        return None
    dims = proto.graph.input[0].type.tensor_type.shape.dim
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in dims]


def onnx_card(
    source: str | Path | dict[str, str],
    classes: list[str] | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
    *,
    input_shape: list[Any] | None = None,
    name: str | Path | None = None,
) -> ModelCard:
    """The ModelCard of an ONNX model: its ``segkit.model_card`` entry, else one made from
    ``classes``, ``mean`` and ``std`` (a model segkit did not export: its channel count is read
    from the input shape and its stride is 32). A static input shape fixes the tile and the
    batch size. ``source`` is a path or the metadata dict itself; a ModelError names everything
    that is missing, and the file (``name`` for a dict).
    """
    name = str(name or (source if not isinstance(source, dict) else "ONNX metadata"))
    if isinstance(source, dict):
        meta = dict(source)
    else:
        proto = _load_onnx(source)
        meta = {p.key: p.value for p in proto.metadata_props}
        input_shape = input_shape if input_shape is not None else _input_shape(proto)
    facts = {k: v for k, v in (("classes", classes), ("mean", mean), ("std", std)) if v}
    if CARD_METADATA_KEY in meta or is_legacy(meta):
        if facts:
            raise ModelError(
                f"{name}: {', '.join(facts)} only apply to an ONNX file without segkit metadata; "
                "this one carries its own"
            )
        card = (
            validate_card(_json(meta, CARD_METADATA_KEY, name), name)
            if CARD_METADATA_KEY in meta
            else card_from_legacy(meta, name)
        )
    else:
        card = _foreign_card(facts, input_shape, name)
    static: dict[str, int] = {}
    if input_shape is not None and len(input_shape) == 4:
        if all(isinstance(d, int) and d > 0 for d in input_shape[2:]):
            static["tile"] = min(input_shape[2:])
        if isinstance(input_shape[0], int) and input_shape[0] > 0:
            static["batch_size"] = input_shape[0]
    if not static:
        return card
    # What the graph can run, whatever the card recommends (not a new card: no re-validation).
    return card.model_copy(update={"predict": card.predict.model_copy(update=static)})


def _foreign_card(
    facts: dict[str, list[Any]], input_shape: list[Any] | None, name: str
) -> ModelCard:
    in_channels = (
        input_shape[1]
        if input_shape is not None and len(input_shape) == 4 and isinstance(input_shape[1], int)
        else None
    )
    missing = [n for n in ("classes", "mean", "std") if n not in facts]
    if in_channels is None:
        missing.append("in_channels")
    if missing:
        how = {
            "classes": "--classes NAME ...",
            "mean": "--mean M ...",
            "std": "--std S ...",
            "in_channels": "a static channel dimension in the input shape",
        }
        raise ModelError(
            f"{name}: no segkit metadata for {', '.join(missing)} (not a segkit export?); "
            f"supply {', '.join(how[m] for m in missing)}"
        )
    classes = [str(c) for c in facts["classes"]]
    return validate_card(
        {
            "in_channels": in_channels,
            "classes": classes,
            "colors": default_colors(len(classes)).tolist(),
            "mean": facts["mean"],
            "std": facts["std"],
            "predict": PredictConfig(tile=512).model_dump(),
        },
        name,
    )


def graph_facts(meta: dict[str, str], integer_output: bool, name: str | Path) -> GraphFacts:
    """The ``segkit.export`` entry of an ONNX file; for an older segkit's export its ``head`` and
    ``normalize_in_graph`` keys; for a foreign file labels when the output is integer, else logits."""
    try:
        if GRAPH_METADATA_KEY in meta:
            return GraphFacts.model_validate(_json(meta, GRAPH_METADATA_KEY, name))
        if "head" in meta:  # an older segkit's export
            normalize = json.loads(meta.get("normalize_in_graph", "false")) is True
            return GraphFacts(head=meta["head"], normalize_in_graph=normalize)
    except ValidationError as e:
        raise ModelError(
            f"{name}: malformed {GRAPH_METADATA_KEY} metadata: {first_line(e)}"
        ) from None
    return GraphFacts(head="labels" if integer_output else "logits")


def _json(meta: dict[str, str], key: str, name: str | Path) -> Any:
    try:
        return json.loads(meta[key])
    except json.JSONDecodeError:
        raise ModelError(f"{name}: metadata '{key}' is not JSON: {meta[key][:80]!r}") from None
