"""Loading and saving configs: defaults < YAML file < ``key=value`` overrides.

Everything is validated by pydantic; unknown keys are collected into one error with close-match
suggestions."""

from __future__ import annotations

import copy
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from segkit.config.messages import (
    by_origin,
    format_validation_error,
    unknown_key_message,
    value_origin,
)
from segkit.config.model import is_weights_file
from segkit.config.schema import SegkitConfig, allowed_keys, section_at
from segkit.errors import ConfigError


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """Turn ``["a.b=1", "c=[1,2]"]`` into a nested dict; values are parsed with ``yaml.safe_load``."""
    nested: dict[str, Any] = {}
    for item in overrides:
        _apply_override(nested, item)
    return nested


def _apply_override(data: dict[str, Any], item: str) -> None:
    """Set one ``KEY=VALUE`` (dotted key, YAML value) in ``data``, in place.

    A dotted key reaches into any mapping, so ``data.palette.cell=[9,9,9]`` changes one colour and
    keeps the others. A mapping given for a config section (``trainer={...}``) is merged into it;
    any other value replaces what was there, so ``data.palette={...}`` replaces the whole palette.
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{item}' is not KEY=VALUE (example: trainer.max_epochs=5)")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    keys = key.strip().split(".")
    node = data
    for i, k in enumerate(keys[:-1]):
        if node.get(k) is None:
            node[k] = {}
        node = node[k]
        if not isinstance(node, dict):
            raise ConfigError(f"override '{item}': '{'.'.join(keys[: i + 1])}' is not a section")
    node[keys[-1]] = _merged(node.get(keys[-1]), value, keys)


def _merged(old: Any, new: Any, keys: list[str]) -> Any:
    """``new`` merged into ``old`` where both are mappings for a config section, else ``new``."""
    if not (isinstance(old, dict) and isinstance(new, dict) and section_at(keys) is not None):
        return new
    return {**old, **{k: _merged(old.get(k), v, [*keys, k]) for k, v in new.items()}}


def _check_unknown(data: dict[str, Any], source: str, overrides: Sequence[str]) -> None:
    unknown = []
    for section, body in data.items():
        if section not in SegkitConfig.model_fields:
            unknown.append(section)
            continue
        sub = section_at([section])
        if isinstance(body, dict) and sub is not None:
            # Lightning's Trainer arguments only for keys the section does not declare: importing
            # lightning costs ~0.2 GB and seconds, and loading a bundle to predict never needs it.
            extra = [key for key in body if key not in sub.model_fields]
            if extra:
                allowed = allowed_keys(sub)
                unknown.extend(f"{section}.{key}" for key in extra if key not in allowed)
    if unknown:
        raise ConfigError(
            by_origin(
                [(value_origin(k, source, overrides), unknown_key_message(k)) for k in unknown]
            )
        )


def load_config(
    source: str | Path | dict[str, Any] | SegkitConfig | None = None,
    overrides: list[str] | None = None,
) -> SegkitConfig:
    """Build a validated config from defaults, an optional YAML file or dict, and overrides.

    Relative input paths in a YAML file (``data.*.images/masks``, a local
    ``model.encoder_weights`` file) are resolved against the file's folder, so a config works
    from any working directory. ``run.dir`` and ``run.resume`` name outputs of runs and stay
    relative to the working directory (``segkit train configs/x.yaml`` writes to ``./runs``),
    as do paths given as overrides.
    """
    name = "config"
    data: dict[str, Any] = {}
    if isinstance(source, SegkitConfig):
        data = source.to_dict()
    elif isinstance(source, dict):
        data = copy.deepcopy(source)
    elif source is not None:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise ConfigError(f"{path}: config file not found")
        try:
            loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML ({e})") from None
        if loaded is None:
            loaded = {}
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"{path}: expected a mapping of sections (data:, model:, ...), got {type(loaded).__name__}"
            )
        data = _resolve_paths(loaded, path.parent)
    for item in overrides or []:
        _apply_override(data, item)
    _check_unknown(data, name, overrides or [])
    try:
        return SegkitConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(format_validation_error(e, name, overrides or [])) from None


def _resolve_paths(data: dict[str, Any], base: Path) -> dict[str, Any]:
    data = json.loads(json.dumps(data, default=str))
    for split in ("train", "val"):
        body = (data.get("data") or {}).get(split)
        if isinstance(body, dict):
            for key in ("images", "masks"):
                if (
                    isinstance(body.get(key), str)
                    and not Path(body[key]).expanduser().is_absolute()
                ):
                    body[key] = str((base / body[key]).resolve())
                elif isinstance(body.get(key), str):
                    body[key] = str(Path(body[key]).expanduser())
    weights = (data.get("model") or {}).get("encoder_weights")
    if isinstance(weights, str) and is_weights_file(weights, base):
        p = Path(weights).expanduser()
        data["model"]["encoder_weights"] = str(p if p.is_absolute() else (base / p).resolve())
    return data


def save_config(config: SegkitConfig, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    from segkit.utils import atomic_write_text

    atomic_write_text(Path(path), yaml.safe_dump(config.to_dict(), sort_keys=False))
