"""The op table (bitflow.ir.ops): every op has all its parts; the DAG ops against independent
oracles (numpy float64 / PyTorch / exact integers); DAG graphs: validation, buffer release,
version-1 files."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _bounds import assert_within, gamma, reference_and_bound
from hypothesis import given, settings
from hypothesis import strategies as st

import bitflow._native as N
from bitflow.engine import Engine, available_kernels
from bitflow.ir import (
    Graph,
    GraphError,
    InputSpec,
    Op,
    ValueInfo,
    load_graph,
    pack_bits,
    parse_bfn,
    unpack_bits,
)
from bitflow.ir import reference as R
from bitflow.ir.graph import BINARY_OPS, OP_TYPES, infer
from bitflow.ir.ops import NATIVE_NON_OPS, OPS, EngineContext, docs_page

ROOT = Path(__file__).resolve().parents[2]


def test_every_op_has_all_its_parts() -> None:
    for name, d in OPS.items():
        assert d.name == name
        assert callable(d.infer) and callable(d.reference) and callable(d.engine), name
        for fn in d.native:
            assert hasattr(N, fn), f"op {name}: native entry {fn!r} is not bound"
        if name != "flatten":  # a view: the only op with no kernel
            assert d.native, f"op {name} declares no native entry point"
    assert OP_TYPES == frozenset(OPS)
    assert BINARY_OPS == {"bconv2d", "bconv2d_planes", "bdense", "bdense_planes"}


def test_every_native_binding_is_declared() -> None:
    declared = {fn for d in OPS.values() for fn in d.native} | NATIVE_NON_OPS
    public = {a for a in dir(N) if not a.startswith("_")}
    assert public - declared == set(), "native bindings not declared in the op table"
    assert NATIVE_NON_OPS <= public


def test_docs_op_table_is_generated_from_the_table() -> None:
    assert (ROOT / "docs" / "ops.md").read_text() == docs_page(), (
        "run: python -m bitflow.ir.ops.docs > docs/ops.md"
    )


# ----------------------------------------------------------------------------- op oracles
def _engine_op(op: Op, vins: list[ValueInfo], tensors: dict[str, np.ndarray]) -> object:
    g = Graph(InputSpec(1, 1, 1), [], tensors, "x")
    values = {v: info for v, info in zip(op.inputs, vins, strict=True)}
    return OPS[op.type].engine(EngineContext(N, "ref", 1, g, values), op)


def _run_both(
    op: Op, xs: list[np.ndarray], vins: list[ValueInfo], tensors: dict | None = None
) -> tuple:
    tensors = tensors or {}
    vout = infer(op, vins, tensors)
    g = Graph(InputSpec(1, 1, 1), [], tensors, "x")
    ref = R.run_op(g, op, xs, vins)
    assert ref.shape == vout.storage_shape(xs[0].shape[0])
    outs = []
    for k in available_kernels():
        values = {v: info for v, info in zip(op.inputs, vins, strict=True)}
        fn = OPS[op.type].engine(EngineContext(N, k, 2, g, values), op)
        outs.append(fn(xs))
    return ref, outs


@settings(max_examples=25, deadline=None)
@given(
    n=st.integers(2, 4),
    shape=st.lists(st.integers(1, 7), min_size=1, max_size=3),
    seed=st.integers(0, 2**31),
)
def test_add_f32_is_the_left_to_right_float32_sum(n: int, shape: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    xs = [
        (rng.standard_normal((2, *shape)) * 10.0 ** rng.integers(-3, 4)).astype(np.float32)
        for _ in range(n)
    ]
    op = Op("add_f32", "a", [f"x{i}" for i in range(n)], ["y"])
    vin = ValueInfo("float32", tuple(shape))
    ref, outs = _run_both(op, xs, [vin] * n)
    want = xs[0]
    for x in xs[1:]:
        want = (
            torch.from_numpy(want) + torch.from_numpy(x)
        ).numpy()  # PyTorch's float32 add, in order
    np.testing.assert_array_equal(ref, want)
    for out in outs:
        np.testing.assert_array_equal(out, want)


def test_add_i32_exact_and_overflow_is_an_error() -> None:
    rng = np.random.default_rng(0)
    xs = [rng.integers(-(2**29), 2**29, (3, 4, 5, 6)).astype(np.int32) for _ in range(3)]
    op = Op("add_i32", "a", ["x0", "x1", "x2"], ["y"])
    vin = ValueInfo("int32", (4, 5, 6))
    ref, outs = _run_both(op, xs, [vin] * 3)
    want = sum(x.astype(np.int64) for x in xs)
    assert np.array_equal(ref, want) and all(np.array_equal(o, want) for o in outs)
    big = [np.full((1, 4, 5, 6), 2**30, np.int32)] * 2
    with pytest.raises(GraphError, match="overflows int32"):
        R.run_op(
            Graph(InputSpec(1, 1, 1), [], {}, "x"),
            Op("add_i32", "a", ["x0", "x1"], ["y"]),
            big,
            [vin] * 2,
        )
    with pytest.raises(ValueError, match="overflows int32"):
        N.add_i32(big)


def test_add_shape_and_dtype_rules() -> None:
    with pytest.raises(GraphError, match="different shapes"):
        infer(
            Op("add_f32", "a", ["p", "q"], ["y"]),
            [ValueInfo("float32", (2, 2, 3)), ValueInfo("float32", (2, 2, 4))],
            {},
        )
    with pytest.raises(GraphError, match="needs a float32"):
        infer(
            Op("add_f32", "a", ["p", "q"], ["y"]),
            [ValueInfo("float32", (3,)), ValueInfo("int32", (3,))],
            {},
        )
    with pytest.raises(GraphError, match="takes 2 or more input"):
        infer(Op("add_f32", "a", ["p"], ["y"]), [ValueInfo("float32", (3,))], {})
    with pytest.raises(ValueError, match="at least two"):
        N.add_f32([np.zeros(3, np.float32)])
    with pytest.raises(ValueError, match=r"xs\[1\] has shape"):
        N.add_f32([np.zeros(3, np.float32), np.zeros(4, np.float32)])


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(2, 9),
    w=st.integers(2, 9),
    c=st.integers(1, 70),
    k=st.integers(1, 3),
    s=st.integers(1, 3),
    pad=st.integers(0, 1),
    seed=st.integers(0, 2**31),
)
def test_avgpool_f32_equals_torch_within_float_rounding(
    h: int, w: int, c: int, k: int, s: int, pad: int, seed: int
) -> None:
    pad = min(pad, k // 2)
    if h + 2 * pad < k or w + 2 * pad < k:
        return
    x = np.random.default_rng(seed).standard_normal((2, h, w, c)).astype(np.float32)
    op = Op(
        "avgpool_f32",
        "p",
        ["x"],
        ["y"],
        {"kernel": [k, k], "stride": [s, s], "padding": [pad, pad]},
    )
    ref, outs = _run_both(op, [x], [ValueInfo("float32", (h, w, c))])
    # oracle: PyTorch's average pool in float64 (count_include_pad=True), rounded once
    want = F.avg_pool2d(
        torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2), k, s, pad
    ).permute(0, 2, 3, 1)
    want32 = want.numpy().astype(np.float32)
    # a float32 sum of the k*k window terms (gamma_{k^2-1} of the sum of magnitudes), the
    # division (u) and the oracle's rounding (u): gamma_{k^2+1} times the window's mean |x|
    bound = gamma(k * k + 1) * F.avg_pool2d(
        torch.from_numpy(np.abs(x).astype(np.float64)).permute(0, 3, 1, 2), k, s, pad
    ).permute(0, 2, 3, 1)
    assert_within(ref, want32, bound, "reference")
    for out in outs:
        assert_within(out, want32, bound, "engine")


def test_global_avgpool_equals_adaptive_avgpool() -> None:
    x = np.random.default_rng(3).standard_normal((3, 7, 5, 67)).astype(np.float32)
    op = Op("global_avgpool_f32", "g", ["x"], ["y"])
    ref, outs = _run_both(op, [x], [ValueInfo("float32", (7, 5, 67))])
    want = F.adaptive_avg_pool2d(
        torch.from_numpy(x.astype(np.float64)).permute(0, 3, 1, 2), 1
    ).permute(0, 2, 3, 1)
    bound = 7 * 5 * np.finfo(np.float32).eps * np.abs(x).max()  # float32 accumulation of 35 terms
    np.testing.assert_allclose(ref, want.numpy(), rtol=0, atol=bound)
    for out in outs:
        assert out.shape == (3, 1, 1, 67)
        np.testing.assert_allclose(out, want.numpy(), rtol=0, atol=bound)


@settings(max_examples=30, deadline=None)
@given(chans=st.lists(st.integers(1, 140), min_size=2, max_size=4), seed=st.integers(0, 2**31))
def test_concat_bits_concatenates_the_channels(chans: list[int], seed: int) -> None:
    rng = np.random.default_rng(seed)
    signs = [rng.random((2, 3, 2, c)) < 0.5 for c in chans]  # True = -1
    xs = [pack_bits(s) for s in signs]
    vins = [ValueInfo("bits", (3, 2, (c + 63) // 64), c) for c in chans]
    op = Op("concat", "c", [f"x{i}" for i in range(len(chans))], ["y"])
    ref, outs = _run_both(op, xs, vins)
    want = pack_bits(np.concatenate(signs, axis=-1))  # oracle: concatenate the signs, pack once
    assert np.array_equal(ref, want)
    for out in outs:
        assert np.array_equal(out, want)
    assert np.array_equal(unpack_bits(want, sum(chans)), np.concatenate(signs, -1))


@pytest.mark.parametrize("dtype", ["float32", "int32", "uint8"])
def test_concat_dense_dtypes(dtype: str) -> None:
    rng = np.random.default_rng(1)
    xs = [rng.integers(0, 200, (2, 3, 3, c)).astype(dtype) for c in (1, 5, 2)]
    op = Op("concat", "c", ["a", "b", "d"], ["y"])
    ref, outs = _run_both(op, xs, [ValueInfo(dtype, (3, 3, c)) for c in (1, 5, 2)])
    want = torch.cat([torch.from_numpy(x.astype(np.int64)) for x in xs], -1).numpy()
    assert np.array_equal(ref, want) and all(np.array_equal(o, want) for o in outs)


def test_affine_relu_and_int_bitpack() -> None:
    rng = np.random.default_rng(5)
    x = rng.standard_normal((4, 3, 3, 9)).astype(np.float32)
    t = {
        "s": rng.standard_normal(9).astype(np.float32),
        "b": rng.standard_normal(9).astype(np.float32),
    }
    op = Op("affine_f32", "a", ["x"], ["y"], params={"scale": "s", "bias": "b"})
    ref, outs = _run_both(op, [x], [ValueInfo("float32", (3, 3, 9))], t)
    # oracle: PyTorch float32 multiply, then add (two roundings; no FMA)
    want = (torch.from_numpy(x) * torch.from_numpy(t["s"]) + torch.from_numpy(t["b"])).numpy()
    assert np.array_equal(ref, want) and all(np.array_equal(o, want) for o in outs)
    ref, outs = _run_both(Op("relu_f32", "r", ["x"], ["y"]), [x], [ValueInfo("float32", (3, 3, 9))])
    assert np.array_equal(ref, torch.relu(torch.from_numpy(x)).numpy()) and all(
        np.array_equal(o, ref) for o in outs
    )
    xi = rng.integers(-5, 5, (4, 3, 3, 70)).astype(np.int32)
    ref, outs = _run_both(Op("bitpack", "p", ["x"], ["y"]), [xi], [ValueInfo("int32", (3, 3, 70))])
    assert np.array_equal(unpack_bits(ref, 70), xi < 0) and all(
        np.array_equal(o, ref) for o in outs
    )


# ----------------------------------------------------------------------------- DAG graphs
def _residual_graph(dead: bool = False, after: bool = False) -> Graph:
    """Two Bi-Real-style residual units on a float stream:
    input -> c0 -> [sign -> bconv -> scale_bias] + c0 -> add -> [sign2 -> bconv2 -> sb2] + add
    -> gap -> flatten -> dense (c0 and add are each read by two ops)."""
    rng = np.random.default_rng(0)
    t = {
        "w0": rng.standard_normal((6, 3, 3, 2)).astype(np.float32),
        "wb": pack_bits(rng.random((6, 3, 3, 6)) < 0.5),
        "wb2": pack_bits(rng.random((6, 3, 3, 6)) < 0.5),
        "s": (rng.random(6) * 0.1).astype(np.float32),
        "b": rng.standard_normal(6).astype(np.float32),
        "wd": rng.standard_normal((4, 6)).astype(np.float32),
    }
    c = {"stride": [1, 1], "padding": [1, 1]}
    bc = {**c, "channels": 6, "pad_value": 0}
    ops = [
        Op("conv2d_f32", "c0", ["input"], ["c0"], c, {"w": "w0"}),
        Op("bitpack", "sign", ["c0"], ["sign"]),
        Op("bconv2d", "bc", ["sign"], ["bc"], bc, {"w": "wb"}),
        Op("scale_bias", "sb", ["bc"], ["sb"], params={"scale": "s", "bias": "b"}),
        Op("add_f32", "add", ["sb", "c0"], ["add"]),
        Op("bitpack", "sign2", ["add"], ["sign2"]),
        Op("bconv2d", "bc2", ["sign2"], ["bc2"], bc, {"w": "wb2"}),
        Op("scale_bias", "sb2", ["bc2"], ["sb2"], params={"scale": "s", "bias": "b"}),
        Op("add_f32", "add2", ["sb2", "add"], ["add2"]),
        Op("global_avgpool_f32", "gap", ["add2"], ["gap"]),
        Op("flatten", "fl", ["gap"], ["fl"]),
        Op("dense_f32", "fc", ["fl"], ["fc"], params={"w": "wd"}),
    ]
    if dead:
        ops.insert(5, Op("relu_f32", "dead", ["add"], ["dead"]))
    if after:
        ops.append(Op("relu_f32", "after", ["fc"], ["after"]))
    return Graph(InputSpec(2, 5, 5), ops, t, "fc", mode="mixed")


def test_dag_runs_on_the_engine_like_the_reference_and_frees_buffers() -> None:
    g = _residual_graph()
    g.validate()
    x = np.random.default_rng(1).random((3, 2, 5, 5), dtype=np.float32)
    ref, env = R.run(g, x, return_intermediates=True)  # type: ignore[misc]
    bound = reference_and_bound(g, x)[1]
    for k in available_kernels():
        eng = Engine(g, kernels=k, threads=2)
        own = eng.run(x, keep=True)
        for v in ("sign", "bc"):  # integer and bit values: identical (from the same float input)
            assert np.array_equal(own[v], env[v])
        # engine vs reference: the same integers and bits (checked), so only the float layers'
        # roundings differ: at most 2 E (float_error_bounds, _bounds.reference_and_bound)
        assert_within(eng.logits(x), ref, bound, k, empirical=(1e-4, 1e-4))  # measured <= 9.6e-7
        assert set(eng.run(x)) == {"fc"}  # every intermediate released
        # c0 (read by sign and add) stays alive until the add, not only until its first reader
        frees = {st.dst: st.free for st in eng._plan}
        assert "c0" in frees["add"] and "c0" not in frees["sign"] and "add" in frees["add2"]
    # Hand trace of the plan (5x5 maps, 6 channels): float/int32 map 5*5*6*4 = 600 B, bits map
    # 5*5*1*8 = 200 B, input 2*5*5*4 = 200 B. Op by op, the largest live set is three 600 B maps,
    # e.g. at the first scale_bias (c0, bc, sb alive) -> 1800 B. The fused plan runs
    # bconv -> scale_bias -> add as one step (the int32 map stays in per-block scratch): at most
    # sign (200) + c0 (600) + add (600) = 1400 B; keeping every value would need far more.
    eng = Engine(g, kernels="ref")
    assert eng.info()["peak_activation_bytes_per_sample"] == 1400
    assert eng.peak_activation_bytes(fused=False) == 1800


def test_dag_validation_names_dead_branches_and_ops_after_the_output() -> None:
    with pytest.raises(GraphError, match="'dead'.*does not contribute"):
        _residual_graph(dead=True).validate()
    with pytest.raises(GraphError, match="'after'.*does not contribute"):
        _residual_graph(after=True).validate()
    g = _residual_graph()
    g.mode = "bitflow"
    with pytest.raises(GraphError, match="float op 'sb' .*mixed"):
        g.validate()


def test_version_1_files_still_load_and_run(tmp_path: Path) -> None:
    """A version-1 chain (the round-1 format) loads and gives the same logits; saving writes v2."""
    rng = np.random.default_rng(2)
    t = {
        "w0": rng.standard_normal((3, 3, 3, 1)).astype(np.float32),
        "wd": rng.standard_normal((5, 75)).astype(np.float32),
    }
    g = Graph(
        InputSpec(1, 7, 7),
        [
            Op(
                "conv2d_f32",
                "c0",
                ["input"],
                ["c0"],
                {"stride": [1, 1], "padding": [0, 0]},
                {"w": "w0"},
            ),
            Op("flatten", "fl", ["c0"], ["fl"]),
            Op("dense_f32", "fc", ["fl"], ["fc"], params={"w": "wd"}),
        ],
        t,
        "fc",
    )
    data = g.to_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    gj = json.loads(header["__metadata__"]["graph"])
    assert gj["version"] == 2 and header["__metadata__"]["version"] == "2"
    gj["version"] = 1
    header["__metadata__"]["graph"] = json.dumps(gj)
    header["__metadata__"]["version"] = "1"
    hb = json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    v1 = struct.pack("<Q", len(hb)) + hb + data[8 + n :]
    (tmp_path / "v1.bfn").write_bytes(v1)
    g1 = load_graph(tmp_path / "v1.bfn")
    assert g1.version == 1
    x = rng.random((2, 1, 7, 7), dtype=np.float32)
    assert np.array_equal(R.run(g1, x), R.run(g, x))
    assert np.array_equal(parse_bfn(v1).to_json()["ops"], g.to_json()["ops"])


def test_explain_forms_follow_the_op_table() -> None:
    """``convert --explain`` labels every declared op; decisions to bits / codes are thresholds,
    the rest their table group (the uint8-code +-1-weight convolutions are integer, not float)."""
    from bitflow.analysis.explain import op_form

    forms = {name: op_form(name) for name in OPS}
    assert set(forms.values()) <= {"binary", "threshold", "integer", "layout", "float"}
    assert forms["bconv2d"] == forms["bdense_planes"] == "binary"
    assert forms["threshold_bits_hw"] == forms["threshold_u8"] == forms["bitpack"] == "threshold"
    assert forms["conv2d_u8b1"] == forms["dense_u8b1"] == forms["requant_i32"] == "integer"
    assert forms["gather_channels"] == forms["flatten"] == "layout"
    assert forms["dense_f32"] == forms["add_f32"] == "float"
    with pytest.raises(ValueError, match="unknown engine op type"):
        op_form("conv3d")
