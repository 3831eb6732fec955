"""Verification: run PyTorch and the reference executor on the same images, compare sign by sign.

MBBN layers (``MBitConv2d`` / ``MBitLinear``) are compared on their integer input levels: the
levels PyTorch's quantizer produces against the levels the graph's bit planes encode (Eq. 7);
``sign_mismatches`` then counts level mismatches. After a float first layer
(``threshold_f32_planes``) a level difference is near-threshold when the float value lies within
the float32 error bound of any of its channel's ``2^M - 1`` thresholds.

For every binary layer the ``+-1`` values PyTorch feeds it (the output of its
``input_quantizer``, captured by a forward hook) are compared with the bits the executor feeds
the matching ``bconv2d`` / ``bdense`` op. A float first layer cannot be bit-exact across
implementations (two correct float32 convolutions sum in different orders), so a difference at
the first binary layer whose first-layer output lies within the float32 summation error bound of
its threshold is reported under ``near_threshold`` with its margin, not as a mismatch; later
differences in such a sample are consequences and are counted there too. In ``xnor`` graphs the
float BatchNorm (``affine_f32`` -> ``bitpack``) rounds differently from PyTorch's, so a sign
whose BN output lies within a few float32 roundings of 0 is reported the same way. Everything else is a
real mismatch and must be zero for a correct conversion.

k-bit unsigned levels (DoReFa / PACT, ``threshold_u8`` after a ``conv2d_u8b1`` / ``dense_u8b1``)
are decided on exact integer sums ``sum w q``, while PyTorch sums the float32 values ``q c / L``
(DoReFa's ``q / 15`` is no float32 number): a level difference is near-threshold when the exact
sum lies within ``gamma_{K+2} sum q + 1`` of a threshold (:func:`_level_sum_near`; in practice
the accumulators next to a threshold). A near-threshold event explains the differences in later
layers of its sample (``downstream``), not the other decisions of its own layer, which read the
same matching input.

Graphs with a float residual stream (mode ``mixed``: Bi-Real-style ``BN(BinConv(sign x)) +
x``) take sign decisions on float sums; a difference there is near-threshold when the value
lies within twice the propagated float32 error bound of :func:`~bitflow.ir.reference.
float_error_bounds` of its threshold. The same bound checks the logits of ``mixed`` graphs
(``logits_outside_bound``: a logit of a sample without a near-threshold event that differs from
PyTorch's by more than twice its bound is a real mismatch), and explains a prediction difference
between two logits that lie within their bounds of each other (a near tie). That is the whole
check of a graph without sign decisions (BinaryConnect / BWN: +-1 weights, float activations).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import nn

from ..ir.bits import plane_levels, unpack_bits
from ..ir.graph import BINARY_OPS, Graph, Op
from ..ir.reference import conv_f32_error_bound, float_error_bounds, gamma32, run, window_sums
from ..ir.reference import pool_windows as _pool
from ._mbbn import torch_levels

_MAX_REPORTED = 50


_U32 = float(np.finfo(np.float32).eps)


def _float_source(graph: Graph, bits_value: str) -> tuple[Op, list[Op]] | None:
    """If ``bits_value`` comes from a float decision (``threshold_f32_bits``,
    ``threshold_f32_planes`` or ``bitpack``, then bit pools / flatten), return that op and the
    ops after it."""
    producer = {op.outputs[0]: op for op in graph.ops}
    chain: list[Op] = []
    v = bits_value
    while v in producer:
        op = producer[v]
        if op.type in ("threshold_f32_bits", "threshold_f32_planes", "threshold_f32_u8", "bitpack"):
            return op, chain[::-1]
        if op.type not in ("maxpool_bits", "flatten"):
            return None
        chain.append(op)  # (a flatten of uint8 levels keeps the order of the values)
        v = op.inputs[0]
    return None


def _conv_err_bound(graph: Graph) -> np.ndarray | None:
    """The float32 summation error bound of the first float conv (see conv_f32_error_bound)."""
    for op in graph.ops:
        if op.type == "conv2d_f32":
            return conv_f32_error_bound(graph, op)
    return None


def _near_info(
    graph: Graph,
    inter: dict[str, np.ndarray],
    key: str,
    nb: int,
    err_bound: np.ndarray | None,
    first: bool,
    fbounds: dict[str, np.ndarray] | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(y, threshold, bound)`` per decision ``[nb, F]`` behind the bits ``key``, or None
    (``threshold`` is ``[F]``, or ``[F, L]`` for the ``L`` thresholds of a level).

    ``y`` is the float value the decision was taken on (pooled like the bits), ``bound`` how far
    two correct float32 implementations may disagree about it: for a float first layer twice
    its summation bound (times the BN scale when the BN is applied in float, xnor mode), plus
    for a float BatchNorm (``affine_f32``, xnor mode) a few roundings of ``|scale*z| + |bias|``.
    """
    src = _float_source(graph, key)
    if src is None:
        return None
    dec, chain = src
    producer = {op.outputs[0]: op for op in graph.ops}
    yv = inter[dec.inputs[0]]
    eb = None if fbounds is None else fbounds.get(dec.inputs[0])
    for pop in chain:
        if pop.type == "maxpool_bits":
            yv = _pool(yv, pop, -np.inf, np.max)
            eb = (
                None
                if eb is None
                else _pool(np.broadcast_to(eb, inter[dec.inputs[0]].shape), pop, 0.0, np.max)
            )
    if eb is not None:  # the bound of each (pooled) element, in the same [nb, F] layout as yv
        eb = np.broadcast_to(eb, yv.shape).reshape(nb, -1)
    yv = yv.reshape(nb, -1).astype(np.float64)
    f = yv.shape[1]
    if dec.type in ("threshold_f32_bits", "threshold_f32_planes", "threshold_f32_u8"):
        t = graph.tensors[dec.params["thr"]].astype(np.float64)
        thr = t[np.arange(f) % t.shape[0]]
    else:
        thr = np.zeros(f)
    conv_scale = np.ones(f)
    bound = np.zeros((nb, f))
    aff = producer.get(dec.inputs[0])
    if aff is not None and aff.type == "flatten":  # BN2d -> flatten -> sign (same NHWC order)
        aff = producer.get(aff.inputs[0])
    if dec.type == "bitpack" and aff is not None and aff.type == "affine_f32":
        sc = graph.tensors[aff.params["scale"]].astype(np.float64)
        bi = graph.tensors[aff.params["bias"]].astype(np.float64)
        z = inter[aff.inputs[0]].reshape(nb, -1).astype(np.float64)
        idx = np.arange(f) % sc.shape[0]
        bound = bound + 4 * _U32 * (np.abs(z * sc[idx]) + np.abs(bi[idx]))
        conv_scale = np.abs(sc[idx])
    if "err_bound" in dec.attrs:  # the converter's own bound on the value (MCN uint8 codes)
        eba = np.asarray(dec.attrs["err_bound"], np.float64)
        bound = bound + 2 * eba[np.arange(f) % len(eba)][None, :]
    elif first and err_bound is not None:
        bound = bound + 2 * (err_bound[np.arange(f) % len(err_bound)] * conv_scale)[None, :]
    if (
        eb is not None
    ):  # a float stream (residual adds, shortcuts): its propagated bound, both sides
        bound = np.maximum(bound, 2 * eb)
    return yv, thr, bound


def _level_sum_near(
    graph: Graph, inter: dict[str, np.ndarray], key: str, nb: int, modules: dict[str, nn.Module]
) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """``(acc, thresholds [F, L], bound)`` for k-bit levels ``key`` decided by ``threshold_u8``
    on the exact int32 sum of a ``conv2d_u8b1`` / ``dense_u8b1`` over k-bit levels (through
    ``maxpool_i32`` / ``flatten``), or None.

    The converter's integer thresholds are exact for the real-valued ``(c / L) sum w q``; PyTorch
    sums the float32 values ``a = fl(q c / L)`` instead (DoReFa ``q / 15`` is not a float32
    number), in some order. By Higham Eq. 3.5 its sum is within ``gamma_{K+2} (c / L) sum q`` of
    the real one (``K`` the fan-in, one more rounding for each ``a``, one for the weight scale),
    i.e. ``B = gamma_{K+2} sum q`` accumulator units. A decision ``acc >= t`` (``t`` integer, the
    real boundary in ``(t - 1, t]``) can then differ only when ``|acc - t| <= B + 1``; that is
    the bound returned (``B`` pooled like the values). With ``L = 1`` and ``c = 1`` the sums are
    exact integers and this returns None: every difference is real."""
    producer = {op.outputs[0]: op for op in graph.ops}
    v = key
    while v in producer and producer[v].type == "flatten":
        v = producer[v].inputs[0]
    dec = producer.get(v)
    if dec is None or dec.type != "threshold_u8":
        return None
    chain: list[Op] = []
    v = dec.inputs[0]
    while v in producer and producer[v].type in ("maxpool_i32", "flatten"):
        chain.append(producer[v])
        v = producer[v].inputs[0]
    src = producer.get(v)
    if src is None or src.type not in ("conv2d_u8b1", "dense_u8b1"):
        return None
    levels = int(src.attrs.get("input_levels", 0))
    if levels == 0:  # MCN's uint8 codes, not the k-bit levels of an input quantizer
        return None
    if levels == 1 and _act_range(modules[src.attrs["source"]]) == 1.0:
        return None
    q = inter[src.inputs[0]].astype(np.int64)
    w = graph.tensors[src.params["w"]]
    if src.type == "conv2d_u8b1":
        kh, kw = int(w.shape[1]), int(w.shape[2])
        st, pd = src.attrs["stride"], src.attrs["padding"]
        sums = window_sums(q, (kh, kw), (int(st[0]), int(st[1])), (int(pd[0]), int(pd[1])))
        fan = kh * kw * q.shape[-1]
        e = np.broadcast_to(gamma32(fan + 2) * sums.astype(np.float64), inter[src.outputs[0]].shape)
    else:
        fan = int(src.attrs["channels"])
        sums = q.reshape(nb, -1).sum(1).astype(np.float64)
        e = np.broadcast_to((gamma32(fan + 2) * sums)[:, None], inter[src.outputs[0]].shape)
    for pop in chain[::-1]:
        if pop.type == "maxpool_i32":
            e = _pool(np.ascontiguousarray(e), pop, 0.0, np.max)
    acc = inter[dec.inputs[0]].reshape(nb, -1).astype(np.float64)
    bound = np.ascontiguousarray(e).reshape(nb, -1) + 1.0  # a flatten keeps the NHWC order
    t = graph.tensors[dec.params["thr"]].astype(np.float64)
    thr = t[np.arange(acc.shape[1]) % t.shape[0]]
    return acc, thr, bound


def _act_range(layer: nn.Module) -> float:
    """The clipping range ``c`` of a DoReFa (1) / PACT (``alpha``) input quantizer."""
    a = getattr(layer.input_quantizer, "alpha", None)
    if a is None:
        return 1.0
    return float(torch.as_tensor(a).detach().abs().clamp_min(1e-3).to(torch.float32))


def _split_near(
    res: dict[str, Any],
    near_info: tuple[np.ndarray, np.ndarray, np.ndarray],
    bad: np.ndarray,
    near_samples: np.ndarray,
    start: int,
    layer: str,
) -> np.ndarray:
    """Count the mismatches ``bad [nb, F]`` whose float value lies within its bound of the
    (nearest) threshold as near-threshold (recording up to 50 margins), mark their samples in
    ``near_samples`` (in place) and return the remaining mismatches."""
    yv, thr, bound = near_info
    rows, cols = np.nonzero(bad)
    y_bad = yv[rows, cols]
    if thr.ndim == 2:  # a level: the nearest of its L thresholds
        t_bad = thr[cols]
        nearest = t_bad[np.arange(len(cols)), np.abs(y_bad[:, None] - t_bad).argmin(1)]
    else:
        nearest = thr[cols]
    margin = np.abs(y_bad - nearest)
    is_near = margin <= bound[rows, cols]
    near = np.zeros_like(bad)
    near[rows[is_near], cols[is_near]] = True
    res["near_threshold"]["count"] += int(is_near.sum())
    by_layer = res["near_threshold"]["by_layer"]
    by_layer[layer] = by_layer.get(layer, 0) + int(is_near.sum())
    for i in np.nonzero(is_near)[0]:
        if len(res["near_threshold"]["margins"]) >= _MAX_REPORTED:
            break
        res["near_threshold"]["margins"].append(
            {
                "sample": int(start + rows[i]),
                "layer": layer,
                "index": int(cols[i]),
                "y": float(y_bad[i]),
                "threshold": float(nearest[i]),
                "margin": float(margin[i]),
                "bound": float(bound[rows[i], cols[i]]),
            }
        )
    near_samples |= near.any(1)
    return bad & ~near


def verify(
    model: nn.Module,
    graph: Graph,
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Compare ``model`` (eval mode, float32) with ``graph`` run by the reference executor.

    ``x``: float images ``[N, C, H, W]`` in [0, 1]; ``y``: optional integer labels ``[N]``.
    Returns ``samples``, ``accuracy_torch`` / ``accuracy_integer`` (None without labels),
    ``prediction_mismatches``, ``prediction_mismatches_unexplained`` (those in a sample with no
    near-threshold event: must be 0), ``sign_mismatches`` (real ones, over every binarized layer's
    input), ``signs_compared``, ``sign_mismatches_by_layer``, ``ties`` (reachable integers where
    PyTorch's float32 BatchNorm disagrees with the exact rule, from the conversion),
    ``near_threshold`` (``count``, ``by_layer`` counts, ``samples``, ``downstream`` and up to 50
    ``margins``),
    ``max_logit_abs_diff``, ``logits_outside_bound`` and ``near_ties`` (``mixed`` graphs, see
    the module docstring).
    """
    xa = np.asarray(x, np.float32)
    if xa.ndim != 4:
        raise ValueError(f"x must have shape [N, C, H, W], got {list(xa.shape)}")
    if y is not None:
        ya = np.asarray(y)
        if ya.shape != (xa.shape[0],):
            raise ValueError(f"y must have shape [{xa.shape[0]}], got {list(ya.shape)}")
    values = graph.validate()
    # binary layers, the +-1-weight layers over k-bit unsigned levels (DoReFa / PACT), whose
    # uint8 input levels are compared with PyTorch's quantizer output like signs, and the MCN
    # W1/A8 conv2d_u8b1 (uint8 codes, no input_levels: compared as the levels 2q - 255)
    bin_ops = [
        op
        for op in graph.ops
        if op.type in BINARY_OPS
        or op.type == "conv2d_u8b1"
        or (op.type == "dense_u8b1" and "input_levels" in op.attrs)
    ]
    modules = dict(model.named_modules())
    for op in bin_ops:
        if op.attrs.get("input_encoding") == "thermometer":
            raise ValueError(
                f"graph op {op.name!r} reads a thermometer encoding (a file converted by an earlier "
                "bitflow); convert the checkpoint again"
            )
        src = op.attrs.get("source")
        if src not in modules:
            raise ValueError(
                f"graph op {op.name!r} refers to layer {src!r}, which the model does not have"
            )
    err_bound = _conv_err_bound(graph)
    captured: dict[str, torch.Tensor] = {}
    hooks = []
    for op in bin_ops:
        mod = modules[op.attrs["source"]]
        if "abc_base" in op.attrs:
            # ABC-Net: the branch reads activation base n, which the layer computes itself
            def abc_hook(
                _m: nn.Module,
                inp: Any,
                key: str = op.name,
                layer: nn.Module = mod,
                n: int = int(op.attrs["abc_base"]),
            ) -> None:
                captured[key] = layer.act_bases(inp[0].detach())[n].detach()  # type: ignore[operator]

            hooks.append(mod.register_forward_pre_hook(abc_hook))
            continue
        iq = getattr(mod, "input_quantizer", None)
        if iq is None:
            raise ValueError(f"layer {op.attrs['source']!r} has no input_quantizer to observe")

        if "input_encoding" in op.attrs:
            # MBBN layers call their quantizer's decompose(), not its forward: observe the layer's
            # input and compute the quantizer's integer levels from it (what the layer uses)
            def pre_hook(
                _m: nn.Module, inp: Any, key: str = op.name, layer: nn.Module = mod
            ) -> None:
                captured[key] = torch_levels(layer, inp[0].detach())

            hooks.append(mod.register_forward_pre_hook(pre_hook))
            continue

        def hook(_m: nn.Module, _i: Any, out: torch.Tensor, key: str = op.name) -> None:
            captured[key] = out.detach()

        hooks.append(iq.register_forward_hook(hook))
    was_training = model.training
    model.eval()
    n = xa.shape[0]
    res: dict[str, Any] = {
        "samples": n,
        "accuracy_torch": None,
        "accuracy_integer": None,
        "prediction_mismatches": 0,
        "prediction_mismatches_unexplained": 0,
        "sign_mismatches": 0,
        "signs_compared": 0,
        "sign_mismatches_by_layer": {op.attrs["source"]: 0 for op in bin_ops},
        "ties": int(sum(int(op.attrs.get("ties", 0)) for op in graph.ops)),
        "float_ties": int(sum(int(op.attrs.get("float_ties", 0)) for op in graph.ops)),
        "near_threshold": {
            "count": 0,
            "by_layer": {},
            "samples": 0,
            "downstream": 0,
            "margins": [],
        },
        "max_logit_abs_diff": 0.0,
        "logits_outside_bound": 0,
        "near_ties": 0,
    }
    correct_t = correct_i = 0
    try:
        for start in range(0, n, batch_size):
            xb = xa[start : start + batch_size]
            nb = xb.shape[0]
            captured.clear()
            with torch.no_grad():
                lt = model(torch.from_numpy(xb)).float().numpy()
            li, inter = run(graph, xb, return_intermediates=True)  # type: ignore[misc]
            fb = float_error_bounds(graph, inter) if graph.mode == "mixed" else None
            if lt.shape != li.shape:
                raise ValueError(f"model output shape {lt.shape} != graph output shape {li.shape}")
            res["max_logit_abs_diff"] = max(
                res["max_logit_abs_diff"], float(np.max(np.abs(lt - li), initial=0.0))
            )
            pt, pi = lt.argmax(1), li.argmax(1)
            near_samples = np.zeros(nb, bool)
            for op in bin_ops:
                key = op.inputs[0]
                info = values[key]
                assert info.channels is not None or info.dtype == "uint8"
                st = captured[op.name]
                if st.dim() == 4:
                    st = st.permute(0, 2, 3, 1)
                elif "input_chw" in op.attrs:
                    c, h, w = op.attrs["input_chw"]
                    st = st.reshape(nb, c, h, w).permute(0, 2, 3, 1)
                if "input_levels" in op.attrs:  # k-bit unsigned levels q (uint8) vs round(a L / c)
                    n_l = int(op.attrs["input_levels"])
                    qt = torch.round(
                        st.reshape(nb, -1) * n_l / _act_range(modules[op.attrs["source"]])
                    )
                    bad = inter[key].reshape(nb, -1).astype(np.int64) != qt.to(torch.int64).numpy()
                elif info.dtype == "uint8" or info.planes > 1:
                    # M-bit levels: decode the planes (Eq. 7), or uint8 codes q -> 2q - 255
                    if info.dtype == "uint8":
                        lv = 2 * inter[key].astype(np.int64).reshape(nb, -1) - 255
                    else:
                        assert info.channels is not None
                        lv = plane_levels(inter[key], info.channels, info.groups).reshape(nb, -1)
                    bad = lv != st.reshape(nb, -1).numpy()
                else:
                    assert info.channels is not None
                    neg_exec = unpack_bits(inter[key], info.channels, info.groups).reshape(nb, -1)
                    neg_t = (st.reshape(nb, -1) < 0).numpy()
                    bad = neg_t != neg_exec
                # integer thresholds are exact: a difference is a real mismatch unless the sample
                # already took a near-threshold float decision upstream, or the value comes from a
                # float producer and lies within its error bound of a threshold
                res["signs_compared"] += bad.size
                near_info = (
                    _near_info(graph, inter, key, nb, err_bound, first=op is bin_ops[0], fbounds=fb)
                    or _level_sum_near(graph, inter, key, nb, modules)
                    if bad.any()
                    else None
                )
                # a near-threshold event explains the differences after it, not the other
                # decisions of its own layer (they read the same, matching input)
                near_before = near_samples.copy()
                if near_info is not None:
                    bad = _split_near(res, near_info, bad, near_samples, start, op.attrs["source"])
                down = bad & near_before[:, None]
                res["near_threshold"]["downstream"] += int(down.sum())
                real = int((bad & ~near_before[:, None]).sum())
                res["sign_mismatches"] += real
                res["sign_mismatches_by_layer"][op.attrs["source"]] += real
            if fb is not None and graph.output in fb:
                eo = np.broadcast_to(fb[graph.output], li.shape)
                out_bad = np.abs(lt.astype(np.float64) - li) > 2 * eo
                res["logits_outside_bound"] += int((out_bad & ~near_samples[:, None]).sum())
                ar = np.arange(nb)
                tie = (pt != pi) & ~near_samples
                tie &= li[ar, pi] - li[ar, pt] <= 2 * (eo[ar, pi] + eo[ar, pt])
                res["near_ties"] += int(tie.sum())
                near_samples |= tie
            res["near_threshold"]["samples"] += int(near_samples.sum())
            res["prediction_mismatches"] += int((pt != pi).sum())
            res["prediction_mismatches_unexplained"] += int(((pt != pi) & ~near_samples).sum())
            if y is not None:
                yb = np.asarray(y)[start : start + nb]
                correct_t += int((pt == yb).sum())
                correct_i += int((pi == yb).sum())
    finally:
        for h in hooks:
            h.remove()
        model.train(was_training)
    if y is not None and n:
        res["accuracy_torch"] = correct_t / n
        res["accuracy_integer"] = correct_i / n
    return res


def verify_ok(report: dict[str, Any]) -> bool:
    """True when every difference ``report`` (from :func:`verify`) lists is legitimate: no real
    sign mismatch and every prediction difference in a sample with a near-threshold event
    (``bitflow verify`` exits 0 then, 1 otherwise); in ``mixed`` graphs every logit within its
    float32 bound."""
    return (
        report["sign_mismatches"] == 0
        and report["prediction_mismatches_unexplained"] == 0
        and report.get("logits_outside_bound", 0) == 0
    )


__all__ = ["verify", "verify_ok"]
