"""The bitflow-net reproduction pipeline end to end on tiny settings (plumbing, not accuracy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitflow.analysis.reproduce import reproduce_bitflow_net


@pytest.mark.e2e
def test_reproduce_bitflow_net_tiny(tmp_path: Path) -> None:
    r = reproduce_bitflow_net(
        tmp_path, epochs=1, limit_train=256, limit_test=200, width=4, log=lambda m: None
    )
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
    # ours, not the paper's constant read back: 7,289,088 B (hand derivation in test_summary.py)
    assert r["table3"]["total"]["xnor"]["size_mb"] == 7_289_088 / 2**20
    assert r["table3"]["total"]["bitflow_packed"]["size_mb"] == 7_230_528 / 2**20
    # cached: a second call reuses every finished training
    r2 = reproduce_bitflow_net(
        tmp_path, epochs=1, limit_train=256, limit_test=200, width=4, log=lambda m: None
    )

    def untimed(t: dict) -> dict:
        return {k: v for k, v in t.items() if k not in ("seconds", "seconds_per_epoch")}

    assert {k: untimed(v) for k, v in r2["tasks"].items()} == {
        k: untimed(v) for k, v in r["tasks"].items()
    }
    assert (
        r2["tasks"]["fashion-mnist-10"]["seconds_per_epoch"]
        == r["tasks"]["fashion-mnist-10"]["seconds_per_epoch"]
    )


FASHION = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(
    not (FASHION / "t10k-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed"
)
def test_fig3_agreement_is_measured_on_the_converted_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fig. 3's sign agreement compares PyTorch's BatchNorm with the converter's threshold (the
    reference executor's bits): 1.0 for a correct conversion, and below 1.0 when the converted
    threshold is off by one, which a second derivation of tau could not notice."""
    import numpy as np
    import torch
    from test_convert import calibrate, images

    import bitflow.convert.batchshift as bs
    from bitflow.analysis.reproduce import _fig3
    from bitflow.models import create
    from bitflow.train.checkpoint import save_checkpoint

    torch.manual_seed(3)
    model = create("bitflow_vgg_small", width=8, fc=16)
    calibrate(model, torch.from_numpy(images(64, 1, 28, seed=4)), seed=5, gamma_sign=1)
    ckpt = tmp_path / "m.pt"
    save_checkpoint(ckpt, {"model": model.state_dict(), "model_config": model.bitflow_config})
    f3 = _fig3(str(ckpt), "fashion-mnist", tmp_path / "f3.png", limit=64)
    assert f3["sign_agreement"] == 1.0 and f3["sign_mismatches"] == 0 and f3["points"] > 0
    assert f3["threshold"] == int(
        np.ceil(f3["tau"])
    )  # gamma > 0: T = ceil(tau) (tau not an integer here)
    orig = bs.int_thresholds

    def off_by_one(*a, **k):  # type: ignore[no-untyped-def]
        th = orig(*a, **k)
        return (
            th._replace(thr=th.thr + 1)
            if hasattr(th, "_replace")
            else type(th)(thr=th.thr + 1, direction=th.direction, kind=th.kind, tau=th.tau)
        )

    monkeypatch.setattr(bs, "int_thresholds", off_by_one)
    bad = _fig3(str(ckpt), "fashion-mnist", tmp_path / "f3b.png", limit=64)
    assert bad["threshold"] == f3["threshold"] + 1 and bad["sign_mismatches"] > 0
