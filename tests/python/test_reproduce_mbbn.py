"""The MBBN reproduction pipeline on tiny settings (plumbing and exactness, not accuracy)."""

from __future__ import annotations

from pathlib import Path

import pytest

from bitflow.analysis.reproduce_mbbn import reproduce_mbbn, speedup_curve
from bitflow.nn.mbbn import speedup_theory


@pytest.mark.e2e
def test_reproduce_mbbn_tiny(tmp_path: Path) -> None:
    r = reproduce_mbbn(
        tmp_path,
        bits=(2, 1),
        epochs=1,
        limit_train=256,
        limit_test=100,
        width=4,
        gemm_size=128,
        log=lambda m: None,
    )
    rows = r["table"]
    assert [row["bits"] for row in rows][:3] == ["32/32", "2/2", "1/1"]
    for row in rows[1:]:
        # every converted MBBN model equals its PyTorch model (levels and predictions)
        assert row["prediction_mismatches"] == 0 and row["sign_mismatches"] == 0
        assert row["accuracy_torch"] == row["accuracy_integer"]
    # compression_weights is float32 bits over stored weight bits per weight: 32 / (the number
    # of weight planes the converted checkpoint stores: the leading axis of a *_planes op's
    # weights, 1 for bconv2d / bdense); test_weight_compression_is_what_the_file_stores checks
    # the planes against the packed bytes of a converted file
    from bitflow.convert import convert
    from bitflow.train import model_from_checkpoint

    for row, run in zip(rows[1:3], ("m2k2", "m1k1"), strict=True):
        model, _ = model_from_checkpoint(tmp_path / run / "best.pt")
        g = convert(model)
        planes = {
            g.tensors[op.params["w"]].shape[0] if op.type.endswith("_planes") else 1
            for op in g.ops
            if op.type in ("bconv2d", "bdense", "bconv2d_planes", "bdense_planes")
        }
        assert len(planes) == 1 and row["compression_weights"] == 32 / planes.pop(), row
    for row in rows[1:3]:
        assert row["compression_file"] == pytest.approx(
            row["float32_param_bytes"] / row["file_bytes"]
        )
        assert row["file_bytes"] > 0
    assert (tmp_path / "fig7_speedup.png").read_bytes()[:4] == b"\x89PNG"
    assert "Fig. 7" in (tmp_path / "report.txt").read_text()


def test_speedup_curve_has_theory_and_checks_products() -> None:
    rows = speedup_curve(64, max_bits=3, reps=1)
    assert [r["bits"] for r in rows] == [1, 2, 3]
    for r in rows:
        assert r["theory_speedup"] == pytest.approx(speedup_theory(r["bits"], r["bits"], 64))
        assert r["encoded_s"] > 0 and r["float32_s"] > 0


@pytest.mark.e2e
def test_cli_reproduce_mbbn_is_wired() -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "bitflow", "reproduce", "mbbn", "--data", "cifar10"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    # the mbbn branch runs (and refuses a data set it does not reproduce on) instead of doing nothing
    assert r.returncode == 2 and "reproduce mbbn runs on Fashion-MNIST" in r.stderr


@pytest.mark.parametrize(
    "kw, msg", [({"epochs": 0}, "epochs"), ({"bits": (9,)}, "1..8"), ({"bits": ()}, "1..8")]
)
def test_reproduce_mbbn_rejects_bad_settings(
    tmp_path: Path, kw: dict[str, object], msg: str
) -> None:
    with pytest.raises(ValueError, match=msg):
        reproduce_mbbn(tmp_path, log=lambda m: None, **kw)  # type: ignore[arg-type]


@pytest.mark.e2e
def test_cli_reproduce_mbbn_passes_epochs_bits_method() -> None:
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-m", "bitflow", "reproduce", "mbbn", "--bits", "3,9", "--epochs", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "bits must be M = K values in 1..8, got (3, 9)" in r.stderr
    r = subprocess.run(
        [sys.executable, "-m", "bitflow", "reproduce", "mbbn", "--method", "nope"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "invalid choice" in r.stderr


@pytest.mark.parametrize("k", [1, 2])
def test_weight_compression_is_what_the_file_stores(k: int) -> None:
    """The table's weight compression ``32/K`` against the real packed weights of the converted
    model: at width 64 every binary layer's fan-in per pixel is a multiple of 64 channels (64,
    128, 256 channels; the FC reads 256 x 3 x 3 = 36 words), so the uint64 words hold exactly K
    bits per float32 weight and (float32 bytes) / (packed bytes) = 4 / (K/8) = 32/K. (At width 4
    each pixel's 4 channels fill a 64-bit word: 1/16 of the words is data; the table's column is
    the bit count, the file column the real one.)"""
    from torch import nn

    from bitflow.convert import convert
    from bitflow.models import create

    model = create("mbbn_vgg_small", width=64, fc=128, bits_a=k, bits_w=k).eval()
    g = convert(model)
    binary = [
        op for op in g.ops if op.type in ("bconv2d", "bdense", "bconv2d_planes", "bdense_planes")
    ]
    assert len(binary) == 5
    packed = sum(g.tensors[op.params["w"]].nbytes for op in binary)
    layers = [m for m in model.modules() if type(m).__name__ in ("MBitConv2d", "MBitLinear")]
    assert len(layers) == 5 and all(isinstance(m.weight, nn.Parameter) for m in layers)
    float_bytes = 4 * sum(m.weight.numel() for m in layers)
    assert float_bytes / packed == 32 / k
