"""Tests for bitflow.nn: straight-through estimators, quantizers and binary layers.

Oracles (all independent of the code under test):

- sign: ``torch.sign`` with its zeros replaced by +1 (BitFlow-Net Eq. 2: sign(0) = +1), or
  ``numpy.where(x >= 0, 1, -1)``;
- STE gradients: the closed forms (survey Eq. 5 clip gate ``1[|x| <= 1]``, identity, and the
  derivative of Bi-Real Net's polynomial ``2x + x^2 sgn(-x)``) in float64, compared against the
  full autograd Jacobian (gradcheck-style: the Jacobian must be exactly that diagonal);
- XNOR weights: Eq. 3 / Eq. 7 forward and Eq. 8 gradient written out in numpy float64, plus
  central finite differences of ``L = sum(G * alpha(W) sign(W))`` with the signs held fixed;
- binary layers: ``F.conv2d`` / ``F.linear`` of the ``+-1`` tensors times alpha in float64,
  and an int64 im2col matrix product (exact integer arithmetic) for the integrality claims;
- Int8Conv2d: round(255 x) and symmetric int8 weights (numpy float32 rounding), int64 im2col.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _bounds import U64, assert_within, gamma
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from torch import nn

from bitflow.nn import (
    BinaryConv2d,
    BinaryLinear,
    Int8Conv2d,
    Scale,
    binary_layers,
    clip_weights_,
)
from bitflow.nn import functional as BF
from bitflow.nn import quantizers as Q


@pytest.fixture(autouse=True, scope="module")
def _one_thread():  # type: ignore[no-untyped-def]
    """These tensors are tiny: one intra-op thread avoids OpenMP spin-waits on a shared CPU
    (10-50x slower wall time with 2 contended threads). Restored after the module."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


# ----------------------------------------------------------------------------- oracles


def ref_sign(t: torch.Tensor) -> torch.Tensor:
    """sign with sign(0) = sign(-0.0) = +1, built from ``torch.sign`` (which returns 0 at 0)."""
    s = torch.sign(t)
    return torch.where(s == 0, torch.ones_like(s), s)


def ref_alpha(w: torch.Tensor) -> torch.Tensor:
    """Eq. 3 in float64: alpha_o = (1/n) sum_i |W_{o,i}|, n = elements per output channel."""
    w64 = w.detach().double()
    return w64.abs().reshape(w64.shape[0], -1).sum(dim=1) / w64[0].numel()


def int_conv2d(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: int,
    padding: int,
    dilation: int = 1,
    pad_value: float = 0.0,
) -> torch.Tensor:
    """Cross-correlation of integer-valued tensors in int64 via im2col (no F.conv2d).

    ``x`` [N, C, H, W] and ``w`` [O, C, kh, kw] hold integers (any dtype); the input is padded
    with ``pad_value`` first. Returns int64 [N, O, Ho, Wo].
    """
    xp = F.pad(x.double(), (padding,) * 4, value=pad_value)
    n, _, hp, wp = xp.shape
    o, _, kh, kw = w.shape
    ho = (hp - dilation * (kh - 1) - 1) // stride + 1
    wo = (wp - dilation * (kw - 1) - 1) // stride + 1
    cols = F.unfold(xp, (kh, kw), dilation=dilation, stride=stride)  # [N, C*kh*kw, L]
    cols_i = cols.round().to(torch.int64)
    w_i = w.double().round().to(torch.int64).reshape(o, -1)
    out = torch.matmul(w_i, cols_i)  # int64 [N, O, L]
    return out.reshape(n, o, ho, wo)


# ----------------------------------------------------------------------------- STEs

STE_BY_NAME = {
    "ste_sign": BF.ste_sign,
    "identity_ste": BF.identity_ste,
    "approx_sign": BF.approx_sign,
}
STE_FUNCS = list(STE_BY_NAME.values())


def _ste_grad_closed_form(name: str, x: np.ndarray) -> np.ndarray:
    """d q / d x of each estimator, float64 closed form."""
    ax = np.abs(x)
    if name == "ste_sign":  # survey Eq. 5: gradient of clip(x, -1, 1)
        return (ax <= 1.0).astype(np.float64)
    if name == "identity_ste":
        return np.ones_like(x)
    if name == "approx_sign":  # Bi-Real Net: 2 - 2|x| on [-1, 1], 0 outside
        return np.where(ax <= 1.0, 2.0 - 2.0 * ax, 0.0)
    raise AssertionError(name)


@pytest.mark.parametrize("fn", STE_FUNCS + [BF.sign], ids=lambda f: f.__name__)
def test_sign_of_zero_and_negative_zero_is_plus_one(fn) -> None:  # type: ignore[no-untyped-def]
    x = torch.tensor([-0.0, 0.0, -1e-30, 1e-30, -3.0, 3.0])
    assert torch.signbit(x[0])  # the input really is negative zero
    expected = torch.tensor([1.0, 1.0, -1.0, 1.0, -1.0, 1.0])
    assert torch.equal(fn(x), expected)
    for q in ("ste_sign", "identity_ste", "approx_sign"):
        assert torch.equal(Q.get(q)(x), expected)


finite = st.floats(-3.0, 3.0, allow_nan=False, width=64)
special = st.sampled_from([0.0, -0.0, 1.0, -1.0, 0.5, -0.5, 1.0000001, -1.0000001])
ste_arrays = hnp.arrays(
    np.float64, hnp.array_shapes(min_dims=1, max_dims=4, max_side=5), elements=finite | special
)


@settings(max_examples=40, deadline=None)
@given(
    x_np=ste_arrays,
    name=st.sampled_from(sorted(STE_BY_NAME)),
    seed=st.integers(0, 2**31 - 1),
)
def test_ste_forward_and_backward_match_closed_forms(
    x_np: np.ndarray, name: str, seed: int
) -> None:
    fn = STE_BY_NAME[name]
    x = torch.from_numpy(x_np.copy()).requires_grad_(True)
    q = fn(x)
    np.testing.assert_array_equal(q.detach().numpy(), np.where(x_np >= 0, 1.0, -1.0))
    g = np.random.default_rng(seed).standard_normal(x_np.shape)
    q.backward(torch.from_numpy(g))
    assert x.grad is not None
    # float64 on both sides, each two roundings of the exact g f'(x) (2|x| is exact, 2 - 2|x| one
    # rounding, * g one): |diff| <= 2 gamma_2 |g f'(x)|, relative 4.4e-16
    np.testing.assert_allclose(
        x.grad.numpy(), g * _ste_grad_closed_form(name, x_np), rtol=2 * gamma(2, U64), atol=0
    )
    # the quantizer modules are the same estimators
    xm = torch.from_numpy(x_np.copy()).requires_grad_(True)
    Q.get(name)(xm).backward(torch.from_numpy(g))
    assert torch.equal(xm.grad, x.grad)


@pytest.mark.parametrize("name", sorted(STE_BY_NAME))
def test_ste_full_jacobian_is_the_closed_form_diagonal(name: str) -> None:
    """gradcheck-style: the whole autograd Jacobian equals diag(closed form), no cross terms."""
    fn = STE_BY_NAME[name]
    x = torch.tensor([-2.5, -1.0, -0.75, -0.0, 0.0, 0.3, 1.0, 1.5], dtype=torch.float64)
    jac = torch.autograd.functional.jacobian(fn, x)
    expected = np.diag(_ste_grad_closed_form(name, x.numpy()))
    np.testing.assert_array_equal(jac.numpy(), expected)


def test_clip_gate_boundaries() -> None:
    """1[|x| <= 1]: the gate is closed at exactly +-1 and open just outside."""
    x = torch.tensor(
        [-1.0, 1.0, np.nextafter(1.0, 2.0), -np.nextafter(1.0, 2.0)],
        dtype=torch.float64,
        requires_grad=True,
    )
    BF.ste_sign(x).sum().backward()
    assert x.grad.tolist() == [1.0, 1.0, 0.0, 0.0]


def test_approx_sign_gradient_is_derivative_of_bireal_polynomial() -> None:
    """Bi-Real Net's F(x) = -1 (x<-1), 2x+x^2 (-1<=x<0), 2x-x^2 (0<=x<1), 1 (x>=1): central
    differences of F (float64, h=1e-6, points at least 1e-3 away from the kinks -1, 0, 1)."""

    def poly(x: np.ndarray) -> np.ndarray:
        return np.where(
            x < -1, -1.0, np.where(x < 0, 2 * x + x * x, np.where(x < 1, 2 * x - x * x, 1.0))
        )

    rng = np.random.default_rng(7)
    xs = rng.uniform(-2, 2, 200)
    xs = xs[np.min(np.abs(xs[:, None] - np.array([-1.0, 0.0, 1.0])[None, :]), axis=1) > 1e-3]
    h = 1e-6
    fd = (poly(xs + h) - poly(xs - h)) / (2 * h)
    x = torch.from_numpy(xs).requires_grad_(True)
    BF.approx_sign(x).sum().backward()
    # F is piecewise quadratic, so the central difference has no truncation error away from the
    # kinks; its rounding error (float64): x +- h rounded (u (|x| + h) each, times |F'| <= 2)
    # and F evaluated with 3 roundings of terms <= 3 (gamma_3 * 3 each), over 2h; autograd's
    # 2 - 2|x| is one rounding of a value <= 2
    bound = (2 * U64 * (np.abs(xs) + h) * 2 + 2 * gamma(3, U64) * 3) / (2 * h) + 2 * U64
    np.testing.assert_array_less(np.abs(x.grad.numpy() - fd), bound)


# ----------------------------------------------------------------------------- XNOR weights


def _weights(draw_shape: tuple[int, ...], seed: int, zeros: bool, scale: float = 0.3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal(draw_shape) * scale
    if zeros:  # exact zeros exercise sign(0) = +1 in both the forward and Eq. 8
        w[rng.random(draw_shape) < 0.2] = 0.0
    return w


weight_shapes = st.one_of(
    st.tuples(st.integers(1, 6), st.integers(1, 9)),  # Linear [O, I]
    st.tuples(st.integers(1, 5), st.integers(1, 4), st.integers(1, 3), st.integers(1, 3)),  # conv
)


@settings(max_examples=40, deadline=None)
@given(shape=weight_shapes, seed=st.integers(0, 2**31 - 1), zeros=st.booleans())
def test_xnor_forward_is_eq3_eq7(shape: tuple[int, ...], seed: int, zeros: bool) -> None:
    w_np = _weights(shape, seed, zeros)
    o = shape[0]
    flat = w_np.reshape(o, -1)
    alpha = np.abs(flat).mean(axis=1)  # Eq. 3
    expected = (alpha[:, None] * np.where(flat >= 0, 1.0, -1.0)).reshape(shape)  # Eq. 7
    wq = Q.get("xnor")
    w = torch.from_numpy(w_np)
    # float64 alpha on both sides: a sum of n = |W_o| non-negative terms and a division, any
    # order: each within gamma_n alpha of the exact mean, so relative 2 gamma_n (2.2e-16 n)
    # (the earlier rtol 1e-14, measured 2.9e-16, stays where it is the tighter one)
    rtol = min(2 * gamma(flat.shape[1], U64), 1e-14)
    np.testing.assert_allclose(wq(w).numpy(), expected, rtol=rtol, atol=0)
    b, a = wq.decompose(w)
    assert a is not None and a.shape == (o,)
    np.testing.assert_allclose(a.numpy(), alpha, rtol=rtol)
    assert torch.equal(b, ref_sign(w))
    # "sign" weights: no scale
    b2, a2 = Q.get("sign").decompose(w)
    assert a2 is None and torch.equal(b2, ref_sign(w))
    assert torch.equal(Q.get("sign")(w), ref_sign(w))


@settings(max_examples=40, deadline=None)
@given(
    shape=weight_shapes,
    seed=st.integers(0, 2**31 - 1),
    zeros=st.booleans(),
    scale=st.sampled_from([0.3, 2.0]),
)
def test_xnor_gradient_is_eq8(shape: tuple[int, ...], seed: int, zeros: bool, scale: float) -> None:
    """dL/dW_i = G_i alpha + sign(W_i) (1/n) sum_j G_j sign(W_j), G = dL/dW~ random.

    Eq. 8 uses the plain STE d sign(W)/dW = 1 for weights (no clip gate), so latent weights
    beyond +-1 (``weight_clip=None``; scale 2.0 here) keep the full first term."""
    w_np = _weights(shape, seed, zeros, scale)
    g_np = np.random.default_rng(seed + 1).standard_normal(shape)
    o = shape[0]
    wf, gf = w_np.reshape(o, -1), g_np.reshape(o, -1)
    n = wf.shape[1]
    s = np.where(wf >= 0, 1.0, -1.0)
    alpha = np.abs(wf).sum(axis=1) / n
    expected = (gf * alpha[:, None] + s * (gf * s).sum(axis=1, keepdims=True) / n).reshape(shape)

    w = torch.from_numpy(w_np).requires_grad_(True)
    (Q.get("xnor")(w) * torch.from_numpy(g_np)).sum().backward()
    # float64, both sides: alpha and sum_j G_j s_j are sums of n terms, then two products and a
    # sum: each side within gamma_{n+3} (|G| alpha + sum_j |G_j| / n) of the exact Eq. 8
    mag = np.abs(gf) * alpha[:, None] + np.abs(gf).sum(axis=1, keepdims=True) / n
    np.testing.assert_array_less(
        np.abs(w.grad.numpy() - expected), 2 * gamma(n + 3, U64) * mag.reshape(shape) + 1e-300
    )

    # "sign" weights: identity STE, dL/dW = G
    w2 = torch.from_numpy(w_np).requires_grad_(True)
    (Q.get("sign")(w2) * torch.from_numpy(g_np)).sum().backward()
    np.testing.assert_array_equal(w2.grad.numpy(), g_np)


@pytest.mark.parametrize("shape", [(3, 7), (4, 2, 3, 3), (1, 1, 1, 1)])
def test_xnor_alpha_gradient_matches_finite_differences(shape: tuple[int, ...]) -> None:
    """With every sign held fixed, L(W) = sum(G * alpha(W) * sign(W)) depends on W only through
    alpha, so its central differences are the alpha part of Eq. 8 (the total autograd gradient
    minus the STE part G * alpha)."""
    rng = np.random.default_rng(sum(shape))
    signs = np.where(rng.random(shape) < 0.5, -1.0, 1.0)
    w_np = signs * rng.uniform(0.1, 1.0, shape)  # |W| >= 0.1 >> h: no perturbation flips a sign
    g_np = rng.standard_normal(shape)
    wq = Q.get("xnor")
    g = torch.from_numpy(g_np)

    def loss(w_arr: np.ndarray) -> float:
        return float((wq(torch.from_numpy(w_arr)) * g).sum())

    h = 1e-6
    fd = np.zeros(shape)
    for idx in np.ndindex(*shape):
        wp, wm = w_np.copy(), w_np.copy()
        wp[idx] += h
        wm[idx] -= h
        assert np.array_equal(np.sign(wp), signs) and np.array_equal(np.sign(wm), signs)
        fd[idx] = (loss(wp) - loss(wm)) / (2 * h)

    w = torch.from_numpy(w_np).requires_grad_(True)
    (wq(w) * g).sum().backward()
    alpha = np.abs(w_np.reshape(shape[0], -1)).mean(axis=1)
    ste_part = g_np * alpha.reshape((-1,) + (1,) * (len(shape) - 1))
    # L is linear in alpha = mean |W| (signs fixed), so no truncation error: the central
    # difference's rounding is that of two float64 evaluations of L (sums of n products of
    # magnitude <= T = sum |G| max alpha, gamma_{n+2} T each) over 2h; 2 h is 1e-6 * (1 + u)
    t_mag = float(np.abs(g_np).sum() * np.abs(w_np).max())
    fd_bound = 2 * gamma(g_np.size + 2, U64) * t_mag / (2 * h) + 4 * U64 * float(np.abs(fd).max())
    fd_bound = min(fd_bound, 1e-8)  # the earlier atol (measured 6.6e-10) where it is tighter
    np.testing.assert_array_less(np.abs(w.grad.numpy() - ste_part - fd), fd_bound)
    # and the xnor_scale Function alone gives the same alpha part
    w3 = torch.from_numpy(w_np).requires_grad_(True)
    c = (g * torch.from_numpy(signs)).reshape(shape[0], -1).sum(dim=1)  # dL/dalpha
    (BF.xnor_scale(w3) * c).sum().backward()
    np.testing.assert_array_less(np.abs(w3.grad.numpy() - fd), fd_bound)


def test_xnor_scale_expanded_upstream_gradient() -> None:
    """alpha.sum().backward() hands the Function an expanded (stride-0) gradient."""
    w = torch.tensor([[0.5, -0.25, 0.0, 1.0]], dtype=torch.float64, requires_grad=True)
    BF.xnor_scale(w).sum().backward()
    # d(mean |W|)/dW = sign(W)/n with sign(0)=+1, n = 4
    assert w.grad.tolist() == [[0.25, -0.25, 0.25, 0.25]]


# ----------------------------------------------------------------------------- quantizers.get


def test_quantizers_get_resolves_every_form() -> None:
    assert set(Q.list_quantizers()) >= {"ste_sign", "identity_ste", "approx_sign", "sign", "xnor"}
    assert Q.get(None) is None
    by_name = Q.get("xnor")
    assert isinstance(by_name, Q.XnorWeight) and by_name.name == "xnor"
    assert isinstance(Q.get("ste_sign"), Q.SteSign)
    by_class = Q.get(Q.ApproxSign)
    assert isinstance(by_class, Q.ApproxSign) and by_class.name == "approx_sign"
    inst = Q.SignWeight()
    assert Q.get(inst) is inst
    assert Q.get("xnor") is not Q.get("xnor")  # a name gives a fresh instance


def test_quantizers_get_unknown_name_lists_valid_names() -> None:
    with pytest.raises(KeyError) as ei:
        Q.get("xnor_weight_typo")
    msg = str(ei.value)
    assert "xnor_weight_typo" in msg
    for name in Q.list_quantizers():
        assert name in msg


@pytest.mark.parametrize("bad", [42, 1.5, int, ["ste_sign"], b"xnor"])
def test_quantizers_get_bad_type(bad: object) -> None:
    with pytest.raises(TypeError, match="quantizer"):
        Q.get(bad)  # type: ignore[arg-type]


def test_quantizer_register_duplicate_name_rejected() -> None:
    class Dup(Q.InputQuantizer):
        pass

    with pytest.raises(ValueError, match="already registered"):
        Q.register("ste_sign")(Dup)
    assert isinstance(Q.get("ste_sign"), Q.SteSign)


# ----------------------------------------------------------------------------- BinaryConv2d


conv_cases = st.fixed_dictionaries(
    {
        "n": st.integers(1, 2),
        "cin": st.sampled_from([1, 3, 4, 37]),
        "cout": st.sampled_from([1, 5, 37]),
        "k": st.sampled_from([1, 2, 3, 5]),
        "stride": st.integers(1, 2),
        "padding": st.integers(0, 2),
        "dilation": st.sampled_from([1, 1, 2]),
        "hw": st.tuples(st.integers(5, 11), st.integers(5, 11)),
        "pad_value": st.sampled_from([0, 1]),
        "wq": st.sampled_from(["xnor", "sign"]),
        "bias": st.booleans(),
        "seed": st.integers(0, 2**31 - 1),
    }
)


def _signed_inputs(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    x = torch.randn(shape, generator=gen) * 1.5
    flat = x.view(-1)
    flat[::7] = 0.0  # exact zeros -> +1
    flat[3::11] = -0.0  # negative zeros -> +1
    return x


@settings(max_examples=40, deadline=None)
@given(c=conv_cases)
def test_binary_conv2d_forward_matches_conv_of_signs(c: dict) -> None:
    h, w_ = c["hw"]
    k, d = c["k"], c["dilation"]
    assume(min(h, w_) + 2 * c["padding"] >= d * (k - 1) + 1)  # kernel fits the padded input
    gen = torch.Generator().manual_seed(c["seed"])
    torch.manual_seed(c["seed"])
    layer = BinaryConv2d(
        c["cin"],
        c["cout"],
        k,
        stride=c["stride"],
        padding=c["padding"],
        dilation=d,
        bias=c["bias"],
        weight_quantizer=c["wq"],
        pad_value=c["pad_value"],
    )
    with torch.no_grad():
        layer.weight.view(-1)[::5] = 0.0  # sign(0) = +1 for weights too
        if layer.bias is not None:
            layer.bias.normal_()
    x = _signed_inputs((c["n"], c["cin"], h, w_), gen)
    y = layer(x)

    xs, ws = ref_sign(x).double(), ref_sign(layer.weight.detach()).double()
    if c["pad_value"] == 0:
        conv = F.conv2d(xs, ws, None, c["stride"], c["padding"], d)
    else:
        conv = F.conv2d(F.pad(xs, (c["padding"],) * 4, value=1.0), ws, None, c["stride"], 0, d)
    conv_int = int_conv2d(xs, ws, c["stride"], c["padding"], d, float(c["pad_value"]))
    assert torch.equal(conv.round().to(torch.int64), conv_int) and torch.equal(conv, conv.round())
    bias32 = layer.bias.detach() if layer.bias is not None else torch.zeros(c["cout"])

    if c["wq"] == "xnor":
        alpha = ref_alpha(layer.weight)
        ref = conv * alpha.view(1, -1, 1, 1) + bias32.double().view(1, -1, 1, 1)
        # exact integer conv; alpha = mean of K = cin k k magnitudes in float32 (gamma_K of
        # alpha), one rounding for * alpha and one for + bias: gamma_{K+2} (|conv| alpha + |b|)
        kf = c["cin"] * k * k
        bound = gamma(kf + 2) * (
            conv.abs() * alpha.view(1, -1, 1, 1) + bias32.double().abs().view(1, -1, 1, 1)
        )
        assert_within(
            y, ref, bound, "BinaryConv2d xnor", empirical=(1e-5, 1e-6)
        )  # measured <= 5.4e-7
        # Eq. 5: the float32 output is the exact integer times the layer's alpha, one rounding
        _, alpha32 = layer.quantized_weight()
        expected32 = conv_int.float() * alpha32.detach().view(1, -1, 1, 1) + bias32.view(
            1, -1, 1, 1
        )
        assert torch.equal(y.detach(), expected32)
    else:
        # no alpha: the output is the integer convolution itself (plus bias)
        assert torch.equal(y.detach(), conv_int.float() + bias32.view(1, -1, 1, 1))


def test_binary_conv2d_large_fan_in_is_exact_integer() -> None:
    """fan-in 256*3*3 = 2304: float32 conv of +-1 data equals the int64 result exactly."""
    torch.manual_seed(3)
    layer = BinaryConv2d(256, 8, 3, padding=1, weight_quantizer="sign", bias=False)
    x = torch.randn(1, 256, 6, 6)
    y = layer(x).detach()
    ref = int_conv2d(ref_sign(x), ref_sign(layer.weight.detach()), 1, 1)
    assert y.dtype == torch.float32
    assert torch.equal(y, y.round()) and torch.equal(y.to(torch.int64), ref)
    # parity: with 0-padding, a window of m real taps gives a value = m (mod 2)
    interior = ref[..., 1:-1, 1:-1]
    assert torch.all((interior - 2304) % 2 == 0)


@pytest.mark.parametrize(
    "cin,cout,k,stride,padding,pad_value,wq",
    [
        (3, 4, 3, 1, 1, 0, "xnor"),
        (5, 3, 3, 2, 2, 1, "xnor"),
        (4, 2, 2, 1, 0, 0, "sign"),
        (3, 37, 5, 2, 1, 0, "xnor"),
    ],
)
def test_binary_conv2d_gradients(
    cin: int, cout: int, k: int, stride: int, padding: int, pad_value: int, wq: str
) -> None:
    """Input: dL/dx = (dL/dsign(x)) * 1[|x| <= 1]; weights: Eq. 8 with G = dL/dW~ (or G for
    "sign"), where both upstream gradients come from autograd of F.conv2d at the binary point."""
    gen = torch.Generator().manual_seed(cin * 100 + cout)
    torch.manual_seed(cin * 100 + cout)
    layer = BinaryConv2d(
        cin,
        cout,
        k,
        stride=stride,
        padding=padding,
        pad_value=pad_value,
        weight_quantizer=wq,
        bias=False,
        dtype=torch.float64,
    )
    x = (torch.randn(2, cin, 9, 8, generator=gen, dtype=torch.float64) * 1.5).requires_grad_(True)
    y = layer(x)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    y.backward(g)

    w = layer.weight.detach()
    sw = ref_sign(w)
    alpha = ref_alpha(w) if wq == "xnor" else torch.ones(cout, dtype=torch.float64)
    xs = ref_sign(x.detach()).requires_grad_(True)
    wt = (sw * alpha.view(-1, 1, 1, 1)).requires_grad_(True)  # W~ = alpha sign(W) (Eq. 7)
    xin = F.pad(xs, (padding,) * 4, value=1.0) if pad_value == 1 else xs
    yr = F.conv2d(xin, wt, None, stride, 0 if pad_value == 1 else padding)
    # float64 on both sides: y = exact integer * alpha (alpha: mean of K magnitudes, gamma_K,
    # and one product), yr = a sum of K products +-alpha (gamma_K): with K = cin k k,
    # |diff| <= 2 gamma_{K+1} conv(|x_b|, |W~|)
    kf = cin * k * k
    assert_within(
        y,
        yr,
        2
        * gamma(kf + 1, U64)
        * F.conv2d(
            xin.detach().abs(), wt.detach().abs(), None, stride, 0 if pad_value == 1 else padding
        ),
    )
    yr.backward(g)

    gate = (x.detach().abs() <= 1).double()
    assert 0 < gate.mean() < 1  # the input lies on both sides of the gate
    # dL/dsign(x): sums of at most cout k k products of G with +-alpha (or with +-1, then
    # * alpha, or G * alpha first): 2 gamma_{cout k k + 2} conv_in(|W~|, |G|) between the two
    bx = (
        2
        * gamma(cout * k * k + 2, U64)
        * torch.nn.grad.conv2d_input(
            xin.shape, wt.detach().abs(), g.abs(), stride, 0 if pad_value == 1 else padding
        )
    )
    if pad_value == 1 and padding:
        bx = bx[:, :, padding:-padding, padding:-padding]
    assert_within(x.grad, xs.grad * gate, bx)

    gw = wt.grad.reshape(cout, -1)  # G = dL/dW~
    if wq == "xnor":
        n = gw.shape[1]
        s = sw.reshape(cout, -1)
        expected = gw * alpha.view(-1, 1) + s * (gw * s).sum(dim=1, keepdim=True) / n
    else:
        expected = gw
    # G = a sum of M = N Ho Wo products (gamma_M, with |G| <= Gm = conv_w(|x_b|, |g|)); Eq. 8
    # adds alpha (n terms), a sum of n products and 3 more roundings: both sides within
    # gamma_{M+n+3} (Gm alpha + sum_j Gm_j / n)
    m_terms = y.shape[0] * y.shape[2] * y.shape[3]
    gm = torch.nn.grad.conv2d_weight(
        xin.detach().abs(), wt.shape, g.abs(), stride, 0 if pad_value == 1 else padding
    ).reshape(cout, -1)
    nw = gm.shape[1]
    mag = gm * alpha.view(-1, 1) + gm.sum(dim=1, keepdim=True) / nw
    assert_within(
        layer.weight.grad.reshape(cout, -1), expected, 2 * gamma(m_terms + nw + 3, U64) * mag
    )


def test_binary_conv2d_is_a_drop_in_conv2d() -> None:
    for bias in (False, True):
        ref = nn.Conv2d(3, 8, 3, padding=1, bias=bias)
        layer = BinaryConv2d(3, 8, 3, padding=1, bias=bias)
        assert isinstance(layer, nn.Conv2d)
        sd_ref, sd = ref.state_dict(), layer.state_dict()
        assert list(sd) == list(sd_ref) == (["weight", "bias"] if bias else ["weight"])
        assert all(sd[k].shape == sd_ref[k].shape for k in sd)
        layer.load_state_dict(sd_ref, strict=True)
        assert torch.equal(layer.weight, ref.weight)
    lin_ref, lin = nn.Linear(10, 4, bias=True), BinaryLinear(10, 4, bias=True)
    assert isinstance(lin, nn.Linear)
    assert list(lin.state_dict()) == list(lin_ref.state_dict()) == ["weight", "bias"]
    lin.load_state_dict(lin_ref.state_dict(), strict=True)
    assert "xnor" in repr(layer) and "ste_sign" in repr(lin)


@pytest.mark.parametrize("pad_value", [0.5, 2, -1, None, "1"])
def test_binary_conv2d_bad_pad_value(pad_value: object) -> None:
    with pytest.raises(ValueError, match="pad_value"):
        BinaryConv2d(3, 4, 3, padding=1, pad_value=pad_value)  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["reflect", "replicate", "circular"])
def test_binary_conv2d_bad_padding_mode(mode: str) -> None:
    with pytest.raises(ValueError, match="padding_mode"):
        BinaryConv2d(3, 4, 3, padding=1, padding_mode=mode)


def test_binary_conv2d_string_padding_and_bad_clip_rejected() -> None:
    with pytest.raises(ValueError, match="padding"):
        BinaryConv2d(3, 4, 3, padding="same")  # type: ignore[arg-type]
    for clip in (0.0, -1.0):
        with pytest.raises(ValueError, match="weight_clip"):
            BinaryConv2d(3, 4, 3, weight_clip=clip)
        with pytest.raises(ValueError, match="weight_clip"):
            BinaryLinear(3, 4, weight_clip=clip)


def test_weight_quantizer_as_input_quantizer_rejected() -> None:
    """A weight quantizer on activations would scale by a per-sample mean: rejected."""
    for bad in ("xnor", "sign", Q.XnorWeight(), Q.SignWeight):
        with pytest.raises(ValueError, match="input_quantizer"):
            BinaryConv2d(3, 4, 3, input_quantizer=bad)
        with pytest.raises(ValueError, match="input_quantizer"):
            BinaryLinear(3, 4, input_quantizer=bad)


def test_input_quantizer_none_keeps_real_inputs() -> None:
    """input_quantizer=None: binary weights on real activations (BWN); pad_value=1 pads x."""
    torch.manual_seed(0)
    layer = BinaryConv2d(2, 3, 3, padding=1, input_quantizer=None, pad_value=1, bias=False)
    x = torch.randn(1, 2, 5, 5, dtype=torch.float64)
    wt = ref_sign(layer.weight.detach()).double() * ref_alpha(layer.weight).view(-1, 1, 1, 1)
    ref = F.conv2d(F.pad(x, (1, 1, 1, 1), value=1.0), wt)
    # float32 input (one rounding of x), K = 18 float32 products (gamma_K), alpha a float32 mean
    # of K magnitudes (gamma_K) and one rounding for * alpha: gamma_{2K+2} alpha conv(|x|, 1)
    xpad = F.pad(x, (1, 1, 1, 1), value=1.0)
    bound = gamma(2 * 18 + 2) * F.conv2d(xpad.abs(), wt.abs())
    assert_within(layer(x.float()), ref, bound, "BWN conv")


# ----------------------------------------------------------------------------- BinaryLinear


@settings(max_examples=30, deadline=None)
@given(
    n=st.integers(1, 4),
    fin=st.sampled_from([1, 3, 37, 130]),
    fout=st.sampled_from([1, 5, 37]),
    wq=st.sampled_from(["xnor", "sign"]),
    bias=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_binary_linear_forward_matches_linear_of_signs(
    n: int, fin: int, fout: int, wq: str, bias: bool, seed: int
) -> None:
    torch.manual_seed(seed)
    layer = BinaryLinear(fin, fout, bias=bias, weight_quantizer=wq)
    with torch.no_grad():
        layer.weight.view(-1)[::4] = 0.0
    x = _signed_inputs((n, fin), torch.Generator().manual_seed(seed))
    y = layer(x).detach()
    xs, ws = ref_sign(x).double(), ref_sign(layer.weight.detach()).double()
    lin = F.linear(xs, ws)
    lin_int = xs.to(torch.int64) @ ws.to(torch.int64).T
    assert torch.equal(lin.to(torch.int64), lin_int)
    b32 = layer.bias.detach() if layer.bias is not None else torch.zeros(fout)
    if wq == "xnor":
        ref = lin * ref_alpha(layer.weight) + b32.double()
        # as the conv case: exact integer, alpha a float32 mean of fin magnitudes, two roundings
        bound = gamma(fin + 2) * (lin.abs() * ref_alpha(layer.weight) + b32.double().abs())
        assert_within(y, ref, bound, "BinaryLinear xnor")
        _, alpha32 = layer.quantized_weight()
        assert torch.equal(y, lin_int.float() * alpha32.detach() + b32)
    else:
        assert torch.equal(y, lin_int.float() + b32)


def test_binary_linear_gradients_and_3d_input() -> None:
    gen = torch.Generator().manual_seed(11)
    layer = BinaryLinear(6, 4, dtype=torch.float64)
    x = (torch.randn(2, 3, 6, generator=gen, dtype=torch.float64) * 1.5).requires_grad_(True)
    y = layer(x)
    assert y.shape == (2, 3, 4)
    g = torch.randn(y.shape, generator=gen, dtype=torch.float64)
    y.backward(g)
    w = layer.weight.detach()
    alpha, sw = ref_alpha(w), ref_sign(w)
    xs = ref_sign(x.detach()).requires_grad_(True)
    wt = (sw * alpha.view(-1, 1)).requires_grad_(True)
    F.linear(xs, wt).backward(g)
    torch.testing.assert_close(x.grad, xs.grad * (x.detach().abs() <= 1).double())
    gw = wt.grad
    expected = gw * alpha.view(-1, 1) + sw * (gw * sw).sum(dim=1, keepdim=True) / w.shape[1]
    torch.testing.assert_close(layer.weight.grad, expected)


# ----------------------------------------------------------------------------- clipping, helpers


def test_clip_weights() -> None:
    torch.manual_seed(0)
    conv = BinaryConv2d(2, 3, 3)
    lin = BinaryLinear(4, 5, weight_clip=0.5)
    free = BinaryLinear(4, 5, weight_clip=None)
    plain = nn.Conv2d(2, 3, 3)
    model = nn.Sequential(plain, conv, nn.Flatten(), lin, free)
    with torch.no_grad():
        for m in (plain, conv, lin, free):
            m.weight.uniform_(-3, 3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    clip_weights_(model)
    assert torch.equal(conv.weight, before["1.weight"].clamp(-1, 1))
    assert torch.equal(lin.weight, before["3.weight"].clamp(-0.5, 0.5))
    assert torch.equal(free.weight, before["4.weight"])
    assert torch.equal(plain.weight, before["0.weight"])  # not a binary layer
    assert conv.weight.abs().max() == 1.0  # uniform(-3, 3) had values beyond 1
    with torch.no_grad():
        conv.weight.fill_(-7.0)
    conv.clip_weights_()
    assert torch.all(conv.weight == -1.0)


def test_binary_layers_lists_only_binary_layers() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3),
        BinaryConv2d(2, 2, 3),
        nn.Flatten(),
        BinaryLinear(8, 3),
        nn.Linear(3, 2),
        Int8Conv2d(1, 1, 1),
    )
    found = binary_layers(model)
    assert list(found) == ["1", "3"]
    assert found["1"] is model[1] and found["3"] is model[3]


def test_scale_layer() -> None:
    s = Scale(2.5)
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.equal(s(x), x * 2.5)
    g = torch.randn(3, 4, dtype=torch.float64)
    s.double()(x).backward(g)
    torch.testing.assert_close(s.scale.grad, (x * g).sum())
    assert [n for n, _ in s.named_parameters()] == ["scale"]


# ----------------------------------------------------------------------------- Int8Conv2d


def _int8_reference(w32: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel int8 weights in numpy float32 arithmetic (IEEE, round-half-even
    like torch.round): s = max|W_o| / 127, q = clip(round(W / s), -127, 127)."""
    o = w32.shape[0]
    s32 = (np.abs(w32).reshape(o, -1).max(axis=1) / np.float32(127)).astype(np.float32)
    q = np.clip(np.round(w32 / s32.reshape(-1, 1, 1, 1)), -127, 127).astype(np.int64)
    return q, s32


@pytest.mark.parametrize(
    "cin,cout,k,stride,padding,bias",
    [
        (1, 4, 3, 1, 0, True),
        (3, 5, 5, 2, 2, True),
        (3, 96, 11, 4, 2, False),
        (2, 3, 2, 1, 1, False),
    ],
)
def test_int8_conv2d_forward_is_integer_conv(
    cin: int, cout: int, k: int, stride: int, padding: int, bias: bool
) -> None:
    torch.manual_seed(cin * 10 + k)
    layer = Int8Conv2d(cin, cout, k, stride=stride, padding=padding, bias=bias)
    if bias:
        with torch.no_grad():
            layer.bias.normal_()
    h = 23 if k == 11 else 9
    pix = torch.randint(0, 256, (2, cin, h, h + 2))
    x = pix.float() / 255.0
    y = layer(x).detach()

    q_ref, s32 = _int8_reference(layer.weight.detach().numpy())
    q, s = layer.quantized_weight()
    assert torch.equal(q.detach(), torch.from_numpy(q_ref).float())
    assert torch.equal(s, torch.from_numpy(s32))
    assert q.abs().max() <= 127
    assert torch.equal(q.detach().abs().flatten(1).amax(dim=1), torch.full((cout,), 127.0))

    acc = int_conv2d(pix, torch.from_numpy(q_ref), stride, padding)  # int64 oracle
    b64 = layer.bias.detach().double() if bias else torch.zeros(cout, dtype=torch.float64)
    ref = acc.double() * (torch.from_numpy(s32).double() / 255).view(1, -1, 1, 1) + b64.view(
        1, -1, 1, 1
    )
    # the integer acc is exact in float32 (fan-in limit); s / 255, * and + bias are three
    # roundings: gamma_3 (|acc| s / 255 + |b|)
    s255 = (torch.from_numpy(s32).double() / 255).view(1, -1, 1, 1)
    assert_within(y, ref, gamma(3) * (acc.double().abs() * s255 + b64.abs().view(1, -1, 1, 1)))
    if not bias:
        # bit-exact: float32(integer) * float32(s / 255), a single rounding, as the engine does
        scale32 = (s32 / np.float32(255)).astype(np.float32).reshape(1, -1, 1, 1)
        np.testing.assert_array_equal(y.numpy(), acc.numpy().astype(np.float32) * scale32)


def test_int8_conv2d_extreme_fan_in_is_exact() -> None:
    """fan-in 518 (the documented maximum): 255*127*518 = 16775430 < 2^24 = 16777216, so the
    float32 accumulation of the largest pixels times the largest weights stays exact."""
    layer = Int8Conv2d(518, 2, 1, bias=False)
    with torch.no_grad():
        layer.weight.fill_(0.5)
        layer.weight[1, ::2] = -0.25  # channel 1: q = -127 / +127 alternating
        layer.weight[1, 1::2] = 0.25
    pix = torch.full((1, 518, 2, 2), 255)
    pix[..., 1, 1] = 254
    y = layer(pix.float() / 255.0).detach()
    acc = int_conv2d(pix, layer.quantized_weight()[0].detach(), 1, 0)
    assert acc[0, 0, 0, 0] == 255 * 127 * 518 == 16775430
    assert acc[0, 1, 0, 0] == 0  # 259 taps of +127*255 and 259 of -127*255
    _, s32 = _int8_reference(layer.weight.detach().numpy())
    scale32 = (s32 / np.float32(255)).astype(np.float32).reshape(1, -1, 1, 1)
    np.testing.assert_array_equal(y.numpy(), acc.numpy().astype(np.float32) * scale32)


def test_int8_conv2d_gradients() -> None:
    """Fake quantization with STEs: dL/dW = conv_weight_grad(p, G) / 255 (round STE, s held
    constant) and dL/dx = conv_input_grad(q * s, G) (p = 255 x with a straight-through round)."""
    torch.manual_seed(5)
    layer = Int8Conv2d(3, 4, 3, stride=2, padding=1)
    pix = torch.randint(0, 256, (2, 3, 9, 9))
    x = (pix.float() / 255.0).requires_grad_(True)
    y = layer(x)
    g = torch.randn(y.shape)
    y.backward(g)
    gw = (
        torch.nn.grad.conv2d_weight(
            pix.double(), layer.weight.shape, g.double(), stride=2, padding=1
        )
        / 255
    )
    # Derived bounds. dL/dW: G * fl(s / 255) (2 roundings), a float32 sum of M = 2 * 5 * 5
    # products with the exact integers p, then / s (1 rounding): gamma_{M+3} conv_w(|p|, |G|) / 255.
    m_terms = y.shape[0] * y.shape[2] * y.shape[3]
    bw = gamma(m_terms + 3) * (
        torch.nn.grad.conv2d_weight(
            pix.double(), layer.weight.shape, g.double().abs(), stride=2, padding=1
        )
        / 255
    )
    assert_within(
        layer.weight.grad, gw, bw, "dL/dW", empirical=(1e-5, 1e-6)
    )  # measured 1.1e-6 at |dL/dW| <= 5.7
    q, s = layer.quantized_weight()
    wq = q.detach().double() * s.double().view(-1, 1, 1, 1)
    gx = torch.nn.grad.conv2d_input(x.shape, wq, g.double(), stride=2, padding=1)
    # dL/dx: G * fl(s / 255) (2 roundings), a sum of at most cout k k = 36 products with the
    # integers q, then * 255 (1 rounding): gamma_{36+3} conv_in(|q| s, |G|)
    bx = gamma(4 * 3 * 3 + 3) * torch.nn.grad.conv2d_input(
        x.shape, wq.abs(), g.double().abs(), stride=2, padding=1
    )
    assert_within(x.grad, gx, bx, "dL/dx")
    # dL/db: a float32 sum of M terms
    assert_within(
        layer.bias.grad,
        g.double().sum(dim=(0, 2, 3)),
        gamma(m_terms) * g.double().abs().sum(dim=(0, 2, 3)),
        empirical=(1e-5, 1e-5),
    )  # measured 1.2e-6 at |db| <= 9.7


def test_int8_conv2d_fan_in_limit_and_padding_mode() -> None:
    Int8Conv2d(518, 1, 1)  # 518 * 32385 = 16775430 < 2^24
    Int8Conv2d(3, 8, 11)  # AlexNet conv1: fan-in 363
    for args in ((519, 1, 1), (3, 4, 14), (6, 1, (10, 9))):  # 519, 588, 540 > 518
        with pytest.raises(ValueError, match="fan-in"):
            Int8Conv2d(*args)
    with pytest.raises(ValueError, match="zero padding"):
        Int8Conv2d(3, 4, 3, padding=1, padding_mode="reflect")
    assert isinstance(Int8Conv2d(1, 1, 1), nn.Conv2d)


def test_int8_conv2d_clamps_pixels_and_handles_zero_weights() -> None:
    layer = Int8Conv2d(1, 2, 1, bias=False)
    with torch.no_grad():
        layer.weight[0].fill_(0.0)  # all-zero channel: q = 0, no division by zero
        layer.weight[1].fill_(1.0)
    x = torch.tensor([-0.5, 0.0, 0.5, 1.0, 1.7]).view(1, 1, 1, 5)
    y = layer(x).detach()
    assert torch.equal(y[0, 0], torch.zeros(1, 5))
    # p = clamp(round(255 x), 0, 255) = [0, 0, 128 (127.5 rounds half to even), 255, 255];
    # q = 127, s = 1/127: y = p * 127 * s / 255 = p / 255 (float32)
    p = torch.tensor([0.0, 0.0, 128.0, 255.0, 255.0])
    # three float32 roundings (s = 1/127, s / 255, the product): gamma_3 p / 255
    assert_within(y[0, 1, 0], p.double() / 255, gamma(3) * p.double() / 255)


def test_drop_in_defaults_match_torch() -> None:
    """Same signature and defaults as nn.Conv2d / nn.Linear (bias=True by default)."""
    assert BinaryConv2d(3, 4, 3).bias is not None and nn.Conv2d(3, 4, 3).bias is not None
    assert BinaryLinear(3, 4).bias is not None


def test_sign_of_nan_matches_engine_packing() -> None:
    """The engine packs bit = (value < 0), so NaN is +1 there; training must agree."""
    from bitflow.nn.functional import sign

    assert sign(torch.tensor([float("nan")])).item() == 1.0
