"""Rounding-error bounds that set the tests' float tolerances from the data.

Higham, *Accuracy and Stability of Numerical Algorithms* (2nd ed.), Lemma 3.1 and Eq. 3.5: a
sum of ``n`` terms (or ``n`` products ``a_i b_i``) computed in floating point in any order,
with or without FMA, is within ``gamma_n sum_i |a_i b_i|`` of the exact value, with
``gamma_n = n u / (1 - n u)``; one rounding (a product, a sum of two, a conversion from float64)
costs at most ``u |result|``; and ``gamma_a + gamma_b + gamma_a gamma_b <= gamma_{a+b}``, so a
chain of ``a`` and then ``b`` roundings is covered by ``gamma_{a+b}``. ``u = 2^-24`` for float32,
``2^-53`` for float64.

Each helper returns an elementwise bound on ``|computed - exact|`` (float64); a float64 oracle's
own error (``gamma`` with ``u = 2^-53``) is below 1e-9 of these and is absorbed by the
``gamma_{n+1}`` used wherever the oracle is compared after one more rounding.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

U32 = 2.0**-24
U64 = 2.0**-53


def gamma(n: int, u: float = U32) -> float:
    """``gamma_n = n u / (1 - n u)`` (Higham Eq. 3.8)."""
    nu = n * u
    assert 0 <= nu < 1, n
    return nu / (1 - nu)


def _f64(t: Any) -> torch.Tensor:
    if isinstance(t, torch.Tensor):
        return t.detach().double()
    return torch.from_numpy(np.asarray(t, dtype=np.float64))


def dot_bound(a: Any, b: Any, extra: int = 0) -> torch.Tensor:
    """Bound on a float32 ``a @ b.T`` (``a``: ``[..., K]``, ``b``: ``[N, K]``) followed by
    ``extra`` more roundings: ``gamma_{K + extra} |a| @ |b|^T``."""
    a64, b64 = _f64(a).abs(), _f64(b).abs()
    return gamma(a64.shape[-1] + extra) * (a64 @ b64.T)


def conv_bound(
    x: Any,
    w: Any,
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int = 1,
    *,
    extra: int = 0,
) -> torch.Tensor:
    """Bound on a float32 ``conv2d(x, w)`` (NCHW, OIHW; fan-in ``K = C kh kw`` products per
    output) followed by ``extra`` more roundings: ``gamma_{K + extra} conv2d(|x|, |w|)``.
    Pad ``x`` yourself (with the padded values) for a non-zero padding value."""
    x64, w64 = _f64(x).abs(), _f64(w).abs()
    k = int(w64[0].numel())
    return gamma(k + extra) * F.conv2d(x64, w64, None, stride, padding, dilation)


def derivative_bound(
    f: Any, x: torch.Tensor, ops: int, oracle_terms: Any = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """The float64 derivative ``g = f'(x)`` of an elementwise ``f`` (autograd, the oracle) and a
    bound on ``|float32 g(x) - g|`` for an implementation that computes ``g`` in ``ops``
    float32 operations, each within 1 ulp = ``2u`` (IEEE ``+ - * /`` are within ``u``,
    PyTorch's transcendental functions within 1 ulp):

    ``gamma_ops(2u) (|g| + |x g'(x)|) + gamma_ops(u64) oracle_terms``

    to first order in ``u``: the operations' relative errors move the result by at most their
    size times ``|g|``, and the input's rounding (``b x`` in float32: ``x (1 + d)``) by
    ``|x g'(x)| |d|`` (the condition number; it also covers a subtraction that cancels where
    ``g`` crosses 0, whose rounded operands are as large as ``x g'``). The float64 oracle has
    its own cancellation (``1 - tanh^2``, ``1 - sigmoid`` in the tails): ``oracle_terms``
    (elementwise or a number) is the size of the largest terms it cancels, derived at the
    call site."""
    x64 = x.detach().double().requires_grad_(True)
    (g,) = torch.autograd.grad(f(x64).sum(), x64, create_graph=True)
    (gp,) = torch.autograd.grad(g.sum(), x64)
    g = g.detach()
    b = gamma(ops, 2 * U32) * (g.abs() + (x64.detach() * gp).abs())
    return g, b + gamma(ops, U64) * _f64(oracle_terms)


def assert_within(
    got: Any,
    want: Any,
    bound: Any,
    what: str = "",
    *,
    empirical: tuple[float, float] | None = None,
) -> None:
    """``|got - want| <= bound`` elementwise (all three as float64), and the bound is finite.

    ``empirical=(rtol, atol)`` also requires ``|got - want| <= atol + rtol |want|``: for the
    comparisons whose worst-case bound (every rounding of every term in the same direction)
    is looser than the tolerance the test used before, that tolerance stays (each call site
    gives the error it measured, >= 4x below it), so deriving a bound never weakens a test."""
    g, w, b = _f64(got), _f64(want), _f64(bound)
    assert torch.isfinite(b).all(), what
    d = (g - w).abs()
    if empirical is not None:
        rtol, atol = empirical
        b = torch.minimum(b.broadcast_to(d.shape), atol + rtol * w.abs())
    bad = d > b
    assert not bad.any(), (
        f"{what}: {int(bad.sum())} of {d.numel()} entries off by more than the derived bound; "
        f"worst |diff| = {float(d.max()):.3e}, bound there = {float(b.broadcast_to(d.shape)[bad][0]):.3e}"
    )


def reference_and_bound(graph: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The reference executor's output and ``2 E`` (:func:`bitflow.ir.reference.float_error_bounds`):
    two correct float32 implementations of the graph that take the same integer and bit values
    (the engines, checked op by op elsewhere) differ by at most ``2 E`` at the output."""
    from bitflow.ir.reference import float_error_bounds, run

    ref, env = run(graph, x, return_intermediates=True)  # type: ignore[misc]
    eb = float_error_bounds(graph, env)
    out = graph.output
    bound = 2 * eb[out] if out in eb else np.zeros(ref.shape)  # an integer output: exact
    return ref, bound


def model_bound(model: Any, x: np.ndarray) -> np.ndarray:
    """``2 E`` at the output of ``model`` (converted with :func:`bitflow.convert.convert`) on the
    NCHW float32 batch ``x``: any two correct float32 executions of the model (PyTorch's forward,
    a hand-written forward, the reference executor) that take the same sign decisions differ by
    at most this much. Where a sign flips, the difference is not bounded by it: the comparison
    then fails rather than passes, so a test using it cannot hide a mismatch."""
    from bitflow.convert import convert

    return reference_and_bound(convert(model), x)[1]
