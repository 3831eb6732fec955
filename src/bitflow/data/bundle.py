"""``get_data``: the one entry point the trainer and the CLI use (imports torch)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from torch.utils.data import Dataset

from ._errors import DatasetError
from .datasets import ArrayDataset, ImageFileDataset
from .folders import ImageIndex, image_folder_splits, read_hands11k
from .images import DEFAULT_IMAGE_SIZE, ImageGeometry, image_geometry
from .specs import _check_limit, fashion_arrays, parse_spec
from .splits import group_holdout, group_kfold, stratified_holdout

__all__ = ["DataBundle", "get_data"]

_FASHION_SIZE = 28
#: Decoded data sets up to this size (uint8 + float32 copies) are kept in memory.
MEMORY_BUDGET = 1 << 30


@dataclass(frozen=True)
class DataBundle:
    """Train / validation / test datasets of one spec plus what a model needs to know.

    ``train``, ``val`` and ``test`` yield ``(float32 tensor [C,H,W] in [0,1], int label)``.
    ``val`` is carved from the training split (hyper-parameters are chosen on it, never on
    ``test``); it is empty when ``val_fraction == 0``.  ``fold`` is the 0-based test fold for
    ``hands11k`` specs and ``None`` otherwise.
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    image_size: int
    class_names: tuple[str, ...]
    name: str
    fold: int | None = None
    geometry: ImageGeometry | None = None
    in_memory: bool = True


def _shuffled(idx: np.ndarray, seed: int) -> np.ndarray:
    """``idx`` in a seeded random order, so "first N" of a class-sorted list mixes classes."""
    return idx[np.random.default_rng(seed).permutation(len(idx))]


def _head(idx: np.ndarray, limit: int | None) -> np.ndarray:
    return idx if limit is None else idx[:limit]


def _files(
    index: ImageIndex, idx: np.ndarray, size: int, augment: bool, channels: int
) -> ImageFileDataset:
    return ImageFileDataset(index.subset(idx), size, augment=augment, channels=channels)


def _check_size(value: int | None, what: str) -> None:
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
        raise ValueError(f"{what} must be a positive int or None, got {value!r}")


def get_data(
    spec: str,
    *,
    fold: int | None = None,
    folds: int = 10,
    val_fraction: float = 0.1,
    seed: int = 0,
    limit_train: int | None = None,
    limit_test: int | None = None,
    image_size: int | None = None,
    augment: bool = True,
    test_fraction: float = 0.2,
    channels: int | None = None,
    default_image_size: int | None = None,
    in_memory: bool | None = None,
    geometry: ImageGeometry | None = None,
) -> DataBundle:
    """Build the datasets of ``spec`` (see :mod:`bitflow.data.specs` for the forms).

    Splits (all deterministic in ``seed``):

    - ``fashion-mnist[-binary:A,B]``: official train/test files; ``val`` = a class-stratified
      ``val_fraction`` of train.  In-memory :class:`ArrayDataset` (``.tensors`` for slicing);
      28x28 only (``image_size`` must be None or 28); no augmentation.  Binary specs keep the
      two classes and relabel A -> 0, B -> 1.
    - ``folder:PATH``: ``PATH/train`` + ``PATH/val`` (or ``PATH/test``) when present, else a
      class-stratified ``test_fraction`` of ``PATH`` is the test split; ``val`` = stratified
      ``val_fraction`` of train.  Size and channels come from the images themselves
      (:func:`~bitflow.data.images.image_geometry`): all the same size -> that size (square
      side; the larger side of a non-square one), else ``default_image_size`` (default 224);
      all grey -> 1 channel, else RGB. ``image_size`` / ``channels`` override both.
    - ``hands11k:PATH``: grouped ``folds``-fold split by person id (:func:`group_kfold`);
      ``fold`` (0-based, default 0) is the test fold; ``val`` = whole persons holding about
      ``val_fraction`` of the remaining samples.  Labels female 0, male 1; 224x224 RGB
      unless ``image_size`` / ``channels`` say otherwise.

    ``geometry`` passes a folder's geometry already probed (:func:`~bitflow.data.images.folder_geometry`
    with the same ``seed``) so it is not probed twice. File-based data sets are decoded once and kept in memory (:class:`ArrayDataset`; the
    trainer then augments whole batches) when ``in_memory`` is True, or when it is None and
    they fit :data:`MEMORY_BUDGET`; otherwise every access decodes the file again.

    For file-based specs the samples of each split are put in a seeded random order, so
    ``limit_train`` / ``limit_test`` ("the first N after the split") pick a class mix.
    ``augment`` enables the random horizontal flip on the *training* split of file-based
    specs (BitFlow-Net Sec. IV.C); ``val`` and ``test`` are never augmented.
    ``fold`` is only valid for ``hands11k`` specs.
    """
    parsed = parse_spec(spec)
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    _check_limit(limit_train, "limit_train")
    _check_limit(limit_test, "limit_test")
    _check_size(image_size, "image_size")
    _check_size(default_image_size, "default_image_size")
    if channels not in (None, 1, 3):
        raise ValueError(f"channels must be 1, 3 or None, got {channels!r}")
    if fold is not None and parsed.kind != "hands11k":
        raise ValueError(
            f"fold={fold!r} applies only to hands11k specs (cross-validation); spec {spec!r} "
            "has fixed train/test splits, so pass fold=None"
        )

    if parsed.is_fashion:
        if image_size not in (None, _FASHION_SIZE):
            raise ValueError(
                f"Fashion-MNIST images are {_FASHION_SIZE}x{_FASHION_SIZE}; image_size must be "
                f"None or {_FASHION_SIZE}, got {image_size}"
            )
        if channels not in (None, 1):
            raise ValueError(
                f"Fashion-MNIST images are grey (1 channel); channels must be None or 1, got {channels}"
            )
        x_tr, y_tr, names = fashion_arrays(parsed, "train")
        x_te, y_te, _ = fashion_arrays(parsed, "test")
        keep, held = stratified_holdout(y_tr, val_fraction, seed)
        keep = _head(keep, limit_train)
        test = _head(np.arange(len(y_te)), limit_test)
        return DataBundle(
            train=ArrayDataset(x_tr[keep], y_tr[keep], names, indices=keep),
            val=ArrayDataset(x_tr[held], y_tr[held], names, indices=held),
            test=ArrayDataset(x_te[test], y_te[test], names, indices=test),
            num_classes=len(names),
            in_channels=1,
            image_size=_FASHION_SIZE,
            class_names=names,
            name=parsed.name,
        )

    assert parsed.path is not None
    if parsed.kind == "folder":
        train_index, test_index = image_folder_splits(parsed.path)
        if len(train_index.class_names) < 2:
            raise DatasetError(
                f"image folder {train_index.root} has {len(train_index.class_names)} class "
                "folder(s); classification needs at least 2"
            )
        if test_index is None:
            rest, test_idx = stratified_holdout(train_index.labels, test_fraction, seed)
            test_index = train_index.subset(test_idx)
            train_index = train_index.subset(rest)
        keep, held = stratified_holdout(train_index.labels, val_fraction, seed)
        used_fold = None
        if geometry is None and (image_size is None or channels is None):
            geometry = image_geometry(train_index.paths + test_index.paths, seed)
        fallback = default_image_size or DEFAULT_IMAGE_SIZE
        size = image_size or (geometry.image_size(fallback) if geometry is not None else fallback)
        ch = channels or (geometry.channels if geometry is not None else 3)
    else:
        index = read_hands11k(parsed.path)
        assert index.groups is not None
        used_fold = 0 if fold is None else fold
        tr, te = group_kfold(index.groups, folds, used_fold, seed)
        train_index, test_index = index.subset(tr), index.subset(te)
        assert train_index.groups is not None
        keep, held = group_holdout(train_index.groups, val_fraction, seed)
        geometry = None
        size = image_size or default_image_size or DEFAULT_IMAGE_SIZE
        ch = channels or 3

    train_idx = _head(_shuffled(keep, seed), limit_train)
    val_idx = _shuffled(held, seed)
    test_idx = _head(_shuffled(np.arange(len(test_index)), seed), limit_test)
    names = train_index.class_names
    splits = [
        _files(train_index, train_idx, size, augment, ch),
        _files(train_index, val_idx, size, False, ch),
        _files(test_index, test_idx, size, False, ch),
    ]
    if in_memory is None:
        in_memory = sum(d.memory_bytes() for d in splits) <= MEMORY_BUDGET
    sets: list[Dataset] = [d.to_memory() for d in splits] if in_memory else list(splits)
    return DataBundle(
        train=sets[0],
        val=sets[1],
        test=sets[2],
        num_classes=len(names),
        in_channels=ch,
        image_size=size,
        class_names=names,
        name=parsed.name,
        fold=used_fold,
        geometry=geometry,
        in_memory=bool(in_memory),
    )
