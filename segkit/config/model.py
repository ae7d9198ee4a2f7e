"""The ``model`` section: an smp architecture and encoder, their names checked against smp's and
timm's registries (imported only inside those checks, so importing the schema stays light), and
the rule that tells a local weights file from a weight-set name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeGuard

from pydantic import Field, field_validator

from segkit.config.base import Section

# Suffixes that make an `encoder_weights` value a local file rather than a weight-set name.
WEIGHT_SUFFIXES = (".pth", ".pt", ".safetensors", ".bin", ".ckpt")


def is_weights_file(weights: str | None, base: Path | None = None) -> TypeGuard[str]:
    """True when ``encoder_weights`` names a local file rather than a weight set like 'imagenet'.

    The one rule for both the config (which resolves such a path against the config's folder,
    ``base``) and the model builder: a weights suffix, a folder separator, or an existing file.
    """
    if not weights:
        return False
    return (
        weights.lower().endswith(WEIGHT_SUFFIXES)
        or "/" in weights
        or "\\" in weights
        or ((base or Path()) / Path(weights).expanduser()).is_file()
    )


def _did_you_mean(name: str, choices: Iterable[str]) -> str:
    """' — did you mean a, b?' with up to 3 close choices (case-insensitive), or ''."""
    by_lower = {c.lower(): c for c in choices}
    close = difflib.get_close_matches(name.lower(), list(by_lower), n=3, cutoff=0.5)
    return f" — did you mean {', '.join(by_lower[c] for c in close)}?" if close else ""


class ModelConfig(Section):
    """Any segmentation-models-pytorch architecture and encoder."""

    arch: str = Field(
        "Unet",
        description="smp architecture name (Unet, UnetPlusPlus, FPN, DeepLabV3Plus, Segformer, ...).",
    )
    encoder: str = Field(
        "resnet34",
        description="smp encoder name (resnet18, resnet34, efficientnet-b0, mit_b0, tu-* timm encoders, ...).",
    )
    encoder_weights: str | None = Field(
        "imagenet",
        description="'imagenet' (downloaded), null (random init) or a path to a local weights file.",
    )
    kwargs: dict[str, Any] = Field(
        default_factory=dict,
        description="Extra keyword arguments for smp.create_model (e.g. decoder_channels).",
    )

    # Names are checked against smp's own registries here, so a typo is a config error (exit 2)
    # before any data is read; smp is imported only when a name is given (defaults are valid).
    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        import segmentation_models_pytorch as smp

        if v.lower() not in smp.MODEL_ARCHITECTURES_MAPPING:
            names = sorted(c.__name__ for c in smp.MODEL_ARCHITECTURES_MAPPING.values())
            raise ValueError(
                f"unknown architecture '{v}'{_did_you_mean(v, names)} (valid: {', '.join(names)})"
            )
        return v

    @field_validator("encoder")
    @classmethod
    def _known_encoder(cls, v: str) -> str:
        import segmentation_models_pytorch as smp

        if v.startswith("tu-"):
            import timm

            if not timm.is_model(v[3:]):
                hint = _did_you_mean(v, ("tu-" + name for name in timm.list_models()))
                raise ValueError(
                    f"unknown timm encoder '{v}'{hint} (any name from timm.list_models() prefixed with 'tu-')"
                )
            return v
        names = smp.encoders.get_encoder_names()
        if v not in names:
            raise ValueError(
                f"unknown encoder '{v}'{_did_you_mean(v, names)} "
                f"(valid: {', '.join(sorted(names))}; or 'tu-<timm model name>')"
            )
        return v
