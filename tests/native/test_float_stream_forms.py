"""The fused float stream (``FloatStream``) in every operand form the engine builds for residual
networks (one or two operands, each int32 or float32 with 0-2 affine stages: the forms the
AVX-512 rows specialize at compile time) equals the unfused ops bit for bit, on every kernel set,
for channel counts at and around the 16-lane and 64-bit word edges, with NaN, infinities,
-0.0 and threshold ties in the data."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from bitflow import _native as N

pytestmark = pytest.mark.native

FORMS = [(i32, ns) for i32 in (True, False) for ns in (0, 1, 2)]


def _specials(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    x = rng.standard_normal(shape).astype(np.float32)
    flat = x.reshape(-1)
    idx = rng.choice(flat.size, size=max(1, flat.size // 8), replace=False)
    flat[idx] = rng.choice(
        np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1.0], np.float32), size=idx.size
    )
    return x


def _operand(rng: np.random.Generator, i32: bool, shape: tuple[int, ...]) -> np.ndarray:
    if i32:
        return rng.integers(-300, 300, size=shape).astype(np.int32)
    return _specials(rng, shape)


def _unfused(x: np.ndarray, i32: bool, stages: list[tuple[np.ndarray, np.ndarray]]) -> np.ndarray:
    v = x
    for k, (s, b) in enumerate(stages):
        v = N.scale_bias(v, s, b) if (k == 0 and i32) else N.affine_f32(v, s, b)
    if i32 and not stages:
        v = N.scale_bias(x, np.ones(x.shape[-1], np.float32), np.zeros(x.shape[-1], np.float32))
    return v


@pytest.mark.parametrize("o", [1, 15, 16, 17, 40, 64, 70, 128, 130])
@pytest.mark.parametrize("nops", [1, 2])
def test_stream_forms_equal_the_unfused_ops(kernels: str, o: int, nops: int) -> None:
    rng = np.random.default_rng(1000 * o + nops)
    shape = (2, 3, 5, o)
    thr = rng.standard_normal(o).astype(np.float32)
    thr[: o // 3] = 0.0  # ties with the -0.0 / 0.0 inputs
    d = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
    for forms in itertools.product(FORMS, repeat=nops):
        xs = [_operand(rng, i32, shape) for i32, _ in forms]
        stages = [
            [
                (
                    rng.standard_normal(o).astype(np.float32),
                    rng.standard_normal(o).astype(np.float32),
                )
                for _ in range(ns)
            ]
            for _, ns in forms
        ]
        vals = [_unfused(x, i32, st) for x, (i32, _), st in zip(xs, forms, stages, strict=True)]
        want_y = vals[0] if nops == 1 else N.add_f32(vals)
        want_b = N.threshold_f32_bits(want_y, thr, d)
        i32s = [i32 for i32, _ in forms]
        both = N.FloatStream(o, i32s, stages, thr=thr, direction=d, kernels=kernels)
        y, b = both(xs, 1)
        assert y.tobytes() == want_y.tobytes(), forms  # bit for bit, NaN payloads included
        assert np.array_equal(b, want_b), forms
        bits_only = N.FloatStream(
            o, i32s, stages, thr=thr, direction=d, keep_y=False, kernels=kernels
        )
        assert np.array_equal(bits_only(xs, 2), want_b), forms
        y_only = N.FloatStream(o, i32s, stages, kernels=kernels)
        assert y_only(xs, 3).tobytes() == want_y.tobytes(), forms
