"""Data-set spec strings and the numpy-only loader used by the engine side.

Spec forms (the one vocabulary shared by :func:`bitflow.data.get_data`, the trainer and CLI):

=================================  =========================================================
``fashion-mnist``                  10 classes, 28x28 grey
``fashion-mnist-binary:A,B``       two Fashion-MNIST classes (index 0..9 or name, any case),
                                   relabelled A -> 0, B -> 1 (``0,6`` = T-shirt/top vs Shirt)
``folder:PATH``                    ImageNet-style ``PATH/<class>/<image>`` (optional
                                   ``train/`` + ``val/`` sub-folders), RGB
``hands11k:PATH``                  11K Hands gender recognition (female 0, male 1), RGB
=================================  =========================================================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from ._errors import DatasetError
from .idx import FASHION_MNIST_CLASSES, load_fashion_mnist, to_float01

__all__ = ["Spec", "SPEC_FORMS", "parse_spec", "load_arrays", "fashion_class_index"]

#: Valid spec forms, listed in error messages.
SPEC_FORMS: tuple[str, ...] = (
    "fashion-mnist",
    "fashion-mnist-binary:A,B  (class indices 0..9 or names, e.g. 0,6 or T-shirt/top,Shirt)",
    "folder:PATH",
    "hands11k:PATH",
)

SpecKind = Literal["fashion-mnist", "fashion-mnist-binary", "folder", "hands11k"]


@dataclass(frozen=True)
class Spec:
    """A parsed spec: ``kind`` plus ``path`` (folder/hands11k) or ``classes`` (binary)."""

    kind: SpecKind
    path: Path | None = None
    classes: tuple[int, int] | None = None

    @property
    def is_fashion(self) -> bool:
        """True for the Fashion-MNIST kinds (loadable with numpy only)."""
        return self.kind in ("fashion-mnist", "fashion-mnist-binary")

    @property
    def name(self) -> str:
        """Canonical spec string (binary classes as indices)."""
        if self.kind == "fashion-mnist-binary" and self.classes is not None:
            return f"fashion-mnist-binary:{self.classes[0]},{self.classes[1]}"
        if self.path is not None:
            return f"{self.kind}:{self.path}"
        return self.kind


def _unknown(spec: object) -> DatasetError:
    forms = "\n  ".join(SPEC_FORMS)
    return DatasetError(f"unknown data spec {spec!r}; valid forms:\n  {forms}")


def fashion_class_index(token: str) -> int:
    """Fashion-MNIST class index from ``"0".."9"`` or a class name (case-insensitive)."""
    t = token.strip()
    if t.isdigit():
        i = int(t)
        if 0 <= i < len(FASHION_MNIST_CLASSES):
            return i
        raise DatasetError(f"Fashion-MNIST class index {i} is out of range 0..9")
    lowered = [c.lower() for c in FASHION_MNIST_CLASSES]
    if t.lower() in lowered:
        return lowered.index(t.lower())
    raise DatasetError(
        f"unknown Fashion-MNIST class {token!r}; use an index 0..9 or one of "
        f"{list(FASHION_MNIST_CLASSES)}"
    )


def parse_spec(spec: str) -> Spec:
    """Parse a spec string (see the module docstring); unknown forms list the valid ones."""
    if not isinstance(spec, str):
        raise TypeError(f"data spec must be a str, got {type(spec).__name__}")
    s = spec.strip()
    if s == "fashion-mnist":
        return Spec("fashion-mnist")
    kind, sep, arg = s.partition(":")
    if not sep:
        raise _unknown(spec)
    if kind == "fashion-mnist-binary":
        parts = arg.split(",")
        if len(parts) != 2 or not all(p.strip() for p in parts):
            raise DatasetError(
                f"spec {spec!r}: fashion-mnist-binary needs exactly two classes 'A,B', e.g. "
                "fashion-mnist-binary:0,6"
            )
        a, b = (fashion_class_index(p) for p in parts)
        if a == b:
            raise DatasetError(f"spec {spec!r}: the two classes must differ (both are {a})")
        return Spec("fashion-mnist-binary", classes=(a, b))
    if kind in ("folder", "hands11k"):
        if not arg.strip():
            raise DatasetError(f"spec {spec!r}: {kind} needs a path, e.g. {kind}:/data/x")
        return Spec(kind, path=Path(os.path.expanduser(arg.strip())))  # type: ignore[arg-type]
    raise _unknown(spec)


def _check_limit(limit: int | None, what: str) -> None:
    if limit is None:
        return
    if isinstance(limit, bool) or not isinstance(limit, (int, np.integer)) or limit < 1:
        raise ValueError(f"{what} must be a positive int or None, got {limit!r}")


def fashion_arrays(
    spec: Spec, split: Literal["train", "test"], root: str | os.PathLike[str] | None = None
) -> tuple[np.ndarray, np.ndarray, tuple[str, ...]]:
    """Raw ``(uint8 [N,28,28], int64 labels, class_names)`` for a Fashion-MNIST spec,
    binary specs filtered and relabelled (first class -> 0, second -> 1)."""
    images, labels = load_fashion_mnist(root, split)
    if spec.kind == "fashion-mnist":
        return images, labels, FASHION_MNIST_CLASSES
    if spec.kind != "fashion-mnist-binary" or spec.classes is None:
        raise DatasetError(f"spec {spec.name!r} is not a Fashion-MNIST spec")
    a, b = spec.classes
    keep = np.flatnonzero((labels == a) | (labels == b))
    y = (labels[keep] == b).astype(np.int64)
    return images[keep], y, (FASHION_MNIST_CLASSES[a], FASHION_MNIST_CLASSES[b])


def load_arrays(
    spec: str, split: Literal["train", "test"] = "test", limit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """numpy-only loader for the engine side (``bitflow run``): ``(x, y)``.

    ``x`` is float32 ``[N,1,28,28]`` = pixel / 255 in [0, 1] (no normalisation), ``y`` int64.
    Only Fashion-MNIST specs (``fashion-mnist``, ``fashion-mnist-binary:A,B``) are supported.
    ``limit`` keeps the first N samples of the split.  The values equal those of the torch
    datasets of :func:`bitflow.data.get_data` bit for bit.
    """
    parsed = parse_spec(spec)
    if not parsed.is_fashion:
        raise DatasetError(
            f"load_arrays supports only Fashion-MNIST specs (fashion-mnist, "
            f"fashion-mnist-binary:A,B), got {spec!r}; use get_data for image folders"
        )
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    _check_limit(limit, "limit")
    images, labels, _ = fashion_arrays(parsed, split)
    if limit is not None:
        images, labels = images[:limit], labels[:limit]
    return to_float01(images), labels
