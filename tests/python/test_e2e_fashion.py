"""End to end on the full Fashion-MNIST test set (slow): train -> convert -> verify -> engine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest


def _cli(*args: str, cwd: Path) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "bitflow", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=3000,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout.strip().splitlines()[-1]


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("first_layer", ["float", "int8"])
def test_trained_model_is_exact_on_the_full_test_set(tmp_path: Path, first_layer: str) -> None:
    _cli(
        "train",
        "--model",
        "bitflow_vgg_small",
        "--epochs",
        "1",
        "--limit-train",
        "6000",
        "--out",
        "run",
        "--model-arg",
        "width=16",
        "--model-arg",
        f"first_layer={first_layer}",
        "--json",
        cwd=tmp_path,
    )
    _cli("convert", "run/best.pt", "-o", "m.bfn", "--json", cwd=tmp_path)
    v = json.loads(_cli("verify", "run/best.pt", "m.bfn", "--json", cwd=tmp_path))
    assert v["samples"] == 10000
    assert v["prediction_mismatches"] == 0 and v["sign_mismatches"] == 0
    assert v["accuracy_torch"] == v["accuracy_integer"]
    r = json.loads(_cli("run", "m.bfn", "--json", cwd=tmp_path))
    assert r["reference"]["exact_mismatches"] == 0
    assert r["accuracy"] == pytest.approx(
        v["accuracy_integer"],
        abs=r["reference"].get("first_layer_end_to_end", {}).get("near_threshold", 0) / 10000,
    )
