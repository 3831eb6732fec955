"""In CI (``CI=true``) a missing or broken native extension fails the test run; locally the
native tests are skipped instead. The extension is hidden from a child pytest by a
``sitecustomize`` that makes ``import bitflow._native`` raise ImportError."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _pytest_without_native(tmp_path: Path, ci: str | None) -> subprocess.CompletedProcess[str]:
    (tmp_path / "sitecustomize.py").write_text(
        "import sys\nsys.modules['bitflow._native'] = None\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["PYTHONPATH"] = os.pathsep.join([str(tmp_path), env.get("PYTHONPATH", "")])
    if ci is not None:
        env["CI"] = ci
    # "tests" minus tests/python: tests/native's conftest then skips the directory (a conftest
    # named on the command line itself cannot skip)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "tests",
            "--ignore",
            str(ROOT / "tests/python"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.e2e
def test_missing_extension_skips_locally_and_fails_in_ci(tmp_path: Path) -> None:
    local = _pytest_without_native(tmp_path, None)
    # 5: nothing collected (the whole directory is skipped), not a failure
    assert local.returncode in (0, 5) and "1 skipped" in local.stdout, (
        local.stdout[-2000:] + local.stderr[-2000:]
    )
    in_ci = _pytest_without_native(tmp_path, "true")
    assert in_ci.returncode not in (0, 5)  # a failure, not "all skipped"
    assert (
        "CI=true but the native extension bitflow._native does not import"
        in in_ci.stdout + in_ci.stderr
    )
