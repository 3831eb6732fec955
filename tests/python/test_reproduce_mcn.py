"""`bitflow reproduce mcn` on a tiny setting: the tables' structure, and every parameter count is
the count of the model that was trained (an independent rebuild from the checkpoint's config)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bitflow.analysis.reproduce_mcn import (
    PAPER_TABLE2,
    PAPER_TABLE3,
    paper_width_counts,
    reproduce_mcn,
)
from bitflow.models import create
from bitflow.train import model_from_checkpoint

FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.slow  # 11 one-epoch trainings on 64 images and a conversion: ~2 minutes here
@pytest.mark.skipif(
    not (FASHION / "t10k-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed"
)
def test_reproduce_mcn_tiny(tmp_path: Path, mcn_tiny: Any) -> None:
    r = reproduce_mcn(tmp_path, **mcn_tiny.kwargs, limit_train=64, limit_test=32)
    (row,) = r["table2"]
    mcn_tiny.check_table2_row(row)
    for x in row["models"].values():
        assert 0.0 <= x["test_accuracy"] <= 1.0
    assert r["table2_paper_widths"] == []
    t3 = {x["key"]: x for x in r["table3"]}
    assert set(t3) == {"mcn1", "mcn", "mcn1_u8", "float", "binaryconnect", "bnn", "xnor"}
    for k, x in t3.items():
        m, _ = model_from_checkpoint(x["checkpoint"])
        assert x["params"] == sum(p.numel() for p in m.parameters()), k
        assert tuple(x["paper"]) == PAPER_TABLE3.get(k, (None, None))
    d = t3["mcn1_u8"]["deploy"]
    assert d["samples"] == 32 and "conv2d_u8b1" in d["ops"] and "threshold_u8" in d["ops"]
    assert d["sign_mismatches"] == 0 and d["prediction_mismatches_unexplained"] == 0
    md = (tmp_path / "report.md").read_text()
    assert "Table II analogue" in md and "Table III analogue" in md and "| 2-2-2-4 | 8 |" in md
    assert json.loads((tmp_path / "report.json").read_text())["table3"][1]["paper"] == [
        99.52,
        95.39,
    ]
    assert (tmp_path / "mcn_tables.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow  # builds the four 1-17 M parameter models (~30 s)
def test_paper_width_counts_are_the_models_counts() -> None:
    paper = {x["widths"]: x for x in paper_width_counts()}
    for w, ref in PAPER_TABLE2.items():
        x = paper["-".join(map(str, w))]
        want = create("mcn_wrn", in_channels=3, depth=20, widths=w).binary_parameters()
        assert x["binary_params"] == want and x["paper_m"] == ref["params_m"]
        assert abs(x["binary_params"] / 1e6 / ref["params_m"] - 1) < 0.02  # Table II within 2 %
