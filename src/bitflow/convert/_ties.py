"""Counting "ties": reachable inputs where PyTorch's own float32 arithmetic decides another
sign or level than the exact integer / float thresholds (stored on the threshold ops and in the
provenance; ``verify`` reports them). The oracle is PyTorch itself: its float32 chain
``x*alpha + b``, ReLU, the BatchNorm module and the consumer's quantizer, evaluated in windows
around every threshold."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from . import batchshift as bs
from ._core import Pending
from ._mbbn import torch_levels

_NEAR_WINDOW = 8
_MAX_WINDOW = 4096  # disagreements lie within a few ulps of T; the window grows 8x up to this


def _count_ties(
    p: Pending,
    th: bs.Thresholds,
    alpha: Any,
    bias: Any,
    lo: Any,
    hi: Any,
    lanes: int,
    shift: np.ndarray | None = None,
    decide: Any = None,
    layer: nn.Module | None = None,
) -> int:
    """Reachable inputs where PyTorch's own float32 arithmetic disagrees with the exact rule
    (``decide``: PyTorch's decisions on ``xs [K, lanes]`` when not the usual BN chain;
    ``layer``: the decision is its input quantizer's level > 0; ``shift``: the usual chain
    followed by RSign's ``sign(u - beta)``; else ``BN(...) >= 0``).

    Both PyTorch's float32 pipeline (``x*alpha + b``, ReLU, the BN module) and the exact rule are
    monotone step functions of ``x``, so their disagreements form an interval next to ``T``: we
    evaluate a window around ``T`` (and both range ends for constants), widening it while the
    window edge still disagrees.
    """
    if p.is_int:
        assert lo is not None and hi is not None
        lo_ = np.asarray(lo, np.int64)
        hi_ = np.asarray(hi, np.int64)
    else:
        key_max = bs._F32_MAX_KEY
        lo_ = np.full(lanes, -key_max, np.int64)
        hi_ = np.full(lanes, key_max, np.int64)
    const = np.isin(th.kind, (bs.CONST_POS, bs.CONST_NEG))
    if p.is_int:
        center = np.where(const, lo_, th.thr.astype(np.int64))
    else:
        keys = bs.f32_keys(th.thr)
        center = np.where(const, lo_, keys)
    total = 0
    width = _NEAR_WINDOW
    while True:
        ks = np.arange(-width, width + 1, dtype=np.int64)
        pts = np.concatenate(
            [center[None, :] + ks[:, None], np.where(const, hi_, center)[None, :] + ks[:, None]]
        )
        pts = np.clip(pts, lo_, hi_)
        if p.is_int:
            xs = pts.astype(np.float32)
        else:
            xs = bs.f32_from_keys(pts)
        exact = th.apply(xs.astype(np.float64) if not p.is_int else pts) > 0
        if decide is not None:
            got = decide(xs)
        elif layer is not None:
            got = _torch_level_fn(p, alpha if p.is_int else None, bias, layer)(xs) > 0
        else:
            got = _torch_decisions(p, xs, alpha, bias, shift)
        bad = exact != got
        # distinct points only (clipping and the two windows may repeat a point)
        total = _distinct_bad(pts, bad)
        edge_rows = [0, 2 * width, 2 * width + 1, 4 * width + 1]
        edge_bad = bad[edge_rows] & (pts[edge_rows] > lo_) & (pts[edge_rows] < hi_)
        if not edge_bad.any() or width >= _MAX_WINDOW:
            return int(total)
        width *= 8


def _torch_chain(p: Pending, xs: np.ndarray, alpha: Any, bias: Any) -> torch.Tensor:
    """PyTorch's float32 ``BN(relu(x*alpha + b))`` on ``xs [K, lanes]`` (module order, as in the
    model; ``alpha`` and ``b`` apply to an integer producer only)."""
    bn = p.bn
    with torch.no_grad():
        y = torch.from_numpy(np.ascontiguousarray(xs, np.float32))
        if p.is_int:
            y = y * torch.from_numpy(np.asarray(alpha, np.float32))
            if bias is not None and np.any(bias != 0):
                y = y + torch.from_numpy(np.asarray(bias, np.float32))
        if p.relu:
            y = torch.relu(y)
        if bn is not None:
            was = bn.training
            bn.eval()
            y = bn(y[:, :, None, None])[:, :, 0, 0] if isinstance(bn, nn.BatchNorm2d) else bn(y)
            bn.train(was)
        return y


def _torch_level_fn(
    p: Pending, alpha: Any, bias: Any, layer: nn.Module, levels_of: Any = None
) -> Any:
    """``xs [K, lanes] -> PyTorch's levels [K, lanes]``: :func:`_torch_chain`, then ``layer``'s
    input quantizer."""

    def fn(xs: np.ndarray) -> np.ndarray:
        y = _torch_chain(p, xs, alpha, bias)
        with torch.no_grad():
            return (torch_levels(layer, y) if levels_of is None else levels_of(y)).numpy()

    return fn


def _distinct_bad(pts: np.ndarray, bad: np.ndarray) -> int:
    """Number of distinct points per column of ``pts [rows, lanes]`` where ``bad`` holds, summed
    over the lanes (``bad`` is a function of the point, so repeats agree); vectorized."""
    order = np.argsort(pts, axis=0, kind="stable")
    p = np.take_along_axis(pts, order, axis=0)
    b = np.take_along_axis(bad, order, axis=0)
    first = np.ones_like(b)
    first[1:] = p[1:] != p[:-1]
    return int((b & first).sum())


def _window_ties(
    centers: np.ndarray, lo_: np.ndarray, hi_: np.ndarray, exact: Any, torch_fn: Any, to_x: Any
) -> int:
    """Distinct points ``k`` (integers, or float32 order keys) in windows around ``centers
    [lanes, J]`` where ``exact(k)`` and ``torch_fn(to_x(k))`` (both ``[rows, lanes]`` levels)
    disagree; the windows widen (x8, up to ``_MAX_WINDOW``) while a window edge disagrees.
    Both are monotone step functions of ``k`` that differ only next to the thresholds."""
    width = _NEAR_WINDOW
    n_j = centers.shape[1]
    while True:
        ks = np.arange(-width, width + 1, dtype=np.int64)
        pts = (centers.T[:, None, :] + ks[None, :, None]).reshape(n_j * ks.size, -1)
        pts = np.clip(pts, lo_, hi_)
        step = max(
            1, (1 << 22) // max(1, pts.shape[1] * n_j)
        )  # bound the [rows, lanes, L] temporaries
        bad = np.concatenate(
            [
                exact(pts[i : i + step]) != torch_fn(to_x(pts[i : i + step]))
                for i in range(0, pts.shape[0], step)
            ]
        )
        total = _distinct_bad(pts, bad)
        edges = np.concatenate([np.arange(n_j) * ks.size, np.arange(n_j) * ks.size + ks.size - 1])
        edge_bad = bad[edges] & (pts[edges] > lo_) & (pts[edges] < hi_)
        if not edge_bad.any() or width >= _MAX_WINDOW:
            return int(total)
        width *= 8


def _count_level_ties_int(
    p: Pending,
    th: bs.LevelThresholds,
    alpha: Any,
    bias: Any,
    lo: Any,
    hi: Any,
    lanes: int,
    layer: nn.Module,
    levels_of: Any = None,
) -> int:
    """Reachable integers where PyTorch's float32 levels differ from the exact rule (like
    :func:`_count_ties`, around every one of the ``2^M - 1`` thresholds)."""
    lo_ = np.asarray(lo, np.int64)
    hi_ = np.asarray(hi, np.int64)
    centers = np.clip(th.thr.astype(np.int64), lo_[:, None], hi_[:, None])
    fn = _torch_level_fn(p, alpha, bias, layer, levels_of)
    return _window_ties(centers, lo_, hi_, th.levels, fn, lambda k: k.astype(np.float32))


def _count_level_ties_float(
    p: Pending, th: bs.Thresholds, n_l: int, layer: nn.Module, levels_of: Any = None
) -> int:
    """Float32 first-layer outputs next to a level threshold where PyTorch's float32 BN and
    quantizer give another level than the exact thresholds."""
    c = p.channels
    key_max = bs._F32_MAX_KEY
    keys = bs.f32_keys(th.thr).reshape(c, n_l)
    lo_ = np.full(c, -key_max, np.int64)
    hi_ = np.full(c, key_max, np.int64)

    def to_x(k: np.ndarray) -> np.ndarray:
        return bs.f32_from_keys(k)

    thr = th.thr.astype(np.float64).reshape(c, n_l)
    up = th.direction.reshape(c, n_l) > 0

    def exact(k: np.ndarray) -> np.ndarray:
        y = to_x(k).astype(np.float64)[:, :, None]
        passed = np.where(up, y >= thr, y <= thr)  # th.apply per (channel, boundary) lane
        return 2 * passed.sum(-1) - n_l

    fn = _torch_level_fn(p, None, None, layer, levels_of)
    return _window_ties(np.clip(keys, lo_[:, None], hi_[:, None]), lo_, hi_, exact, fn, to_x)


def _torch_decisions(
    p: Pending, xs: np.ndarray, alpha: Any, bias: Any, shift: np.ndarray | None = None
) -> np.ndarray:
    """PyTorch's float32 ``sign(BN(relu(x*alpha + b)) [- beta]) >= 0`` on ``xs [K, lanes]``
    (BN module order; ``beta`` the consumer's RSign shift)."""
    y = _torch_chain(p, xs, alpha, bias)
    if shift is not None:
        y = y - torch.from_numpy(np.asarray(shift, np.float32))
    return (y >= 0).numpy()
