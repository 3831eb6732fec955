"""Test-session settings shared by every test directory."""

from __future__ import annotations


def pytest_configure(config) -> None:  # type: ignore[no-untyped-def]
    # The models under test are tiny: one intra-op thread is faster than two, and it keeps
    # results independent of how busy the machine is (two OpenMP teams on two cores thrash).
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
