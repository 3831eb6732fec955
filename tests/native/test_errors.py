"""Bad input raises TypeError/ValueError with a message naming the problem (never a crash)."""

from __future__ import annotations

import numpy as np
import pytest

from bitflow import _native

pytestmark = pytest.mark.native

U64 = np.uint64


def _words(*shape: int) -> np.ndarray:
    return np.zeros(shape, dtype=U64)


def test_wrong_dtype() -> None:
    with pytest.raises(TypeError, match="dtype uint64, got float32"):
        _native.bgemm(np.zeros((2, 1), np.float32), _words(2, 1), 10)
    with pytest.raises(TypeError, match="float32 or int32"):
        _native.bitpack(np.zeros((2, 3), np.float64))
    with pytest.raises(TypeError, match="int32"):
        _native.threshold_bits(
            np.zeros((2, 3), np.int64), np.zeros(3, np.int32), np.ones(3, np.int8)
        )
    with pytest.raises(TypeError, match="int8"):
        _native.conv2d_u8i8(np.zeros((1, 3, 3, 1), np.uint8), np.zeros((1, 1, 1, 1), np.uint8))
    with pytest.raises(TypeError):
        _native.bgemm([[1]], [[1]], 1)  # not an array


def test_wrong_ndim_and_shapes() -> None:
    with pytest.raises(ValueError, match="exactly 2 dimensions"):
        _native.bgemm(_words(2, 1, 1), _words(2, 1), 10)
    with pytest.raises(ValueError, match="same number of words"):
        _native.bgemm(_words(2, 2), _words(2, 1), 10)
    with pytest.raises(ValueError, match="k_bits"):
        _native.bgemm(_words(2, 1), _words(2, 1), 65)
    with pytest.raises(ValueError, match="k_bits"):
        _native.bgemm(_words(2, 1), _words(2, 1), 0)
    with pytest.raises(ValueError, match="exactly 4 dimensions"):
        _native.bconv2d(_words(1, 3, 3), _words(1, 1, 1, 1), 3)
    with pytest.raises(ValueError, match="channels=65"):
        _native.bconv2d(_words(1, 3, 3, 1), _words(1, 1, 1, 1), 65)
    with pytest.raises(ValueError, match="channel words"):
        _native.bconv2d(_words(1, 3, 3, 2), _words(1, 1, 1, 1), 100)
    with pytest.raises(ValueError, match="larger than the padded input"):
        _native.bconv2d(_words(1, 2, 2, 1), _words(1, 5, 5, 1), 3, padding=1)
    with pytest.raises(ValueError, match="stride"):
        _native.bconv2d(_words(1, 3, 3, 1), _words(1, 1, 1, 1), 3, stride=0)
    with pytest.raises(ValueError, match="pad_value"):
        _native.bconv2d(_words(1, 3, 3, 1), _words(1, 1, 1, 1), 3, pad_value=2)
    with pytest.raises(TypeError, match="pair of ints"):
        _native.bconv2d(_words(1, 3, 3, 1), _words(1, 1, 1, 1), 3, stride=(1, 2, 3))
    with pytest.raises(TypeError, match="pair of ints"):
        _native.bconv2d(_words(1, 3, 3, 1), _words(1, 1, 1, 1), 3, padding=1.0)
    with pytest.raises(TypeError, match="pair of ints"):
        _native.maxpool_f32(np.zeros((1, 4, 4, 1), np.float32), True)
    # numpy integers are integers
    out = _native.bconv2d(_words(1, 3, 3, 1), _words(1, 1, 1, 1), 3, stride=(np.int64(2), 1))
    assert out.shape == (1, 2, 3, 1)
    with pytest.raises(ValueError, match="exactly 5 dimensions"):
        _native.bconv2d_planes(_words(1, 3, 3, 1), _words(1, 1, 1, 1), 3)
    with pytest.raises(ValueError, match="bias"):
        _native.dense_f32(
            np.zeros((2, 3), np.float32), np.zeros((4, 3), np.float32), np.zeros(3, np.float32)
        )
    with pytest.raises(ValueError, match="K = 3"):
        _native.dense_f32(np.zeros((2, 3), np.float32), np.zeros((4, 5), np.float32))


def test_non_contiguous_rejected() -> None:
    a = _words(4, 4)[:, ::2]
    with pytest.raises(ValueError, match="C-contiguous"):
        _native.bgemm(a, _words(2, 2), 100)
    x = np.zeros((4, 6), np.float32).T
    with pytest.raises(ValueError, match="C-contiguous"):
        _native.bitpack(x)


def test_read_only_input_accepted() -> None:
    a = _words(2, 1)
    a.setflags(write=False)
    np.testing.assert_array_equal(_native.bgemm(a, a, 64), np.full((2, 2), 64, np.int32))


def test_overflow_and_value_checks() -> None:
    # k_bits * (2^Pa - 1) * (2^Pw - 1) must fit int32: 64 * 8191^2 = 4.3e9 does not
    with pytest.raises(ValueError, match="overflow"):
        _native.bgemm_planes(_words(13, 1, 1), _words(13, 1, 1), 64)
    with pytest.raises(ValueError, match="too large"):
        _native.conv2d_u8i8(
            np.zeros((1, 1, 1, 70000), np.uint8), np.zeros((1, 1, 1, 70000), np.int8)
        )
    with pytest.raises(ValueError, match="threads"):
        _native.bgemm(_words(1, 1), _words(1, 1), 1, threads=0)
    with pytest.raises(ValueError, match="direction values"):
        _native.threshold_bits(
            np.zeros((2, 3), np.int32), np.zeros(3, np.int32), np.array([1, 0, -1], np.int8)
        )
    with pytest.raises(ValueError, match="shape"):
        _native.threshold_bits(
            np.zeros((2, 3), np.int32), np.zeros(4, np.int32), np.ones(3, np.int8)
        )
    with pytest.raises(ValueError, match="2\\^M - 1"):
        _native.threshold_planes(
            np.zeros((2, 3), np.int32), np.zeros((3, 2), np.int32), np.ones(3, np.int8)
        )
    with pytest.raises(ValueError, match="sorted"):
        _native.threshold_planes(
            np.zeros((2, 1), np.int32), np.array([[3, 1, 2]], np.int32), np.ones(1, np.int8)
        )
    with pytest.raises(ValueError, match="op must be"):
        _native.maxpool_bits(_words(1, 4, 4, 1), 2, op="max")
    with pytest.raises(ValueError, match="half the kernel"):
        _native.maxpool_f32(np.zeros((1, 4, 4, 1), np.float32), 2, 1, 2)
    with pytest.raises(ValueError, match="empty"):
        _native.bitpack(np.zeros((3, 0), np.float32))
    with pytest.raises(ValueError, match="seconds"):
        _native.peak_probe("ref", -1.0)
