"""Atomic checkpoints that load without executing code (``torch.load(weights_only=True)``).

A checkpoint is a dict of tensors and plain Python values: ``model`` (state dict), ``model_config``
(``{"name", "kwargs"}`` from ``bitflow.models.create``), optimizer / scheduler state, RNG state,
``epoch``, ``iteration``, the recipe, the data spec and the best validation accuracy so far.

The file I/O lives in ``bitflow._checkpoint`` and the rebuilding of a checkpoint's model (zoo
model or survey method) in :mod:`bitflow.methods`, both below this package: the methods load a
distillation teacher from a checkpoint, and training builds on the methods.
"""

from __future__ import annotations

from .._checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..methods import model_from_checkpoint

__all__ = ["CheckpointError", "load_checkpoint", "model_from_checkpoint", "save_checkpoint"]
