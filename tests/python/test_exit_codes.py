"""Exit codes of ``bitflow verify`` / ``bitflow run``: 0 when every difference is a legitimate
near-threshold one (README "Exit codes"), 1 for a real mismatch, 2 for a usage / input error.

The model is built so that one float first-layer decision decides the class: a 1x1 float conv
(weight 1, bias 0.3) -> BatchNorm -> sign -> BinaryLinear(784 -> 2) whose two rows differ only
in feature 0, so ``logit_0 - logit_1 = 2 s_0`` and the prediction is class 0 iff ``s_0 = +1``.
Fashion-MNIST's top-left pixel is 0 in the first test images, so ``y_0 = 1 * 0 + 0.3f = 0.3f``
exactly (one float32 addition of 0), and PyTorch's BatchNorm (threshold 0.2) passes it. Moving
the graph's float threshold to ``nextafter(0.3f, +inf)`` (1 ulp = 2^-25 ~ 3e-8 above y_0, within
the first layer's error bound ``2 K eps32 (|w| + |b|) = 2 * 2^-23 * 1.3 ~ 3.1e-7``) flips ``s_0``
in every sample: every prediction changes, and every change is a near-threshold one. Moving it to
0.5 instead flips it 0.2 away from the threshold: a real mismatch.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from bitflow import cli
from bitflow.convert import convert
from bitflow.data import eval_arrays
from bitflow.ir.graph import Graph
from bitflow.models import _factory
from bitflow.nn import BinaryLinear
from bitflow.train.checkpoint import save_checkpoint

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not (FASHION / "t10k-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed"
)
NAME = "_test_first_sign_decides"
N = 12  # samples (--limit)


class Decider(nn.Module):
    in_channels, image_size = 1, 28

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 1, 1)
        self.bn = nn.BatchNorm2d(1)
        self.fc = BinaryLinear(784, 2, weight_quantizer="sign")
        with torch.no_grad():
            self.conv.weight.fill_(1.0)
            self.conv.bias.fill_(0.3)
            self.bn.running_mean.fill_(0.2)  # sign(BN(y)) = sign(y - 0.2)
            self.bn.running_var.fill_(1.0 - self.bn.eps)
            self.fc.weight.fill_(1.0)
            self.fc.weight[1, 0] = -1.0  # logit_0 - logit_1 = 2 s_0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.bn(self.conv(x)), 1))


@pytest.fixture(scope="module")
def registered() -> Iterator[None]:
    _factory._MODELS.register(NAME)(Decider)
    yield
    del _factory._MODELS._items[NAME]


def _with_threshold(g: Graph, value: float) -> Graph:
    out = Graph.from_json(copy.deepcopy(g.to_json()), {k: v.copy() for k, v in g.tensors.items()})
    op = next(o for o in out.ops if o.type == "threshold_f32_bits")
    out.tensors[op.params["thr"]] = np.full_like(out.tensors[op.params["thr"]], value)
    return out


@pytest.fixture(scope="module")
def files(registered: None, tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    d = tmp_path_factory.mktemp("exit")
    model = _factory.create(NAME).eval()
    x, _ = eval_arrays("fashion-mnist", N)
    assert np.all(x[:, 0, 0, 0] == 0)  # the premise of the module docstring
    with torch.no_grad():
        assert np.all(model(torch.from_numpy(x)).argmax(1).numpy() == 0)  # s_0 = +1: class 0
    save_checkpoint(
        d / "m.pt", {"model": model.state_dict(), "model_config": model.bitflow_config, "seed": 0}
    )
    g = convert(model)
    t = float(g.tensors[next(o for o in g.ops if o.type == "threshold_f32_bits").params["thr"]][0])
    assert t == pytest.approx(0.2)
    up = float(np.nextafter(np.float32(0.3), np.float32(np.inf)))
    graphs = {
        "good": g,
        "near": _with_threshold(g, up),
        "real": _with_threshold(g, 0.5),
        "at": _with_threshold(g, float(np.float32(0.3))),
    }
    for k, gr in graphs.items():
        gr.save(str(d / f"{k}.bfn"))
    return {"dir": d, "graphs": graphs}


def _main(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict]:
    code = cli.main(list(argv))
    out = capsys.readouterr().out
    return code, (json.loads(out) if out.strip().startswith("{") else {})


def test_verify_exit_codes(files: dict, capsys: pytest.CaptureFixture[str]) -> None:
    d = files["dir"]
    code, r = _main(
        capsys, "verify", str(d / "m.pt"), str(d / "good.bfn"), "--limit", str(N), "--json"
    )
    assert code == 0 and r["prediction_mismatches"] == 0 and r["near_threshold"]["count"] == 0
    # every prediction differs, each because of a sign 1 ulp from its threshold: exit 0
    code, r = _main(
        capsys, "verify", str(d / "m.pt"), str(d / "near.bfn"), "--limit", str(N), "--json"
    )
    assert r["prediction_mismatches"] == N and r["prediction_mismatches_unexplained"] == 0, r
    assert r["sign_mismatches"] == 0 and r["near_threshold"]["samples"] == N
    assert code == 0
    assert sum(r["near_threshold"]["by_layer"].values()) == r["near_threshold"]["count"] > 0
    # the text form names the layers with near-threshold events and their counts
    assert cli.main(["verify", str(d / "m.pt"), str(d / "near.bfn"), "--limit", str(N)]) == 0
    (layer, count), *_ = r["near_threshold"]["by_layer"].items()
    want = f"near-threshold {r['near_threshold']['count']} (layer {layer!r} {count}"
    assert want in capsys.readouterr().out
    # 0.2 away from the threshold: real sign mismatches and unexplained predictions: exit 1
    code, r = _main(
        capsys, "verify", str(d / "m.pt"), str(d / "real.bfn"), "--limit", str(N), "--json"
    )
    assert r["sign_mismatches"] > 0 and r["prediction_mismatches_unexplained"] == N and code == 1


@pytest.mark.native
def test_run_exit_codes(
    files: dict, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The engine runs ``at.bfn`` (threshold 0.3f: y_0 passes); the reference runs ``near``
    (threshold 1 ulp above: y_0 fails), so the engine's first-layer bits differ from the
    reference's within the error bound and change every prediction: exit 0. An engine file with
    a corrupted binary weight against the good reference: exit 1."""
    import bitflow.engine.check as check

    d, graphs = files["dir"], files["graphs"]
    orig = check.compare_with_reference
    ref: dict[str, Graph] = {}
    monkeypatch.setattr(
        check, "compare_with_reference", lambda *a, **k: orig(*a, reference_graph=ref["g"], **k)
    )
    ref["g"] = graphs["good"]
    code, r = _main(capsys, "run", str(d / "good.bfn"), "--limit", str(N), "--json")
    assert code == 0 and r["reference"]["prediction_mismatches"] == 0
    ref["g"] = graphs["near"]
    code, r = _main(capsys, "run", str(d / "at.bfn"), "--limit", str(N), "--json")
    rr = r["reference"]
    assert rr["prediction_mismatches"] == N and rr["prediction_mismatches_unexplained"] == 0, rr
    assert rr["exact_mismatches"] == 0 and rr["near_threshold"] > 0 and code == 0
    bad = _with_threshold(graphs["good"], 0.2)
    w = next(o for o in bad.ops if o.type == "bdense").params["w"]
    bad.tensors[w] = bad.tensors[w].copy()
    bad.tensors[w][1, 0] ^= np.uint64(1)  # row 1 feature 0 back to +1: logits tie, argmax 0
    bad.tensors[w][0, 0] ^= np.uint64(1)  # row 0 feature 0 to -1: class 1 wins
    bad.save(str(d / "badw.bfn"))
    ref["g"] = graphs["good"]
    code, r = _main(capsys, "run", str(d / "badw.bfn"), "--limit", str(N), "--json")
    assert r["reference"]["exact_mismatches"] > 0 and code == 1


def test_usage_and_input_errors_exit_2(
    files: dict, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    d = files["dir"]
    missing = str(tmp_path / "missing.bfn")
    assert cli.main(["verify", str(d / "m.pt"), missing, "--limit", "2"]) == 2
    assert "missing.bfn" in capsys.readouterr().err
    assert cli.main(["run", missing]) == 2
    assert "missing.bfn" in capsys.readouterr().err
    assert cli.main(["convert", str(tmp_path / "nope.pt"), "-o", str(tmp_path / "o.bfn")]) == 2
    assert "nope.pt" in capsys.readouterr().err
    junk = tmp_path / "junk.bfn"
    junk.write_bytes(b"not a model file at all")
    assert cli.main(["run", str(junk)]) == 2
    capsys.readouterr()
    # argparse refuses a count below 1
    with pytest.raises(SystemExit) as e:
        cli.main(["run", str(d / "good.bfn"), "--limit", "0"])
    assert e.value.code == 2
    assert (
        cli.main(
            ["verify", str(d / "m.pt"), str(d / "good.bfn"), "--data", "cifar10", "--limit", "2"]
        )
        == 2
    )
    assert "cifar10" in capsys.readouterr().err
