"""The wording of config errors: each problem as ``origin: key: message``, grouped by where the
value came from (the file or the override that set it), unknown keys with close-match
suggestions, long listings of valid names cut short."""

from __future__ import annotations

import difflib
import re
from collections.abc import Sequence

from pydantic import ValidationError

from segkit.config.schema import allowed_keys, section_at


def format_validation_error(err: ValidationError, source: str, overrides: Sequence[str]) -> str:
    parts = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not str(p).startswith("function-"))
        msg = _short_listing(e["msg"].removeprefix("Value error, "))
        got = e.get("input")
        if e["type"] == "extra_forbidden":
            text = unknown_key_message(key)
        elif (
            isinstance(got, dict | list)
            or got is None
            or not key
            or (isinstance(got, str) and repr(got) in msg)
        ):
            text = f"{key}: {msg}" if key else msg
        else:
            text = f"{key}: {msg} (got {_clip(repr(got))})"
        parts.append((value_origin(key, source, overrides), text))
    return by_origin(parts)


def value_origin(key: str, source: str, overrides: Sequence[str]) -> str:
    """Where a dotted key's value came from: the last override that set it, else ``source``."""
    for item in reversed(overrides):
        set_key = item.partition("=")[0].strip()
        if key and (
            key == set_key or key.startswith(set_key + ".") or set_key.startswith(key + ".")
        ):
            return f"override '{_clip(item)}'"
    return source


def by_origin(parts: Sequence[tuple[str, str]]) -> str:
    """``origin: message; message`` per origin, origins joined by ``; `` in first-seen order."""
    grouped: dict[str, list[str]] = {}
    for origin, text in parts:
        grouped.setdefault(origin, []).append(text)
    return "; ".join(f"{origin}: {'; '.join(texts)}" for origin, texts in grouped.items())


def _clip(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


_LISTED = 10  # names an error lists before it says "... N more"


def _short_listing(text: str, limit: int = _LISTED) -> str:
    """Cut a long ``(valid: a, b, ...)`` / ``(allowed: ...)`` listing to its first ``limit`` names."""

    def cut(m: re.Match[str]) -> str:
        names = m.group(2).split(", ")
        if len(names) <= limit:
            return m.group(0)
        return f"({m.group(1)}: {', '.join(names[:limit])}, ... {len(names) - limit} more"

    # The listing ends where the parenthesis closes or a "; or ..." note begins, which is kept.
    return re.sub(r"\((valid|allowed): ([^();]*)(?=[;)])", cut, text)


def unknown_key_message(dotted: str) -> str:
    """``unknown key 'a.b' — did you mean a.c?``; the allowed keys (a few) only without a close match."""
    *parents, leaf = dotted.split(".")
    section = section_at(parents)
    allowed = allowed_keys(section) if section is not None else []
    close = difflib.get_close_matches(leaf, allowed, n=3)
    hint = f" — did you mean {', '.join('.'.join([*parents, c]) for c in close)}?" if close else ""
    listing = ""
    if allowed and (not close or len(allowed) <= _LISTED):  # a long list only without a hint
        listing = _short_listing(f" (allowed: {', '.join(allowed)})")
    return f"unknown key '{dotted}'{hint}{listing}"
