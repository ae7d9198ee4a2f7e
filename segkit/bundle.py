"""The self-describing model bundle: a Lightning checkpoint that predict/evaluate/export need alone.

``hyper_parameters`` holds only plain data (the resolved config, class names, colours,
normalisation, stride, the segkit version), so ``torch.load(path, weights_only=True)`` opens it
and no pickled code ever runs. The model weights are under ``state_dict`` with a ``model.`` prefix,
exactly as the LightningModule stores them.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from segkit import __version__
from segkit.card import BUNDLE_FORMAT as BUNDLE_FORMAT  # re-exported: its home is segkit.card
from segkit.card import bundle_hparams
from segkit.config import SegkitConfig, load_config
from segkit.errors import ConfigError, ModelError, first_line
from segkit.utils import atomic_path

STATE_PREFIX = "model."
TEMPERATURE = "temperature"
"""The hyper-parameter holding the fitted temperature (absent: 1.0, none fitted)."""


@dataclass
class Bundle:
    """A loaded checkpoint: the config, the facts for inference, and the model weights."""

    path: Path
    config: SegkitConfig
    hparams: dict[str, Any]
    state_dict: dict[str, torch.Tensor]

    @property
    def classes(self) -> list[str]:
        return list(self.hparams["classes"])

    @property
    def colors(self) -> np.ndarray:
        """``(K, 3)`` uint8 class colours."""
        return np.asarray(self.hparams["colors"], dtype=np.uint8)

    @property
    def in_channels(self) -> int:
        return int(self.hparams["in_channels"])

    @property
    def mean(self) -> list[float]:
        return [float(v) for v in self.hparams["mean"]]

    @property
    def std(self) -> list[float]:
        return [float(v) for v in self.hparams["std"]]

    @property
    def stride(self) -> int:
        return int(self.hparams.get("stride", 32))

    @property
    def temperature(self) -> float:
        """The fitted temperature scaling of the logits (1.0 when none was fitted)."""
        return float(self.hparams.get(TEMPERATURE, 1.0))

    def build_model(self) -> nn.Module:
        """The smp model with the bundle's weights, in eval mode, on CPU."""
        from segkit.models.build import build_model

        model = build_model(
            self.config.model.model_copy(update={"encoder_weights": None}),
            self.config.data.num_classes,
            self.in_channels,
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


def load_bundle(path: str | Path) -> Bundle:
    """Load a segkit checkpoint bundle safely (``weights_only=True``) and validate its facts."""
    path = Path(path)
    ckpt = load_checkpoint_dict(path)
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or "config" not in hparams or "state_dict" not in ckpt:
        raise ModelError(
            f"{path}: not a segkit checkpoint (no hyper_parameters.config / state_dict); train it with `segkit train`"
        )
    try:
        config = load_config(hparams["config"])
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
    temperature = hparams.get(TEMPERATURE, 1.0)
    if not isinstance(temperature, int | float) or not temperature > 0:
        raise ModelError(f"{path}: stored temperature {temperature!r} is not a number > 0")
    return Bundle(path=path, config=config, hparams=dict(hparams), state_dict=state)


def update_hparams(path: str | Path, update: Callable[[dict[str, Any]], None]) -> None:
    """Change the stored facts of the checkpoint at ``path`` in place (``update`` edits its
    hyper-parameters dict), rewriting the file atomically: decisions made after training."""
    ckpt = load_checkpoint_dict(path)
    hparams = ckpt.get("hyper_parameters")
    if not isinstance(hparams, dict) or "config" not in hparams:
        raise ModelError(f"{path}: not a segkit checkpoint (no hyper_parameters.config)")
    update(hparams)
    load_config(hparams["config"])  # still a valid config
    with atomic_path(Path(path)) as tmp:
        torch.save(ckpt, tmp)


def set_temperature(path: str | Path, temperature: float) -> None:
    """Store a fitted temperature in the checkpoint at ``path``, rewriting it atomically."""
    if not temperature > 0:
        raise ModelError(f"{path}: temperature must be > 0, got {temperature}")
    update_hparams(path, lambda hparams: hparams.update({TEMPERATURE: float(temperature)}))


def save_bundle(
    path: str | Path, config: SegkitConfig, model: nn.Module, stride: int | None = None
) -> Path:
    """Write a bundle for ``model`` without training (tests, imports of outside weights). Atomic."""
    from segkit.models.build import model_stride

    path = Path(path)
    ckpt = {
        "state_dict": {STATE_PREFIX + k: v.detach().cpu() for k, v in model.state_dict().items()},
        "hyper_parameters": bundle_hparams(config, stride or model_stride(model)),
        "segkit_version": __version__,
    }
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return path
