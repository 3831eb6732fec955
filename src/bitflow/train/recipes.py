"""Training recipes as data (TOML files in ``bitflow/train/recipes``)."""

from __future__ import annotations

import math
import tomllib
from dataclasses import dataclass, field, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any

_AUGMENTS = {"hflip", "crop2", "crop4"}
_SCHEDULES = {"constant", "multistep", "cosine"}
_OPTIMIZERS = {"adam", "adamw", "sgd"}
PRECISIONS = ("fp32", "bf16", "auto")


@dataclass(frozen=True)
class Recipe:
    """Optimizer, schedule, epochs and augmentation for one training setting."""

    name: str
    description: str = ""
    optimizer: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    momentum: float = 0.9
    batch_size: int = 128
    epochs: int = 10
    schedule: str = "constant"
    milestones: tuple[int, ...] = ()
    gamma: float = 0.1
    augment: tuple[str, ...] = ()
    image_size: int | None = None
    folds: int = 10
    flip_log_every: int = 50
    #: Real-valued warm-up: the first ``real_epochs`` epochs train the binary layers as their
    #: real-valued twin (``clip(x, -1, 1)``, latent weights: Bi-Real Sec. 3.3's pre-training,
    #: :func:`bitflow.nn.set_real_mode`), the remaining ``epochs - real_epochs`` binarized. The
    #: schedule restarts at the switch (each stage has its own cycle), the optimizer state is
    #: reset, and only binarized epochs compete for ``best.pt``.
    real_epochs: int = 0
    #: ``"warmup"``: distil the binarized stage from the warm-up (Real-to-Binary / ReActNet use a
    #: real-valued teacher; here it is the run's own real-valued twin at the end of the
    #: ``real_epochs``, frozen, so no second training is needed). The binarized stage then
    #: minimises ``H(y, p^S) + distill_weight * H(p^T, p^S)`` (survey Eq. 11 with a fixed teacher,
    #: :func:`bitflow.methods.apprentice_loss`). ``""``: no distillation.
    distill: str = ""
    distill_weight: float = 1.0
    #: Arithmetic of the training forward/backward passes: ``"fp32"``, or ``"bf16"``
    #: (``torch.autocast``: convolutions and linear layers take bfloat16 inputs and accumulate in
    #: float32; BatchNorm, the residual stream, the losses, the latent weights and the optimizer stay
    #: float32). A binary convolution's operands (+-1 signs and weights) are exact in bfloat16; its
    #: integer sum is rounded to 8 significant bits before the float32 scale. Evaluation, the
    #: reported accuracies, checkpoints and conversion are always float32. On CPUs with AMX or
    #: AVX512-BF16 this about halves a step of ``bireal_resnet20`` (with ``bitflow train
    #: --compile``); elsewhere bfloat16 is emulated and slower. ``"auto"``: ``"bf16"`` where the
    #: device computes bfloat16 natively (:func:`bitflow.train.trainer.native_bf16`), else
    #: ``"fp32"`` (as PyTorch's TF32 default does on GPUs); the run records what it used.
    precision: str = "fp32"
    #: ``N > 0``: after every epoch, before validation, replace the BatchNorm running statistics
    #: by their population values over ``N`` training samples under the epoch's final weights
    #: (:func:`bitflow.train.trainer.precise_bn_`); checkpoints store those. The moving averages lag
    #: when binarized weights keep flipping (MCN: +1.3 points of test accuracy on one run).
    precise_bn: int = 0
    #: Model options this recipe trains with unless the run gives them (``--model-arg`` wins):
    #: ``{model name: {option: value}}``, e.g. the width the Fashion-MNIST Bi-Real recipe was
    #: measured at. They are passed to the model, so the checkpoint records them.
    model_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.optimizer not in _OPTIMIZERS:
            raise ValueError(
                f"recipe {self.name!r}: optimizer must be one of {sorted(_OPTIMIZERS)}"
            )
        if self.schedule not in _SCHEDULES:
            raise ValueError(f"recipe {self.name!r}: schedule must be one of {sorted(_SCHEDULES)}")
        bad = set(self.augment) - _AUGMENTS
        if bad:
            raise ValueError(
                f"recipe {self.name!r}: unknown augmentations {sorted(bad)}; valid: {sorted(_AUGMENTS)}"
            )
        if self.lr <= 0 or self.batch_size < 1 or self.epochs < 1 or self.flip_log_every < 1:
            raise ValueError(
                f"recipe {self.name!r}: lr, batch_size, epochs and flip_log_every must be positive"
            )

        if self.distill not in ("", "warmup"):
            raise ValueError(
                f"recipe {self.name!r}: distill must be 'warmup' or empty, got {self.distill!r}"
            )
        if self.distill and self.real_epochs == 0:
            raise ValueError(
                f"recipe {self.name!r}: distill='warmup' needs a real-valued warm-up (real_epochs > 0) "
                "to take the teacher from"
            )
        if not math.isfinite(self.distill_weight) or self.distill_weight < 0:
            raise ValueError(
                f"recipe {self.name!r}: distill_weight must be finite and >= 0, got {self.distill_weight}"
            )
        if self.precise_bn < 0:
            raise ValueError(
                f"recipe {self.name!r}: precise_bn must be >= 0, got {self.precise_bn}"
            )
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"recipe {self.name!r}: precision must be one of {PRECISIONS}, got {self.precision!r}"
            )
        if not isinstance(self.model_defaults, dict) or not all(
            isinstance(k, str) and isinstance(v, dict) for k, v in self.model_defaults.items()
        ):
            raise ValueError(
                f"recipe {self.name!r}: model_defaults must be a table of tables "
                "({model name = {option = value}})"
            )
        if not 0 <= self.real_epochs < self.epochs:
            raise ValueError(
                f"recipe {self.name!r}: real_epochs must be in [0, epochs) so that at least one "
                f"epoch trains the binarized model; got real_epochs={self.real_epochs}, epochs={self.epochs}"
            )

    def override(self, **kw: Any) -> Recipe:
        """A copy with the non-None keyword values replaced. A new ``epochs`` without a new
        ``real_epochs`` keeps the warm-up's share of the run: ``round(real_epochs * epochs /
        old_epochs)``, at most ``epochs - 1`` (so ``--epochs 1`` trains binarized only). A run
        left without a warm-up has no teacher either: ``distill`` is dropped with it."""
        kw = {k: v for k, v in kw.items() if v is not None}
        if "epochs" in kw and "real_epochs" not in kw and self.real_epochs:
            share = round(self.real_epochs * kw["epochs"] / self.epochs)
            kw["real_epochs"] = max(0, min(share, kw["epochs"] - 1))
        if kw.get("real_epochs") == 0 and "distill" not in kw:
            kw["distill"] = ""
        return replace(self, **kw)

    def stage(self, epoch: int) -> tuple[str, int, int]:
        """``(stage, epoch within the stage, epochs of the stage)`` for a 0-based ``epoch``:
        ``"real"`` for the warm-up epochs, then ``"binary"``."""
        if epoch < self.real_epochs:
            return "real", epoch, self.real_epochs
        return "binary", epoch - self.real_epochs, self.epochs - self.real_epochs

    def to_dict(self) -> dict[str, Any]:
        return {
            f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
            for f in fields(self)
        }


def list_recipes() -> list[str]:
    """Names of the built-in recipes."""
    root = resources.files("bitflow.train") / "recipes"
    return sorted(p.name[:-5] for p in root.iterdir() if p.name.endswith(".toml"))


def load_recipe(name_or_path: str) -> Recipe:
    """Load a built-in recipe by name or a TOML file by path."""
    path = Path(name_or_path)
    if path.suffix == ".toml" and path.exists():
        text, name = path.read_text(), path.stem
    else:
        res = resources.files("bitflow.train") / "recipes" / f"{name_or_path}.toml"
        if not res.is_file():
            raise KeyError(
                f"unknown recipe {name_or_path!r}; built-in recipes: {', '.join(list_recipes())} (or a path to a .toml file)"
            )
        text, name = res.read_text(), name_or_path
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"recipe {name_or_path!r} is not valid TOML: {e}") from None
    known = {f.name for f in fields(Recipe)} - {"name", "extra"}
    extra = {k: v for k, v in data.items() if k not in known}
    kw: dict[str, Any] = {
        k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items() if k in known
    }
    return Recipe(name=name, extra=extra, **kw)


#: A folder whose images are at most this many pixels on a side, or that holds at most
#: SMALL_FOLDER_IMAGES images, trains with the ``folder-small`` recipe by default.
SMALL_IMAGE_SIDE = 64
SMALL_FOLDER_IMAGES = 20_000


#: Models whose Fashion-MNIST default recipe adds a real-valued warm-up (``real_epochs``): the
#: Bi-Real residual networks, whose real-valued shortcuts make the real twin a good start
#: (Bi-Real Sec. 3.3).
WARMUP_MODELS = frozenset({"bireal_resnet20"})


def default_recipe_for(
    data_spec: str,
    image_side: int | None = None,
    images: int | None = None,
    model: str | None = None,
) -> str:
    """The recipe a data set uses when ``--recipe`` is not given.

    Fashion-MNIST: ``fashion-mnist``, or ``fashion-mnist-bireal`` (the same with a real-valued
    warm-up) for the models of :data:`WARMUP_MODELS`.

    For ``folder:`` specs it depends on the data: ``folder-small`` when the images are small
    (``image_side`` <= :data:`SMALL_IMAGE_SIDE`) or few (``images`` <= :data:`SMALL_FOLDER_IMAGES`),
    else the ImageNet recipe of the paper. Unknown size and count (None) mean ImageNet.
    """
    if data_spec.startswith("hands11k:"):
        return "bitflow-alexnet-11khands"
    if data_spec.startswith("folder:"):
        small = (image_side is not None and image_side <= SMALL_IMAGE_SIDE) or (
            images is not None and images <= SMALL_FOLDER_IMAGES
        )
        return "folder-small" if small else "bitflow-alexnet-imagenet"
    if model in WARMUP_MODELS:
        return "fashion-mnist-bireal"
    return "fashion-mnist"
