"""The bitflow-net reproduction pipeline end to end on tiny settings (plumbing, not accuracy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitflow.analysis.reproduce import reproduce_bitflow_net


@pytest.mark.e2e
def test_reproduce_bitflow_net_tiny(tmp_path: Path) -> None:
    r = reproduce_bitflow_net(tmp_path, epochs=1, limit_train=256, limit_test=200, width=4, log=lambda m: None)
    for task in ("fashion-mnist-10", "fashion-mnist-binary"):
        t = r["tasks"][task]
        # XNOR-Net and BitFlow-Net are one network executed two ways: identical predictions
        assert t["xnor_vs_bitflow_prediction_mismatches"] == 0
        assert t["xnor"] == t["bitflow"] == t["torch"] == t["engine"]
        assert t["sign_mismatches"] == 0 and t["samples"] == 200
    assert r["fig3"]["sign_agreement"] == 1.0
    for png in ("fig2_sign_changing_rate.png", "fig3_batchshift.png"):
        assert (tmp_path / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "Table 2 analogue" in (tmp_path / "report.txt").read_text()
    assert r["table3"]["total"]["paper"]["xnor"]["size_mb"] == 6.951
    # cached: a second call reuses every finished training
    r2 = reproduce_bitflow_net(tmp_path, epochs=1, limit_train=256, limit_test=200, width=4, log=lambda m: None)
    def untimed(t: dict) -> dict:
        return {k: v for k, v in t.items() if k not in ("seconds", "seconds_per_epoch")}

    assert {k: untimed(v) for k, v in r2["tasks"].items()} == {k: untimed(v) for k, v in r["tasks"].items()}
    assert r2["tasks"]["fashion-mnist-10"]["seconds_per_epoch"] == r["tasks"]["fashion-mnist-10"]["seconds_per_epoch"]
