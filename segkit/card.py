"""What a model is, as one validated pydantic model: the ``ModelCard``.

Every checkpoint stores it (``hyper_parameters["model_card"]``), every segkit ONNX export stores
the same JSON (metadata key ``segkit.model_card``), and inference reads nothing else. Below the
engine, the bundle and the export (each of them imports this, this imports none of them), so a
model's description has one home that every layer can reach. Validating it needs no smp: the
training config rides along as plain data, and only its data section is validated here.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, model_validator

from segkit import __version__
from segkit.config import DataConfig, PredictConfig, SegkitConfig
from segkit.errors import ModelError
from segkit.io.palette import class_colors
from segkit.normalization import Normalization

BUNDLE_FORMAT = 2
"""1: the facts as separate hyper-parameters (read through :func:`card_from_legacy`); 2: the card."""

CARD_KEY = "model_card"
"""The checkpoint's ``hyper_parameters`` key holding the card."""

DEFAULT_STRIDE = 32


class ModelCard(BaseModel):
    """The facts every consumer of a trained model needs: network, classes, normalisation,
    inference defaults, fitted temperature and the config it was trained with."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bundle_format: int = Field(BUNDLE_FORMAT, description="Version of this card's layout.")
    segkit_version: str = Field(__version__, description="The segkit that wrote the model.")
    architecture: str | None = Field(None, description="smp architecture; None: foreign ONNX.")
    encoder: str | None = Field(None, description="smp encoder; None: foreign ONNX.")
    in_channels: int = Field(ge=1, description="Image channels the network takes.")
    classes: list[str] = Field(min_length=1, description="Class names, in output order.")
    colors: list[tuple[int, int, int]] = Field(description="[r, g, b] of each class (0-255).")
    ignore_index: int = Field(255, ge=0, description="Mask value that is no class.")
    normalization: Normalization = Field(
        "dataset", description="'dataset': mean/std below; 'image': each image's own."
    )
    mean: list[float] = Field(description="Per-channel mean of images scaled to [0, 1].")
    std: list[float] = Field(description="Per-channel std of images scaled to [0, 1].")
    stride: int = Field(DEFAULT_STRIDE, ge=1, description="Tiles are multiples of it.")
    patch_size: int | None = Field(None, description="Training crop size; None: unknown.")
    predict: PredictConfig = Field(
        description="Inference defaults (the tile always set); predict options override them."
    )
    temperature: float = Field(
        1.0, gt=0, description="Divides the logits before softmax (fitted after training; 1: none)."
    )
    config: dict[str, Any] | None = Field(
        None, description="The training config as plain data; None: foreign ONNX."
    )
    _data: DataConfig | None = PrivateAttr(None)

    @model_validator(mode="after")
    def _check(self) -> ModelCard:
        if len(self.colors) != len(self.classes):
            raise ValueError(f"{len(self.colors)} colors for {len(self.classes)} classes")
        if any(not 0 <= v <= 255 for c in self.colors for v in c):
            raise ValueError("a colour is 3 integers 0-255")
        for name in ("mean", "std"):
            if len(getattr(self, name)) != self.in_channels:
                raise ValueError(
                    f"{name} has {len(getattr(self, name))} values but the model takes "
                    f"{self.in_channels} channels"
                )
        if not all(v > 0 for v in self.std):
            raise ValueError(f"std must be > 0, got {self.std}")
        if self.predict.tile is None:
            raise ValueError("predict.tile must be set")
        if self.config is not None:
            try:
                data = DataConfig.model_validate(self.config.get("data", {}))
            except ValidationError as e:
                first = e.errors()[0]
                where = ".".join(["config.data", *(str(p) for p in first["loc"])])
                raise ValueError(f"{where}: {first['msg']}") from None
            stored = (data.classes, data.in_channels, data.ignore_index)
            if stored != (self.classes, self.in_channels, self.ignore_index):
                raise ValueError(
                    "classes/in_channels/ignore_index differ from the stored config's data section"
                )
            self._data = data
        return self

    @classmethod
    def from_config(
        cls,
        config: SegkitConfig | Mapping[str, Any],
        stride: int = DEFAULT_STRIDE,
        temperature: float = 1.0,
    ) -> ModelCard:
        """The card of a model trained with ``config`` (a SegkitConfig or its plain data)."""
        plain = config.to_dict() if isinstance(config, SegkitConfig) else dict(config)
        data = DataConfig.model_validate(plain.get("data", {}))
        predict = PredictConfig.model_validate(plain.get("predict", {}))
        model = plain.get("model", {})
        return cls(
            architecture=model.get("arch"),
            encoder=model.get("encoder"),
            in_channels=data.in_channels,
            classes=list(data.classes),
            colors=class_colors(data.classes, data.palette).tolist(),
            ignore_index=data.ignore_index,
            normalization=data.normalization,
            mean=data.resolved_mean(),
            std=data.resolved_std(),
            stride=int(stride),
            patch_size=data.patch_size,
            predict=predict.model_copy(update={"tile": predict.tile or data.patch_size}),
            temperature=temperature,
            config=plain,
        )

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data: what the checkpoint and the ONNX metadata store."""
        return self.model_dump(mode="json")

    def updated(self, **changes: Any) -> ModelCard:
        """A validated copy with ``changes``; ``predict={...}`` merges into the predict defaults
        (and into the stored config's predict section, so the two never disagree)."""
        data = self.to_dict()
        predict = changes.pop("predict", None)
        data.update(changes)
        if predict:
            data["predict"] = {**data["predict"], **predict}
            if data.get("config") is not None:
                data["config"]["predict"] = {**data["config"].get("predict", {}), **predict}
        return validate_card(data)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def color_table(self) -> np.ndarray:
        """``(K, 3)`` uint8 class colours."""
        return np.asarray(self.colors, dtype=np.uint8).reshape(-1, 3)

    @property
    def tile(self) -> int:
        """The default tile size (the training patch unless ``predict.tile`` was set)."""
        return int(self.predict.tile or 0)

    @property
    def data(self) -> DataConfig | None:
        """The data section the model was trained with (how ``segkit evaluate`` reads masks and
        how large an input may be); None for a foreign ONNX."""
        return self._data

    @property
    def max_image_pixels(self) -> int:
        """Inputs with more pixels are refused (decompression-bomb guard): the training config's
        ``data.max_image_pixels``, else that setting's default."""
        if self._data is not None:
            return self._data.max_image_pixels
        return int(DataConfig.model_fields["max_image_pixels"].default)


def validate_card(data: Any, name: object = "model card") -> ModelCard:
    """``data`` as a ModelCard; a ModelError naming ``name`` (the file) and the first problem."""
    try:
        return ModelCard.model_validate(data)
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        more = f" (and {e.error_count() - 1} more)" if e.error_count() > 1 else ""
        raise ModelError(
            f"{name}: the model card is not valid{f' at {where}' if where else ''}: "
            f"{str(first['msg']).removeprefix('Value error, ')}{more}"
        ) from None


def is_legacy(facts: Mapping[str, Any]) -> bool:
    """Whether ``facts`` (hyper-parameters or ONNX metadata) are a segkit's from before the card:
    each fact its own key, ``config`` and ``bundle_format`` among them."""
    return "config" in facts or "bundle_format" in facts


def card_from_legacy(old: Mapping[str, Any], name: object) -> ModelCard:
    """The card of a model written before it existed: its facts as separate hyper-parameters
    (checkpoint) or ``metadata_props`` (ONNX, values as text). Everything the card holds follows
    from the stored config, the stride and the fitted temperature."""
    import json

    def value(key: str, default: Any) -> Any:
        v = old.get(key, default)
        return json.loads(v) if isinstance(v, str) and key == "config" else v

    config = value("config", None)
    if not isinstance(config, dict):
        raise ModelError(
            f"{name}: written by an older segkit without its training config; re-export or "
            "re-train it with this segkit"
        )
    try:
        stride = int(value("stride", DEFAULT_STRIDE))
        temperature = float(value("temperature", 1.0))
        return ModelCard.from_config(config, stride, temperature)
    except (ValidationError, ValueError, TypeError) as e:
        raise ModelError(
            f"{name}: the facts an older segkit stored are not valid ({str(e).splitlines()[0]}); "
            "re-export or re-train it with this segkit"
        ) from None
