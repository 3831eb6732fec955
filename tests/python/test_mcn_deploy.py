"""MCN deployment of every variant (issue 11): W1/A8 (uint8 codes + conv2d_u8b1), full M by taps,
the float fallback for real activations / U-MCN; the new threshold_u8 ops."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _bounds import assert_within, conv_bound, reference_and_bound
from test_mcn_convert import randomize_mcn
from torch import nn

from bitflow import _native as N
from bitflow.convert import convert, verify
from bitflow.convert._mcn import u8_boundaries
from bitflow.engine import Engine, available_kernels
from bitflow.engine.check import compare_with_reference
from bitflow.ir import run
from bitflow.ir.bits import unpack_bits
from bitflow.ir.ops.survey import levels_reference as u8_codes
from bitflow.models import create
from bitflow.nn.mcn import MCConv2d, UInt8Act


def _randomize(model: nn.Module, seed: int) -> nn.Module:
    """Random BN statistics/affines (gamma of both signs, beta in [-0.5, 1.5)), M-Filters > 0."""
    return randomize_mcn(model, seed, beta_low=-0.5)


# ----------------------------------------------------------------------------- the ops
def _oracle_codes(x: np.ndarray, thr: np.ndarray, d: np.ndarray) -> np.ndarray:
    """Python loop over every element: passed thresholds, NaN passes all (the definition)."""
    out = np.zeros(x.shape, np.uint8)
    for idx in np.ndindex(*x.shape):
        c = idx[-1]
        v = x[idx]
        n = 0
        for t in thr[c]:
            if v != v or (v >= t if d[c] > 0 else v <= t):
                n += 1
        out[idx] = n
    return out


@pytest.mark.parametrize("dtype", [np.int32, np.float32])
def test_threshold_u8_native_equals_the_definition(dtype: type) -> None:
    rng = np.random.default_rng(0)
    o, L = 5, 255
    thr = np.sort(rng.integers(-300, 300, (o, L)), axis=1).astype(dtype)
    thr[0, :] = 7  # all equal: every threshold passes at once
    d = np.array([1, -1, 1, -1, 1], np.int8)
    x = rng.integers(-320, 320, (3, 4, o)).astype(dtype)
    x[0, 0, :] = thr[:, 100]  # exactly on a threshold
    if dtype == np.float32:
        x[1, 1, 2] = np.nan
    want = _oracle_codes(x, thr, d)
    got_native = (N.threshold_f32_u8 if dtype == np.float32 else N.threshold_u8)(x, thr, d)
    np.testing.assert_array_equal(got_native, want)
    np.testing.assert_array_equal(u8_codes(x, thr, d), want)
    few = np.ascontiguousarray(thr[:, :3])  # L < 255 is allowed
    np.testing.assert_array_equal(
        (N.threshold_f32_u8 if dtype == np.float32 else N.threshold_u8)(x, few, d),
        _oracle_codes(x, few, d),
    )


def test_threshold_u8_counts_any_order_and_rejects_bad_shapes() -> None:
    # the op (bitflow.ir.ops.survey) counts passed thresholds: their order does not matter
    x = np.arange(-3, 3, dtype=np.int32).reshape(2, 3)
    d = np.array([1, -1, 1], np.int8)
    thr = np.array([[2, -1]] * 3, np.int32)
    np.testing.assert_array_equal(N.threshold_u8(x, thr, d), _oracle_codes(x, thr, d))
    with pytest.raises(ValueError, match="L <= 255"):
        N.threshold_u8(x, np.zeros((3, 256), np.int32), d)


# ----------------------------------------------------------------------------- training side
def test_uint8_codes_are_the_exact_boundary_count() -> None:
    """q = clamp(floor(x 2^f + 1/2), 0, 255) == #{j : x >= (j - 1/2) 2^-f}, checked in exact
    rationals on random float32 values and on the boundaries themselves and their neighbours."""
    for f in (0, 3, 5, 9):
        iq = UInt8Act(f)
        b = u8_boundaries(iq)
        rng = np.random.default_rng(f)
        xs = rng.normal(0, 100 * 2.0**-f, 2000).astype(np.float32)
        on = np.array([float(v) for v in b if v is not None], np.float32)
        xs = np.concatenate(
            [xs, on, np.nextafter(on, np.float32(-np.inf)), np.nextafter(on, np.float32(np.inf))]
        )
        q = iq.codes(torch.from_numpy(xs)).numpy()
        want = [sum(1 for t in b if t is not None and Fraction(float(v)) >= t) for v in xs]
        np.testing.assert_array_equal(q, np.array(want, np.float32))


def test_uint8_ste_gradient() -> None:
    iq = UInt8Act(2)
    x = torch.tensor([-1.0, 0.3, 10.0, 100.0], requires_grad=True)
    iq(x).sum().backward()
    # value q 2^-f with dq/dx = 2^f inside [0, 255/4] -> gradient 1 there, 0 outside
    assert x.grad is not None
    np.testing.assert_array_equal(x.grad.numpy(), [0.0, 1.0, 1.0, 0.0])


@pytest.mark.parametrize("variant", ["mcn", "mcn1"])
def test_u8_layer_is_the_conv_with_the_reconstructed_weight(variant: str) -> None:
    torch.manual_seed(0)
    m = MCConv2d(3, 5, 3, 2, 1, planes=4, variant=variant, input_quantizer="u8", act_frac=4)
    m.m_filter.data.uniform_(0.2, 1.5)
    x = torch.rand(2, 12, 9, 9) * 8
    want = F.conv2d(m.input_quantizer(x), m.conv_weight(), None, 2, 1)
    # two float32 convs of the same function, K = 12 * 9 products: the layer may factor
    # W = C^ M (mean of 9 M values, a * mean, the product with an exact integer: 12 more
    # roundings), each side within gamma_{K+12} conv(|x_q|, |W|) of the exact value
    xq = m.input_quantizer(x)
    assert_within(
        m(x), want, 2 * conv_bound(xq, m.conv_weight(), 2, 1, extra=12), empirical=(1e-5, 1e-5)
    )  # measured 2.4e-6
    if variant == "mcn1":  # the exact path: integer conv, then one float32 multiplication
        assert m.u8_exact()


def test_u8_layer_too_wide_is_refused() -> None:
    with pytest.raises(ValueError, match="2\\^24"):
        MCConv2d(2000, 2, 3, planes=4, input_quantizer="u8")


@pytest.mark.parametrize("relu", [False, True])
def test_float_u8_thresholds_agree_with_pytorch_bn_and_quantizer(relu: bool) -> None:
    """q from the float thresholds == UInt8Act(BN(relu?(y))) computed by PyTorch, except for
    values within a few ulps of a threshold (gamma of both signs and 0)."""
    from bitflow.convert._core import _bn_params
    from bitflow.convert._mcn import float_u8_thresholds

    g = torch.Generator().manual_seed(0)
    c = 6
    bn = nn.BatchNorm2d(c).eval()
    bn.running_mean.copy_(torch.rand(c, generator=g) * 2 - 1)
    bn.running_var.copy_(torch.rand(c, generator=g) + 0.5)
    bn.weight.data.copy_(torch.tensor([1.5, -0.7, 0.0, 0.3, -2.0, 1.0]))
    bn.bias.data.copy_(torch.tensor([0.2, 1.0, 3.0, -0.5, 0.0, 0.0]))
    iq = UInt8Act(3)
    thr, d = float_u8_thresholds(_bn_params("bn", bn), u8_boundaries(iq), relu=relu, channels=c)
    y = (torch.rand(20000, c, generator=g) * 80 - 40).float()
    with torch.no_grad():
        u = torch.relu(y) if relu else y
        want = iq.codes(bn(u[:, :, None, None])[:, :, 0, 0]).numpy().astype(np.uint8)
    got = u8_codes(y.numpy(), thr, d)
    near = (np.abs(y.numpy()[:, :, None] - thr[None]) <= 1e-4 * (1 + np.abs(thr[None]))).any(-1)
    assert ((got != want) & ~near).sum() == 0
    assert (got == want).mean() > 0.999 and len(np.unique(want)) > 100


# ----------------------------------------------------------------------------- conversion
def _check_engine(graph: object, x: np.ndarray) -> None:
    ref, bound = reference_and_bound(graph, x)
    for k in available_kernels():
        eng = Engine(graph, kernels=k)  # type: ignore[arg-type]
        rep = compare_with_reference(eng, x)["reference"]
        assert rep["exact_mismatches"] == 0 and rep["op_by_op_mismatches"] == 0, (k, rep)
        # engine vs reference: the same integers and bits (checked), so only the float layers'
        # roundings differ: at most 2 E (float_error_bounds, _bounds.reference_and_bound)
        assert_within(eng.logits(x), ref, bound, k, empirical=(1e-4, 1e-4))  # measured 9.6e-7


MNIST = {"in_channels": 1, "image_size": 28, "widths": (2, 3, 4, 5), "act": "u8", "act_frac": 4}
WRN = {"in_channels": 1, "image_size": 12, "widths": (2, 2, 2, 4), "depth": 8, "act": "u8"}


@pytest.mark.parametrize("name,kw", [("mcn1_mnist", MNIST), ("mcn1_wrn", WRN)])
def test_mcn1_u8_converts_to_conv2d_u8b1_exactly(name: str, kw: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = _randomize(create(name, **kw), 1)
    g = convert(model)
    n_mc = sum(1 for m in model.modules() if isinstance(m, MCConv2d) and not m.replicate_input)
    assert sum(op.type == "conv2d_u8b1" for op in g.ops) == n_mc
    s = int(kw["image_size"])  # type: ignore[call-overload]
    x = np.random.default_rng(0).random((16, 1, s, s), dtype=np.float32)
    res = verify(model, g, x)
    assert res["signs_compared"] > 0
    assert res["sign_mismatches"] == 0 and res["prediction_mismatches_unexplained"] == 0, res
    if name == "mcn1_mnist":
        # integer codes after integer producers: only the first (float) layer's codes may be near
        int_codes = [op for op in g.ops if op.type == "threshold_u8"]
        assert len(int_codes) == n_mc - 1
        assert res["prediction_mismatches"] == 0
    _check_engine(g, x)


@pytest.mark.parametrize(
    "name,kw",
    [
        ("mcn_mnist", MNIST),
        ("mcn_xnor_mnist", {"in_channels": 1, "image_size": 28, "widths": (4, 6, 8, 10)}),
        ("mcn_wrn", WRN),
    ],
)
def test_full_m_converts_by_taps(name: str, kw: dict[str, object]) -> None:
    """Full M: per-tap integer responses (1x1 +-1 conv) and a float W^2-term sum; only
    near-threshold differences, and the decomposition is the layer's function."""
    torch.manual_seed(0)
    model = _randomize(create(name, **kw), 2)
    g = convert(model)
    taps = [op for op in g.ops if op.name.endswith(".taps")]
    n_mc = sum(1 for m in model.modules() if isinstance(m, MCConv2d) and not m.replicate_input)
    assert len(taps) == n_mc
    s = int(kw["image_size"])  # type: ignore[call-overload]
    x = np.random.default_rng(1).random((16, 1, s, s), dtype=np.float32)
    res = verify(model, g, x)
    assert res["signs_compared"] > 0
    assert res["sign_mismatches"] == 0 and res["prediction_mismatches_unexplained"] == 0, res
    # the decomposition is the layer's function: at the first full-M layer, on the samples whose
    # input codes / signs PyTorch and the graph agree on, the tap sum equals PyTorch's conv with W
    # within both implementations' float32 bounds (err_bound, derived in convert._mcn)
    name = taps[0].attrs["source"]
    layer = dict(model.named_modules())[name]
    seen: dict[str, torch.Tensor] = {}
    hook = layer.register_forward_hook(lambda _m, i, o: seen.update(x=i[0], y=o))
    with torch.no_grad():
        model(torch.from_numpy(x))
    hook.remove()
    _, inter = run(g, x, return_intermediates=True)  # type: ignore[misc]
    iq = layer.input_quantizer
    with torch.no_grad():
        want_in = iq.codes(seen["x"]) if isinstance(iq, UInt8Act) else (iq(seen["x"]) < 0)
    if isinstance(iq, UInt8Act):
        got_in = inter[taps[0].inputs[0]].transpose(0, 3, 1, 2)
    else:
        got_in = unpack_bits(inter[taps[0].inputs[0]], layer.in_channels).transpose(0, 3, 1, 2)
    same = (want_in.numpy() == got_in).reshape(16, -1).all(1)
    assert same.sum() >= 8
    (comb,) = [op for op in g.ops if op.name == name]
    bound = 2 * np.asarray(comb.attrs["err_bound"])
    diff = np.abs(inter[name].transpose(0, 3, 1, 2) - seen["y"].numpy())[same]
    assert (diff <= bound[None, :, None, None]).all(), diff.max()
    _check_engine(g, x)


@pytest.mark.parametrize("name", ["mcn_mnist", "mcn1_mnist", "umcn_mnist", "umcn_wrn", "mcn_wrn"])
def test_real_activations_convert_as_a_float_conv(name: str) -> None:
    """W1/A32 as published and U-MCN: the float fallback (nn.Conv2d with W = C^ * M)."""
    torch.manual_seed(0)
    kw: dict[str, object] = (
        {"in_channels": 1, "image_size": 28, "widths": (4, 6, 8, 10)}
        if name.endswith("mnist")
        else {k: v for k, v in WRN.items() if k != "act"}
    )
    model = _randomize(create(name, **kw), 3)
    g = convert(model)
    assert not any(op.type in ("conv2d_u8b1", "bconv2d") for op in g.ops)
    s = int(kw["image_size"])  # type: ignore[call-overload]
    x = np.random.default_rng(2).random((8, 1, s, s), dtype=np.float32)
    with torch.no_grad():
        lt = model(torch.from_numpy(x)).numpy()
    li, bound = reference_and_bound(g, x)
    # a float network (no sign decision): PyTorch and the reference executor are two float32
    # executions of the same function, each within E of the exact value: at most 2 E apart
    assert_within(li, lt, bound, "reference vs PyTorch", empirical=(1e-3, 1e-3))  # measured 4.8e-7
    for k in available_kernels():
        assert_within(
            Engine(g, kernels=k).logits(x), li, bound, k, empirical=(1e-4, 1e-4)
        )  # measured 4.8e-7


# ----------------------------------------------------------------------------- storage (summary)
def test_mcn_storage_against_a_hand_derivation() -> None:
    """mcn_mnist, widths 4-6-8-10 maps, K = 4, 3x3, one input channel (replicated):
    C^ bits  = 9K (H G): 36 (4*1 + 6*4 + 8*6 + 10*8) = 36 * 156 = 5,616 -> 702 bytes
    M-Filters + centers = 4 (36 + 2) per layer = 152, x 4 = 608  (MCN-1: 4 (4 + 2) = 24, x 4 = 96)
    float32 same filters = 4 * 5,616 = 22,464 (32x the bits)
    float conv, same channels = 4 * 9 * (16*4 + 24*16 + 32*24 + 40*32) = 36 * 2,496 = 89,856 (32 K x)
    other parameters: BN 2 (16 + 24 + 32 + 40) = 224, FC 40*3*3*10 + 10 = 3,610 -> 4 * 3,834 = 15,336
    whole float32 model = 4 (5,616 + 4*36 + 3,834) = 38,376; MCN = 702 + 608 + 15,336 = 16,646."""
    from bitflow.analysis.mcn_summary import format_mcn_storage, mcn_storage

    kw = {"in_channels": 1, "image_size": 28, "widths": (4, 6, 8, 10)}
    t = mcn_storage(create("mcn_mnist", **kw))["total"]
    assert t["binary_bytes"] == 702 + 608
    assert t["float_same_params_bytes"] == 22_464
    assert t["float_same_channels_bytes"] == 89_856
    assert t["other_float32_bytes"] == 15_336
    assert t["model_float32_bytes"] == 38_376
    assert t["model_mcn_bytes"] == 16_646
    t1 = mcn_storage(create("mcn1_mnist", **kw))["total"]
    assert t1["binary_bytes"] == 702 + 96
    text = format_mcn_storage(mcn_storage(create("mcn_mnist", **kw)))
    assert "whole model" in text and "(2.3x)" in text  # 38,376 / 16,646 = 2.305


@pytest.mark.parametrize("name", ["mcn1_mnist", "mcn_mnist"])
def test_mcn_storage_matches_the_converted_u8_file(name: str) -> None:
    from bitflow.analysis.mcn_summary import mcn_storage

    model = _randomize(create(name, **MNIST), 4)
    g = convert(model)
    for r in mcn_storage(model)["layers"]:
        got = sum(
            g.tensors[t].nbytes
            for op in g.ops
            if op.attrs.get("source") == r["layer"]
            for role, t in op.params.items()
            if role in ("w", "index")
        )
        assert got == r["bfn_weight_bytes"], r


# ----------------------------------------------------------------------------- export
@pytest.mark.parametrize("name", ["mcn1_mnist", "mcn_mnist"])
def test_u8_models_export_and_onnxruntime_matches_the_engine(name: str) -> None:
    """threshold_u8 / threshold_f32_u8 export as the counting threshold, q = (level + L) / 2."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from bitflow.export import to_onnx
    from bitflow.export.agreement import agreement, onnxruntime_logits

    torch.manual_seed(0)
    g = convert(_randomize(create(name, **MNIST), 5))
    proto = to_onnx(g, "onnx")
    onnx.checker.check_model(proto, full_check=True)
    x = np.random.default_rng(3).random((64, 1, 28, 28), dtype=np.float32)
    a = agreement(g, x, onnxruntime_logits(proto), Engine(g, threads=1).logits)
    assert a.unexplained == 0, a
    assert a.agreement >= 0.98, a
