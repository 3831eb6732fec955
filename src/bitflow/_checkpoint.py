"""Checkpoint files: written atomically, loaded without executing code (``torch.load(weights_only=True)``).

A checkpoint is a dict of tensors and plain Python values: ``model`` (state dict), ``model_config``
(``{"name", "kwargs"}`` from ``bitflow.models.create``), optimizer / scheduler state, RNG state,
``epoch``, ``iteration``, the recipe, the data spec and the best validation accuracy so far.

Shared below :mod:`bitflow.methods` (which rebuilds models from checkpoints, a distillation
teacher among them) and :mod:`bitflow.train` (which writes them); :mod:`bitflow.train.checkpoint`
is the public home of these names.
"""

from __future__ import annotations

import io
import os
from pathlib import Path
from typing import Any

import torch

from ._io import atomic_write_bytes


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, corrupt or not a bitflow checkpoint."""


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Serialize ``state`` with ``torch.save`` into memory, then write it atomically."""
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint safely (no code execution) with clear errors."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises several types for corrupt zip / unpickling errors
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupt?): {e}"
        ) from None
    if not isinstance(state, dict) or "model" not in state or "model_config" not in state:
        raise CheckpointError(
            f"{path}: not a bitflow checkpoint (needs 'model' and 'model_config')"
        )
    return state


__all__ = ["CheckpointError", "load_checkpoint", "save_checkpoint"]
