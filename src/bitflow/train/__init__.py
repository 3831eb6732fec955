"""Training (``bitflow.train``): ``train(TrainConfig(...))``, recipes, metrics, checkpoints."""

from .checkpoint import CheckpointError, load_checkpoint, model_from_checkpoint, save_checkpoint
from .metrics import FlipTracker, accuracy
from .recipes import Recipe, list_recipes, load_recipe
from .trainer import TrainConfig, evaluate, train

__all__ = [
    "CheckpointError",
    "FlipTracker",
    "Recipe",
    "TrainConfig",
    "accuracy",
    "evaluate",
    "list_recipes",
    "load_checkpoint",
    "load_recipe",
    "model_from_checkpoint",
    "save_checkpoint",
    "train",
]
