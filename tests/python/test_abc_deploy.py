"""ABC-Net on the engine (issue 12): N exact activation thresholds -> M x N ``bconv2d`` -> the
weighted branch sum (``requant_i32`` + ``add_i32`` when the branch weights are fixed point,
``scale_bias`` + ``add_f32`` otherwise).

Oracles: PyTorch's own ``AbcConv2d`` (its activation bases, seen by ``verify``; its float32
forward arithmetic), PyTorch's float64 convolution of the same bases (exact for the dyadic
fixed-point weights, within 1e-12 otherwise), Higham's float32 bound, IEEE float32 arithmetic for
the activation boundaries, and the reference executor for the engine on every kernel set. A
conversion that drops a branch, scales a branch by a wrong ``b_n`` or moves an activation
threshold is shown to fail these checks.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from test_convert import calibrate, images
from torch import nn

from bitflow import methods
from bitflow.analysis.explain import abc_layers, explain, format_explain
from bitflow.convert import batchshift as bs
from bitflow.convert import convert, verify
from bitflow.convert._rules_survey import abc_boundaries, abc_fixed_point, abc_torch_err_bound
from bitflow.convert.verify import verify_ok
from bitflow.engine import Engine, available_kernels
from bitflow.engine.check import compare_with_reference
from bitflow.ir import Graph, unpack_bits
from bitflow.ir.reference import float_error_bounds, run
from bitflow.nn import BinaryLinear
from bitflow.nn import survey as S


# ----------------------------------------------------------------------------- model + oracles
def abc_model(spec: dict[str, Any]) -> nn.Sequential:
    """float conv -> BN -> ABC -> ReLU [-> pool] -> BN -> ABC -> ReLU -> flatten -> BN1d ->
    BinaryLinear -> ReLU -> BN1d -> Linear, with random weights, shifts and branch scales."""
    torch.manual_seed(spec["seed"])
    m_, n_, frac = spec["M"], spec["N"], spec["frac"]
    c0, c1, c2 = spec["channels"]
    s1, s2 = spec["strides"]
    size = spec["size"]

    def abc(cin: int, cout: int, k: int, stride: int, pad: int) -> S.AbcConv2d:
        layer = S.AbcConv2d(
            cin,
            cout,
            k,
            stride=stride,
            padding=pad,
            bias=spec["bias"],
            bases_w=m_,
            bases_a=n_,
            frac_bits=frac,
        )
        with torch.no_grad():
            layer.shift_a.add_(torch.randn(n_) * 0.3)
            layer.scale_a.copy_(torch.rand(n_) * 0.9 + 0.1)
            if layer.bias is not None:
                layer.bias.copy_(torch.randn(cout) * 0.1)
        return layer

    layers: list[nn.Module] = [
        nn.Conv2d(1, c0, 3, padding=1),
        nn.ReLU(),
        nn.BatchNorm2d(c0),
        abc(c0, c1, 3, s1, 1),
        nn.ReLU(),
    ]
    h = (size + 2 - 3) // s1 + 1
    if spec["pool"] and h >= 2:
        layers.append(nn.MaxPool2d(2))
        h //= 2
    layers += [nn.BatchNorm2d(c1), abc(c1, c2, spec["k2"], s2, spec["k2"] // 2), nn.ReLU()]
    h = (h + 2 * (spec["k2"] // 2) - spec["k2"]) // s2 + 1
    f = c2 * h * h
    layers += [
        nn.Flatten(),
        nn.BatchNorm1d(f),
        BinaryLinear(f, 8, input_quantizer="ste_sign", weight_quantizer="sign"),
        nn.ReLU(),
        nn.BatchNorm1d(8),
        nn.Linear(8, 4),
    ]
    model = nn.Sequential(*layers)
    model.in_channels = 1  # type: ignore[assignment]
    model.image_size = size  # type: ignore[assignment]
    x = torch.from_numpy(images(64, 1, size, spec["seed"] + 1))
    return calibrate(model, x, spec["seed"])


def _abc_layers(model: nn.Module) -> dict[str, S.AbcConv2d]:
    return {n: m for n, m in model.named_modules() if isinstance(m, S.AbcConv2d)}


def _pm1(bits: np.ndarray, channels: int) -> torch.Tensor:
    """Packed NHWC bits -> +-1 NCHW float64 (bit 1 = -1)."""
    neg = unpack_bits(bits, channels, 1)
    return torch.from_numpy(np.where(neg, -1.0, 1.0)).permute(0, 3, 1, 2)


def _abc_y(v: dict[str, Any], dtype: torch.dtype, with_bias: bool) -> np.ndarray:
    """PyTorch's ``F.conv2d(sum_n b_n A_n, sum_m a_m B_m) [+ bias]`` in ``dtype``, NHWC."""
    with torch.no_grad():
        w = (v["a"].to(dtype).view(-1, 1, 1, 1, 1) * v["bases"].to(dtype)).sum(0)
        xh = (v["b"].to(dtype).view(-1, 1, 1, 1, 1) * v["a_bits"].to(dtype)).sum(0)
        y = F.conv2d(xh, w, None, **v["conv"])
        if with_bias and v["bias"] is not None:
            y = y + v["bias"].to(dtype).view(1, -1, 1, 1)
    return y.detach().permute(0, 2, 3, 1).numpy().astype(np.float64)


def branch_sums(model: nn.Module, graph: Graph, x: np.ndarray) -> dict[str, dict[str, Any]]:
    """Per ABC layer: the graph's branch sum (reference executor) against PyTorch's convolution
    of the *same* activation bases (the bits the graph's convolutions read) with the module's
    own weight bases and scales: ``F.conv2d(sum_n b_n A_n, sum_m a_m B_m)`` in float64 (the
    oracle) and in float32 as the module computes it.

    Returns ``exact`` (fixed point: integer sum times ``2^-k`` equals the float64 conv, element
    for element), ``graph_err`` / ``graph_bound`` (max ``|graph - f64|`` and the float32 bound
    of the graph's value, ``float_error_bounds``) and ``torch_err`` / ``torch_bound`` (PyTorch's
    float32 forward against float64, and ``abc_torch_err_bound``)."""
    _, inter = run(graph, x, return_intermediates=True)  # type: ignore[misc]
    fb = float_error_bounds(graph, inter) if graph.mode == "mixed" else {}
    out: dict[str, dict[str, Any]] = {}
    for name, layer in _abc_layers(model).items():
        convs = [op for op in graph.ops if op.type == "bconv2d" and op.attrs.get("source") == name]
        n_ = layer.bases_a
        ins = {int(op.attrs["abc_base"]): op.inputs[0] for op in convs}
        assert sorted(ins) == list(range(n_)), (name, ins)
        a_bits = torch.stack([_pm1(inter[ins[n]], layer.in_channels) for n in range(n_)])
        with torch.no_grad():
            bases, a = (t.detach() for t in layer.weight_bases())
            b = layer.act_scales().detach()
        bias = layer.bias.detach() if layer.bias is not None else None
        conv = {"stride": layer.stride, "padding": layer.padding}

        env = {"a": a, "bases": bases, "b": b, "a_bits": a_bits, "bias": bias, "conv": conv}
        y64 = _abc_y(env, torch.float64, True)
        y32 = _abc_y(env, torch.float32, True)
        sums = [op for op in graph.ops if op.attrs.get("source") == name and "abc_sum" in op.attrs]
        last = sums[-1]
        v = inter[last.outputs[0]]
        rec: dict[str, Any] = {"M": layer.bases_w, "N": n_}
        if v.dtype == np.int32:
            fixed = abc_fixed_point(
                a.numpy().astype(np.float32), b.detach().numpy().astype(np.float32), 1
            )
            assert fixed is not None
            k = fixed[1]
            # the convolution itself (the bias is the accumulator's, BatchShift's business)
            c64 = _abc_y(env, torch.float64, False)
            rec["exact"] = bool(np.array_equal(v.astype(np.float64) * 2.0**-k, c64))
            rec["torch_exact"] = bool(np.array_equal(_abc_y(env, torch.float32, False), c64))
        else:
            rec["graph_err"] = float(np.max(np.abs(v.astype(np.float64) - y64)))
            rec["graph_bound"] = float(np.min(fb[last.outputs[0]]))
            rec["graph_ok"] = bool(np.all(np.abs(v - y64) <= fb[last.outputs[0]]))
            tb = abc_torch_err_bound(
                a.numpy().astype(np.float32),
                b.detach().numpy().astype(np.float32),
                layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1],
                bias.numpy() if bias is not None else np.zeros(layer.out_channels),
            )
            rec["torch_err"] = float(np.max(np.abs(y32 - y64)))
            rec["torch_ok"] = bool(np.all(np.abs(y32 - y64) <= tb))
        out[name] = rec
    return out


def sums_ok(r: dict[str, dict[str, Any]]) -> bool:
    return all(
        (e["exact"] and e["torch_exact"]) if "exact" in e else (e["graph_ok"] and e["torch_ok"])
        for e in r.values()
    )


def check_model(model: nn.Module, x: np.ndarray) -> tuple[Graph, dict[str, Any]]:
    graph = convert(model)
    rep = verify(model, graph, x, batch_size=32)
    assert rep["sign_mismatches"] == 0, rep
    assert rep["prediction_mismatches_unexplained"] == 0, rep
    assert rep["logits_outside_bound"] == 0, rep
    assert verify_ok(rep)
    # every activation base of every ABC layer was compared (N bit tensors per layer)
    for name, layer in _abc_layers(model).items():
        ops = [op for op in graph.ops if op.type == "bconv2d" and op.attrs.get("source") == name]
        assert len(ops) == layer.bases_w * layer.bases_a
        assert rep["sign_mismatches_by_layer"][name] == 0
    sums = branch_sums(model, graph, x)
    assert sums_ok(sums), sums
    return graph, rep


SPECS = st.fixed_dictionaries(
    {
        "seed": st.integers(0, 10_000),
        "M": st.integers(1, 3),
        "N": st.integers(1, 3),
        "frac": st.sampled_from([None, None, 4, 7]),
        "channels": st.tuples(st.integers(1, 5), st.integers(1, 70), st.integers(1, 6)),
        "strides": st.tuples(st.integers(1, 2), st.integers(1, 2)),
        "k2": st.sampled_from([1, 3]),
        "size": st.integers(5, 9),
        "pool": st.booleans(),
        "bias": st.booleans(),
    }
)


@settings(
    max_examples=12,
    deadline=None,
    derandomize=True,
    phases=(Phase.explicit, Phase.generate),  # a failure prints its example; no slow shrinking
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(spec=SPECS)
def test_random_abc_models_convert_exactly_or_within_the_float_bound(spec: dict[str, Any]) -> None:
    model = abc_model(spec)
    x = images(48, 1, spec["size"], spec["seed"] + 2)
    graph, _ = check_model(model, x)
    fixed_layers = [e for e in abc_layers(explain(graph)) if e["sum"] == "integer"]
    if spec["frac"] is None:  # the least-squares a_m are not dyadic: the float32 sum
        assert not fixed_layers and graph.mode == "mixed"
    else:
        assert len(fixed_layers) == 2
    for k in available_kernels():
        e = Engine(graph, kernels=k, threads=2)
        ref = compare_with_reference(e, x[:16])["reference"]
        assert ref["exact_mismatches"] == 0, (k, ref)
        assert ref["op_by_op_mismatches"] == 0, (k, ref)
        assert ref["prediction_mismatches_unexplained"] == 0, (k, ref)


# ----------------------------------------------------------------------------- boundaries
def test_activation_boundaries_are_pytorchs_decisions_exactly() -> None:
    """``x >= t_n`` equals the module's ``H_{v_n}(x)`` on every float32 in a window of 400
    float32 neighbours of ``t_n`` (and far away), for shifts that make the sum round."""
    rng = np.random.default_rng(0)
    shifts = np.concatenate(
        [
            rng.normal(0, 1, 40),
            [0.5, -0.5, 0.0, 1e-8, -1e-8, 0.5 + 2**-24, 0.5 - 2**-25, 3.0, -7.25, 1e6],
        ]
    ).astype(np.float32)
    t = abc_boundaries(shifts)
    layer = S.AbcConv2d(1, 1, 1, bias=False, bases_w=1, bases_a=len(shifts))
    with torch.no_grad():
        layer.shift_a.copy_(torch.from_numpy(shifts))
    keys = bs.f32_keys(t)[None, :] + np.arange(-200, 201)[:, None]
    xs = bs.f32_from_keys(keys)  # [401, N]: column n around t_n
    xs = np.concatenate(
        [
            xs,
            np.full((1, len(shifts)), -1e30, np.float32),
            np.full((1, len(shifts)), 1e30, np.float32),
        ]
    )
    for n in range(len(shifts)):
        col = torch.from_numpy(np.ascontiguousarray(xs[:, n]))
        with torch.no_grad():
            h = layer.act_bases(col)[n].numpy()
        assert np.array_equal(h > 0, xs[:, n] >= t[n]), (n, shifts[n], t[n])
    # the naive boundary 0.5 - v is wrong somewhere: the rounding of x + v matters
    naive = (np.float32(0.5) - shifts).astype(np.float32)
    assert np.any(naive != t)


def test_fixed_point_branch_weights_and_bounds() -> None:
    a = np.array([0.25, -0.375], np.float32)
    b = np.array([0.5, 0.0625], np.float32)
    c, k = abc_fixed_point(a, b, 9)  # type: ignore[misc]
    assert k == 3 + 4 and np.array_equal(c, np.outer([2, -3], [8, 1]))
    assert abc_fixed_point(np.array([0.1], np.float32), b, 9) is None  # 0.1 is not dyadic
    assert abc_fixed_point(a, b, 2**20) is None  # PyTorch's float32 conv could round
    layer = S.AbcConv2d(3, 4, 3, bias=False, bases_w=2, bases_a=3, frac_bits=5)
    with torch.no_grad():
        layer.weight.normal_()
        layer.scale_a.copy_(torch.tensor([0.3, 0.11, 0.9]))
        _, aq = layer.weight_bases()
    bq = layer.act_scales().detach()
    for t in (aq, bq):
        assert torch.equal(t * 32, torch.round(t * 32))
    assert torch.equal(bq, torch.tensor([0.3, 0.11, 0.9]).mul(32).round() / 32)
    # the straight-through gradient reaches scale_a
    y = layer(torch.randn(2, 3, 5, 5)).sum()
    y.backward()
    assert layer.scale_a.grad is not None and torch.all(layer.scale_a.grad != 0)
    with pytest.raises(ValueError, match="frac_bits"):
        S.AbcConv2d(3, 4, 3, frac_bits=16)


# ----------------------------------------------------------------------------- broken conversions
def _fixed_spec(frac: int | None) -> dict[str, Any]:
    return {
        "seed": 3,
        "M": 3,
        "N": 2,
        "frac": frac,
        "channels": (4, 24, 6),
        "strides": (1, 2),
        "k2": 3,
        "size": 8,
        "pool": True,
        "bias": True,
    }


def _break(graph: Graph, how: str) -> Graph:
    """A copy of ``graph`` with the first ABC layer converted wrongly."""
    g = copy.deepcopy(graph)
    first = next(op.attrs["source"] for op in g.ops if "abc_base" in op.attrs)
    branch = [op for op in g.ops if op.attrs.get("source") == first and "abc_sum" in op.attrs]
    if how == "drop_branch":  # branch (m=1, n=1) contributes nothing
        op = next(o for o in branch if o.name.endswith(("s11", "c11")))
        role = "scale" if op.type == "scale_bias" else "m"
        g.tensors[op.params[role]] = np.zeros_like(g.tensors[op.params[role]])
    elif how == "wrong_beta":  # b_1 taken 25% too large in every branch of base 1
        for op in branch:
            if op.name.endswith(("1",)) and op.type in ("scale_bias", "requant_i32"):
                role = "scale" if op.type == "scale_bias" else "m"
                t = g.tensors[op.params[role]]
                g.tensors[op.params[role]] = (
                    (t * 1.25).astype(t.dtype) if t.dtype == np.float32 else t + (t // 4) + 1
                )
    elif how == "wrong_threshold":  # base 1 read through base 0's thresholds
        convs = {
            int(op.attrs["abc_base"]): op
            for op in g.ops
            if op.attrs.get("source") == first and "abc_base" in op.attrs
        }
        prod = {op.outputs[0]: op for op in g.ops}
        t0, t1 = (prod[convs[n].inputs[0]] for n in (0, 1))  # the thresholds (first layer: float)
        g.tensors[t1.params["thr"]] = g.tensors[t0.params["thr"]].copy()
    else:  # pragma: no cover
        raise AssertionError(how)
    return g


@pytest.mark.parametrize("frac", [None, 6])
@pytest.mark.parametrize("how", ["drop_branch", "wrong_beta", "wrong_threshold"])
def test_a_broken_conversion_fails_the_checks(frac: int | None, how: str) -> None:
    model = abc_model(_fixed_spec(frac))
    x = images(64, 1, 8, 11)
    graph, _ = check_model(model, x)  # the correct conversion passes
    bad = _break(graph, how)
    sums = branch_sums(model, bad, x)
    rep = verify(model, bad, x, batch_size=32)
    if how == "wrong_threshold":  # the bits fed to base 1's convolutions are wrong
        assert rep["sign_mismatches_by_layer"]["3"] > 0, rep
    else:  # the bits are right, the sum is not
        assert not sums_ok(sums), sums
    assert not verify_ok(rep), rep
    # and the engine running the broken graph disagrees with the reference of the good one
    e = Engine(bad, kernels=available_kernels()[-1], threads=1)
    ref = compare_with_reference(e, x[:32], reference_graph=graph)["reference"]
    assert (
        ref["exact_mismatches"] + ref["op_by_op_mismatches"] > 0 or ref["max_float_abs_diff"] > 1e-3
    ), ref


# ----------------------------------------------------------------------------- methods / CLI
def test_abc_method_deploys_with_explain(tmp_path: Any) -> None:
    model = methods.build_model("bitflow_vgg_small", "abc", {"M": 2, "N": 2}, width=4, fc=16)
    calibrate(model, torch.from_numpy(images(32, 1, 28, 0)), 0)
    graph = methods.convert(model, strict=True)  # binary branches + a sum: no float conv
    rows = explain(graph)
    assert sum(r["param_bytes"] for r in rows) == sum(t.nbytes for t in graph.tensors.values())
    layers = abc_layers(rows)
    assert [e["branches"] for e in layers] == [4, 4, 4, 4]
    assert all(e["sum"] == "float" and e["binary_bytes"] > 0 for e in layers)
    text = format_explain(rows)
    assert text.count("ABC-Net layer") == 4 and "float32 sum" in text
    x = images(32, 1, 28, 1)
    rep = verify(model, graph, x)
    assert verify_ok(rep), rep
    fixed = methods.build_model(
        "bitflow_vgg_small", "abc", {"M": 2, "N": 2, "frac": 6}, width=4, fc=16
    )
    calibrate(fixed, torch.from_numpy(images(32, 1, 28, 0)), 0)
    fl = abc_layers(explain(methods.convert(fixed)))
    assert all(e["sum"] == "integer" for e in fl)
