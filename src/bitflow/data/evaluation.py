"""Evaluation arrays of any spec, shaped for a given model (``bitflow verify | run``).

On top of both loaders: the numpy-only Fashion-MNIST reader (:mod:`bitflow.data.specs`) and the
torch data sets of :func:`bitflow.data.get_data` (:mod:`bitflow.data.bundle`, imported only for
image folders and 11K Hands, so that Fashion-MNIST evaluation stays torch-free).
"""

from __future__ import annotations

from typing import Any, Literal

import numpy as np

from ._errors import DatasetError
from .specs import _check_limit, load_arrays, parse_spec


def eval_arrays(
    spec: str,
    limit: int | None = None,
    split: Literal["train", "test"] = "test",
    *,
    channels: int | None = None,
    image_size: int | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """float32 NCHW images in [0, 1] and int64 labels of a spec's evaluation split, shaped for
    a model that takes ``channels`` x ``image_size`` x ``image_size`` input (``bitflow verify |
    run`` pass the model file's input, never a default).

    Fashion-MNIST specs are read with numpy only (:func:`load_arrays`; a model that does not take
    1x28x28 input is an error naming both shapes). Image folders and 11K Hands go through the
    torch datasets of :func:`bitflow.data.get_data` with the same ``seed`` as training (the
    test split of a folder without ``train/``/``val/`` is carved with it).
    """
    parsed = parse_spec(spec)
    if parsed.is_fashion:
        if channels not in (None, 1) or image_size not in (None, 28):
            raise DatasetError(
                f"the model takes {channels}x{image_size}x{image_size} input but {spec!r} images are "
                "1x28x28 (grey); evaluate it on the data it was trained on"
            )
        return load_arrays(spec, split=split, limit=limit)
    from .bundle import get_data  # torch

    _check_limit(limit, "limit")
    bundle = get_data(
        spec,
        limit_test=limit,
        limit_train=limit,
        augment=False,
        image_size=image_size,
        channels=channels,
        seed=seed,
        val_fraction=0.0 if split == "train" else 0.1,
    )
    ds: Any = bundle.test if split == "test" else bundle.train
    c, s = bundle.in_channels, bundle.image_size
    tensors = getattr(ds, "tensors", None)
    if tensors is not None:
        return tensors[0].numpy(), tensors[1].numpy().astype(np.int64)
    items = [ds[i] for i in range(len(ds))]
    x = (
        np.stack([np.asarray(a, np.float32) for a, _ in items])
        if items
        else np.zeros((0, c, s, s), np.float32)
    )
    return x, np.asarray([b for _, b in items], np.int64)


__all__ = ["eval_arrays"]
