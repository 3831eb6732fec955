"""The native one-pass STE kernels (``_native.ste_sign`` / ``ste_gate`` / ``approx_sign_grad``,
used by ``SignSTE`` and ``ApproxSignSTE`` for dense CPU tensors) against the PyTorch expressions
of their definitions: the same values bit for bit (NaN where the expression gives NaN), in
float32 and bfloat16, contiguous and channels_last, over random shapes with the edge values
(+-0, +-1, the neighbours of +-1, +-inf, NaN) mixed in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from bitflow import _native
from bitflow.nn import functional as F

EDGES = [
    0.0,
    -0.0,
    1.0,
    -1.0,
    1.0000001,
    -1.0000001,
    0.99999994,
    -0.99999994,
    np.inf,
    -np.inf,
    np.nan,
]


@contextmanager
def native(on: bool) -> Iterator[None]:
    old = F.NATIVE_MIN_NUMEL
    F.NATIVE_MIN_NUMEL = 0 if on else 1 << 62
    try:
        yield
    finally:
        F.NATIVE_MIN_NUMEL = old


def _tensor(
    rng: np.random.Generator, shape: tuple[int, ...], dtype: torch.dtype, cl: bool
) -> torch.Tensor:
    a = (rng.standard_normal(int(np.prod(shape))) * 1.5).astype(np.float32)
    k = min(len(a), len(EDGES))
    a[rng.choice(len(a), k, replace=False)] = rng.choice(EDGES, k)
    t = torch.from_numpy(a).reshape(shape).to(dtype)
    return t.contiguous(memory_format=torch.channels_last) if cl else t


def _run(fn: type[torch.autograd.Function], x: torch.Tensor, g: torch.Tensor, on: bool):
    with native(on):
        xi = x.clone().requires_grad_()
        y = fn.apply(xi)
        y.backward(g)
    return y.detach(), xi.grad


def _same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape and a.stride() == b.stride()
    an, bn = a.float().isnan(), b.float().isnan()
    assert torch.equal(an, bn)
    # bit patterns where not NaN: +0 / -0 count as different
    ai, bi = (
        a.view(torch.int16 if a.dtype == torch.bfloat16 else torch.int32),
        b.view(torch.int16 if b.dtype == torch.bfloat16 else torch.int32),
    )
    assert torch.equal(ai[~an], bi[~bn])


shapes = st.sampled_from(
    [(1,), (7,), (5, 3), (2, 3, 4, 5), (3, 8, 6, 2), (1, 1, 1, 1), (4, 16, 3, 3)]
)


@settings(max_examples=60, deadline=None)
@given(
    shape=shapes,
    dtype=st.sampled_from([torch.float32, torch.bfloat16]),
    cl=st.booleans(),
    seed=st.integers(0, 2**31 - 1),
)
def test_sign_ste_native_is_the_expression(shape, dtype, cl, seed) -> None:
    rng = np.random.default_rng(seed)
    cl = cl and len(shape) == 4
    x = _tensor(rng, shape, dtype, cl)
    g = _tensor(rng, shape, dtype, cl)  # gradients with edges too (inf * 0 = NaN)
    y1, g1 = _run(F.SignSTE, x, g, True)
    y0, g0 = _run(F.SignSTE, x, g, False)
    _same(y1, y0)
    _same(g1, g0)
    # the expressions of the definition, written out: sign(0) = +1, gate |x| <= 1
    _same(y1, 1.0 - 2.0 * (x < 0).to(dtype))
    _same(g1, g * (x.abs() <= 1).to(dtype))


@settings(max_examples=40, deadline=None)
@given(shape=shapes, cl=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_approx_sign_native_is_the_expression(shape, cl, seed) -> None:
    rng = np.random.default_rng(seed)
    cl = cl and len(shape) == 4
    x = _tensor(rng, shape, torch.float32, cl)
    g = _tensor(rng, shape, torch.float32, cl)
    y1, g1 = _run(F.ApproxSignSTE, x, g, True)
    y0, g0 = _run(F.ApproxSignSTE, x, g, False)
    _same(y1, y0)
    _same(g1, g0)
    _same(g1, (2.0 - 2.0 * x.abs()).clamp_min(0.0) * g)  # Bi-Real: (2 - 2|x|)^+ * g


def test_native_path_is_taken_and_split_over_threads() -> None:
    """Large tensors (several 64 Ki blocks) on 1 and 2 threads; the native path really runs
    (the saved gate is one byte per element) and gives the expression's values."""
    rng = np.random.default_rng(0)
    x = _tensor(rng, (8, 32, 28, 28), torch.float32, True)
    g = _tensor(rng, (8, 32, 28, 28), torch.float32, True)
    y0, g0 = _run(F.SignSTE, x, g, False)
    prev = torch.get_num_threads()
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            with native(True):
                xi = x.clone().requires_grad_()
                y = F.SignSTE.apply(xi)
                assert y.grad_fn.saved_tensors[0].dtype == torch.uint8  # type: ignore[union-attr]
                y.backward(g)
            _same(y.detach(), y0)
            _same(xi.grad, g0)
    finally:
        torch.set_num_threads(prev)


def test_fallbacks_give_the_same_values() -> None:
    """Not dense (a slice), a gradient laid out unlike the input, float64, small tensors under
    the default size: the PyTorch expressions run, with the same results."""
    rng = np.random.default_rng(1)
    base = _tensor(rng, (4, 6, 5, 5), torch.float32, False)
    with native(True):
        assert F._flat(base[:, ::2]) is None
        assert F._flat(base.double()) is None
        xi = base.clone().requires_grad_()
        y = F.SignSTE.apply(xi)
        g = torch.from_numpy(rng.standard_normal(base.shape).astype(np.float32))
        g_cl = g.contiguous(memory_format=torch.channels_last)  # other strides than x
        y.backward(g_cl)
    _same(xi.grad.contiguous(), (g * (base.abs() <= 1).float()).contiguous())
    assert F._flat(torch.zeros(16)) is None  # under NATIVE_MIN_NUMEL by default


def test_native_functions_refuse_bad_buffers() -> None:
    x = np.zeros(8, np.float32)
    with pytest.raises(TypeError, match="q"):
        _native.ste_sign(x, np.zeros(8, np.int16), np.zeros(8, np.uint8))
    with pytest.raises(ValueError, match="length 8"):
        _native.ste_sign(x, np.zeros(7, np.float32), np.zeros(8, np.uint8))
    with pytest.raises(ValueError, match="same length"):
        _native.ste_gate(x, np.zeros(7, np.uint8), np.zeros(8, np.float32))
    ro = np.zeros(8, np.float32)
    ro.setflags(write=False)
    with pytest.raises(TypeError):
        _native.approx_sign_grad(x, x, ro)
