"""The self-describing model bundle: a Lightning checkpoint that predict/evaluate/export need alone.

``hyper_parameters`` holds one entry, ``model_card``: the :class:`~segkit.card.ModelCard` as plain
data (the training config, classes, colours, normalisation, stride, inference defaults, the
segkit version), so ``torch.load(path, weights_only=True)`` opens it and no pickled code ever
runs. The model weights are under ``state_dict`` with a ``model.`` prefix, exactly as the
LightningModule stores them. Checkpoints of older segkits (their facts as separate
hyper-parameters) are read through :func:`segkit.card.card_from_legacy`.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from segkit import __version__
from segkit.card import BUNDLE_FORMAT as BUNDLE_FORMAT  # re-exported: its home is segkit.card
from segkit.card import CARD_KEY, ModelCard, card_from_legacy, is_legacy, validate_card
from segkit.config import SegkitConfig, load_config
from segkit.errors import ConfigError, ModelError, first_line
from segkit.utils import atomic_path

STATE_PREFIX = "model."


@dataclass
class Bundle:
    """A loaded checkpoint: its card, the validated training config, and the model weights."""

    path: Path
    card: ModelCard
    config: SegkitConfig
    state_dict: dict[str, torch.Tensor]

    def build_model(self) -> nn.Module:
        """The smp model with the bundle's weights, in eval mode, on CPU."""
        from segkit.models.build import build_model

        model = build_model(
            self.config.model.model_copy(update={"encoder_weights": None}),
            self.card.num_classes,
            self.card.in_channels,
        )
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as e:
            raise ModelError(
                f"{self.path}: weights do not fit {self.config.model.arch}/{self.config.model.encoder}: {first_line(e)}"
            ) from None
        return model.eval()


def load_checkpoint_dict(path: str | Path) -> dict[str, Any]:
    """``torch.load(weights_only=True)`` with every failure turned into one clear ModelError."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: checkpoint not found")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise ModelError(
            f"{path}: refused: the checkpoint carries pickled objects that weights_only loading does not allow "
            f"({first_line(e, 160)}); only load checkpoints you trust with other tools"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise ModelError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {first_line(e, 160)}"
        ) from None
    if not isinstance(ckpt, dict):
        raise ModelError(
            f"{path}: not a segkit checkpoint (top level is {type(ckpt).__name__}, expected a dict)"
        )
    return ckpt


def read_card(hparams: Any, path: Path) -> ModelCard:
    """The card in a checkpoint's ``hyper_parameters`` (an older segkit's separate facts are
    converted); a ModelError naming ``path`` when there is none."""
    if isinstance(hparams, dict) and CARD_KEY in hparams:
        return validate_card(hparams[CARD_KEY], path)
    if isinstance(hparams, dict) and is_legacy(hparams):
        return card_from_legacy(hparams, path)
    raise ModelError(
        f"{path}: not a segkit checkpoint (no hyper_parameters.{CARD_KEY}); train it with `segkit train`"
    )


def load_bundle(path: str | Path) -> Bundle:
    """Load a segkit checkpoint bundle safely (``weights_only=True``) and validate its card."""
    path = Path(path)
    ckpt = load_checkpoint_dict(path)
    card = read_card(ckpt.get("hyper_parameters"), path)
    if card.config is None or "state_dict" not in ckpt:
        raise ModelError(
            f"{path}: not a segkit checkpoint (no training config / state_dict); train it with `segkit train`"
        )
    try:
        config = load_config(card.config)
    except ConfigError as e:
        raise ModelError(
            f"{path}: the stored config is not valid for this segkit version: {e}"
        ) from None
    state = {
        k[len(STATE_PREFIX) :]: v
        for k, v in ckpt["state_dict"].items()
        if k.startswith(STATE_PREFIX)
    }
    if not state:
        raise ModelError(
            f"{path}: the checkpoint holds no model weights (no 'model.*' keys in state_dict)"
        )
    return Bundle(path=path, card=card, config=config, state_dict=state)


def update_card(path: str | Path, update: Callable[[ModelCard], ModelCard]) -> None:
    """Change the card of the checkpoint at ``path`` in place (decisions made after training),
    rewriting the file atomically; an older segkit's checkpoint gets its card written."""
    path = Path(path)
    ckpt = load_checkpoint_dict(path)
    card = update(read_card(ckpt.get("hyper_parameters"), path))
    ckpt["hyper_parameters"] = {CARD_KEY: card.to_dict()}
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)


def set_temperature(path: str | Path, temperature: float) -> None:
    """Store a fitted temperature in the checkpoint at ``path``, rewriting it atomically."""
    if not temperature > 0:
        raise ModelError(f"{path}: temperature must be > 0, got {temperature}")
    update_card(path, lambda card: card.updated(temperature=float(temperature)))


def save_bundle(
    path: str | Path, config: SegkitConfig, model: nn.Module, stride: int | None = None
) -> Path:
    """Write a bundle for ``model`` without training (tests, imports of outside weights). Atomic."""
    from segkit.models.build import model_stride

    path = Path(path)
    card = ModelCard.from_config(config, stride or model_stride(model))
    ckpt = {
        "state_dict": {STATE_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": {CARD_KEY: card.to_dict()},
        "segkit_version": __version__,
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return path
