"""The survey's methods (issue 12): every forward and backward against its equation on a grid.

Oracles are independent of the implementation: float64 autograd of the *smooth function whose
derivative the method uses* (SignSwish, EDE's k tanh(t x), DSQ's phi, IR-Net's standardization),
closed-form numpy for the quantizers (DoReFa, PACT), brute-force minimization for ProxQuant's
prox operator, F.conv2d for XNOR-Net++, normal equations for ABC-Net's least squares.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _bounds import U32, assert_within, conv_bound, derivative_bound, gamma

from bitflow.nn import quantizers as Q
from bitflow.nn import survey as S

# a grid through every kink of the methods (0, +-1, PACT's alpha = 1.5) and around them
GRID = torch.tensor(
    sorted({*np.round(np.linspace(-3, 3, 121), 6).tolist(), -1e-7, 1e-7, 1.5}), dtype=torch.float32
)


def _grad(f, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    f(x).sum().backward()
    return x.grad


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, -1.0, 1.0)


# ------------------------------------------------------------------ BNN+ SignSwish


def _ss(beta: float):  # type: ignore[no-untyped-def]
    """BNN+: SS_b(x) = 2 sigma(b x)[1 + b x (1 - sigma(b x))] - 1, whose derivative SignSwish
    uses in the backward pass."""

    def ss(x: torch.Tensor) -> torch.Tensor:
        s = torch.sigmoid(beta * x)
        return 2 * s * (1 + beta * x * (1 - s)) - 1

    return ss


def _ss_oracle_terms(beta: float, x: torch.Tensor) -> torch.Tensor:
    """The float64 oracle's cancelled terms: autograd of SS_b sums 2 s' (1 + b x (1 - s)) and
    2 s (b (1 - s) - b x s') with s' = b s (1 - s) <= b / 4 and 1 - s computed with cancellation
    in the tails: each term is at most b (1 + b |x|), four of them."""
    return 4 * beta * (1 + beta * x.double().abs())


# the implementation: d = b (2 - bx tanh(bx / 2)) / (1 + cosh(bx)), bx = b x: b x, bx / 2,
# tanh, bx tanh, 2 - ., b *, cosh, 1 + ., / and the incoming gradient's product: 10 operations
@pytest.mark.parametrize("beta", [1.0, 5.0, 10.0])
def test_signswish_forward_sign_backward_derivative_of_ss(beta: float) -> None:
    q = S.SignSwish(beta)
    assert torch.equal(q(GRID), _sign(GRID))
    assert q(torch.zeros(1)).item() == 1.0  # sign(0) = +1

    want, bound = derivative_bound(_ss(beta), GRID, 10, _ss_oracle_terms(beta, GRID))
    got = _grad(q, GRID)
    assert_within(got, want, bound, f"SignSwish' beta={beta}")
    assert got[GRID == 0].item() == pytest.approx(S.SignSwish.peak(beta))
    # huge inputs: the derivative is 0, not NaN
    assert torch.isfinite(_grad(q, torch.tensor([1e6, -1e6]))).all()


# ------------------------------------------------------------------ IR-Net EDE and Libra-PB


def test_ede_schedule_endpoints() -> None:
    # IR-Net Eq. 13 with T_min = 0.1, T_max = 10: t goes 0.1 -> 1 (half way) -> 10, k = max(1/t, 1)
    assert S.ede_schedule(0.0) == pytest.approx((0.1, 10.0))
    assert S.ede_schedule(0.5) == pytest.approx((1.0, 1.0))
    assert S.ede_schedule(1.0) == pytest.approx((10.0, 1.0))
    assert S.ede_schedule(2.0) == S.ede_schedule(1.0)


@pytest.mark.parametrize("progress", [0.0, 0.3, 1.0])
def test_ede_backward_is_derivative_of_k_tanh_tx(progress: float) -> None:
    q = Q.get("ede")
    q.set_progress(progress)
    t, k = S.ede_schedule(progress)
    assert torch.equal(q(GRID), _sign(GRID))
    # the implementation: k t / cosh^2(t x): t x, cosh, the square, k t, the quotient and the
    # incoming gradient's product (6); the oracle k t (1 - tanh^2) cancels terms <= k t
    want, bound = derivative_bound(lambda x: k * torch.tanh(t * x), GRID, 6, k * t)
    assert_within(_grad(q, GRID), want, bound, f"EDE' progress={progress}")


def test_irnet_libra_weights() -> None:
    torch.manual_seed(0)
    w = torch.randn(6, 3, 3, 3) * 0.1 + 0.05
    q = Q.get("irnet")
    q.set_progress(0.25)
    b, alpha = q.decompose(w)
    flat = w.double().flatten(1)
    wh = (flat - flat.mean(1, keepdim=True)) / flat.std(1, keepdim=True)
    assert torch.equal(b.flatten(1), _sign(wh).float())
    # each channel balanced: standardized weights have mean 0, so about half the signs are +1
    assert torch.equal(alpha, torch.pow(2.0, torch.round(torch.log2(wh.abs().mean(1)))).float())
    assert all(math.log2(a) == round(math.log2(a)) for a in alpha.tolist())
    # backward: EDE through the standardization, against float64 autograd of k tanh(t w^(w))
    t, k = S.ede_schedule(0.25)
    g = torch.randn(w.shape, generator=torch.Generator().manual_seed(1)).double()

    def smooth(x: torch.Tensor) -> torch.Tensor:
        f = x.flatten(1)
        h = (f - f.mean(1, keepdim=True)) / f.std(1, keepdim=True)
        return (k * torch.tanh(t * h)).view_as(x) * g

    want = _grad(smooth, w.double()).float()
    got = _grad(lambda x: q.decompose(x)[0] * g.float(), w)
    # the standardization's backward sums n = 2*3*3 = 18 terms per channel twice (mean, std:
    # gamma_18 = 1.1e-6 of their magnitudes, which reach |want| max 39 times n / std): rtol 1e-4
    # = 14 gamma_18 and atol 1e-5 cover them (measured: 7.6e-6 at |want| = 39)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


# ------------------------------------------------------------------ DoReFa


@pytest.mark.parametrize("k", [1, 2, 4])
def test_dorefa_activation(k: int) -> None:
    q = Q.get(f"dorefa_a{k}")
    assert q.bits == k
    n = 2**k - 1
    want = np.round(np.clip(GRID.numpy(), 0, 1) * n) / n
    # exact: float32 round(x n) / n is the paper's quantize_k, computed in the same order
    np.testing.assert_array_equal(q(GRID).numpy(), want)
    levels = np.arange(n + 1) / n
    assert np.abs(np.unique(q(GRID).numpy())[:, None] - levels[None]).min(1).max() < 1e-7
    assert torch.equal(_grad(q, GRID), ((GRID >= 0) & (GRID <= 1)).float())


def test_dorefa_weights() -> None:
    torch.manual_seed(1)
    w = torch.randn(4, 2, 3, 3)
    b, alpha = Q.get("dorefa_w1").decompose(w)
    assert torch.equal(b, _sign(w)) and torch.allclose(alpha, w.abs().mean().expand(4))
    assert torch.equal(_grad(lambda x: Q.get("dorefa_w1").decompose(x)[0], w), torch.ones_like(w))
    q2 = Q.get("dorefa_w2")
    wq, none = q2.decompose(w)
    assert none is None and q2.bits == 2
    t = np.tanh(w.numpy().astype(np.float64))
    want = 2 * np.round((t / (2 * np.abs(t).max()) + 0.5) * 3) / 3 - 1  # DoReFa Eq. 11, k = 2
    # the float32 level 2 j/3 - 1 (|level| <= 1): j/3 and - 1 round (2u; * 2 is exact); the
    # float64 oracle's own rounding is below u
    np.testing.assert_allclose(wq.numpy(), want, rtol=0, atol=3 * U32)
    # STE on the rounding: the gradient is that of 2 (tanh(w)/(2 max|tanh|) + 1/2) - 1, max constant
    m = float(np.abs(t).max())
    torch.testing.assert_close(_grad(lambda x: q2.decompose(x)[0], w), (1 - torch.tanh(w) ** 2) / m)


# ------------------------------------------------------------------ PACT


@pytest.mark.parametrize("k", [2, 4])
def test_pact_forward_and_gradients(k: int) -> None:
    q = Q.get(f"pact_a{k}")
    with torch.no_grad():
        q.alpha.fill_(1.5)
    n = 2**k - 1
    y = np.clip(GRID.numpy(), 0, 1.5)
    # the largest level 1.5 (|value| <= 1.5): y n / 1.5 rounds twice before the exact
    # rounding to an integer (a flip only within 2u of a half-integer, none on GRID), then
    # * 1.5 / n twice: 2 u 1.5 plus the float64 oracle's rounding
    np.testing.assert_allclose(
        q(GRID).detach().numpy(), np.round(y * n / 1.5) * 1.5 / n, rtol=0, atol=4 * U32 * 1.5
    )
    x = GRID.clone().requires_grad_(True)
    q(x).sum().backward()
    assert torch.equal(x.grad, ((GRID >= 0) & (GRID < 1.5)).float())  # PACT Eq. 3: dy/dx
    assert q.alpha.grad.item() == float((GRID >= 1.5).sum())  # dy/dalpha = 1[x >= alpha]


# ------------------------------------------------------------------ BinaryConnect stochastic


@pytest.mark.parametrize("h", [1.0, 0.05])
def test_binaryconnect_stochastic(h: float) -> None:
    q = S.StochasticBinaryConnect(h)
    assert Q.get("bc_stochastic").h == 1.0  # the registered name: the survey's Eq. 7
    w = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.4, 1.0, 3.0]) * h
    q.eval()
    assert torch.equal(q.decompose(w)[0], _sign(w))
    q.train()
    torch.manual_seed(0)
    n = 20000
    draws = torch.stack([q.decompose(w)[0] for _ in range(n)])
    assert set(draws.unique().tolist()) == {-1.0, 1.0}
    p_hat = (draws == 1).float().mean(0)
    # survey Eq. 7 on w / h: the grid is the same multiples of h, so p is the same for both h
    p = torch.tensor([0.0, 0.0, 0.25, 0.5, 0.7, 1.0, 1.0])
    # binomial sd <= sqrt(0.25 / n) = 0.0035; 6 sd: a false failure has probability < 2e-9 per
    # weight (a normal tail; the seed is fixed, so the draw is the same every run)
    assert ((p_hat - p).abs() <= 6 * math.sqrt(0.25 / n)).all(), (p_hat, p)
    # BinaryConnect applies the gradient of w_b to w unchanged, whatever h
    assert torch.equal(_grad(lambda x: q.decompose(x)[0], w), torch.ones_like(w))
    with pytest.raises(ValueError, match="must be positive"):
        S.StochasticBinaryConnect(0.0)


# ------------------------------------------------------------------ DSQ


@pytest.mark.parametrize("alpha", [0.05, 0.2, 0.5])
def test_dsq(alpha: float) -> None:
    q = Q.get("dsq")
    with torch.no_grad():
        q.alpha.fill_(alpha)
    assert torch.equal(q(GRID).detach(), _sign(GRID))
    a = torch.tensor(alpha, dtype=torch.float64)
    phi = S.dsq_phi(torch.tensor([-1.0, 1.0], dtype=torch.float64), a)
    torch.testing.assert_close(
        phi, torch.tensor([-1.0, 1.0], dtype=torch.float64)
    )  # phi(+-1) = +-1
    k = math.log(2 / alpha - 1) / 2
    s = 1 / (1 - alpha)  # = 1 / tanh(k), DSQ's alpha = 1 - tanh(k Delta / 2)
    inside = GRID.abs() <= 1
    # phi'(x) = s k (1 - tanh^2(k x)) inside [-1, 1], 0 outside (exactly: the clip): autograd
    # of s tanh(k x) in float32, k x, tanh, its backward 1 - y^2 (a square, a difference), two
    # products by k and s and the incoming gradient's (7); the oracle cancels terms <= s k
    want, bound = derivative_bound(lambda x: s * torch.tanh(k * x), GRID, 7, s * k)
    want, bound = torch.where(inside, want, 0.0), torch.where(inside, bound, 0.0)
    assert_within(_grad(q, GRID), want, bound, f"DSQ phi' alpha={alpha}")
    # alpha is learned through phi
    q(GRID).sum().backward()
    assert q.alpha.grad is not None and torch.isfinite(q.alpha.grad)
    b, none = Q.get("dsq_w").decompose(GRID)
    assert none is None and torch.equal(b.detach(), _sign(GRID))


# ------------------------------------------------------------------ self-binarizing


def test_self_binarizing() -> None:
    assert (
        S.selfbin_v(0) == 1.0
        and S.selfbin_v(1) == pytest.approx(1000.0)
        and S.selfbin_v(0.5) == pytest.approx(1000**0.5)
    )
    q = Q.get("selfbin")
    q.set_progress(0.5)
    v = S.selfbin_v(0.5)
    torch.testing.assert_close(q(GRID), torch.tanh(v * GRID))
    torch.testing.assert_close(_grad(q, GRID), v * (1 - torch.tanh(v * GRID) ** 2))
    q.eval()
    assert torch.equal(q(GRID), _sign(GRID))
    wq = Q.get("selfbin_w")
    wq.set_progress(1.0)
    torch.testing.assert_close(wq.decompose(GRID)[0], torch.tanh(1000 * GRID))
    wq.eval()
    assert torch.equal(wq.decompose(GRID)[0], _sign(GRID))


# ------------------------------------------------------------------ ProxQuant


@pytest.mark.parametrize("lam", [0.0, 0.1, 0.35, 2.0])
def test_proxquant_prox_is_the_minimizer(lam: float) -> None:
    # prox_lam(w) = argmin_v 0.5 (v - w)^2 + lam min(|v - 1|, |v + 1|), by brute force on a fine grid
    v = torch.linspace(-4, 4, 80001, dtype=torch.float64)  # step 1e-4
    r = torch.minimum((v - 1).abs(), (v + 1).abs())
    w = torch.tensor(
        [-3.0, -1.2, -1.0, -0.7, -0.2, 0.0, 0.05, 0.5, 0.99, 1.0, 1.3, 2.5], dtype=torch.float64
    )
    brute = v[torch.argmin(0.5 * (v[None] - w[:, None]) ** 2 + lam * r[None], dim=1)]
    got = S.proxquant_prox(w, lam)
    # the objective is flat in one case (w = 0 exactly between the two wells: either side is optimal)
    ok = (got - brute).abs() <= 2e-4
    ok |= (w == 0) & ((got + brute).abs() <= 2e-4)
    assert ok.all(), (w, got, brute)


def test_proxquant_weight_soft_then_hard() -> None:
    q = Q.get("proxquant")
    w = torch.tensor([-0.3, 0.2, 0.9])
    assert torch.equal(q.decompose(w)[0], w)
    q.set_progress(0.95)
    assert torch.equal(q.decompose(w)[0], _sign(w))
    q.set_progress(0.1)
    q.eval()
    assert torch.equal(q.decompose(w)[0], _sign(w))


# ------------------------------------------------------------------ BNN+ weights and regularizer


def test_bnnplus_weight_and_regularizer() -> None:
    torch.manual_seed(2)
    w = torch.randn(3, 4)
    q = S.BnnPlusWeight(3, beta=5.0, init=torch.tensor([0.5, 1.0, 2.0]))
    b, alpha = q.decompose(w)
    assert torch.equal(b, _sign(w)) and alpha is q.alpha
    # the SignSwish derivative with beta = 5, bounded as in test_signswish_...
    want, bound = derivative_bound(_ss(5.0), w, 10, _ss_oracle_terms(5.0, w))
    assert_within(_grad(lambda x: q.decompose(x)[0], w), want, bound, "BNN+ weight SignSwish'")
    a = q.alpha.detach()
    # float32: each of the 12 terms |a - |w||, (a - |w|)^2 is non-negative and carries at most
    # 2 roundings, their sum 11 more: relative gamma_13 of the float64 oracle (+1 for it)
    rel = gamma(14)
    assert S.bnnplus_regularizer(w, a, "l1").item() == pytest.approx(
        float((a[:, None] - w.abs()).abs().sum()), rel=rel, abs=0
    )
    assert S.bnnplus_regularizer(w, a, "l2").item() == pytest.approx(
        float(((a[:, None] - w.abs()) ** 2).sum()), rel=rel, abs=0
    )
    with pytest.raises(ValueError, match="l1"):
        S.bnnplus_regularizer(w, a, "l3")


# ------------------------------------------------------------------ ReActNet


def test_rsign_and_rprelu() -> None:
    rs = S.RSign(3)
    with torch.no_grad():
        rs.beta.copy_(torch.tensor([-0.5, 0.0, 0.7]))
    x = GRID.view(1, 1, -1, 1).expand(2, 3, -1, 1).clone()
    beta = rs.beta.detach().view(1, 3, 1, 1)
    assert torch.equal(rs(x).detach(), _sign(x - beta))
    assert rs(torch.full((1, 3, 1, 1), 0.7))[0, 2].item() == 1.0  # x = beta: sign(0) = +1
    xr = x.clone().requires_grad_(True)
    rs(xr).sum().backward()
    d = (x - beta).abs()
    want = torch.where(d <= 1, 2 - 2 * d, 0.0)  # Bi-Real ApproxSign gradient (survey Eq. 13)
    torch.testing.assert_close(xr.grad, want)
    torch.testing.assert_close(rs.beta.grad, -want.sum((0, 2, 3)))

    rp = S.RPReLU(3)
    with torch.no_grad():
        rp.gamma.copy_(torch.tensor([0.1, -0.2, 0.0]))
        rp.zeta.copy_(torch.tensor([0.3, 0.0, -1.0]))
        rp.slope.copy_(torch.tensor([0.25, 0.5, 0.1]))
    g, z, a = (t.detach().view(1, 3, 1, 1) for t in (rp.gamma, rp.zeta, rp.slope))
    want = torch.where(x - g > 0, x - g, a * (x - g)) + z  # ReActNet Eq. 3
    torch.testing.assert_close(rp(x), want)


# ------------------------------------------------------------------ XNOR-Net++ and ABC-Net


def test_xnorpp_factorized_scale() -> None:
    torch.manual_seed(3)
    m = S.XnorPPConv2d(
        3,
        4,
        3,
        padding=1,
        bias=False,
        input_quantizer="ste_sign",
        weight_quantizer="sign",
        out_hw=(5, 5),
    )
    with torch.no_grad():
        m.scale_c.copy_(torch.rand(4) + 0.5)
        m.scale_h.copy_(torch.rand(5) + 0.5)
        m.scale_w.copy_(torch.rand(5) + 0.5)
    x = torch.randn(2, 3, 5, 5)
    want = F.conv2d(_sign(x), _sign(m.weight.detach()), padding=1)
    want = (
        want * m.scale_c.view(1, 4, 1, 1) * m.scale_h.view(1, 1, 5, 1) * m.scale_w.view(1, 1, 1, 5)
    )
    torch.testing.assert_close(m(x), want)
    m(x).sum().backward()
    # d/d beta_h of sum_{o,h,w} c_o b_h g_w y_ohw = sum_{o,w} c_o g_w y_ohw
    y = F.conv2d(_sign(x), _sign(m.weight.detach()), padding=1)
    want_h = (y * m.scale_c.view(1, 4, 1, 1) * m.scale_w.view(1, 1, 1, 5)).sum((0, 1, 3))
    torch.testing.assert_close(m.scale_h.grad, want_h.detach())


def test_abc_net_bases() -> None:
    assert torch.equal(S.abc_shifts(3), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.equal(S.abc_shifts(1), torch.zeros(1))
    with pytest.raises(ValueError):
        S.abc_shifts(0)
    torch.manual_seed(4)
    m = S.AbcConv2d(3, 4, 3, padding=1, bias=False, bases_w=3, bases_a=2)
    bs, a = m.weight_bases()
    w = m.weight.detach()
    mean, std = w.mean(), w.std()
    for i, u in enumerate([-1.0, 0.0, 1.0]):
        assert torch.equal(bs[i].detach(), _sign(w - mean + u * std))
    # least squares: the residual is orthogonal to every basis (normal equations B^T (w - B a) = 0)
    B = bs.detach().flatten(1).T.double()
    resid = w.flatten().double() - B @ a.double()
    assert (B.T @ resid).abs().max() < 1e-4
    assert resid.norm() < w.flatten().double().norm()
    # activations: H_v(x) = 2 1[clip(x + v, 0, 1) >= 0.5] - 1, gradient 2 1[0 <= x + v <= 1]
    x = GRID.view(1, 1, -1, 1).clone().requires_grad_(True)
    h = m.act_bases(x)
    v = m.shift_a.detach()
    for n in range(2):
        z = GRID + v[n]
        want = torch.where(z.clamp(0, 1) >= 0.5, 1.0, -1.0)
        assert torch.equal(h[n].detach().flatten(), want)
    h[0].sum().backward()
    z = GRID + v[0]
    assert torch.equal(x.grad.flatten(), 2.0 * ((z >= 0) & (z <= 1)).float())
    # the layer output is the bilinear sum over M x N branch convolutions
    xx = torch.randn(2, 3, 6, 6)
    hb = m.act_bases(xx).detach()
    want = sum(
        a[i] * m.scale_a[j].detach() * F.conv2d(hb[j], bs[i].detach(), padding=1)
        for i in range(3)
        for j in range(2)
    )
    # both float32: want sums 6 branch convs (each K = 3 * 9 products of +-1 activations with
    # b_i, times a_i and scale_a_j: 2 roundings) with 5 additions; the layer may combine the
    # bases first. Each side within gamma_{K+8} sum_ij |a_i s_j| conv(|H_j|, |B_i|) of exact
    mag = sum(
        (a[i] * m.scale_a[j].detach()).abs() * conv_bound(hb[j], bs[i].detach(), 1, 1, extra=8)
        for i in range(3)
        for j in range(2)
    )
    assert_within(m(xx), want, 2 * mag)


def test_registry_lists_the_survey_quantizers() -> None:
    names = set(Q.list_quantizers())
    assert {
        "signswish",
        "ede",
        "irnet",
        "dsq",
        "dsq_w",
        "selfbin",
        "selfbin_w",
        "proxquant",
        "bc_stochastic",
        "dorefa_a1",
        "dorefa_a2",
        "dorefa_a4",
        "dorefa_w1",
        "dorefa_w2",
        "dorefa_w4",
        "pact_a2",
        "pact_a4",
    } <= names
    # the ones with non-sign arithmetic must not pass the converter's "1-bit sign quantizer" check
    for n in ("dorefa_a1", "dorefa_a2", "dorefa_a4", "pact_a2", "pact_a4"):
        assert not isinstance(Q.get(n), Q.InputQuantizer), n
    assert not isinstance(S.RSign(2), Q.InputQuantizer)
