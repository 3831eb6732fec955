"""Data sets for bitflow: Fashion-MNIST (IDX), ImageNet-style folders, 11K Hands, splits.

Importing this package (and :mod:`bitflow.data.idx`, :mod:`~bitflow.data.splits`,
:mod:`~bitflow.data.specs`, :mod:`~bitflow.data.folders`, :mod:`~bitflow.data.evaluation`)
needs only numpy, so the deployment engine can read Fashion-MNIST without torch.  The torch parts
(:func:`get_data`, :class:`DataBundle`, :class:`ArrayDataset`, :class:`ImageFileDataset`)
load lazily on first attribute access.  Nothing is ever downloaded or cached on disk.

Model input convention: float32 ``pixel / 255`` in [0, 1], CHW, no mean/std normalisation.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._errors import DatasetError, DatasetNotFoundError
from .evaluation import eval_arrays
from .folders import (
    HANDS11K_CLASSES,
    IMAGE_EXTENSIONS,
    ImageIndex,
    read_hands11k,
    scan_image_folder,
)
from .idx import FASHION_MNIST_CLASSES, load_fashion_mnist, read_idx, to_float01, write_idx
from .specs import SPEC_FORMS, Spec, load_arrays, parse_spec
from .splits import group_holdout, group_kfold, stratified_holdout

if TYPE_CHECKING:
    from .bundle import DataBundle, get_data
    from .datasets import ArrayDataset, ImageFileDataset

__all__ = [
    "DatasetError",
    "DatasetNotFoundError",
    "FASHION_MNIST_CLASSES",
    "HANDS11K_CLASSES",
    "IMAGE_EXTENSIONS",
    "SPEC_FORMS",
    "ImageIndex",
    "Spec",
    "read_idx",
    "write_idx",
    "load_fashion_mnist",
    "to_float01",
    "load_arrays",
    "eval_arrays",
    "parse_spec",
    "scan_image_folder",
    "read_hands11k",
    "group_kfold",
    "group_holdout",
    "stratified_holdout",
    "DataBundle",
    "get_data",
    "ArrayDataset",
    "ImageFileDataset",
]

_LAZY = {
    "DataBundle": "bundle",
    "get_data": "bundle",
    "ArrayDataset": "datasets",
    "ImageFileDataset": "datasets",
}


def __getattr__(name: str) -> Any:
    """Import the torch-based names on first use (PEP 562)."""
    if name in _LAZY:
        module = importlib.import_module(f"{__name__}.{_LAZY[name]}")
        value = getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
