"""Deterministic data splits (numpy only): grouped k-fold, grouped and stratified holdout.

All functions return sorted ``int64`` index arrays and depend only on their arguments and
``seed`` (a ``numpy.random.default_rng(seed)`` stream), never on global random state.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence

import numpy as np

__all__ = ["group_kfold", "group_holdout", "stratified_holdout"]


def _group_codes(groups: Sequence[Hashable] | np.ndarray) -> tuple[np.ndarray, int]:
    """Map arbitrary hashable group labels to codes 0..G-1 (first-appearance order)."""
    codes: dict[Hashable, int] = {}
    out = np.empty(len(groups), dtype=np.int64)
    for i, g in enumerate(groups):
        key = g.item() if isinstance(g, np.generic) else g
        out[i] = codes.setdefault(key, len(codes))
    return out, len(codes)


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")


def group_kfold(
    groups: Sequence[Hashable] | np.ndarray, k: int, fold: int, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Split samples into ``k`` folds of whole groups; return ``(train_idx, test_idx)``.

    ``groups[i]`` is the group (for 11K Hands: the person ``id``) of sample ``i``.  Every
    group lands in exactly one fold, so no group is ever in both train and test, and the
    ``k`` test folds partition the samples (each sample is tested exactly once).

    Balancing (greedy "largest group first into the lightest fold"): groups are shuffled
    with ``default_rng(seed)``, stably sorted by size descending, and each is put into the
    fold that currently holds the fewest samples (lowest fold index on ties).  Fold sizes then
    differ by at most the size of the largest group.

    ``fold`` is **0-based**: ``0 <= fold < k``.  Requires ``2 <= k <= number of groups``.
    """
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"k (number of folds) must be an int >= 2, got {k!r}")
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < k:
        raise ValueError(f"fold must be an int in 0..{k - 1} (0-based), got {fold!r}")
    _check_seed(seed)
    codes, n_groups = _group_codes(groups)
    if n_groups < k:
        raise ValueError(f"cannot make {k} folds from only {n_groups} distinct groups")
    sizes = np.bincount(codes, minlength=n_groups)
    order = np.random.default_rng(seed).permutation(n_groups)
    order = order[np.argsort(-sizes[order], kind="stable")]
    fold_of = np.empty(n_groups, dtype=np.int64)
    load = np.zeros(k, dtype=np.int64)
    for g in order:
        f = int(np.argmin(load))
        fold_of[g] = f
        load[f] += sizes[g]
    in_test = fold_of[codes] == fold
    return np.flatnonzero(~in_test).astype(np.int64), np.flatnonzero(in_test).astype(np.int64)


def group_holdout(
    groups: Sequence[Hashable] | np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole groups holding about ``fraction`` of the samples: ``(keep, held)``.

    Groups are visited in a ``default_rng(seed)`` random order and added to the held-out
    set while it holds fewer than ``round(fraction * N)`` samples, so no group is split.  With
    ``fraction > 0`` at least one group is held out, and at least one group is always kept.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    _check_seed(seed)
    codes, n_groups = _group_codes(groups)
    n = len(codes)
    target = round(fraction * n)
    held_groups = np.zeros(n_groups, dtype=bool)
    if target > 0:
        if n_groups < 2:
            raise ValueError(
                f"cannot hold out a fraction {fraction} by group: only {n_groups} distinct group(s)"
            )
        sizes = np.bincount(codes, minlength=n_groups)
        taken = 0
        for g in np.random.default_rng(seed).permutation(n_groups):
            if taken >= target or held_groups.sum() == n_groups - 1:
                break
            held_groups[g] = True
            taken += int(sizes[g])
    held = held_groups[codes]
    return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64)


def stratified_holdout(
    labels: Sequence[int] | np.ndarray, fraction: float, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out about ``fraction`` of each class: ``(keep, held)``.

    For each class ``c`` with ``n_c`` samples, ``round(fraction * n_c)`` of them (chosen by a
    ``default_rng(seed)`` permutation, classes visited in increasing label order) are held out,
    so the held-out set keeps the class proportions.
    """
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction must be in [0, 1), got {fraction!r}")
    _check_seed(seed)
    y = np.asarray(labels)
    rng = np.random.default_rng(seed)
    held = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        idx = np.flatnonzero(y == c)
        n_held = round(fraction * len(idx))
        held[rng.permutation(idx)[:n_held]] = True
    return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64)
