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


def window_sums(
    x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: tuple[int, int]
) -> np.ndarray:
    """``sum`` over every convolution window (all channels, zero padding) of an NHWC integer
    array ``x [N, H, W, C]``, in int64: ``[N, Ho, Wo, 1]``. For reports that bound a convolution
    over ``x`` by the size of its inputs (``sum_i |x_i|`` for ``x >= 0``)."""
    from ._refkernels import conv

    ones = np.ones((1, kernel[0], kernel[1], x.shape[-1]), np.int64)
    return conv(x.astype(np.int64, copy=False), ones, stride, padding, 0, np.int64)


def gamma32(n: int) -> float:
    """Higham's ``gamma_n = n u / (1 - n u)`` for float32 (``u = 2^-24``): a sum of ``n``
    products ``sum_i a_i b_i`` (or ``n + 1`` terms) computed in float32 in any order, with or
    without FMA, is within ``gamma_n sum_i |a_i b_i|`` of the exact value (Higham Eq. 3.5)."""
    nu = n * _U32
    if nu >= 1.0:
        raise ValueError(f"gamma_n is undefined for n u >= 1 (n = {n})")
    return nu / (1.0 - nu)


def float_error_bounds(
    graph: Graph, env: dict[str, np.ndarray], *, adjoint_max_outputs: int = 64
) -> dict[str, np.ndarray]:
    """Elementwise bounds ``E[v]`` on ``|computed - exact|`` of every float32 value ``v`` of a
    run (``env``: the reference's intermediates), valid for any correct float32 implementation
    (the engines, PyTorch's own module order); two implementations differ by at most ``2 E``.

    **Forward rules.** Every op's error is its own rounding ``rho`` (on inputs that are off by
    at most ``E[x]``) plus its inputs' errors carried through it, with ``u = 2^-24``,
    ``gamma_n = n u / (1 - n u)`` (:func:`gamma32`) and ``X = |x| + 2 E[x]`` (a bound on the
    magnitude of another implementation's input: ``|x'| <= |x_ref| + |x' - exact| + |exact -
    x_ref|``):

    - float conv / dense layer of fan-in ``K`` (``K`` products and the bias, any order, with or
      without FMA): ``rho = gamma_{K+1} (|W| * X + |b|)``, carried ``|W| * E[x]`` (``*``: the
      layer's own convolution / product of the magnitudes, so each output carries the errors
      of exactly the inputs it reads);
    - ``scale_bias`` (``alpha acc + b``; PyTorch's ``acc * alpha + b`` and BN):
      ``rho = 8 u (|s x| + |b|)``; ``scale_hw`` (XNOR-Net++'s ``acc Gamma``): ``rho = 8 u |s x|``; ``affine_f32`` (a folded BatchNorm): ``rho = 8 u (|s| X +
      |b| + t)`` with ``t = |beta| + |mean s|`` (attribute ``bn_terms_abs``: PyTorch rounds
      ``(x - mean) s + beta``, and the folded float32 ``s`` and ``b`` are rounded), carried
      ``|s| E[x]``;
    - ``add_f32`` of ``n`` terms: ``rho = gamma_{n-1} sum X``, carried ``sum E``;
    - average pools of ``k`` positions (zero padding counts): ``rho = gamma_{k+1}`` times the
      window's mean of ``X``, carried: the window's mean of ``E``;
    - ReLU, max-pool, flatten and concat: ``rho = 0``, carried ``E`` (max-pool: the window's
      max ``E``);
    - ``rprelu_f32`` (three roundings, Lipschitz constant ``k = max(1, |slope|)``):
      ``rho = 8 u (k (X + |gamma|) + |zeta|)``, carried ``k E[x]``;
    - ``conv2d_f32b1`` / ``dense_f32b1`` (+-1 weights, fan-in ``K``): as a float conv / dense
      layer with ``|W| = 1``: ``rho = gamma_{K+1} sum_window X``, carried ``sum_window E[x]``.

    **The graph's output, by the adjoint.** Carrying ``|W| E`` layer after layer is the worst
    case for every sign of the errors, which grows like the product of the layers' ``|W|`` row
    sums (10^4 over a random AlexNet twin's three FC layers, far above the logits). The
    deviation of another implementation is, exactly, the sum over ops ``k`` of
    ``J_k r_k``: its own rounding ``|r_k| <= rho_k`` pushed through the network's linear maps
    ``J_k`` (convs, dense layers, affines, adds and pools are linear; ReLU and max-pool pass
    the deviation through the reference's pattern wherever the pattern cannot differ, i.e. the
    ReLU input is farther than ``2 E`` from 0 and the window's top two values farther than
    ``4 E`` apart; elsewhere the unit's whole output deviation, at most its ``E``, is a source
    of its own). So ``|out - exact| <= sum_k |J_k| rho_k``, with ``|J_k|`` the magnitude of the
    actual (signed) Jacobian row of each output, computed by one backward pass per output
    channel. The output's bound is the smaller of the two (both hold); the adjoint runs when
    the output has at most ``adjoint_max_outputs`` channels.

    Only products of two rounding errors are dropped (``gamma`` absorbs the higher orders of
    one chain of roundings). Raises ``GraphError`` on a float32-valued op without a rule,
    rather than treating its error as 0.
    """
    from ._refkernels import conv, pool

    e: dict[str, np.ndarray] = {}  # the forward bound of every float value
    rho: dict[str, np.ndarray] = {}  # each op's own rounding bound, on its output

    def err(v: str, like: np.ndarray) -> np.ndarray:
        return np.broadcast_to(e.get(v, 0.0), like.shape)

    def mag(v: str, x: np.ndarray) -> np.ndarray:
        return np.abs(x.astype(np.float64)) + 2 * err(v, x)

    for op in graph.ops:
        t, out = op.type, op.outputs[0]
        y = env.get(out)
        if y is None or y.dtype != np.float32:
            continue
        ins = [env[v] for v in op.inputs]
        v0, x0 = op.inputs[0], ins[0]
        p = {role: graph.tensors[name].astype(np.float64) for role, name in op.params.items()}
        carried: np.ndarray | float = 0.0
        if t == "conv2d_f32":
            aw = np.abs(p["w"])  # [O, kh, kw, C]
            g = gamma32(aw[0].size + 1)
            st = tuple(int(a) for a in op.attrs["stride"])
            pd = tuple(int(a) for a in op.attrs["padding"])
            b = g * np.abs(p["bias"]) if "bias" in p else 0.0
            rho[out] = g * conv(mag(v0, x0), aw, st, pd, 0.0, np.float64) + b  # type: ignore[arg-type]
            if v0 in e:
                carried = conv(err(v0, x0), aw, st, pd, 0.0, np.float64)  # type: ignore[arg-type]
        elif t == "dense_f32":
            aw = np.abs(p["w"])  # [O, K]
            g = gamma32(aw.shape[1] + 1)
            b = g * np.abs(p["bias"]) if "bias" in p else 0.0
            rho[out] = g * mag(v0, x0) @ aw.T + b
            carried = err(v0, x0) @ aw.T
        elif t == "scale_bias":
            rho[out] = 8 * _U32 * (np.abs(x0.astype(np.float64) * p["scale"]) + np.abs(p["bias"]))
        elif t == "scale_hw":  # one rounding of an exact product
            rho[out] = 8 * _U32 * np.abs(x0.astype(np.float64) * p["scale"])
        elif t == "affine_f32":
            terms = float(op.attrs.get("bn_terms_abs", 0.0))
            s = np.abs(p["scale"])
            rho[out] = 8 * _U32 * (s * mag(v0, x0) + np.abs(p["bias"]) + terms)
            carried = s * err(v0, x0)
        elif t == "add_f32":
            pairs = list(zip(op.inputs, ins, strict=True))
            rho[out] = gamma32(max(len(ins) - 1, 1)) * np.sum([mag(v, x) for v, x in pairs], axis=0)
            carried = np.sum([err(v, x) for v, x in pairs], axis=0)
        elif t in ("relu_f32", "flatten"):
            carried = np.asarray(err(v0, x0)).reshape(y.shape)
        elif t == "rprelu_f32":
            lip = np.maximum(1.0, np.abs(p["slope"]))  # the Lipschitz constant of the PReLU
            rho[out] = 8 * _U32 * (lip * (mag(v0, x0) + np.abs(p["gamma"])) + np.abs(p["zeta"]))
            carried = lip * err(v0, x0)
        elif t in ("conv2d_f32b1", "dense_f32b1"):
            rho[out], carried = _f32b1_bound(op, mag(v0, x0), err(v0, x0), p["w"].shape)
        elif t == "maxpool_f32":
            carried = pool(np.asarray(err(v0, x0)), op, 0.0, np.max)
        elif t == "avgpool_f32":
            kh, kw = (int(v) for v in op.attrs["kernel"])
            k = kh * kw
            rho[out] = pool(np.ascontiguousarray(gamma32(k + 1) * mag(v0, x0) / k), op, 0.0, np.sum)
            carried = pool(np.ascontiguousarray(err(v0, x0) / k), op, 0.0, np.sum)
        elif t == "global_avgpool_f32":
            hw = x0.shape[1] * x0.shape[2]
            rho[out] = (gamma32(hw + 1) * mag(v0, x0)).mean(axis=(1, 2), keepdims=True)
            carried = err(v0, x0).mean(axis=(1, 2), keepdims=True)
        elif t == "concat":
            carried = np.concatenate([err(v, x) for v, x in zip(op.inputs, ins, strict=True)], -1)
        else:
            raise GraphError(
                f"float_error_bounds: no error rule for the float32 op {t!r} ({op.name!r})"
            )
        if "torch_err_bound" in op.attrs:
            # the PyTorch module computes this value another way (ABC-Net: one float conv of
            # the summed bases, not a sum of branch results): its own per-channel bound on
            # |value - exact| joins the op's rounding, so E bounds both implementations
            tb = np.asarray(op.attrs["torch_err_bound"], np.float64)
            rho[out] = np.maximum(np.broadcast_to(rho.get(out, 0.0), y.shape), tb)
        e[out] = np.broadcast_to(rho.get(out, 0.0) + carried, y.shape).astype(np.float64)
    out = graph.output
    if out in e and e[out].ndim == 2 and 0 < e[out].shape[1] <= adjoint_max_outputs:
        e[out] = np.minimum(e[out], _adjoint_output_bound(graph, env, e, rho))
    return e


def _f32b1_bound(
    op: Op, xmag: np.ndarray, xerr: np.ndarray, wshape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """``(rho, carried)`` of ``conv2d_f32b1`` / ``dense_f32b1``: every weight is +-1, so the
    float conv rule with ``|W| = 1``: ``gamma_{K+1}`` times the window's sum of ``X``, and the
    window's sum of the inputs' bounds."""
    from ._refkernels import conv

    xm = np.asarray(xmag, np.float64)
    xe = np.asarray(xerr, np.float64)
    if op.type == "dense_f32b1":
        k = xm.shape[-1]
        return gamma32(k + 1) * xm.sum(-1, keepdims=True), xe.sum(-1, keepdims=True)
    kh, kw = int(wshape[1]), int(wshape[2])
    st = (int(op.attrs["stride"][0]), int(op.attrs["stride"][1]))
    pd = (int(op.attrs["padding"][0]), int(op.attrs["padding"][1]))
    ones = np.ones((1, kh, kw, xm.shape[-1]))
    k = kh * kw * xm.shape[-1]
    return (
        gamma32(k + 1) * conv(xm, ones, st, pd, 0.0, np.float64),
        conv(np.ascontiguousarray(xe), ones, st, pd, 0.0, np.float64),
    )


def _adjoint_output_bound(
    graph: Graph, env: dict[str, np.ndarray], e: dict[str, np.ndarray], rho: dict[str, np.ndarray]
) -> np.ndarray:
    """``sum_k |J_k| rho_k`` for every output channel (see :func:`float_error_bounds`): one
    backward pass per channel through the float ops, in the reference's linearization, with
    the ambiguous ReLU units and max-pool windows as sources of their own."""
    from ._refkernels import pad, windows

    src = dict(rho)  # every source of deviation: the ops' roundings and the ambiguous units
    for op in graph.ops:
        v, x0 = op.outputs[0], env[op.inputs[0]]
        if v not in e or op.inputs[0] not in e:
            continue
        ex = np.broadcast_to(e[op.inputs[0]], x0.shape)
        if op.type == "relu_f32":
            amb = np.abs(x0) <= 2 * ex
            if amb.any():
                src[v] = np.where(amb, ex, 0.0)
        elif op.type == "rprelu_f32":  # a unit within its bound of the kink: a source of its own
            gam = graph.tensors[op.params["gamma"]].astype(np.float64)
            amb = np.abs(x0.astype(np.float64) - gam) <= 2 * ex
            if amb.any():
                own = np.where(amb, np.broadcast_to(e[v], x0.shape), 0.0)
                src[v] = src[v] + own if v in src else own
                src[v + "#kink"] = amb.astype(np.float64)
        elif op.type == "maxpool_f32":
            kh, kw, sh, sw, ph, pw = _pool_geom(op)
            win = windows(pad(x0.astype(np.float64), ph, pw, -np.inf), kh, kw, sh, sw)
            flat = win.reshape(*win.shape[:3], kh * kw, -1)
            top2 = np.sort(flat, axis=3)[:, :, :, -2:, :] if kh * kw > 1 else None
            emax = windows(pad(ex, ph, pw, 0.0), kh, kw, sh, sw).max(axis=(3, 4))
            if top2 is not None:
                amb = top2[:, :, :, 1] - top2[:, :, :, 0] <= 4 * emax
                if amb.any():
                    src[v] = np.where(amb, emax, 0.0)
    out = graph.output
    n, c = env[out].shape
    total = np.zeros((n, c))
    for j in range(c):
        grads: dict[str, np.ndarray] = {out: np.zeros((n, c))}
        grads[out][:, j] = 1.0
        for op in reversed(graph.ops):
            v = op.outputs[0]
            gy = grads.pop(v, None)
            if gy is None or v not in e:
                continue
            if v in src:
                total[:, j] += np.abs(gy * src[v]).reshape(n, -1).sum(axis=1)
            for name, gx in _float_input_grads(graph, op, env, gy, src):
                if name in e:
                    grads[name] = grads[name] + gx if name in grads else gx
    return total


def _pool_geom(op: Op) -> tuple[int, int, int, int, int, int]:
    kh, kw = (int(a) for a in op.attrs["kernel"])
    sh, sw = (int(a) for a in op.attrs["stride"])
    ph, pw = (int(a) for a in op.attrs["padding"])
    return kh, kw, sh, sw, ph, pw


def _float_input_grads(
    graph: Graph, op: Op, env: dict[str, np.ndarray], gy: np.ndarray, src: dict[str, np.ndarray]
) -> list[tuple[str, np.ndarray]]:
    """The adjoint of one float op: ``(input, J^T gy)`` for each float input (the reference's
    linearization; an ambiguous ReLU unit or max-pool window passes nothing, its deviation is a
    source of its own)."""
    from ._refkernels import pad, windows

    t, x0 = op.type, env[op.inputs[0]]
    p = {role: graph.tensors[name].astype(np.float64) for role, name in op.params.items()}
    v = op.outputs[0]
    if t in ("scale_bias", "scale_hw"):
        return []  # an int32 accumulator: exact
    if t == "affine_f32":
        return [(op.inputs[0], gy * p["scale"])]
    if t == "dense_f32":
        return [(op.inputs[0], gy @ p["w"])]
    if t == "dense_f32b1":
        w = _pm1(graph, op)  # [O, K]
        return [(op.inputs[0], gy @ w)]
    if t == "rprelu_f32":
        # slope 1 above gamma, slope below; a unit within its bound of the kink passes nothing
        # (its deviation, at most its E, is a source of its own, like an ambiguous ReLU; marked
        # by _adjoint_output_bound as src[v + "#kink"])
        tt = x0.astype(np.float64) - p["gamma"]
        d = np.where(tt > 0, 1.0, p["slope"])
        kink = src.get(v + "#kink")
        return [(op.inputs[0], gy * d if kink is None else gy * d * (kink == 0))]
    if t == "flatten":
        return [(op.inputs[0], gy.reshape(x0.shape))]
    if t == "relu_f32":
        keep = (x0 > 0) & ~(src[v] > 0) if v in src else x0 > 0
        return [(op.inputs[0], gy * keep)]
    if t == "add_f32":
        return [(name, gy) for name in op.inputs]
    if t == "concat":
        cuts = np.cumsum([env[name].shape[-1] for name in op.inputs])[:-1]
        return list(zip(op.inputs, np.split(gy, cuts, axis=-1), strict=True))
    if t == "global_avgpool_f32":
        hw = x0.shape[1] * x0.shape[2]
        return [(op.inputs[0], np.broadcast_to(gy / hw, x0.shape).copy())]
    if t in ("conv2d_f32", "conv2d_f32b1", "maxpool_f32", "avgpool_f32"):
        n, h, w_, c = x0.shape
        if t in ("conv2d_f32", "conv2d_f32b1"):
            w = p["w"] if t == "conv2d_f32" else _pm1(graph, op)  # [O, kh, kw, C]
            kh, kw = w.shape[1], w.shape[2]
            sh, sw = (int(a) for a in op.attrs["stride"])
            ph, pw = (int(a) for a in op.attrs["padding"])
        else:
            kh, kw, sh, sw, ph, pw = _pool_geom(op)
        gx = np.zeros((n, h + 2 * ph, w_ + 2 * pw, c))
        ho, wo = gy.shape[1], gy.shape[2]
        if t == "maxpool_f32":
            xp = windows(pad(x0.astype(np.float64), ph, pw, -np.inf), kh, kw, sh, sw)
            ymax = xp.max(axis=(3, 4))
            g = gy * ~(src[v] > 0) if v in src else gy
            taken = np.zeros(gy.shape, bool)
        for i in range(kh):
            for j in range(kw):
                sl = (
                    slice(None),
                    slice(i, i + (ho - 1) * sh + 1, sh),
                    slice(j, j + (wo - 1) * sw + 1, sw),
                )
                if t in ("conv2d_f32", "conv2d_f32b1"):
                    gx[sl] += gy @ w[:, i, j, :]
                elif t == "avgpool_f32":
                    gx[sl] += gy / (kh * kw)
                else:
                    hit = (xp[:, :, :, i, j, :] == ymax) & ~taken  # the first maximum gets it
                    taken |= hit
                    gx[sl] += np.where(hit, g, 0.0)
        return [(op.inputs[0], gx[:, ph : ph + h, pw : pw + w_, :])]
    raise GraphError(f"float_error_bounds: no adjoint for the float32 op {t!r} ({op.name!r})")


def _pm1(graph: Graph, op: Op) -> np.ndarray:
    """The +-1 weights (float64) of a ``conv2d_f32b1`` / ``dense_f32b1`` op."""
    from .bits import unpack_bits

    w = graph.tensors[op.params["w"]]
    return 1.0 - 2.0 * unpack_bits(w, int(op.attrs["channels"])).astype(np.float64)


_U32 = 2.0**-24  # the unit roundoff of float32


__all__ = [
    "conv_f32_error_bound",
    "float_error_bounds",
    "gamma32",
    "pool_windows",
    "preprocess",
    "run",
    "run_op",
    "window_sums",
]
