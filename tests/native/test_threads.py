"""The helper-thread pool: many threads, concurrent callers, and use after fork()."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator

import numpy as np
import pytest
from native_oracles import pack_bits, random_pm

from bitflow import _native

pytestmark = pytest.mark.native


def _case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    a, b = random_pm(rng, (37, 300)), random_pm(rng, (45, 300))
    expect = (a.astype(np.int64) @ b.astype(np.int64).T).astype(np.int32)
    return pack_bits(a), pack_bits(b), expect


@pytest.mark.parametrize("threads", [2, 3, 8, 64])
def test_more_threads_than_cores_or_tasks(threads: int) -> None:
    pa, pb, expect = _case(threads)
    for _ in range(5):
        np.testing.assert_array_equal(_native.bgemm(pa, pb, 300, threads=threads), expect)


@pytest.mark.skipif(not hasattr(os, "fork") or sys.platform == "darwin", reason="needs fork()")
def test_pool_usable_after_fork() -> None:
    pa, pb, expect = _case(1)
    # start the parent's helper threads first
    np.testing.assert_array_equal(_native.bgemm(pa, pb, 300, threads=2), expect)
    pid = os.fork()
    if pid == 0:  # child: the parent's helpers do not exist here; this must not hang
        ok = np.array_equal(_native.bgemm(pa, pb, 300, threads=2), expect)
        os._exit(0 if ok else 3)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
            break
        time.sleep(0.05)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        pytest.fail("bgemm with threads=2 hung in a forked child")
    np.testing.assert_array_equal(_native.bgemm(pa, pb, 300, threads=2), expect)


THREADS = (1, 2, 3, 64)


@pytest.fixture(params=["grain0", "default"])
def grain(request: pytest.FixtureRequest) -> Iterator[str]:
    """Run with the default work-size partitioning and with a zero grain, where every op
    splits over all threads it is given (small test inputs then take every split)."""
    old = _native._set_grain_ns(0.0) if request.param == "grain0" else None
    yield request.param
    if old is not None:
        _native._set_grain_ns(old)


def _layer_case(rng: np.random.Generator, n: int, h: int, c: int, o: int) -> dict[str, np.ndarray]:
    x = pack_bits(random_pm(rng, (n, h, h, c)))
    w = pack_bits(random_pm(rng, (o, 3, 3, c)))
    thr = rng.integers(-3 * 3 * c // 4, 3 * 3 * c // 4, size=o).astype(np.int32)
    direction = np.where(rng.random(o) < 0.5, -1, 1).astype(np.int8)  # AND and OR pools
    return {"x": x, "w": w, "thr": thr, "direction": direction}


@pytest.mark.parametrize("pool", [None, (3, 3)])
@pytest.mark.parametrize(("n", "h", "c", "o"), [(1, 13, 96, 130), (5, 9, 64, 64), (16, 6, 200, 33)])
def test_prepared_binary_layer_identical_for_any_thread_count(
    kernels: str, grain: str, pool: tuple[int, int] | None, n: int, h: int, c: int, o: int
) -> None:
    """Conv (zero padding: the per-task correction), pool on bits and threshold, split by work
    size: every thread count gives the same bits; so does the int32 output without threshold."""
    d = _layer_case(np.random.default_rng(n * h + c + o), n, h, c, o)
    kw = {} if pool is None else {"pool_kernel": pool, "pool_stride": (2, 2)}
    layer = _native.BinaryLayer(
        d["w"], c, (1, 1), (1, 1), 0, kernels, d["thr"], d["direction"], **kw
    )
    raw = _native.BinaryLayer(d["w"], c, (1, 1), (1, 1), 0, kernels)
    want_bits, want_acc = layer(d["x"], 1), raw(d["x"], 1)
    want_acc_ref = _native.bconv2d(d["x"], d["w"], c, (1, 1), (1, 1), 0, "ref", 1)
    np.testing.assert_array_equal(want_acc, want_acc_ref)
    for threads in THREADS[1:]:
        np.testing.assert_array_equal(
            layer(d["x"], threads), want_bits, err_msg=f"threads={threads}"
        )
        np.testing.assert_array_equal(raw(d["x"], threads), want_acc, err_msg=f"threads={threads}")


@pytest.mark.parametrize("n", [1, 16])
def test_int8_layer_and_ops_identical_for_any_thread_count(
    kernels: str, grain: str, n: int
) -> None:
    rng = np.random.default_rng(n)
    x = rng.integers(0, 256, size=(n, 35, 35, 3), dtype=np.uint8)
    w = rng.integers(-128, 128, size=(70, 5, 5, 3), dtype=np.int8)
    thr = rng.integers(-2000, 2000, size=70).astype(np.int32)
    direction = np.where(rng.random(70) < 0.5, -1, 1).astype(np.int8)
    layer = _native.Int8ConvLayer(w, (2, 2), (2, 2), kernels, thr, direction, (3, 3), (2, 2))
    acc = _native.conv2d_u8i8(x, w, (2, 2), (2, 2), kernels, 1)
    want = layer(x, 1)
    f = rng.standard_normal((n * 50, 333)).astype(np.float32)
    packed = _native.bitpack(f, kernels, 1)
    xf = rng.standard_normal((n, 2100)).astype(np.float32)
    wf = rng.standard_normal((300, 2100)).astype(np.float32)
    dense = _native.dense_f32(xf, wf, None, kernels, 1)
    for threads in THREADS[1:]:
        np.testing.assert_array_equal(layer(x, threads), want)
        np.testing.assert_array_equal(
            _native.conv2d_u8i8(x, w, (2, 2), (2, 2), kernels, threads), acc
        )
        np.testing.assert_array_equal(_native.bitpack(f, kernels, threads), packed)
        np.testing.assert_array_equal(_native.dense_f32(xf, wf, None, kernels, threads), dense)


def test_engine_identical_for_any_thread_count(grain: str) -> None:
    """A converted zoo model (int8 first layer, binary convs with pools, dense layers): the
    logits are identical bit for bit for threads 1, 2, 3 and 64, at batch 1 and 4."""
    pytest.importorskip("torch")
    from bitflow.bench import zoo_model
    from bitflow.engine import Engine

    graph, _ = zoo_model("bitflow_alexnet", first_layer="int8", image_size=96)
    x = np.random.default_rng(0).random((4, 3, 96, 96), dtype=np.float32)
    for batch in (1, 4):
        want = Engine(graph, threads=1).logits(x[:batch])
        for threads in THREADS[1:]:
            np.testing.assert_array_equal(Engine(graph, threads=threads).logits(x[:batch]), want)
