"""Argument checks shared by several bindings (src/native/python/common.h): a float layer's
optional bias must have one value per output channel, and a uint8-input conv must keep its
exact int32 sum (|sum| <= kh kw C 255 128 < 2^31, i.e. kh kw C <= 65793)."""

from __future__ import annotations

import numpy as np
import pytest

from bitflow import _native as N

pytestmark = pytest.mark.native


def _float_layer_calls(bias: np.ndarray) -> list:  # type: ignore[type-arg]
    x = np.zeros((1, 3, 3, 2), np.float32)
    w = np.zeros((4, 1, 1, 2), np.float32)
    fs = N.FloatStream(4, [False], [[]])
    return [
        lambda: N.conv2d_f32(x, w, bias),
        lambda: N.dense_f32(np.zeros((1, 2), np.float32), np.zeros((4, 2), np.float32), bias),
        lambda: fs.after_conv2d(x, w, bias),
    ]


@pytest.mark.parametrize("k", range(3))
def test_a_bias_of_the_wrong_length_is_named(k: int) -> None:
    with pytest.raises(ValueError, match=r"bias must have shape \(4,\)"):
        _float_layer_calls(np.zeros(3, np.float32))[k]()
    out = _float_layer_calls(np.arange(4, dtype=np.float32))[k]()  # the right length runs
    y = out if isinstance(out, np.ndarray) else out[0]
    np.testing.assert_array_equal(y.reshape(-1, 4)[0], np.arange(4))  # zero weights: y = bias


# 65793 * 255 * 128 = 2,147,483,520 <= 2^31 - 1 < 65794 * 255 * 128
@pytest.mark.parametrize("c", [65793, 65794])
def test_uint8_convs_keep_their_int32_sum_exact(c: int) -> None:
    x = np.zeros((1, 1, 1, c), np.uint8)
    w8 = np.zeros((1, 1, 1, c), np.int8)
    w1 = np.zeros((1, 1, 1, (c + 63) // 64), np.uint64)
    calls = [
        lambda: N.conv2d_u8i8(x, w8),
        lambda: N.conv2d_u8b1(x, w1, c),
        lambda: N.Int8ConvLayer(w8),
    ]
    for call in calls:
        if c > 65793:
            with pytest.raises(ValueError, match="too large for an exact int32 sum"):
                call()
        else:
            call()
