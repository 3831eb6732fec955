"""Shared fixtures of the native kernel tests: the extension module and the kernel list."""

from __future__ import annotations

import pytest
from native_oracles import ALL_KERNELS

native = pytest.importorskip("bitflow._native", reason="the compiled extension is not built")


@pytest.fixture(params=[*ALL_KERNELS, "auto"])
def kernels(request: pytest.FixtureRequest) -> str:
    """Every kernel set name and "auto" (the per-op selection, which may mix sets on a CPU
    where no tier is fully eligible); skipped when this build or CPU cannot run it."""
    name = request.param
    if name != "auto" and name not in native.available_kernels():
        pytest.skip(f"kernel set {name!r} is not eligible here (not compiled or CPU lacks the ISA)")
    return name


@pytest.fixture(params=[*(k for k in ALL_KERNELS if k != "ref"), "auto"])
def fast_kernels(request: pytest.FixtureRequest) -> str:
    """Every optimized kernel set and "auto" (compared against 'ref'); skipped when not eligible."""
    name = request.param
    if name != "auto" and name not in native.available_kernels():
        pytest.skip(f"kernel set {name!r} is not eligible here (not compiled or CPU lacks the ISA)")
    return name
