"""Reference executor: runs a :class:`~bitflow.ir.graph.Graph` with plain numpy.

This is the definition every engine must reproduce: integer and bit ops exactly, float ops
within rounding (float convolutions and dense layers accumulate in float64 and round once).

- Binary convolution (BitFlow-Net Eq. 4): ``y = sign(x) (*) sign(w)``, computed by unpacking
  the bits to +-1 and summing products (exact: integer sums below 2^24 in float32, else float64).
  Zero padding (``pad_value=0``) pads the +-1 map with 0, one-padding with +1 (docs/architecture.md §2).
- Binary dense: ``dot = k_bits - 2 popcount(a XOR b)`` on the packed words (padding bits are 0
  in both operands, so they never count).
- MBBN plane convolution (``bconv2d_planes``): the integer convolution of the decoded odd
  levels ``sum_i 2^i c_i`` (MBBN Eq. 7) in one GEMM; the engines compute it as ``M x K``
  weighted binary products (Eq. 8), two independent routes to the same integers. The plane
  dense layer (``bdense_planes``, small) sums the ``M x K`` popcount products.
- Thresholds: bit 1 (-1) iff ``x < thr`` (direction +1) or ``x > thr`` (direction -1), i.e.
  +1 iff ``x >= thr`` resp. ``x <= thr``; a NaN float is never on the -1 side. Plane
  thresholds (``threshold_planes`` on int32, ``threshold_f32_planes`` on float32) count the
  passed thresholds ``q`` of a channel's ``2^M - 1`` and emit bit ``m`` of ``q`` as plane ``m``.
- Pools ignore padded positions (PyTorch pads max-pooling with -inf); on bits the max of +-1
  values is an AND of packed bits and the min an OR.
- Residual streams: ``add_f32`` sums left to right in float32, ``add_i32`` exactly; average
  pools and ``concat`` as in :mod:`bitflow.ir.ops.elementwise`.

Each op's reference function is declared in the op table (:mod:`bitflow.ir.ops`); the numpy
kernels live in :mod:`bitflow.ir._refkernels`. The graph is a DAG in topological order.

In ``bitflow`` mode only integer/bit tensors may flow between the first and the last layer;
the graph validation enforces it and every binary op re-checks its input dtype at run time.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from .graph import Graph, GraphError, Op, ValueInfo
from .ops import OPS


def conv_f32_error_bound(graph: Graph, op: Op) -> np.ndarray:
    """Per-output-channel bound on ``|float32 conv2d_f32 - exact|`` for inputs in [0, 1]:
    ``K eps32 (sum|w| + |b|)`` with fan-in ``K`` and ``eps32 = 2^-23 = 2u`` (the first-order
    summation bound, Higham Eq. 3.5, for any summation order). Two correct float32 convolutions
    may put an output within this distance of a threshold on different sides."""
    w = graph.tensors[op.params["w"]].astype(np.float64)
    b = graph.tensors[op.params["bias"]].astype(np.float64) if "bias" in op.params else 0.0
    fan = w[0].size
    return (
        fan
        * float(np.finfo(np.float32).eps)
        * (np.abs(w).reshape(w.shape[0], -1).sum(1) + np.abs(b))
    )


def preprocess(g: Graph, x: np.ndarray) -> np.ndarray:
    """Check ``x`` (float NCHW in [0, 1]) and convert it to the first layer's input (NHWC)."""
    arr = np.asarray(x)
    spec = g.input
    want = (spec.channels, spec.height, spec.width)
    if arr.ndim != 4 or tuple(arr.shape[1:]) != want:
        raise ValueError(
            f"input must have shape [N, {want[0]}, {want[1]}, {want[2]}] (NCHW), got {list(arr.shape)}"
        )
    if not np.issubdtype(arr.dtype, np.floating):
        raise TypeError(f"input must be a float array with values in [0, 1], got dtype {arr.dtype}")
    arr = arr.astype(np.float32, copy=False)
    if not np.all(np.isfinite(arr)):
        raise ValueError("input contains NaN or infinity")
    nhwc = np.ascontiguousarray(arr.transpose(0, 2, 3, 1))
    if spec.preprocess == "uint8":
        return np.clip(np.round(nhwc * np.float32(255.0)), 0, 255).astype(np.uint8)
    return nhwc


def run(
    graph: Graph,
    x: np.ndarray,
    *,
    return_intermediates: bool = False,
    batch_size: int = 32,
) -> np.ndarray | tuple[np.ndarray, dict[str, np.ndarray]]:
    """Run ``graph`` on float32 NCHW images ``x`` (``[N, C, H, W]``, values in [0, 1]).

    Returns float32 logits ``[N, classes]``; with ``return_intermediates=True`` also a dict
    value name -> array (the whole batch at once, storage layout: NHWC, packed bits) holding the
    preprocessed input and every op output. Without intermediates the images run in batches
    of ``batch_size`` (32 keeps the working set in cache; measured fastest).
    """
    values = graph.validate()
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    arr = np.asarray(x)
    if return_intermediates:
        inter = _run_all(graph, values, arr)
        return inter[graph.output], inter
    n = arr.shape[0] if arr.ndim >= 1 else 0
    if arr.ndim != 4 or n == 0:
        preprocess(graph, arr)  # raises the descriptive error
    outs = [
        _run_all(graph, values, arr[i : i + batch_size])[graph.output]
        for i in range(0, n, batch_size)
    ]
    return (
        np.concatenate(outs) if outs else np.zeros((0, values[graph.output].shape[0]), np.float32)
    )


def _run_all(graph: Graph, values: dict[str, ValueInfo], x: np.ndarray) -> dict[str, np.ndarray]:
    env: dict[str, np.ndarray] = {graph.input.name: preprocess(graph, x)}
    for op in graph.ops:
        vins = [values[v] for v in op.inputs]
        y = run_op(graph, op, [env[v] for v in op.inputs], vins)
        vout = values[op.outputs[0]]
        want = vout.storage_shape(y.shape[1] if vout.planes > 1 else y.shape[0])
        if tuple(y.shape) != want:  # internal consistency of the executor with shape inference
            raise GraphError(f"op {op.name!r} produced shape {y.shape}, expected {want}")
        env[op.outputs[0]] = y
    return env


def run_op(graph: Graph, op: Op, xs: list[np.ndarray], vins: list[ValueInfo]) -> np.ndarray:
    """Run one op on its inputs with its op-table reference (no shape check)."""
    return OPS[op.type].reference(graph, op, xs, vins)


def pool_windows(
    x: np.ndarray, op: Op, fill: float, reduce: Callable[..., np.ndarray]
) -> np.ndarray:
    """``reduce`` (``np.max``, ``np.sum``, ...) over every pooling window of ``op`` (its
    ``kernel``, ``stride``, ``padding``) of an NHWC array ``x``; padded positions hold ``fill``.
    For reports that pool a float value the way the graph pools the bits decided on it."""
    from ._refkernels import pool

    return pool(x, op, fill, reduce)


_EPS32 = float(np.finfo(np.float32).eps)  # 2^-23 = 2u


def float_error_bounds(graph: Graph, env: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Elementwise bounds ``E[v]`` on ``|computed - exact|`` of every float32 value ``v`` of a
    run (``env``: the reference's intermediates), valid for any correct float32 implementation
    (the engines, PyTorch's own module order); two implementations differ by at most ``2 E``.

    First-order rules (``eps = 2^-23``, Higham Eq. 3.5 for sums; ``|.|`` taken on the
    reference's values): a float conv of fan-in ``K`` on the input in [0, 1]: ``K eps (sum|w| +
    |b|)``; on another float value ``x``: ``K eps sum|w| max|x| + sum|w| max E[x]``; ``scale_bias``
    (``alpha acc + b``; PyTorch's ``acc * alpha + b`` and BN): ``4 eps (|s x| + |b|)``;
    ``affine_f32`` (a folded BatchNorm): ``|s| E[x] + 4 eps (|s x| + |b| + t)`` with ``t = |beta|
    + |mean s|`` (attribute ``bn_terms_abs``: PyTorch rounds ``(x - mean) s + beta``); ``add_f32``
    of ``n`` terms: ``sum E + (n - 1) eps sum|x_i|``; average pools: the window's max ``E`` plus
    ``k eps max|x|``; a float dense layer of fan-in ``K``: ``K eps (|x| |W|^T + |b|) + E[x] |W|^T``;
    ReLU, max-pool, flatten and concat carry ``E`` along; ``rprelu_f32`` (Lipschitz constant
    ``k = max(1, |slope|)``, three roundings): ``k E[x] + 4 eps (k (|x| + |gamma|) + |zeta|)``;
    ``conv2d_f32b1`` / ``dense_f32b1`` (+-1 weights, fan-in ``K``): ``K eps sum_win |x| +
    sum_win E[x]``.
    """
    from ._refkernels import pool

    e: dict[str, np.ndarray] = {}
    for op in graph.ops:
        t, out = op.type, op.outputs[0]
        y = env.get(out)
        if y is None or y.dtype != np.float32:
            continue
        ins = [env[v] for v in op.inputs]
        p = {role: graph.tensors[name].astype(np.float64) for role, name in op.params.items()}
        if t == "conv2d_f32":
            w = p["w"]
            fan = w[0].size
            sw = np.abs(w).reshape(w.shape[0], -1).sum(1)
            b = np.abs(p["bias"]) if "bias" in p else 0.0
            if op.inputs[0] == graph.input.name:
                bound = fan * _EPS32 * (sw + b)
            else:
                xm = float(np.abs(ins[0]).max(initial=0.0))
                em = float(e.get(op.inputs[0], np.zeros(1)).max(initial=0.0))
                bound = fan * _EPS32 * (sw * xm + b) + sw * em
            e[out] = np.broadcast_to(bound, y.shape).astype(np.float64)
        elif t == "dense_f32":
            x = ins[0].astype(np.float64)  # [N, K]
            aw = np.abs(p["w"])  # [O, K]
            b = np.abs(p["bias"]) if "bias" in p else 0.0
            prev = e[op.inputs[0]] if op.inputs[0] in e else np.zeros(x.shape)
            e[out] = aw.shape[1] * _EPS32 * (np.abs(x) @ aw.T + b) + prev @ aw.T
        elif t == "scale_bias":
            e[out] = (
                4 * _EPS32 * (np.abs(ins[0].astype(np.float64) * p["scale"]) + np.abs(p["bias"]))
            )
        elif t == "affine_f32":
            x = ins[0].astype(np.float64)
            terms = float(op.attrs.get("bn_terms_abs", 0.0))
            prev = e.get(op.inputs[0], np.zeros(()))
            e[out] = np.abs(p["scale"]) * prev + 4 * _EPS32 * (
                np.abs(x * p["scale"]) + np.abs(p["bias"]) + terms
            )
        elif t == "add_f32":
            mags = np.sum([np.abs(x.astype(np.float64)) for x in ins], axis=0)
            prevs = np.sum([np.broadcast_to(e.get(v, 0.0), y.shape) for v in op.inputs], axis=0)
            e[out] = prevs + (len(ins) - 1) * _EPS32 * mags
        elif t in ("relu_f32", "flatten"):
            e[out] = np.asarray(e.get(op.inputs[0], np.zeros(ins[0].shape))).reshape(y.shape)
        elif t == "rprelu_f32":
            x = np.abs(ins[0].astype(np.float64))
            k = np.maximum(1.0, np.abs(p["slope"]))  # the Lipschitz constant of the PReLU
            prev = np.broadcast_to(e.get(op.inputs[0], 0.0), y.shape)
            e[out] = k * prev + 4 * _EPS32 * (k * (x + np.abs(p["gamma"])) + np.abs(p["zeta"]))
        elif t in ("conv2d_f32b1", "dense_f32b1"):
            e[out] = _f32b1_bound(op, ins[0], e.get(op.inputs[0]), y.shape, p["w"].shape)
        elif t == "maxpool_f32":
            e[out] = pool(np.asarray(e.get(op.inputs[0], np.zeros(ins[0].shape))), op, 0.0, np.max)
        elif t == "avgpool_f32":
            kh, kw = (int(v) for v in op.attrs["kernel"])
            prev = np.asarray(e.get(op.inputs[0], np.zeros(ins[0].shape)))
            e[out] = pool(prev, op, 0.0, np.max) + kh * kw * _EPS32 * pool(
                np.abs(ins[0]).astype(np.float64), op, 0.0, np.max
            )
        elif t == "global_avgpool_f32":
            prev = np.asarray(e.get(op.inputs[0], np.zeros(ins[0].shape)))
            hw = ins[0].shape[1] * ins[0].shape[2]
            e[out] = prev.max(axis=(1, 2), keepdims=True) + hw * _EPS32 * np.abs(ins[0]).astype(
                np.float64
            ).max(axis=(1, 2), keepdims=True)
        elif t == "concat":
            e[out] = np.concatenate(
                [
                    np.broadcast_to(e.get(v, 0.0), x.shape)
                    for v, x in zip(op.inputs, ins, strict=True)
                ],
                -1,
            )
    return e


def _f32b1_bound(
    op: Op,
    x: np.ndarray,
    prev: np.ndarray | None,
    shape: tuple[int, ...],
    wshape: tuple[int, ...],
) -> np.ndarray:
    """``conv2d_f32b1`` / ``dense_f32b1``: every weight is +-1, so an output's rounding error is
    at most ``K eps sum_window |x|`` (``K`` = fan-in) plus the window's sum of the inputs' own
    bounds ``E[x]``."""
    from ._refkernels import conv

    ax = np.abs(x.astype(np.float64))
    ex = np.zeros(x.shape) if prev is None else np.broadcast_to(prev, x.shape).astype(np.float64)
    if op.type == "dense_f32b1":
        fan = x.shape[-1]
        s_abs, s_e = ax.sum(-1, keepdims=True), ex.sum(-1, keepdims=True)
    else:
        kh, kw = int(wshape[1]), int(wshape[2])
        st = (int(op.attrs["stride"][0]), int(op.attrs["stride"][1]))
        pd = (int(op.attrs["padding"][0]), int(op.attrs["padding"][1]))
        ones = np.ones((1, kh, kw, x.shape[-1]))
        fan = kh * kw * x.shape[-1]
        s_abs = conv(ax, ones, st, pd, 0.0, np.float64)
        s_e = conv(ex, ones, st, pd, 0.0, np.float64)
    return np.broadcast_to(fan * _EPS32 * s_abs + s_e, shape).astype(np.float64)


__all__ = [
    "conv_f32_error_bound",
    "float_error_bounds",
    "pool_windows",
    "preprocess",
    "run",
    "run_op",
]
