"""The helper-thread pool: many threads, concurrent callers, and use after fork()."""

from __future__ import annotations

import os
import sys
import time

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
