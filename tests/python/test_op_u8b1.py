"""conv2d_u8b1 (MCN W1/A8): +-1 weights over uint8 activations, exact in int32 -- the reference
against PyTorch's float64 convolution (an independent oracle; every value is an integer below
2^53), the engine against the reference on every kernel set, at word edges of C."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import bitflow._native as N
from bitflow.engine import available_kernels
from bitflow.ir import Graph, GraphError, InputSpec, Op, ValueInfo, pack_bits
from bitflow.ir import reference as R
from bitflow.ir.graph import infer
from bitflow.ir.ops import OPS, EngineContext


def _case(
    rng: np.random.Generator, n: int, h: int, w: int, c: int, o: int, k: int
) -> tuple[np.ndarray, np.ndarray]:
    x = rng.integers(0, 256, (n, h, w, c), dtype=np.uint8)
    x[0, 0, 0, :] = 255  # the extreme value
    pm1 = np.where(rng.random((o, k, k, c)) < 0.5, -1, 1).astype(np.int8)
    return x, pm1


@pytest.mark.parametrize("c", [1, 3, 63, 64, 65, 130])
@pytest.mark.parametrize("k,stride,padding", [(3, 1, 1), (3, 2, 1), (1, 1, 0), (5, 2, 2)])
def test_conv2d_u8b1_is_exact_on_every_kernel_set(
    c: int, k: int, stride: int, padding: int
) -> None:
    rng = np.random.default_rng(c * 100 + k * 10 + stride)
    x, pm1 = _case(rng, 2, 7, 6, c, 5, k)
    wbits = pack_bits(pm1 < 0)
    assert wbits.shape == (5, k, k, (c + 63) // 64)
    tensors = {"w": wbits}
    op = Op(
        "conv2d_u8b1",
        "conv",
        ["x"],
        ["y"],
        {"channels": c, "stride": [stride] * 2, "padding": [padding] * 2},
        {"w": "w"},
    )
    vin = ValueInfo("uint8", (7, 6, c))
    vout = infer(op, [vin], tensors)
    want = F.conv2d(
        torch.from_numpy(x).permute(0, 3, 1, 2).double(),
        torch.from_numpy(pm1).permute(0, 3, 1, 2).double(),
        None,
        stride,
        padding,
    )
    want_i = want.permute(0, 2, 3, 1).numpy().astype(np.int64)
    assert vout.dtype == "int32" and vout.shape == want_i.shape[1:]
    g = Graph(InputSpec(1, 1, 1), [], tensors, "x")
    ref = R.run_op(g, op, [x], [vin])
    assert ref.dtype == np.int32
    np.testing.assert_array_equal(ref, want_i)
    for kset in available_kernels():
        fn = OPS["conv2d_u8b1"].engine(EngineContext(N, kset, 2, g, {"x": vin}), op)
        out = fn([x])
        assert out.dtype == np.int32
        np.testing.assert_array_equal(out, want_i, err_msg=kset)


def test_conv2d_u8b1_validation() -> None:
    wbits = pack_bits(np.ones((4, 3, 3, 70), bool))
    op = Op(
        "conv2d_u8b1",
        "conv",
        ["x"],
        ["y"],
        {"channels": 70, "stride": [1, 1], "padding": [1, 1]},
        {"w": "w"},
    )
    assert infer(op, [ValueInfo("uint8", (5, 5, 70))], {"w": wbits}).shape == (5, 5, 4)
    with pytest.raises(GraphError, match="channels"):
        infer(op, [ValueInfo("uint8", (5, 5, 69))], {"w": wbits})
    with pytest.raises(GraphError):
        infer(op, [ValueInfo("float32", (5, 5, 70))], {"w": wbits})
    bad = Op(
        "conv2d_u8b1",
        "conv",
        ["x"],
        ["y"],
        {"channels": 130, "stride": [1, 1], "padding": [1, 1]},
        {"w": "w"},
    )
    with pytest.raises(GraphError, match="words"):
        infer(bad, [ValueInfo("uint8", (5, 5, 130))], {"w": wbits})
    with pytest.raises(ValueError, match="channels"):
        N.conv2d_u8b1(np.zeros((1, 5, 5, 70), np.uint8), wbits, 69)


def test_conv2d_u8b1_at_the_fan_in_limit() -> None:
    """The engine runs conv2d_u8b1 on the int8 kernels (a prepared Int8ConvLayer, weights
    expanded once), whose exact-sum bound allows kh * kw * C <= 65,793 (255 * 128 * K <=
    2^31 - 1). 3 x 3 x 7,310 = 65,790 taps: exact at both extremes (+-255 * 65,790); oracle:
    the int64 dot product of the window. 3 x 3 x 7,400 is refused when the graph validates."""
    rng = np.random.default_rng(7)
    o = 3
    for c in (7310, 7400):
        x = np.full((1, 3, 3, c), 255, np.uint8)
        x[0, 0, 0, :5] = rng.integers(0, 256, 5)
        pm1 = np.where(rng.random((o, 3, 3, c)) < 0.5, -1, 1).astype(np.int8)
        pm1[0], pm1[1] = 1, -1
        tensors = {"w": pack_bits(pm1 < 0)}
        attrs = {"channels": c, "stride": [1, 1], "padding": [0, 0]}
        op = Op("conv2d_u8b1", "conv", ["x"], ["y"], attrs, {"w": "w"})
        vin = ValueInfo("uint8", (3, 3, c))
        if c == 7400:
            with pytest.raises(GraphError, match="accumulator bound"):
                infer(op, [vin], tensors)
            continue
        infer(op, [vin], tensors)
        want = np.einsum("nhwc,ohwc->no", x.astype(np.int64), pm1.astype(np.int64))
        g = Graph(InputSpec(1, 1, 1), [], tensors, "x")
        for kset in available_kernels():
            out = OPS["conv2d_u8b1"].engine(EngineContext(N, kset, 2, g, {"x": vin}), op)([x])
            np.testing.assert_array_equal(out[:, 0, 0, :], want, err_msg=kset)
