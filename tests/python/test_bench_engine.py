"""The engine's fast paths (written for the benchmark bar): the prepared, fused binary layer
``_native.BinaryLayer``, the range-form threshold and the packed-weight binary GEMM, checked
against independent oracles (PyTorch convolutions on +-1 values, numpy comparisons), and the
fused engine plan against the numpy reference executor on whole zoo models."""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from _bounds import assert_within

from bitflow import models
from bitflow.convert import convert
from bitflow.engine import Engine
from bitflow.ir.reference import float_error_bounds
from bitflow.ir.reference import run as reference_run

N = pytest.importorskip("bitflow._native", reason="the compiled extension is not built")
KERNELS = list(N.available_kernels())
I32 = np.iinfo(np.int32)


def _pack(pm1: np.ndarray) -> np.ndarray:
    """+-1 array [..., C] -> engine bits [..., ceil(C/64)] (bit 1 iff -1, LSB first)."""
    c = pm1.shape[-1]
    words = -(-c // 64)
    bits = np.zeros(pm1.shape[:-1] + (words * 64,), np.uint8)
    bits[..., :c] = pm1 < 0
    return np.packbits(bits, axis=-1, bitorder="little").view(np.uint64)


def _unpack_bits(words: np.ndarray, c: int) -> np.ndarray:
    return np.unpackbits(words.view(np.uint8), axis=-1, bitorder="little")[..., :c].astype(bool)


def _oracle(
    x: np.ndarray,
    w: np.ndarray,
    stride: int,
    pad: int,
    pad_value: int,
    pool: tuple[int, int] | None,
    thr: np.ndarray | None,
    direction: np.ndarray | None,
) -> np.ndarray:
    """F.conv2d on +-1 values (NHWC in, NHWC out), torch max-pool, then the threshold rule
    of common.h: -1 (bit 1) iff acc < thr (direction +1) or acc > thr (direction -1)."""
    xt = torch.from_numpy(x.transpose(0, 3, 1, 2).astype(np.float64))
    wt = torch.from_numpy(w.transpose(0, 3, 1, 2).astype(np.float64))
    if pad and pad_value == 1:
        xt = F.pad(xt, (pad, pad, pad, pad), value=1.0)
        acc = F.conv2d(xt, wt, stride=stride)
    else:
        acc = F.conv2d(xt, wt, stride=stride, padding=pad)
    if pool is not None:
        acc = F.max_pool2d(acc, pool[0], pool[1])
    acc_np = acc.numpy().transpose(0, 2, 3, 1).round().astype(np.int64)
    if thr is None:
        return acc_np
    assert direction is not None
    return np.where(direction > 0, acc_np < thr, acc_np > thr)


CASES = [
    # (n, h, c, o, k, stride, pad, pad_value, pool)
    (1, 9, 96, 40, 5, 1, 2, 0, (3, 2)),  # bit-dense taps (C % 64 != 0), O not a multiple of 32
    (2, 7, 64, 33, 3, 1, 1, 0, None),  # word-aligned taps, a 1-channel last block
    (1, 8, 130, 64, 3, 2, 1, 1, (2, 2)),  # stride 2, +1 padding, 3 words per pixel
    (3, 5, 31, 7, 3, 1, 0, 0, None),  # no padding, tiny O
    (1, 6, 200, 96, 1, 1, 0, 0, None),  # pointwise
]


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("fused", ["int32", "bits"])
def test_binary_layer_matches_torch(kernels: str, case: tuple, fused: str) -> None:
    n, h, c, o, k, stride, pad, pad_value, pool = case
    rng = np.random.default_rng(
        zlib.crc32(repr(case).encode())
    )  # replayable: hash(None) is per process
    x = np.where(rng.random((n, h, h, c)) < 0.5, -1.0, 1.0)
    w = np.where(rng.random((o, k, k, c)) < 0.5, -1.0, 1.0)
    thr = direction = None
    kw: dict = {}
    if fused == "bits":
        thr = rng.integers(-k * k * c // 4, k * k * c // 4, size=o).astype(np.int32)
        direction = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
        kw = {"thr": thr, "direction": direction}
    if pool is not None:
        kw.update(pool_kernel=pool[0], pool_stride=pool[1])
    layer = N.BinaryLayer(_pack(w), c, stride, pad, pad_value, kernels, **kw)
    want = _oracle(x, w, stride, pad, pad_value, pool, thr, direction)
    for threads in (1, 2):
        got = layer(_pack(x), threads)
        if fused == "bits":
            assert got.dtype == np.uint64
            np.testing.assert_array_equal(_unpack_bits(got, o), want)
        else:
            np.testing.assert_array_equal(got.astype(np.int64), want)


@pytest.mark.parametrize("kernels", KERNELS)
def test_binary_layer_dense_matches_matmul(kernels: str) -> None:
    """A dense layer as a 1x1 conv on a 1x1 image: k_bits real positions, K=1000 (not a
    multiple of 64), O = 70; oracle: float64 matmul of +-1 values."""
    rng = np.random.default_rng(3)
    kb, o = 1000, 70
    x = np.where(rng.random((5, kb)) < 0.5, -1.0, 1.0)
    w = np.where(rng.random((o, kb)) < 0.5, -1.0, 1.0)
    layer = N.BinaryLayer(_pack(w)[:, None, None, :], kb, kernels=kernels)
    got = layer(_pack(x)[:, None, None, :], 2).reshape(5, o)
    np.testing.assert_array_equal(got, (x @ w.T).astype(np.int64))


@pytest.mark.parametrize("kernels", KERNELS)
def test_threshold_bits_range_equals_threshold_bits(kernels: str) -> None:
    rng = np.random.default_rng(4)
    for o in (1, 15, 16, 17, 64, 65, 200):
        acc = rng.integers(-50, 50, size=(3, 4, o)).astype(np.int32)
        acc[0, 0, :] = rng.choice([I32.min, I32.max, 0], size=o)
        thr = rng.integers(-50, 50, size=o).astype(np.int32)
        d = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
        lo = np.where(d > 0, thr, I32.min).astype(np.int32)
        hi = np.where(d > 0, I32.max, thr).astype(np.int32)
        got = N.threshold_bits_range(acc, lo, hi, kernels)
        np.testing.assert_array_equal(got, N.threshold_bits(acc, thr, d))
        want = np.where(d > 0, acc < thr, acc > thr)
        np.testing.assert_array_equal(_unpack_bits(got, o), want)
        assert not np.any(np.unpackbits(got.view(np.uint8), axis=-1, bitorder="little")[..., o:])


def test_binary_layer_rejects_bad_input() -> None:
    w = np.zeros((8, 3, 3, 2), np.uint64)
    with pytest.raises(ValueError, match="channels"):
        N.BinaryLayer(w, 64, 1, 1)
    with pytest.raises(TypeError, match="uint64"):
        N.BinaryLayer(w.astype(np.int64), 100, 1, 1)
    with pytest.raises(ValueError, match="together"):
        N.BinaryLayer(w, 100, 1, 1, thr=np.zeros(8, np.int32))
    with pytest.raises(ValueError, match="direction values"):
        N.BinaryLayer(w, 100, 1, 1, thr=np.zeros(8, np.int32), direction=np.zeros(8, np.int8))
    layer = N.BinaryLayer(w, 100, 1, 1)
    with pytest.raises(ValueError, match="channel words"):
        layer(np.zeros((1, 5, 5, 3), np.uint64))
    with pytest.raises(ValueError, match="larger than the padded input"):
        N.BinaryLayer(w, 100, 1, 0)(np.zeros((1, 2, 2, 2), np.uint64))
    with pytest.raises(ValueError, match="threads"):
        layer(np.zeros((1, 5, 5, 2), np.uint64), 0)


def _random_bn(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                m.running_mean.copy_(torch.rand(m.running_mean.shape, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
                if m.affine:
                    m.weight.copy_(2 * torch.rand(m.weight.shape, generator=g) - 1)
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) - 0.5)
    return model.eval()


@pytest.mark.parametrize(
    "name,kw",
    [
        ("bitflow_vgg_small", {"width": 8, "fc": 32}),
        ("bitflow_lenet", {"width": 8, "fc": 32, "first_layer": "int8"}),
        ("bitflow_alexnet", {"image_size": 67, "num_classes": 10, "first_layer": "int8"}),
    ],
)
def test_fused_engine_equals_reference_executor(name: str, kw: dict) -> None:
    torch.manual_seed(0)
    graph = convert(_random_bn(models.create(name, **kw), 1))
    spec = graph.input
    x = np.random.default_rng(2).random(
        (3, spec.channels, spec.height, spec.width), dtype=np.float32
    )
    ref_logits, env = reference_run(graph, x, return_intermediates=True)  # type: ignore[misc]
    for kernels in KERNELS:
        eng = Engine(graph, kernels=kernels, threads=2)
        if name != "bitflow_lenet":
            assert len(eng._plan) < len(graph.ops), "no layer was fused"
        # every fused step reproduces the reference's value at its end, bit for bit
        for step in eng._plan:
            if step.dst in env and env[step.dst].dtype != np.float32:
                np.testing.assert_array_equal(
                    step.fn([np.ascontiguousarray(env[v]) for v in step.srcs]), env[step.dst]
                )
        logits = eng.logits(x)
        np.testing.assert_array_equal(logits, eng.run(x, keep=True)[graph.output])
        if spec.preprocess == "uint8":  # integer-only network: exact up to the float last layers
            # the fused steps' integers and bits equal the reference's (above): the logits
            # differ only by the float last layers' roundings, at most 2 E
            eb = 2 * float_error_bounds(graph, env)[graph.output]
            assert_within(
                logits, ref_logits, eb, kernels, empirical=(1e-5, 1e-4)
            )  # measured <= 4.2e-7
            np.testing.assert_array_equal(logits.argmax(1), ref_logits.argmax(1))


def test_lone_bdense_runs_as_a_prepared_layer(monkeypatch: pytest.MonkeyPatch) -> None:
    """AlexNet's fc7 (``bdense -> scale_bias``, no threshold to fuse) runs on a prepared
    BinaryLayer (packed weight blocks, laid out once), not the per-call ``bgemm`` of the op-by-op
    form; same integers as the reference (the loop above checks every fused step's value)."""
    torch.manual_seed(0)
    graph = convert(_random_bn(models.create("bitflow_alexnet", image_size=67, num_classes=10), 1))
    x = np.random.default_rng(3).random((2, 3, 67, 67), dtype=np.float32)
    lone = [
        op.name
        for k, op in enumerate(graph.ops)
        if op.type == "bdense" and graph.ops[k + 1].type != "threshold_bits"
    ]
    assert lone, "the model has no lone bdense"
    for kernels in KERNELS:
        eng = Engine(graph, kernels=kernels, threads=2)
        want = eng.run(x, keep=True)[graph.output]

        def refuse(*a: object, **k: object) -> None:
            raise AssertionError("a bdense ran through the unprepared bgemm")

        with monkeypatch.context() as m:
            m.setattr(N, "bgemm", refuse)
            np.testing.assert_array_equal(eng.logits(x), want)


@pytest.mark.parametrize("kernels", KERNELS)
def test_binary_layer_flat_threshold(kernels: str) -> None:
    """bconv2d -> maxpool -> flatten -> threshold with one threshold per flattened (h, w, c)
    position: the oracle thresholds the pooled NHWC int32 output reshaped to [N, Ho*Wo*O]."""
    rng = np.random.default_rng(5)
    n, h, c, o = 2, 9, 70, 24
    x = np.where(rng.random((n, h, h, c)) < 0.5, -1.0, 1.0)
    w = np.where(rng.random((o, 3, 3, c)) < 0.5, -1.0, 1.0)
    acc = _oracle(x, w, 1, 1, 0, (3, 2), None, None).reshape(n, -1)  # 9 -> 9 -> pool 4: [n, 4*4*24]
    thr = rng.integers(-40, 40, size=acc.shape[1]).astype(np.int32)
    d = np.where(rng.random(acc.shape[1]) < 0.5, 1, -1).astype(np.int8)
    layer = N.BinaryLayer(
        _pack(w), c, 1, 1, 0, kernels, thr=thr, direction=d, pool_kernel=3, pool_stride=2
    )
    got = layer(_pack(x), 1)
    assert got.shape == (n, -(-acc.shape[1] // 64))
    np.testing.assert_array_equal(
        _unpack_bits(got, acc.shape[1]), np.where(d > 0, acc < thr, acc > thr)
    )
    with pytest.raises(ValueError, match="flattened threshold"):
        layer(_pack(x[:, :7, :7]), 1)


@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize(
    "o,k,stride,pad,pool", [(96, 11, 4, 2, (3, 2)), (20, 3, 1, 1, None), (33, 5, 2, 0, (2, 2))]
)
def test_int8_conv_layer_matches_torch(
    kernels: str, o: int, k: int, stride: int, pad: int, pool: tuple | None
) -> None:
    """uint8 x int8 convolution (exact in float64: |sum| < 2^53), max-pool, threshold."""
    rng = np.random.default_rng(o)
    x = rng.integers(0, 256, size=(2, 27, 27, 3), dtype=np.uint8)
    w = rng.integers(-128, 128, size=(o, k, k, 3), dtype=np.int8)
    acc = _oracle(x.astype(np.float64), w.astype(np.float64), stride, pad, 0, pool, None, None)
    kw: dict = {} if pool is None else {"pool_kernel": pool[0], "pool_stride": pool[1]}
    np.testing.assert_array_equal(N.Int8ConvLayer(w, stride, pad, kernels, **kw)(x, 2), acc)
    thr = rng.integers(-20000, 20000, size=o).astype(np.int32)
    d = np.where(rng.random(o) < 0.5, 1, -1).astype(np.int8)
    bits = N.Int8ConvLayer(w, stride, pad, kernels, thr=thr, direction=d, **kw)(x, 1)
    np.testing.assert_array_equal(_unpack_bits(bits, o), np.where(d > 0, acc < thr, acc > thr))
    with pytest.raises(ValueError, match="3 channels"):
        N.Int8ConvLayer(w, stride, pad, kernels)(np.zeros((1, 27, 27, 4), np.uint8))


def test_engine_uint8_preprocessing_equals_reference() -> None:
    """The engine's in-place fixed-point preprocessing equals the reference executor's
    (round half to even of 255 x, clipped), including exact .5 ties and out-of-range values."""
    from bitflow.ir.reference import preprocess

    torch.manual_seed(0)
    graph = convert(models.create("bitflow_lenet", width=4, fc=16, first_layer="int8").eval())
    eng = Engine(graph, threads=1)
    x = np.random.default_rng(6).random((2, 1, 28, 28), dtype=np.float32)
    x[0, 0, 0, :8] = np.array(
        [0.5, 1.5, 2.5, 253.5, 254.5, -3.0, 300.0, 0.0], np.float32
    ) / np.float32(255)
    np.testing.assert_array_equal(eng._prepare(x), preprocess(graph, x))
    x[1, 0, 3, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or infinity"):
        eng._prepare(x)
