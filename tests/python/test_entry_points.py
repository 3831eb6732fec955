"""The two generated/entry-point modules: ``python -m bitflow`` is the ``bitflow`` command, and
``python -m bitflow.ir.ops.docs`` prints exactly ``docs/ops.md``, which names every declared op."""

from __future__ import annotations

import re
import runpy
import subprocess
import sys
from pathlib import Path

import pytest

from bitflow.ir.ops import OPS

ROOT = Path(__file__).resolve().parents[2]
BITFLOW = Path(sys.executable).parent / "bitflow"  # the console script pip installed


def _module(name: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``python -m name argv`` in this process (so coverage sees it): exit code, out, err."""
    old = sys.argv
    sys.argv = [name, *argv]
    try:
        runpy.run_module(name, run_name="__main__", alter_sys=True)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:
        sys.argv = old
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.skipif(not BITFLOW.exists(), reason="the bitflow console script is not installed")
@pytest.mark.parametrize("argv", [["--help"], ["convert", "--help"], ["no-such-command"]])
def test_python_m_bitflow_is_the_bitflow_command(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = _module("bitflow", argv, capsys)
    cmd = subprocess.run([str(BITFLOW), *argv], capture_output=True, text=True, timeout=120)
    assert code == cmd.returncode and out == cmd.stdout
    # argparse names the program: "python -m bitflow" prints __main__.py, the script "bitflow"
    norm = re.compile(r"__main__\.py|bitflow(?= )")
    assert norm.sub("PROG", err) == norm.sub("PROG", cmd.stderr)
    assert (code == 0) == (argv[-1] == "--help") and (out if code == 0 else err)


def test_ops_docs_module_prints_docs_ops_md(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = _module("bitflow.ir.ops.docs", [], capsys)
    text = (ROOT / "docs" / "ops.md").read_text()
    assert (code, err) == (0, "") and out == text
    rows = [ln for ln in text.splitlines() if ln.startswith("| `")]
    named = [re.match(r"\| `([^`]+)` \|", ln).group(1) for ln in rows]  # type: ignore[union-attr]
    assert named == sorted(OPS) and len(named) == len(set(named))
    for ln, name in zip(rows, named, strict=True):
        assert f"| {OPS[name].group} |" in ln
