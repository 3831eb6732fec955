"""Source-level checks of issue 14 section 4 that no linter does for us.

- Replayable seeds: no random generator is seeded from ``hash(...)``. ``hash(None)`` (and of
  ``str``) changes from process to process on Python 3.11, so a failing case could not be
  replayed; derive seeds from ``zlib.crc32(repr(case).encode())`` or a fixed integer.
"""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TREES = ("src", "tests", "scripts", "benchmarks")
SEEDERS = {
    "default_rng",
    "manual_seed",
    "seed",
    "RandomState",
    "Random",
    "Generator",
    "SeedSequence",
}


def hash_seeds(text: str) -> list[int]:
    """Lines where a seeding call takes an argument that calls the builtin ``hash``."""
    bad = []
    for node in ast.walk(ast.parse(text)):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        name = f.attr if isinstance(f, ast.Attribute) else f.id if isinstance(f, ast.Name) else ""
        if name not in SEEDERS:
            continue
        for arg in [*node.args, *(k.value for k in node.keywords)]:
            if any(
                isinstance(n, ast.Call) and isinstance(n.func, ast.Name) and n.func.id == "hash"
                for n in ast.walk(arg)
            ):
                bad.append(node.lineno)
    return bad


def test_no_seed_comes_from_hash() -> None:
    files = [f for t in TREES for f in sorted((REPO / t).rglob("*.py"))]
    assert len(files) > 50
    bad = [f"{f.relative_to(REPO)}:{line}" for f in files for line in hash_seeds(f.read_text())]
    assert bad == []


def test_the_seed_check_finds_hash_seeds() -> None:
    src = (
        "import numpy as np, torch, zlib\n"
        "a = np.random.default_rng(hash(case) % 2**32)\n"
        "b = np.random.default_rng(zlib.crc32(repr(case).encode()))\n"
        "torch.manual_seed(17 + hash((1, None)))\n"
        "c = hash(case)\n"
    )
    assert hash_seeds(src) == [2, 4]


PACKERS = {"packbits", "unpackbits", "bitwise_left_shift", "left_shift"}


def bit_packers(text: str) -> list[int]:
    """Lines that pack or unpack bits by hand: ``np.packbits`` / ``np.unpackbits``, or a shift by
    ``np.arange(64)`` (summing shifted words)."""
    bad = []
    for node in ast.walk(ast.parse(text)):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            if node.func.attr in PACKERS:
                bad.append(node.lineno)
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.LShift):
            for side in (node.left, node.right):
                if any(
                    isinstance(n, ast.Call)
                    and isinstance(n.func, ast.Attribute)
                    and n.func.attr == "arange"
                    and n.args
                    and isinstance(n.args[0], ast.Constant)
                    and n.args[0].value == 64
                    for n in ast.walk(side)
                ):
                    bad.append(node.lineno)
    return bad


def test_one_bit_packing_implementation_in_python() -> None:
    """Issue 14 section 4: the engine-layout packing lives in ``bitflow._bits`` alone (``ir.bits``,
    ``nn.mbbn``, the checker and the bench baselines use it); a second implementation elsewhere
    in the package fails here."""
    pkg = REPO / "src" / "bitflow"
    where = {
        f"{f.relative_to(pkg)}:{line}"
        for f in sorted(pkg.rglob("*.py"))
        for line in bit_packers(f.read_text())
    }
    assert where and all(w.startswith("_bits.py:") for w in where), sorted(where)


def test_the_packing_check_finds_hand_packing() -> None:
    src = (
        "import numpy as np\n"
        "a = np.packbits(x, bitorder='little')\n"
        "b = (p << np.arange(64, dtype=np.uint64)).sum(-1)\n"
        "c = x << 3\n"
    )
    assert bit_packers(src) == [2, 3]


# ---------------------------------------------------------------- the CI gates, as declared
def _pytest_with_project_config(tmp_path: Path, test_text: str, *extra: str) -> tuple[int, str]:
    """Run pytest on one test file under the repository's own ``[tool.pytest.ini_options]``
    (``-c pyproject.toml``), in a subprocess."""
    import subprocess
    import sys

    f = tmp_path / "test_gate.py"
    f.write_text(test_text)
    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(REPO / "pyproject.toml"), "--rootdir"]
        + [str(tmp_path), "-p", "no:cacheprovider", "-q", str(f), *extra],
        capture_output=True,
        text=True,
        timeout=120,
    )
    return r.returncode, r.stdout + r.stderr


def test_pytest_gates_act_as_declared(tmp_path: Path) -> None:
    """issue 14 section 4: pytest with --strict-markers / --strict-config, xfail_strict and a
    per-test timeout, checked by what pytest does under the project's configuration."""
    head = "import time\nimport pytest\n"
    rc, out = _pytest_with_project_config(
        tmp_path, head + "@pytest.mark.slwo\ndef test_a() -> None:\n    pass\n"
    )
    assert rc != 0 and "'slwo' not found in `markers`" in out, out  # a misspelt marker
    rc, out = _pytest_with_project_config(
        tmp_path, head + "@pytest.mark.xfail(reason='x')\ndef test_a() -> None:\n    pass\n"
    )
    assert rc == 1 and "XPASS(strict)" in out, out  # an xfail that passes fails the run
    rc, out = _pytest_with_project_config(
        tmp_path, head + "def test_a() -> None:\n    time.sleep(30)\n", "-o", "timeout=1"
    )
    assert rc == 1 and "Timeout" in out, out  # the timeout key is read (pytest-timeout)
    # --strict-config: an unknown key in the configuration is an error, not a warning
    bad = tmp_path / "bad.toml"
    bad.write_text(
        (REPO / "pyproject.toml").read_text().replace("xfail_strict", "xfail_strickt", 1)
    )
    f = tmp_path / "test_ok.py"
    f.write_text("def test_a() -> None:\n    pass\n")
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "pytest", "-c", str(bad), "--rootdir", str(tmp_path)]
        + ["-p", "no:cacheprovider", "-q", str(f)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode != 0 and "xfail_strickt" in r.stdout + r.stderr


def test_ci_runs_the_lint_gates_before_the_tests() -> None:
    """CI (.ci/run) -> scripts/test.sh -> scripts/lint.sh (ruff check, ruff format --check,
    mypy, each a command that fails the script under ``set -e``) -> pytest; the pre-commit
    config runs the same three tools."""
    ci = (REPO / ".ci" / "run").read_text()
    assert "bash scripts/test.sh" in ci
    test_sh = (REPO / "scripts" / "test.sh").read_text().splitlines()
    run = [ln.strip() for ln in test_sh if ln.strip() and not ln.lstrip().startswith("#")]
    assert "set -euo pipefail" in run
    lint_at = run.index("bash scripts/lint.sh")
    assert any("pytest" in ln for ln in run[lint_at + 1 :])
    lint = (REPO / "scripts" / "lint.sh").read_text()
    assert "set -euo pipefail" in lint
    for cmd in ('/bin/ruff" check', '/bin/ruff" format --check', '/bin/mypy"'):
        assert cmd in lint, cmd
    pre = (REPO / ".pre-commit-config.yaml").read_text()
    for entry in (".venv/bin/ruff check", ".venv/bin/ruff format --check", ".venv/bin/mypy"):
        assert f"entry: {entry}" in pre, entry
