"""MCN (issue 11): MCconv layer, projection, k-means, losses and their gradients, zoo models."""

from __future__ import annotations

import itertools

import pytest
import torch
import torch.nn.functional as F
from _bounds import assert_within, conv_bound, gamma

from bitflow.models import create
from bitflow.models.mcn import TABLE2_PARAMS_M, TABLE2_WIDTHS
from bitflow.nn.mcn import (
    CenterLoss,
    MCConv2d,
    filter_loss,
    kmeans_1d,
    project,
    projection_loss,
)


def _explicit_weight(chat: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """W[(h,k),(g,k'),u,v] = C^[h,g,k',u,v] * M[k,u,v], written with loops (the issue's formula)."""
    h_, g_, k_, w_, _ = chat.shape
    out = torch.empty(h_ * k_, g_ * k_, w_, w_, dtype=chat.dtype)
    for h, k, g, kk in itertools.product(range(h_), range(k_), range(g_), range(k_)):
        out[h * k_ + k, g * k_ + kk] = chat[h, g, kk] * m[k]
    return out


def _sign(x: torch.Tensor) -> torch.Tensor:
    return torch.where(x < 0, -1.0, 1.0)


@pytest.mark.parametrize("variant", ["mcn", "mcn1", "umcn"])
@pytest.mark.parametrize("xnor", [False, True])
def test_layer_equals_conv2d_with_reconstructed_weight(variant: str, xnor: bool) -> None:
    torch.manual_seed(0)
    m = MCConv2d(
        3,
        2,
        3,
        stride=2,
        padding=1,
        planes=4,
        variant=variant,
        input_quantizer="ste_sign" if xnor else None,
    )
    with torch.no_grad():
        m.m_filter.uniform_(0.2, 2.0)
    x = torch.randn(2, 12, 9, 9)
    chat = m.binarized().detach()
    mod = m.m_filter.detach()
    if variant == "mcn1":
        mod = mod.mean(dim=(1, 2), keepdim=True).expand_as(mod)
    w = _explicit_weight(chat, mod)
    assert torch.equal(m.reconstructed_weight().detach(), w)
    xin = _sign(x) if xnor else x
    want = F.conv2d(xin, w, None, 2, 1)
    got = m(x).detach()
    if variant == "mcn1" and xnor:
        # factored exact path: integer conv then one multiplication (float32 rounding differs).
        # Both sides within gamma_{K+12} conv(|x_b|, |W|) of the exact conv, K = 12 * 9: want
        # sums K products of the rounded W = a mean(M); got rounds mean(M) (9 terms), a * mean
        # and the product with the exact integer; W's own rounding is one more u
        assert_within(
            got, want, 2 * conv_bound(xin, w, 2, 1, extra=12), empirical=(1e-5, 1e-5)
        )  # measured 9.5e-7
    else:
        assert torch.equal(got, want)
    if variant != "umcn":
        a = float(m.centers[1])
        assert set(chat.unique().tolist()) <= {-a, a}
    else:
        assert torch.equal(chat, m.weight.detach())


def test_first_layer_replicates_the_input_k_times() -> None:
    torch.manual_seed(1)
    m = MCConv2d(2, 3, 3, planes=4, replicate_input=True)
    with torch.no_grad():
        m.m_filter.uniform_(0.5, 1.5)
    x = torch.randn(2, 2, 7, 7)
    w = _explicit_weight(m.binarized().detach(), m.m_filter.detach())
    # float32 on both sides: the explicit conv sums K = 8 * 9 products; the layer may first add
    # the 4 replicas' weights (3 roundings) and then sum 2 * 9 products: each within
    # gamma_{K+3} conv(|x|, |W|) of the exact value
    xr = x.repeat_interleave(4, 1)
    assert_within(
        m(x),
        F.conv2d(xr, w, None, 1, 1),
        2 * conv_bound(xr, w, 1, 1, extra=3),
        empirical=(1e-5, 1e-5),
    )  # measured 8.3e-7
    assert m.in_channels == 2 and m.out_channels == 12


def test_mcn1_planes_are_exact_positive_multiples() -> None:
    torch.manual_seed(2)
    m = MCConv2d(2, 3, 3, planes=4, variant="mcn1", input_quantizer="ste_sign")
    with torch.no_grad():
        m.m_filter.uniform_(0.1, 3.0)
    x = torch.randn(3, 8, 6, 6)
    y = m(x).detach()
    # symmetric centers: C^ = a * s with s = +-1 (C <= 0 -> -1, Eq. 3.1's tie rule)
    s = torch.where(m.weight.detach().reshape(3, 8, 3, 3) <= 0, -1.0, 1.0)
    base = F.conv2d(_sign(x), s, None, 1, 1)  # integers, exact in float32
    assert torch.equal(base, base.round())
    scale = m.centers[1] * m.m_filter.detach().mean(dim=(1, 2))  # a * mean(M_k) > 0
    assert (scale > 0).all()
    for h, k in itertools.product(range(3), range(4)):
        assert torch.equal(y[:, h * 4 + k], base[:, h] * scale[k])


def test_projection_follows_eq_3_1() -> None:
    c = torch.tensor([-1.0, 0.5, 2.0])  # midpoints -0.25, 1.25
    x = torch.tensor([-3.0, -0.25, -0.2499, 1.25, 1.2501, 9.0])
    assert project(x, c).tolist() == [-1.0, -1.0, 0.5, 0.5, 2.0, 2.0]  # ties go to the lower center
    sym = torch.tensor([-0.3, 0.3])
    assert torch.equal(project(torch.tensor([0.0, -1e-9, 1e-9]), sym), sym[[0, 0, 1]])


def test_kmeans_finds_separated_clusters_and_symmetric_center() -> None:
    g = torch.Generator().manual_seed(0)
    true = [-2.0, 0.5, 3.0]
    v = torch.cat([t + 0.05 * torch.randn(500, generator=g) for t in true])
    c = kmeans_1d(v, 3)
    # 500 points of sd 0.05 per cluster: a center's standard error is 0.05 / sqrt(500) = 0.0022,
    # so 0.02 is 9 standard errors
    assert c.tolist() == pytest.approx(true, abs=0.02)
    assert torch.equal(c, torch.sort(c).values)
    m = MCConv2d(2, 2, planes=4)
    # the symmetric center is the float32 mean |W| itself (same reduction): exact
    assert float(m.centers[1]) == float(m.weight.detach().abs().mean())
    assert float(m.centers[0]) == -float(m.centers[1])
    m4 = MCConv2d(2, 2, planes=4, centers=4, symmetric=False)
    assert torch.allclose(m4.centers.double(), kmeans_1d(m4.weight, 4))
    with pytest.raises(ValueError):
        MCConv2d(2, 2, centers=3, symmetric=True)


def test_filter_loss_gradients_match_finite_differences_and_eq_3_23() -> None:
    g = torch.Generator().manual_seed(3)
    c = torch.randn(2, 3, 4, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    chat = torch.randn(2, 3, 4, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    m = torch.rand(4, 3, 3, dtype=torch.float64, generator=g).requires_grad_()
    assert torch.autograd.gradcheck(filter_loss, (c, chat, m))
    gc, gchat, gm = torch.autograd.grad(filter_loss(c, chat, m), (c, chat, m))
    theta = 1.0
    # residual R[i, j] = C_i - C^_i * M'_j
    r = c[:, :, None] - chat[:, :, None] * m[None, None, :, None]
    eq_3_23 = -theta * (r * chat[:, :, None]).sum(dim=(0, 1, 3))  # sum_i (C_i - C^_i o M_j) . C^_i
    torch.testing.assert_close(gm, eq_3_23)
    eq_3_19_printed = theta * (r * m[None, None, :, None]).sum(dim=2)  # +theta sum_j (...) o M_j
    torch.testing.assert_close(gchat, -eq_3_19_printed)  # the printed sign is flipped
    torch.testing.assert_close(gc, theta * r.sum(dim=2))


def test_projection_and_center_loss_gradients() -> None:
    g = torch.Generator().manual_seed(4)
    c = torch.randn(2, 2, 4, 3, 3, dtype=torch.float64, generator=g, requires_grad=True)
    chat_k = torch.randn_like(c)
    delta = torch.randn_like(c)
    assert torch.autograd.gradcheck(lambda x: projection_loss(x, chat_k, delta, 0.1), (c,))
    (gc,) = torch.autograd.grad(projection_loss(c, chat_k, delta, 0.1), (c,))
    torch.testing.assert_close(gc, -(chat_k - c - 0.1 * delta))  # (3.16) prints +theta(...)
    cl = CenterLoss(3, 5).double()
    cl.centers.normal_(generator=g)
    f = torch.randn(6, 5, dtype=torch.float64, generator=g, requires_grad=True)
    y = torch.tensor([0, 1, 1, 2, 2, 2])
    assert torch.autograd.gradcheck(lambda z: cl(z, y), (f,))


def test_center_update_follows_wen_et_al() -> None:
    cl = CenterLoss(2, 1, alpha=0.5)
    cl.centers.copy_(torch.tensor([[0.0], [10.0]]))
    f = torch.tensor([[2.0], [4.0], [7.0]])
    y = torch.tensor([0, 0, 1])
    cl.update_(f, y)
    # class 0: delta = ((0-2) + (0-4)) / (1+2) = -2 -> 0 - 0.5*(-2) = 1
    # class 1: delta = (10-7) / (1+1) = 1.5 -> 10 - 0.75 = 9.25
    assert cl.centers.flatten().tolist() == [1.0, 9.25]


def test_ste_passes_the_c_hat_gradient_to_c() -> None:
    torch.manual_seed(5)
    for variant, xnor in (("mcn", False), ("mcn1", True)):
        m = MCConv2d(2, 2, planes=4, variant=variant, input_quantizer="ste_sign" if xnor else None)
        x = torch.randn(2, 8, 5, 5)
        m(x).square().sum().backward()
        gc = m.weight.grad.clone()
        # gradient w.r.t. C^ as an independent leaf of the same function
        chat = m.binarized().detach().requires_grad_()
        w = m.reconstructed_weight(chat)
        xin = _sign(x) if xnor else x
        y = F.conv2d(xin, w, None, 1, 1)
        y.square().sum().backward()
        # Derived bound. The forward values differ by at most dy = 2 gamma_{K+12} conv(|x|, |W|)
        # (as above, K = 8 * 9), so the upstream gradients 2y by 2 dy; each backward is then a
        # sum over the M = 2 * 5 * 5 positions and the K' = 4 planes of products of x, M_k and
        # 2y (gamma_{M+K'+3}). The magnitudes of those products are the same backward run on
        # |x|, |C^|, |M| and the upstream |2y| + 2 dy, in float64 (gabs).
        dy = 2 * conv_bound(xin, w, 1, 1, extra=12)
        up = 2 * (y.detach().double().abs() + dy)
        ca = chat.detach().double().abs().requires_grad_()
        wa = ca[:, None] * m.modulation().detach().double().abs()[None, :, None, None]
        ya = F.conv2d(xin.double().abs(), wa.reshape(w.shape), None, 1, 1)
        (g_up,) = torch.autograd.grad((ya * up).sum(), ca, retain_graph=True)
        (g_dy,) = torch.autograd.grad((ya * 2 * dy).sum(), ca)  # from the forward difference
        assert_within(
            gc, chat.grad, 2 * gamma(50 + 4 + 3) * g_up + g_dy, empirical=(1e-4, 1e-4)
        )  # measured 2.3e-5 at |grad| <= 144


@pytest.mark.parametrize("widths,paper", list(zip(TABLE2_WIDTHS, TABLE2_PARAMS_M, strict=True)))
def test_table2_binary_parameter_counts(widths: tuple[int, ...], paper: float) -> None:
    m = create("mcn_wrn", in_channels=3, image_size=32, depth=20, widths=widths)
    n = m.binary_parameters()  # type: ignore[operator]
    assert abs(n / (paper * 1e6) - 1) < 0.02, (widths, n)
    # the derivation: 36 = K*3*3 per (h, g) pair, 4 = K per 1x1 shortcut pair, n = 3 blocks/stage
    s0, s1, s2, s3 = widths
    want = 36 * (s0 * 3 + s1 * s0 + 5 * s1 * s1 + s2 * s1 + 5 * s2 * s2 + s3 * s2 + 5 * s3 * s3)
    want += 4 * sum(b * a for a, b in ((s0, s1), (s1, s2), (s2, s3)) if a != b)
    assert n == want
    assert create("umcn_wrn", in_channels=3, widths=widths).binary_parameters() == 0  # type: ignore[operator]


def test_m_stays_nonnegative_and_two_learning_rates() -> None:
    torch.manual_seed(6)
    model = create("mcn_mnist", num_classes=10, in_channels=1, image_size=28, widths=(2, 2, 2, 2))
    groups = model.param_groups(0.1)  # type: ignore[operator]
    assert [g["lr"] for g in groups] == [0.1, pytest.approx(0.01)]
    m_ids = {id(p) for p in groups[1]["params"]}
    assert m_ids == {id(layer.m_filter) for layer in model.modules() if isinstance(layer, MCConv2d)}
    opt = torch.optim.SGD(groups, lr=0.1)
    x, y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    went_negative = False
    for _ in range(5):
        logits = model(x)
        loss = F.cross_entropy(logits, y) + model.extra_loss(logits, y)  # type: ignore[operator]
        opt.zero_grad()
        loss.backward()
        for layer in model.modules():
            if isinstance(layer, MCConv2d):
                layer.m_filter.grad += 50.0  # push M below zero
        opt.step()
        went_negative |= any(
            bool((layer.m_filter < 0).any())
            for layer in model.modules()
            if isinstance(layer, MCConv2d)
        )
        model.after_step(opt)  # type: ignore[operator]
        for layer in model.modules():
            if isinstance(layer, MCConv2d):
                assert (layer.m_filter >= 0).all()
    assert went_negative  # the step did produce negative values that |M| removed


def test_umcn_uses_the_softmax_loss_only_and_twins_build() -> None:
    x = torch.randn(2, 1, 28, 28)
    y = torch.tensor([1, 2])
    for name in ("umcn_mnist", "mcn_mnist_float", "wrn", "umcn_wrn"):
        m = create(name, in_channels=1, image_size=28)
        logits = m(x)
        assert logits.shape == (2, 10)
        assert float(m.extra_loss(logits, y)) == 0.0  # type: ignore[operator]
    m = create("mcn_xnor_mnist", in_channels=1, image_size=28)
    logits = m(x)
    assert float(m.extra_loss(logits, y).detach()) > 0.0  # type: ignore[operator]
