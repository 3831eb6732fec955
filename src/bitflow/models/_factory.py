"""Model registry: ``@register_model(name)`` and ``create(name, **kw)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from .._registry import Registry

ModelFn = Callable[..., nn.Module]
_MODELS: Registry[ModelFn] = Registry("model")


def register_model(name: str) -> Callable[[ModelFn], ModelFn]:
    """Register a model constructor under ``name``."""
    return _MODELS.register(name)


def create(name: str, **kwargs: Any) -> nn.Module:
    """Build a registered model. The returned module carries ``bitflow_config`` =
    ``{"name": name, "kwargs": kwargs}`` so that checkpoints can rebuild it without pickle."""
    fn = _MODELS.get(name)
    try:
        model = fn(**kwargs)
    except TypeError as e:
        raise TypeError(f"model {name!r}: {e}") from None
    model.bitflow_config = {"name": name, "kwargs": dict(kwargs)}  # type: ignore[assignment]
    return model


def list_models() -> list[str]:
    """Names of all registered models."""
    return _MODELS.names()
