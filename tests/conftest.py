"""Test-session settings shared by every test directory."""

from __future__ import annotations

import os

import pytest


def ci() -> bool:
    """True on a CI runner (``CI=true``, as GitHub Actions, GitLab and most others set it)."""
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


def pytest_configure(config) -> None:  # type: ignore[no-untyped-def]
    # Locally a missing extension skips the native tests (importorskip); in CI a broken native
    # build must fail the run, not turn into a page of skips.
    if ci():
        try:
            import bitflow._native  # noqa: F401
        except ImportError as e:
            raise pytest.UsageError(
                f"CI=true but the native extension bitflow._native does not import: {e}"
            ) from e
    # Hypothesis: CI replays one fixed set of examples (derandomize), so a landing is decided by
    # the code, not by which random examples a run drew; local runs keep drawing new ones (and
    # scripts/fuzz_bfn.py runs long), and whatever they find is added as an explicit case.
    try:
        from hypothesis import settings

        settings.register_profile("ci", derandomize=True)
        if ci():
            settings.load_profile("ci")
    except ImportError:
        pass
    # The models under test are tiny: one intra-op thread is faster than two, and it keeps
    # results independent of how busy the machine is (two OpenMP teams on two cores thrash).
    try:
        import torch
    except ImportError:
        return
    torch.set_num_threads(1)
