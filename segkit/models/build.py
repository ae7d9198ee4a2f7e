"""One door to a model: ``build_model`` turns a ModelConfig into an smp network.

smp already maps architecture and encoder names to classes (ModelConfig checks the names when a
config is loaded), so this module only resolves ``encoder_weights`` (a named smp/timm weight set,
none, or a local file) and drops unset (``None``) keyword arguments.
"""

from __future__ import annotations

import contextlib
import socket
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import segmentation_models_pytorch as smp
import torch
from torch import nn

from segkit.config import ModelConfig, is_weights_file
from segkit.errors import ModelError, first_line

# Keys a classification checkpoint has but an encoder does not need.
_CLASSIFIER_PREFIXES = ("fc.", "classifier.", "head.", "last_linear.", "head_drop.", "global_pool.")


def build_model(model: ModelConfig, num_classes: int, in_channels: int) -> nn.Module:
    """Build the smp network for ``model`` with ``num_classes`` output channels (logits).

    Input ``(N, in_channels, H, W)`` float, output ``(N, num_classes, H, W)`` logits; H and W must
    be multiples of :func:`model_stride`.
    """
    weights = model.encoder_weights
    local = Path(weights).expanduser() if is_weights_file(weights) else None
    named: Any = None if local is not None else weights
    if named is not None and model.encoder.startswith("tu-"):
        named = True  # timm encoders pick their weight set from the name (tu-<model>.<tag>)
    kwargs = {k: v for k, v in model.kwargs.items() if v is not None}
    unreachable = _unreachable_hub() if named is not None else None
    try:
        with warnings.catch_warnings(), _hub_offline(unreachable is not None):
            warnings.filterwarnings("ignore", message=".*timm- encoders are deprecated.*")
            net = smp.create_model(
                model.arch,
                encoder_name=model.encoder,
                encoder_weights=named,
                in_channels=in_channels,
                classes=num_classes,
                **kwargs,
            )
    except TypeError as e:
        raise ModelError(
            f"model.kwargs: {model.arch} does not accept these arguments ({e})"
        ) from None
    except KeyError as e:  # smp: a weight set the encoder does not have
        raise ModelError(
            f"model.encoder_weights: {str(e).strip(chr(34) + chr(39))}; use null or a local weights file"
        ) from None
    except (OSError, RuntimeError, ValueError) as e:
        if named is None:
            raise ModelError(
                f"model: cannot build {model.arch}/{model.encoder}: {first_line(e)}"
            ) from None
        if unreachable is not None:
            raise ModelError(
                f"model.encoder_weights: '{weights}' weights for {model.encoder} are not cached "
                f"and {unreachable} cannot be reached (offline?); set model.encoder_weights=null "
                "for random init, or to a local weights file"
            ) from None
        raise ModelError(
            f"model.encoder_weights: could not get '{weights}' weights for {model.encoder} "
            f"({type(e).__name__}: {first_line(e, 200)}); offline? download them once, "
            "or set model.encoder_weights to a local .pth/.safetensors file, or to null for random init"
        ) from None
    if local is not None:
        load_encoder_weights(net, local, in_channels)
    return net


def _unreachable_hub(timeout: float = 3.0) -> str | None:
    """The weights host when it cannot be reached (or offline mode is on), else None.

    One short connection attempt, so that an offline machine fails at once instead of after the
    hub client's retries; cached weights still load (see :func:`_hub_offline`).
    """
    from huggingface_hub import constants

    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"
    if constants.HF_HUB_OFFLINE:
        return host
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
    except OSError:
        return host
    return None


@contextlib.contextmanager
def _hub_offline(offline: bool) -> Iterator[None]:
    """Hugging Face Hub offline mode (cache only, no network) while building, when ``offline``.

    ``HF_HUB_OFFLINE`` is read once at import, so the switch is the module constant.
    """
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = before or offline
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def model_stride(model: nn.Module) -> int:
    """The factor input height and width must be multiples of (smp encoders' ``output_stride``)."""
    encoder = getattr(model, "encoder", None)
    stride = getattr(encoder, "output_stride", None)
    return int(stride) if stride else 32


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ModelError(f"{path}: encoder weights file not found (model.encoder_weights)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state: Any = load_file(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # any unreadable file becomes one clear line
        raise ModelError(
            f"{path}: cannot read encoder weights ({type(e).__name__}: {first_line(e, 160)})"
        ) from None
    for key in ("state_dict", "model", "model_state_dict"):  # common wrappers
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path}: not a state_dict of tensors (expected {{name: tensor}})")
    return state


def _strip(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    if state and all(k.startswith(prefix) for k in state):
        return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _align_keys(state: dict[str, torch.Tensor], target: set[str]) -> dict[str, torch.Tensor]:
    """Map the file's key names onto the encoder's: DDP ``module.``, a whole smp model's
    ``encoder.``, and timm-universal encoders' ``model.`` prefix are handled."""
    state = _strip(state, "module.")
    if any(k.startswith("encoder.") for k in state) and not any(k in target for k in state):
        state = {k[len("encoder.") :]: v for k, v in state.items() if k.startswith("encoder.")}
    candidates = [state, {"model." + k: v for k, v in state.items()}, _strip(state, "model.")]
    return max(candidates, key=lambda s: len(target & set(s)))


def _adapt_first_conv(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """3-channel pretrained first-conv weights for ``in_channels`` inputs (smp's rule:
    summed for 1 channel, cycled and rescaled for more)."""
    if in_channels == 1:
        return weight.sum(1, keepdim=True)
    idx = torch.arange(in_channels) % weight.shape[1]
    return weight[:, idx] * (weight.shape[1] / in_channels)


def load_encoder_weights(model: nn.Module, path: Path, in_channels: int) -> None:
    """Load a local weights file into ``model.encoder``.

    Every encoder tensor must be present with the right shape (a clear ModelError otherwise);
    extra keys in the file (a classifier head, stages a shallow encoder does not use) are skipped.
    """
    encoder: nn.Module = model.encoder  # type: ignore[assignment]
    own = encoder.state_dict()
    state = _align_keys(_read_state_dict(path), set(own))
    matched = set(own) & set(state)
    if not matched:
        raise ModelError(
            f"{path}: no tensor names match the {type(encoder).__name__} encoder "
            f"(file has e.g. {', '.join(list(state)[:3])}; encoder expects e.g. {', '.join(list(own)[:3])})"
        )
    missing = sorted(set(own) - set(state))
    if missing:
        raise ModelError(
            f"{path}: {len(missing)} encoder tensors missing from the file, e.g. {', '.join(missing[:3])} (wrong encoder?)"
        )
    fitted = {}
    for key in own:
        value = state[key]
        if (
            value.shape != own[key].shape
            and value.ndim == 4
            and value.shape[1] == 3
            and own[key].shape[1] == in_channels
            and value.shape[0] == own[key].shape[0]
        ):
            value = _adapt_first_conv(value, in_channels)
        if value.shape != own[key].shape:
            raise ModelError(
                f"{path}: tensor '{key}' has shape {tuple(value.shape)} but the encoder needs {tuple(own[key].shape)} (wrong encoder or in_channels?)"
            )
        fitted[key] = value
    extra = [k for k in set(state) - matched if not k.startswith(_CLASSIFIER_PREFIXES)]
    if extra:
        warnings.warn(
            f"{path}: {len(extra)} tensors in the file are not used by the encoder (e.g. {sorted(extra)[0]})",
            stacklevel=2,
        )
    encoder.load_state_dict(fitted, strict=True)
