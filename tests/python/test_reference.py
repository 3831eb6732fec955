"""Reference executor ops against independent oracles (PyTorch convolutions and pools on +-1
values, plain numpy matrix products, the MBBN plane identity)."""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _bounds import assert_within, gamma
from hypothesis import given, settings
from hypothesis import strategies as st

from bitflow.ir import Graph, GraphError, InputSpec, Op, ValueInfo, pack_bits, unpack_bits
from bitflow.ir import reference as R
from bitflow.ir.graph import infer


def run_op(
    type_: str, x: np.ndarray, vin: ValueInfo, attrs: dict, params: dict[str, np.ndarray]
) -> np.ndarray:
    """Shape-check one op with the graph's rules, run it, and check the output shape."""
    op = Op(type_, "op", ["x"], ["y"], attrs, {k: k for k in params})
    vout = infer(op, [vin], params)
    y = R.run_op(SimpleNamespace(tensors=params), op, [x], [vin])  # type: ignore[arg-type]
    batch = x.shape[1] if vin.planes > 1 else x.shape[0]
    assert y.shape == vout.storage_shape(batch)
    return y


def pm1(shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    return np.where(rng.random(shape) < 0.5, -1.0, 1.0).astype(np.float32)


def bits_info(x: np.ndarray, c: int) -> ValueInfo:
    return ValueInfo("bits", x.shape[1:], c)


@settings(max_examples=40, deadline=None)
@given(
    st.sampled_from([1, 31, 63, 64, 65, 130]),
    st.integers(1, 9),
    st.integers(1, 3),
    st.integers(1, 3),
    st.integers(1, 2),
    st.integers(0, 2),
    st.sampled_from([0, 1]),
    st.integers(0, 2**31),
)
def test_bconv2d_equals_torch_conv_on_pm1(
    c: int, o: int, k: int, hw: int, stride: int, pad: int, pad_value: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    h, w = 2 + hw * 2, 3 + hw  # odd and even spatial sizes
    xs, ws = pm1((2, c, h, w), rng), pm1((o, c, k, k), rng)
    xt = torch.from_numpy(xs)
    if pad_value == 1:
        want = F.conv2d(F.pad(xt, (pad,) * 4, value=1.0), torch.from_numpy(ws), stride=stride)
    else:
        want = F.conv2d(xt, torch.from_numpy(ws), stride=stride, padding=pad)
    x = pack_bits(xs.transpose(0, 2, 3, 1) < 0)
    wb = pack_bits(ws.transpose(0, 2, 3, 1) < 0)
    attrs = {
        "channels": c,
        "stride": [stride, stride],
        "padding": [pad, pad],
        "pad_value": pad_value,
    }
    got = run_op("bconv2d", x, bits_info(x, c), attrs, {"w": wb})
    assert got.dtype == np.int32
    np.testing.assert_array_equal(got, want.permute(0, 2, 3, 1).numpy().astype(np.int32))


@settings(max_examples=30, deadline=None)
@given(
    st.sampled_from([1, 31, 32, 33, 63, 64, 65, 255, 256, 257, 513]),
    st.integers(1, 7),
    st.integers(1, 5),
    st.integers(0, 2**31),
)
def test_bdense_equals_pm1_matmul(k: int, n: int, o: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    a, b = pm1((n, k), rng), pm1((o, k), rng)
    x, wb = pack_bits(a < 0), pack_bits(b < 0)
    got = run_op("bdense", x, ValueInfo("bits", x.shape[1:], k), {"k_bits": k}, {"w": wb})
    np.testing.assert_array_equal(got, (a.astype(np.int64) @ b.T.astype(np.int64)).astype(np.int32))


def test_plane_ops_and_threshold_planes_identity() -> None:
    """threshold_planes: q = #{l: acc >= thr_l}, plane m = bit m of q as +-1, so
    sum_m 2^m c_m = 2q - L; bconv2d_planes/bdense_planes = sum 2^(i+j) dot(x_i, w_j)."""
    rng = np.random.default_rng(0)
    m, c = 3, 37
    L = 2**m - 1
    acc = rng.integers(-20, 21, size=(2, 4, 5, c)).astype(np.int32)
    thr = np.sort(rng.integers(-20, 21, size=(c, L)), axis=1).astype(np.int32)
    d = np.where(rng.random(c) < 0.5, 1, -1).astype(np.int8)
    planes = run_op(
        "threshold_planes",
        acc,
        ValueInfo("int32", acc.shape[1:]),
        {"planes": m},
        {"thr": thr, "direction": d},
    )
    assert planes.shape == (m, 2, 4, 5, 1)
    vals = sum((2**i) * np.where(unpack_bits(planes[i], c), -1, 1) for i in range(m))
    q = np.where(d > 0, (acc[..., None] >= thr).sum(-1), (acc[..., None] <= thr).sum(-1))
    np.testing.assert_array_equal(vals, 2 * q - L)
    # plane products
    w = pm1((2, 6, c, 3, 3), rng)  # Pw = 2 planes of 6 output channels (PyTorch OIHW)
    wb = pack_bits(w.transpose(0, 1, 3, 4, 2) < 0)
    vin = ValueInfo("bits", planes.shape[2:], c, planes=m)
    got = run_op(
        "bconv2d_planes",
        planes,
        vin,
        {"channels": c, "stride": [1, 1], "padding": [1, 1], "pad_value": 0},
        {"w": wb},
    )
    xs = [
        torch.from_numpy(np.where(unpack_bits(planes[i], c), -1.0, 1.0).astype(np.float32)).permute(
            0, 3, 1, 2
        )
        for i in range(m)
    ]
    want = sum(
        (2 ** (i + j)) * F.conv2d(xs[i], torch.from_numpy(w[j]), padding=1)
        for i in range(m)
        for j in range(2)
    )
    np.testing.assert_array_equal(got, want.permute(0, 2, 3, 1).numpy().astype(np.int32))
    flat = planes.reshape(m, 2, -1)
    fin = ValueInfo("bits", flat.shape[2:], c, groups=20, planes=m)
    wd = pm1((2, 3, 20, c), rng)
    wdb = pack_bits(wd < 0).reshape(2, 3, -1)
    got = run_op("bdense_planes", flat, fin, {"k_bits": 20 * c}, {"w": wdb})
    xv = [np.where(unpack_bits(flat[i], c, 20), -1, 1) for i in range(m)]
    want = sum((2 ** (i + j)) * xv[i] @ wd[j].reshape(3, -1).T for i in range(m) for j in range(2))
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(("k", "s", "p"), [(2, 2, 0), (3, 2, 1), (3, 1, 1), (2, 1, 0)])
def test_pools_equal_torch_max_pool(k: int, s: int, p: int) -> None:
    rng = np.random.default_rng(k * 10 + s + p)
    c = 70
    x = rng.integers(-50, 50, size=(2, 7, 6, c)).astype(np.int32)
    want = (
        F.max_pool2d(torch.from_numpy(x).permute(0, 3, 1, 2).double(), k, s, p)
        .permute(0, 2, 3, 1)
        .numpy()
    )
    attrs = {"kernel": [k, k], "stride": [s, s], "padding": [p, p]}
    vin = ValueInfo("int32", x.shape[1:])
    np.testing.assert_array_equal(run_op("maxpool_i32", x, vin, attrs, {}), want)
    xf = x.astype(np.float32) / 7
    np.testing.assert_array_equal(
        run_op("maxpool_f32", xf, ValueInfo("float32", x.shape[1:]), attrs, {}),
        want.astype(np.float32) / 7,
    )
    # max of +-1 values = AND of packed bits (bit 1 = -1); min = OR
    sgn = np.where(x >= 0, 1.0, -1.0)
    b = pack_bits(sgn < 0)
    vb = ValueInfo("bits", b.shape[1:], c)
    tmax = (
        F.max_pool2d(torch.from_numpy(sgn).permute(0, 3, 1, 2), k, s, p).permute(0, 2, 3, 1).numpy()
    )
    tmin = (
        -F.max_pool2d(torch.from_numpy(-sgn).permute(0, 3, 1, 2), k, s, p)
        .permute(0, 2, 3, 1)
        .numpy()
    )
    np.testing.assert_array_equal(
        run_op("maxpool_bits", b, vb, {**attrs, "op": "and"}, {}), pack_bits(tmax < 0)
    )
    np.testing.assert_array_equal(
        run_op("maxpool_bits", b, vb, {**attrs, "op": "or"}, {}), pack_bits(tmin < 0)
    )


def test_first_layer_convs() -> None:
    rng = np.random.default_rng(1)
    x = rng.random((3, 2, 9, 8), dtype=np.float32)
    w = rng.normal(size=(5, 2, 3, 3)).astype(np.float32)
    bias = rng.normal(size=5).astype(np.float32)
    want = (
        F.conv2d(
            torch.from_numpy(x).double(),
            torch.from_numpy(w).double(),
            torch.from_numpy(bias).double(),
            stride=2,
            padding=1,
        )
        .permute(0, 2, 3, 1)
        .numpy()
    )
    attrs = {"stride": [2, 2], "padding": [1, 1]}
    xn = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    got = run_op(
        "conv2d_f32",
        xn,
        ValueInfo("float32", xn.shape[1:]),
        attrs,
        {"w": np.ascontiguousarray(w.transpose(0, 2, 3, 1)), "bias": bias},
    )
    # any float32 summation order of the K = 2*3*3 products and the bias: within
    # gamma_{K+1} (|x| * |w| + |b|) of the exact value (Higham Eq. 3.5; the float64 oracle's
    # own error is absorbed, see _bounds)
    absw = F.conv2d(
        torch.from_numpy(x).double(),
        torch.from_numpy(np.abs(w)).double(),
        torch.from_numpy(np.abs(bias)).double(),
        stride=2,
        padding=1,
    ).permute(0, 2, 3, 1)
    assert_within(got, want, gamma(2 * 3 * 3 + 1) * absw, "conv2d_f32")
    p = np.round(xn * 255).astype(np.uint8)
    q = rng.integers(-127, 128, size=(5, 3, 3, 2)).astype(np.int8)
    want = F.conv2d(
        torch.from_numpy(p.transpose(0, 3, 1, 2).astype(np.float64)),
        torch.from_numpy(q.transpose(0, 3, 1, 2).astype(np.float64)),
        stride=2,
        padding=1,
    )
    got = run_op("conv2d_u8i8", p, ValueInfo("uint8", p.shape[1:]), attrs, {"w": q})
    np.testing.assert_array_equal(got, want.permute(0, 2, 3, 1).numpy().astype(np.int32))


def test_threshold_and_float_ops() -> None:
    acc = np.array([[[-3, 0, 5, 7]]], np.int32)
    thr = np.array([0, 0, np.iinfo(np.int32).min, np.iinfo(np.int32).min], np.int32)
    d = np.array([1, -1, 1, -1], np.int8)
    out = run_op(
        "threshold_bits", acc, ValueInfo("int32", (1, 4)), {}, {"thr": thr, "direction": d}
    )
    # +1 iff acc >= 0 | acc <= 0 | always | never  ->  -1, +1, +1, -1 -> bits 1, 0, 0, 1
    np.testing.assert_array_equal(unpack_bits(out, 4)[0, 0], [True, False, False, True])
    y = np.array([[np.nan, -0.0, 0.5, -np.inf]], np.float32)
    tf = np.array([0.0, 0.0, -np.inf, -np.inf], np.float32)
    out = run_op(
        "threshold_f32_bits",
        y,
        ValueInfo("float32", (4,)),
        {},
        {"thr": tf, "direction": np.array([1, 1, 1, -1], np.int8)},
    )
    np.testing.assert_array_equal(
        unpack_bits(out, 4)[0], [False, False, False, False]
    )  # NaN never -1
    s = np.array([0.5, 2.0], np.float32)
    b = np.array([1.0, -1.0], np.float32)
    got = run_op(
        "scale_bias",
        np.array([[3, -4]], np.int32),
        ValueInfo("int32", (2,)),
        {},
        {"scale": s, "bias": b},
    )
    np.testing.assert_array_equal(got, [[2.5, -9.0]])
    got = run_op(
        "bitpack",
        np.array([[-0.0, 0.0, -1e-30, 3.0]], np.float32),
        ValueInfo("float32", (4,)),
        {},
        {},
    )
    np.testing.assert_array_equal(
        unpack_bits(got, 4)[0], [False, False, True, False]
    )  # sign(0) = +1


def test_pack_bits_layout() -> None:
    neg = np.zeros((1, 70), bool)
    neg[0, [0, 63, 64, 69]] = True
    w = pack_bits(neg)
    assert w.dtype == np.uint64 and w.shape == (1, 2)
    assert int(w[0, 0]) == (1 | (1 << 63)) and int(w[0, 1]) == (
        1 | (1 << 5)
    )  # LSB first, padding 0
    np.testing.assert_array_equal(unpack_bits(w, 70), neg)
    g = pack_bits(np.ones((2, 3, 5), bool)).reshape(2, -1)  # 3 groups of 5 channels, 1 word each
    assert np.all(unpack_bits(g, 5, groups=3)) and unpack_bits(g, 5, groups=3).shape == (2, 15)


def _tiny_graph(mode: str = "bitflow", with_float_middle: bool = False) -> Graph:
    rng = np.random.default_rng(3)
    c = 4
    ops = [
        Op(
            "conv2d_u8i8",
            "c1",
            ["input"],
            ["c1"],
            {"stride": [1, 1], "padding": [1, 1]},
            {"w": "w1"},
        ),
        Op("threshold_bits", "t1", ["c1"], ["t1"], {}, {"thr": "thr1", "direction": "d1"}),
        Op(
            "bconv2d",
            "b1",
            ["t1"],
            ["b1"],
            {"channels": c, "stride": [1, 1], "padding": [0, 0], "pad_value": 0},
            {"w": "w2"},
        ),
    ]
    if with_float_middle:
        ops += [
            Op("scale_bias", "s1", ["b1"], ["s1"], {}, {"scale": "sc", "bias": "bi"}),
            Op("bitpack", "p1", ["s1"], ["p1"]),
        ]
        src = "p1"
    else:
        ops += [Op("threshold_bits", "t2", ["b1"], ["t2"], {}, {"thr": "thr2", "direction": "d1"})]
        src = "t2"
    ops += [
        Op("flatten", "f", [src], ["f"]),
        Op("bdense", "d", ["f"], ["d"], {"k_bits": 16 * c}, {"w": "w3"}),
        Op("scale_bias", "out", ["d"], ["out"], {}, {"scale": "so", "bias": "bo"}),
    ]
    tensors = {
        "w1": rng.integers(-127, 128, size=(c, 3, 3, 1)).astype(np.int8),
        "thr1": rng.integers(-500, 500, size=c).astype(np.int32),
        "d1": np.ones(c, np.int8),
        "w2": pack_bits(rng.random((c, 3, 3, c)) < 0.5),
        "thr2": np.zeros(c, np.int32),
        "sc": np.ones(c, np.float32),
        "bi": np.zeros(c, np.float32),
        "w3": pack_bits(rng.random((3, 16, c)) < 0.5).reshape(3, -1),
        "so": np.full(3, 0.5, np.float32),
        "bo": np.zeros(3, np.float32),
    }
    return Graph(
        input=InputSpec(1, 6, 6, "uint8"), ops=ops, tensors=tensors, output="out", mode=mode
    )


def test_bitflow_mode_rejects_float_ops_between_binary_layers() -> None:
    with pytest.raises(GraphError, match="float op 's1' \\(scale_bias\\) between binary layers"):
        _tiny_graph("bitflow", with_float_middle=True).validate()
    g = _tiny_graph("xnor", with_float_middle=True)
    out = R.run(g, np.random.default_rng(0).random((2, 1, 6, 6)))
    assert out.shape == (2, 3) and out.dtype == np.float32


def test_run_checks_input_and_returns_intermediates() -> None:
    g = _tiny_graph()
    x = np.random.default_rng(1).random((3, 1, 6, 6), dtype=np.float32)
    logits, inter = R.run(g, x, return_intermediates=True)  # type: ignore[misc]
    assert logits.dtype == np.float32 and logits.shape == (3, 3)
    assert (
        inter["t1"].dtype == np.uint64
        and inter["b1"].dtype == np.int32
        and inter["input"].dtype == np.uint8
    )
    np.testing.assert_array_equal(R.run(g, x, batch_size=2), logits)
    with pytest.raises(ValueError, match=r"shape \[N, 1, 6, 6\]"):
        R.run(g, x[:, :, :5])
    with pytest.raises(ValueError, match="NaN"):
        R.run(g, np.full((1, 1, 6, 6), np.nan, np.float32))
    with pytest.raises(TypeError, match="float"):
        R.run(g, np.zeros((1, 1, 6, 6), np.int64))
    with pytest.raises(ValueError, match="batch_size"):
        R.run(g, x, batch_size=0)
    # a tensor of the wrong dtype reaching a binary op is refused at run time
    op = g.ops[2]
    with pytest.raises(GraphError, match="expected uint64"):
        R.run_op(g, op, [inter["c1"]], [g.values["c1"]])


@pytest.mark.slow
def test_full_fashion_mnist_test_set_runs_under_a_minute() -> None:
    """bitflow_vgg_small width 32 on the 10k Fashion-MNIST test images."""
    from bitflow import models
    from bitflow.convert import convert
    from bitflow.data.idx import read_idx

    x = (
        read_idx("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz").astype(np.float32)[
            :, None
        ]
        / 255
    )
    torch.manual_seed(0)
    g = convert(models.create("bitflow_vgg_small", width=32).eval())
    t = time.perf_counter()
    out = R.run(g, x)
    assert out.shape == (10000, 10)
    assert time.perf_counter() - t < 60


@settings(max_examples=25, deadline=None)
@given(
    m=st.integers(1, 8),
    k=st.integers(1, 8),
    c=st.sampled_from([1, 7, 8, 37, 64, 70]),
    pad_value=st.sampled_from([0, 1]),
    stride=st.sampled_from([1, 2]),
    ksize=st.sampled_from([1, 3]),
    seed=st.integers(0, 2**31),
)
def test_bconv2d_planes_equals_sum_of_plane_convolutions(
    m: int, k: int, c: int, pad_value: int, stride: int, ksize: int, seed: int
) -> None:
    # oracle: Eq. 8 term by term in PyTorch, sum_{i,j} 2^(i+j) conv(pad(x_i, pad_value), w_j), every
    # plane padded with 0 or +1 (float64: the largest sum, 9 * 70 * 255 * 255 < 2^53, is exact)
    rng = np.random.default_rng(seed)
    x = pm1((m, 2, 5, 6, c), rng)
    xb = pack_bits(x < 0)
    w = pm1((k, 4, c, ksize, ksize), rng)
    wb = pack_bits(w.transpose(0, 1, 3, 4, 2) < 0)
    pad = ksize // 2
    attrs = {
        "channels": c,
        "stride": [stride, stride],
        "padding": [pad, pad],
        "pad_value": pad_value,
    }
    xin = xb if m > 1 else xb[0]  # one plane is an ordinary [N, H, W, Cw] bit tensor
    got = run_op(
        "bconv2d_planes", xin, ValueInfo("bits", xb.shape[2:], c, planes=m), attrs, {"w": wb}
    )
    want = 0
    for i in range(m):
        xi = F.pad(
            torch.from_numpy(x[i].astype(np.float64)).permute(0, 3, 1, 2),
            (pad,) * 4,
            value=float(pad_value),
        )
        for j in range(k):
            want = want + (2 ** (i + j)) * F.conv2d(
                xi, torch.from_numpy(w[j].astype(np.float64)), stride=stride
            )
    np.testing.assert_array_equal(got, want.permute(0, 2, 3, 1).numpy().astype(np.int64))
