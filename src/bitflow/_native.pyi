"""Type stub of ``bitflow._native`` (hand-written from src/native/python/*.cc).

Belongs next to the installed module (``src/bitflow/_native.pyi``); kept here by the native
layer's owner so the lead can move it. Every array argument must be a C-contiguous numpy
array of the stated dtype (read-only arrays are fine); anything else raises TypeError
(dtype) or ValueError (ndim, shape, contiguity, value range) naming the argument.
``kernels=""`` uses ``default_kernels()``; ``threads`` is in [1, 1024] and never changes a
result.
"""

from typing import Any

import numpy as np
from numpy.typing import NDArray

Pair = int | tuple[int, int]

def cpu_features() -> dict[str, bool]: ...
def available_kernels() -> list[str]: ...  # compiled AND supported; "ref" first, best last
def compiled_kernels() -> list[str]: ...
def default_kernels() -> str: ...
def kernel_info(kernels: str = "") -> dict[str, str | None]: ...
def compose_kernels(features: dict[str, bool]) -> dict[str, str | None]: ...
def _set_grain_ns(ns: float) -> float: ...
def peak_probe(kernels: str = "", seconds: float = 0.2) -> float: ...
def nhwc_f32(x: NDArray[np.float32], threads: int = 1) -> NDArray[np.float32]: ...
def quantize_u8_nhwc(
    x: NDArray[np.float32], threads: int = 1, kernels: str = ""
) -> NDArray[np.uint8]: ...
def bitpack(
    x: NDArray[np.float32] | NDArray[np.int32], kernels: str = "", threads: int = 1
) -> NDArray[np.uint64]: ...
def bgemm(
    a: NDArray[np.uint64], b: NDArray[np.uint64], k_bits: int, kernels: str = "", threads: int = 1
) -> NDArray[np.int32]: ...
def bgemm_planes(
    a: NDArray[np.uint64], b: NDArray[np.uint64], k_bits: int, kernels: str = "", threads: int = 1
) -> NDArray[np.int32]: ...
def bconv2d(
    x: NDArray[np.uint64],
    w: NDArray[np.uint64],
    channels: int,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    pad_value: int = 0,
    kernels: str = "",
    threads: int = 1,
) -> NDArray[np.int32]: ...
def bconv2d_planes(
    x: NDArray[np.uint64],
    w: NDArray[np.uint64],
    channels: int,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    pad_value: int = 0,
    kernels: str = "",
    threads: int = 1,
) -> NDArray[np.int32]: ...
def threshold_bits(
    acc: NDArray[np.int32], thr: NDArray[np.int32], direction: NDArray[np.int8]
) -> NDArray[np.uint64]: ...
def threshold_planes(
    acc: NDArray[np.int32], thr: NDArray[np.int32], direction: NDArray[np.int8]
) -> NDArray[np.uint64]: ...
def threshold_f32_planes(
    y: NDArray[np.float32], thr: NDArray[np.float32], direction: NDArray[np.int8]
) -> NDArray[np.uint64]: ...
def threshold_f32_bits(
    y: NDArray[np.float32], thr: NDArray[np.float32], direction: NDArray[np.int8]
) -> NDArray[np.uint64]: ...
def scale_bias(
    acc: NDArray[np.int32], scale: NDArray[np.float32], bias: NDArray[np.float32]
) -> NDArray[np.float32]: ...
def maxpool_bits(
    x: NDArray[np.uint64],
    kernel: Pair,
    stride: Pair | None = None,
    padding: Pair = 0,
    op: str = "and",
) -> NDArray[np.uint64]: ...
def maxpool_i32(
    x: NDArray[np.int32], kernel: Pair, stride: Pair | None = None, padding: Pair = 0
) -> NDArray[np.int32]: ...
def maxpool_f32(
    x: NDArray[np.float32], kernel: Pair, stride: Pair | None = None, padding: Pair = 0
) -> NDArray[np.float32]: ...
def conv2d_f32(
    x: NDArray[np.float32],
    w: NDArray[np.float32],
    bias: NDArray[np.float32] | None = None,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    kernels: str = "",
    threads: int = 1,
) -> NDArray[np.float32]: ...
def dense_f32(
    x: NDArray[np.float32],
    w: NDArray[np.float32],
    bias: NDArray[np.float32] | None = None,
    kernels: str = "",
    threads: int = 1,
) -> NDArray[np.float32]: ...
def conv2d_u8i8(
    x: NDArray[np.uint8],
    w: NDArray[np.int8],
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    kernels: str = "",
    threads: int = 1,
) -> NDArray[np.int32]: ...
def conv2d_u8b1(
    x: NDArray[np.uint8],
    w: NDArray[np.uint64],
    channels: int,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    kernels: str = "",
    threads: int = 1,
) -> NDArray[np.int32]: ...
def conv2d_f32b1(
    x: NDArray[np.float32],
    w: NDArray[np.uint64],
    channels: int,
    stride: Pair = (1, 1),
    padding: Pair = (0, 0),
    threads: int = 1,
) -> NDArray[np.float32]: ...
def rprelu_f32(
    x: np.ndarray, gamma: np.ndarray, slope: np.ndarray, zeta: np.ndarray, threads: int = 1
) -> np.ndarray: ...
def ste_sign(x: np.ndarray, q: np.ndarray, mask: NDArray[np.uint8], threads: int = 1) -> None: ...
def ste_gate(
    grad: np.ndarray, mask: NDArray[np.uint8], out: np.ndarray, threads: int = 1
) -> None: ...
def approx_sign_grad(
    x: NDArray[np.float32], grad: NDArray[np.float32], out: NDArray[np.float32], threads: int = 1
) -> None: ...
def threshold_bits_hw(
    x: NDArray[np.int32], thr: NDArray[np.int32], direction: NDArray[np.int8], threads: int = 1
) -> NDArray[np.uint64]: ...
def scale_hw(
    x: NDArray[np.int32], scale: NDArray[np.float32], threads: int = 1
) -> NDArray[np.float32]: ...
def threshold_u8(
    x: NDArray[np.int32], thr: NDArray[np.int32], direction: NDArray[np.int8], threads: int = 1
) -> NDArray[np.uint8]: ...
def threshold_f32_u8(
    x: NDArray[np.float32], thr: NDArray[np.float32], direction: NDArray[np.int8], threads: int = 1
) -> NDArray[np.uint8]: ...

class BinaryLayer:
    """A prepared binary layer: bconv2d / bdense [-> maxpool] [-> flatten] -> threshold_bits in one
    call, with the weight layout and zero-padding correction computed once."""

    def __init__(
        self,
        w: NDArray[np.uint64],
        channels: int,
        stride: int | tuple[int, int] = (1, 1),
        padding: int | tuple[int, int] = (0, 0),
        pad_value: int = 0,
        kernels: str = "",
        thr: NDArray[np.int32] | None = None,
        direction: NDArray[np.int8] | None = None,
        pool_kernel: int | tuple[int, int] | None = None,
        pool_stride: int | tuple[int, int] | None = None,
        pool_padding: int | tuple[int, int] = 0,
        index: NDArray[np.int32] | None = None,
    ) -> None: ...
    def __call__(self, x: NDArray[np.uint64], threads: int = 1) -> NDArray[Any]: ...
    @property
    def kernels(self) -> str: ...
    @property
    def out_channels(self) -> int: ...
    @property
    def has_threshold(self) -> bool: ...
    @property
    def weight_layout(self) -> str:
        """``"pairs"`` (paired last words of adjacent taps, read in place), ``"dense"``
        (bit-dense im2col rows) or ``"words"`` (whole words per tap)."""

class FloatStream:
    """The fused float stream of residual networks: operands (int32 or float32), each through its
    (scale, bias) stages, summed left to right in float32, kept and / or thresholded to bits."""

    def __init__(
        self,
        channels: int,
        i32: list[bool],
        stages: list[list[tuple[NDArray[np.float32], NDArray[np.float32]]]],
        thr: NDArray[np.float32] | None = None,
        direction: NDArray[np.int8] | None = None,
        keep_y: bool = True,
        kernels: str = "",
    ) -> None: ...
    @property
    def wide(self) -> bool: ...
    def __call__(self, xs: list[NDArray[Any]], threads: int = 1) -> Any: ...
    def after(
        self,
        layer: BinaryLayer | Int8ConvLayer,
        x: NDArray[Any],
        others: list[NDArray[Any]],
        pos: int = 0,
        threads: int = 1,
    ) -> Any: ...
    def after_conv2d(
        self,
        x: NDArray[np.float32],
        w: NDArray[np.float32],
        bias: NDArray[np.float32] | None = None,
        stride: Pair = (1, 1),
        padding: Pair = (0, 0),
        kernels: str = "",
        threads: int = 1,
    ) -> Any: ...
    def after_conv2d_layer(
        self, layer: _Conv2dF32Layer, x: NDArray[np.float32], threads: int = 1
    ) -> Any: ...

class IntStream:
    """The fused integer residual stream: operands (int32, each optionally through requant_i32's
    (m, b, shift, lo, hi)), summed by add_i32 with clamp [lo, hi], kept and / or thresholded to
    bits (threshold_bits); the same integers as the ops one by one."""

    def __init__(
        self,
        o: int,
        operands: list[
            tuple[NDArray[np.int64], NDArray[np.int64], int, int | None, int | None] | None
        ],
        lo: int | None = None,
        hi: int | None = None,
        thr: NDArray[np.int32] | None = None,
        direction: NDArray[np.int8] | None = None,
        keep_y: bool = True,
        kernels: str = "",
    ) -> None: ...
    def __call__(self, xs: list[NDArray[np.int32]], threads: int = 1) -> Any: ...
    def after(
        self,
        layer: BinaryLayer,
        x: NDArray[np.uint64],
        others: list[NDArray[np.int32]],
        pos: int = 0,
        threads: int = 1,
    ) -> Any: ...

class _Conv2dF32Layer:
    """conv2d_f32 with its weights laid out once (the engine's float convolution steps)."""

    def __init__(
        self,
        w: NDArray[np.float32],
        bias: NDArray[np.float32] | None = None,
        stride: Pair = (1, 1),
        padding: Pair = (0, 0),
        kernels: str = "",
    ) -> None: ...
    def __call__(self, x: NDArray[np.float32], threads: int = 1) -> NDArray[np.float32]: ...

def maxpool_f32_fast(
    x: NDArray[np.float32],
    kernel: Pair,
    stride: Pair | None = None,
    padding: Pair = 0,
    threads: int = 1,
    kernels: str = "",
) -> NDArray[np.float32]: ...

class Int8ConvLayer:
    """A prepared fixed-point first layer: conv2d_u8i8 [-> maxpool] -> threshold_bits in one call."""

    def __init__(
        self,
        w: NDArray[np.int8],
        stride: int | tuple[int, int] = (1, 1),
        padding: int | tuple[int, int] = (0, 0),
        kernels: str = "",
        thr: NDArray[np.int32] | None = None,
        direction: NDArray[np.int8] | None = None,
        pool_kernel: int | tuple[int, int] | None = None,
        pool_stride: int | tuple[int, int] | None = None,
        pool_padding: int | tuple[int, int] = 0,
    ) -> None: ...
    def __call__(self, x: NDArray[np.uint8], threads: int = 1) -> NDArray[Any]: ...

def threshold_bits_range(
    acc: NDArray[np.int32], lo: NDArray[np.int32], hi: NDArray[np.int32], kernels: str = ""
) -> NDArray[np.uint64]: ...

# DAG ops (residual adds, average pools, concatenation)
def add_f32(xs: list[np.ndarray]) -> np.ndarray: ...
def add_i32(
    xs: list[np.ndarray], lo: int | None = None, hi: int | None = None, threads: int = 1
) -> np.ndarray: ...
def requant_i32(
    x: np.ndarray,
    m: np.ndarray,
    b: np.ndarray,
    shift: int,
    lo: int | None = None,
    hi: int | None = None,
    threads: int = 1,
) -> np.ndarray: ...
def affine_f32(x: np.ndarray, scale: np.ndarray, bias: np.ndarray) -> np.ndarray: ...
def relu_f32(x: np.ndarray) -> np.ndarray: ...
def avgpool_f32(
    x: np.ndarray,
    kernel: int | tuple[int, int],
    stride: int | tuple[int, int] | None = None,
    padding: int | tuple[int, int] = 0,
) -> np.ndarray: ...
def global_avgpool_f32(x: np.ndarray) -> np.ndarray: ...
def concat(xs: list[np.ndarray]) -> np.ndarray: ...
def concat_bits(xs: list[np.ndarray], channels: list[int]) -> np.ndarray: ...
def gather_channels(x: np.ndarray, index: np.ndarray) -> np.ndarray: ...
