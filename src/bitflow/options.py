"""``KEY=VALUE`` options (``--model-arg``, ``--method-arg``): one parser for the command line,
the benchmarks and anything else that takes model options as text."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any


def kv_value(text: str) -> Any:
    """One ``KEY=VALUE`` value: JSON when it parses (``64``, ``true``, ``[4, 4, 8, 16]``,
    ``"x"``), else a comma-separated list of numbers (``4,4,8,16`` -> ``[4, 4, 8, 16]``, the
    spelling of ``--bits-a``), else the text itself (``first_layer=int8``)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        pass
    if "," in text:
        try:
            parts = [json.loads(p) for p in text.split(",")]
        except json.JSONDecodeError:
            return text
        if all(isinstance(p, int | float) and not isinstance(p, bool) for p in parts):
            return parts
    return text


def parse_kv(items: Sequence[str], option: str = "--model-arg") -> dict[str, Any]:
    """``["width=64", "first_layer=int8", "widths=4,4,8,16"]`` ->
    ``{"width": 64, "first_layer": "int8", "widths": [4, 4, 8, 16]}`` (see :func:`kv_value`)."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise SystemExit(f"bitflow: {option} expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        out[k] = kv_value(v)
    return out


__all__ = ["kv_value", "parse_kv"]
