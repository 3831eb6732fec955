"""Method registry (issue 12): every method builds on a backbone, trains a step with its hooks,
and either converts with 0 sign mismatches or raises a clear UnsupportedLayerError naming the
engine op it would need; checkpoints rebuild the method's model; the CLI spelling works."""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitflow import methods
from bitflow.cli import main
from bitflow.convert import UnsupportedLayerError, convert, verify
from bitflow.convert.verify import verify_ok
from bitflow.engine import Engine, available_kernels
from bitflow.engine.check import compare_with_reference
from bitflow.models import create
from bitflow.nn import BinaryConv2d, BinaryLinear
from bitflow.nn import survey as S
from bitflow.train import TrainConfig, save_checkpoint, train
from bitflow.train.checkpoint import model_from_checkpoint

TINY = {"width": 4, "fc": 16}
DEPLOYABLE = [
    "bnn",
    "xnor",
    "bireal",
    "bnnplus",
    "dsq",
    "irnet",
    "proxquant",
    "selfbin",
    "reactnet_rsign",
    "kd",
    "binaryconnect",
    "binaryconnect_stochastic",
    "bwn",
    "reactnet",
    "dorefa",
    "dorefa_w1a2",
    "dorefa_w1a4",
    "pact",
    "xnorpp",
    "abc",
]
NOT_YET: dict[str, str] = {}  # every method deploys (ABC-Net since its weighted bconv branches)


def test_catalogue_is_complete() -> None:
    assert set(methods.list_methods()) == set(DEPLOYABLE) | set(NOT_YET)
    rows = methods.describe()
    assert len(rows) == len(DEPLOYABLE) + len(NOT_YET)
    for r in rows:
        assert r["survey"] and r["source"], r
        assert (r["method"] in DEPLOYABLE) == (not r["deploy"].startswith("not yet")), r


@pytest.fixture(scope="module")
def teacher(tmp_path_factory: pytest.TempPathFactory) -> str:
    torch.manual_seed(0)
    fp = create("vgg_small", **TINY)
    path = tmp_path_factory.mktemp("kd") / "teacher.pt"
    save_checkpoint(path, {"model": fp.state_dict(), "model_config": fp.bitflow_config})
    return str(path)


def _build(name: str, teacher: str, backbone: str = "bitflow_vgg_small") -> nn.Module:
    args = {"teacher": teacher} if name == "kd" else None
    kw = dict(TINY) if "vgg" in backbone else {"width": 4}
    return methods.build_model(backbone, name, args, **kw)


def calibrate(model: nn.Module, x: torch.Tensor, seed: int) -> nn.Module:
    """Realistic BN running statistics (one train-mode pass, momentum 1) and random affine
    parameters of both signs (as tests/python/test_convert.py), so thresholds are non-trivial."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = 1.0
    model.eval()  # quantizers in their deployed (eval) form while the statistics are gathered
    for m in bns:
        m.train()
    with torch.no_grad():
        model(x)
        for m in bns:
            n = m.num_features
            m.weight.copy_(torch.rand(n, generator=g) * 3 - 1.5)
            m.bias.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


BACKBONES = ["bitflow_vgg_small", "bireal_resnet20"]  # the survey table's two backbones


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("name", sorted(set(DEPLOYABLE) | set(NOT_YET)))
def test_every_method_trains_a_step(name: str, backbone: str, teacher: str) -> None:
    torch.manual_seed(1)
    model = _build(name, teacher, backbone)
    assert model.bitflow_config["method"] == name
    hooks = methods.hooks_for(model)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.rand(8, 1, 28, 28), torch.arange(8) % 10
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = hooks.loss(model, x, model(x), y)
    assert torch.isfinite(loss)
    opt.zero_grad()
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    opt.step()
    hooks.after_step(model, 0.5)
    after = model.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert any(".weight" in k for k in changed)
    for m in model.modules():
        if isinstance(m, S._Annealed):
            assert float(m.progress) == 0.5


@pytest.mark.parametrize("backbone", BACKBONES)
@pytest.mark.parametrize("name", DEPLOYABLE)
def test_deployable_methods_convert_exactly(name: str, backbone: str, teacher: str) -> None:
    """Every method on both backbones of the survey table (the residual one: a shortcut around
    every binary conv, the float stream): same signs, predictions equal or near-threshold, engine
    == reference. (kd's teacher is the VGG twin for both: the student only reads its logits.)"""
    torch.manual_seed(2)
    model = _build(name, teacher, backbone)
    if name.startswith("reactnet"):
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, S.RSign):
                    m.beta.copy_(torch.randn_like(m.beta) * 0.5)
    x = np.random.default_rng(3).random((24, 1, 28, 28), dtype=np.float32)
    calibrate(model, torch.from_numpy(x), seed=4)
    if name == "xnorpp":  # per-position scales commute with a max-pool for a BN of one direction
        with torch.no_grad():
            for m in model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.weight.abs_()
    before = model(torch.from_numpy(x)).detach()
    graph = methods.convert(model)
    # the converter reads the model as it is (RSign shifts become threshold boundaries)
    assert torch.equal(before, model(torch.from_numpy(x)).detach())
    r = verify(model, graph, x)
    assert r["sign_mismatches"] == 0, r
    assert r["prediction_mismatches"] <= r["near_threshold"]["samples"], r
    assert verify_ok(r), r
    # the native engine equals the reference executor on every kernel set built and supported here
    for k in available_kernels():
        rep = compare_with_reference(Engine(graph, kernels=k, threads=1), x)["reference"]
        assert rep["exact_mismatches"] == 0 and rep["prediction_mismatches"] == 0, (k, rep)


@pytest.mark.parametrize("name", sorted(NOT_YET))
def test_methods_that_need_new_ops_say_why(name: str, teacher: str) -> None:
    model = _build(name, teacher)
    calibrate(model, torch.rand(8, 1, 28, 28), seed=5)
    with pytest.raises(UnsupportedLayerError, match=NOT_YET[name]):
        methods.convert(model)
    # the bare converter refuses them too (never a silently wrong graph)
    with pytest.raises(UnsupportedLayerError):
        convert(_build(name, teacher).eval())


@pytest.mark.parametrize("name", ["bireal", "irnet", "selfbin"])
def test_methods_on_the_bireal_backbone_convert(name: str) -> None:
    """Bi-Real = ApproxSign + a shortcut around every binary conv: the method on bireal_resnet20."""
    torch.manual_seed(7)
    model = methods.build_model("bireal_resnet20", name, width=4)
    x = np.random.default_rng(8).random((12, 1, 28, 28), dtype=np.float32)
    calibrate(model, torch.from_numpy(x), seed=9)
    graph = methods.convert(model)
    r = verify(model, graph, x)
    # float residual stream: differences only within the propagated float32 error bound
    assert r["sign_mismatches"] == 0, r
    assert r["prediction_mismatches"] <= r["near_threshold"]["samples"], r


def test_reactnet_on_bireal_has_an_rprelu_after_every_unit() -> None:
    # full ReActNet on Bi-Real: RPReLU after every unit's add (its conversion:
    # tests/python/test_survey_deploy.py)
    full = methods.build_model("bireal_resnet20", "reactnet", width=4)
    assert sum(isinstance(m, S.RPReLU) for m in full.modules()) == 18


def test_method_errors_are_clear(teacher: str) -> None:
    with pytest.raises(KeyError, match="valid names"):
        methods.build_model("bitflow_vgg_small", "no_such_method", **TINY)
    with pytest.raises(ValueError, match="its options: M, N"):
        methods.build_model("bitflow_vgg_small", "abc", {"K": 2}, **TINY)
    with pytest.raises(ValueError, match="do not also pass"):
        methods.build_model("bitflow_vgg_small", "bnn", input_quantizer="approx_sign", **TINY)
    with pytest.raises(ValueError, match="binary"):
        methods.build_model("vgg_small", "bnn", **TINY)
    m = methods.build_model("bitflow_vgg_small", "kd", **TINY)
    with pytest.raises(ValueError, match="needs a teacher"):
        methods.hooks_for(m).loss(
            m, torch.rand(2, 1, 28, 28), torch.zeros(2, 10), torch.zeros(2, dtype=torch.long)
        )


def test_apprentice_loss_is_survey_eq_11() -> None:
    torch.manual_seed(6)
    zs, zt, y = torch.randn(5, 10), torch.randn(5, 10), torch.randint(0, 10, (5,))
    ps, pt = F.softmax(zs, 1), F.softmax(zt, 1)
    hard = -torch.log(ps[torch.arange(5), y]).mean()
    soft = -(pt * torch.log(ps)).sum(1).mean()
    # float32 on both sides, log-softmax by another route (logsumexp vs log of softmax): sums
    # of 10 classes and 5 samples (gamma_15 of magnitudes <= |log p| <= ~5 times the loss ~2):
    # rel 1e-5 = 168 u
    assert methods.apprentice_loss(zs, zt, y, 0.3, 0.7).item() == pytest.approx(
        float(0.3 * hard + 0.7 * soft), rel=1e-5
    )


def test_bnnplus_loss_adds_the_regularizer(teacher: str) -> None:
    model = _build("bnnplus", teacher)
    hooks = methods.hooks_for(model)
    x, y = torch.rand(4, 1, 28, 28), torch.arange(4)
    logits = model(x)
    reg = sum(
        S.bnnplus_regularizer(m.weight, m.weight_quantizer.alpha)
        for m in model.modules()
        if isinstance(getattr(m, "weight_quantizer", None), S.BnnPlusWeight)
    )
    want = F.cross_entropy(logits, y) + 1e-6 * reg
    # the same float32 operations in the same order (cross entropy + 1e-6 * sum of the
    # layers' regularizers): exact
    assert hooks.loss(model, x, logits, y).item() == want.item()


def test_proxquant_hook_pulls_weights_to_pm1(teacher: str) -> None:
    model = _build("proxquant", teacher)
    hooks = methods.hooks_for(model)
    conv = next(
        m
        for m in model.modules()
        if isinstance(getattr(m, "weight_quantizer", None), S.ProxQuantWeight)
    )
    w0 = conv.weight.detach().clone()
    hooks.after_step(
        model, 0.5, 20
    )  # lam = 2 * lam_sum * progress / total = 2 * 2.0 * 0.5 / 20 = 0.1
    w1 = conv.weight.detach()
    # every weight moves 0.1 toward its nearest of +-1 (all start within |w| < 0.9, far from +-1)
    assert w0.abs().max() < 0.9
    torch.testing.assert_close(w1, w0 + 0.1 * torch.where(w0 < 0, -1.0, 1.0))


def _train_tiny(out: Path, method: str, limit_train: int) -> dict:
    """One epoch of the width-4 VGG-small chain with ``method`` on the first ``limit_train``
    Fashion-MNIST training images."""
    cfg = TrainConfig(
        model="bitflow_vgg_small",
        data="fashion-mnist",
        out=str(out),
        epochs=1,
        batch_size=64,
        limit_train=limit_train,
        limit_test=64,
        seed=0,
        progress=False,
        model_kwargs=dict(TINY),
        method=method,
    )
    return train(cfg)


def test_train_checkpoint_and_cli(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    res = _train_tiny(tmp_path / "r", "reactnet_rsign", 256)
    model, state = model_from_checkpoint(res["checkpoint"])
    assert state["model_config"]["method"] == "reactnet_rsign"
    assert any(isinstance(m, S.RSign) for m in model.modules())
    # the CLI spelling: train with a method, convert (folds RSign), verify
    out = tmp_path / "cli"
    rc = main(
        [
            "train",
            "--model",
            "bitflow_vgg_small",
            "--method",
            "irnet",
            "--epochs",
            "1",
            "--limit-train",
            "256",
            "--limit-test",
            "64",
            "--model-arg",
            "width=4",
            "--model-arg",
            "fc=16",
            "--out",
            str(out),
            "--json",
            "--no-progress",
        ]
    )
    assert rc == 0
    ck = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["checkpoint"]
    assert main(["convert", ck, "-o", str(tmp_path / "m.bfn"), "--json", "--explain"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    forms = {r["source"]: r["form"] for r in info["explain"] if r["type"] in ("bconv2d", "bdense")}
    assert len(forms) == 5 and set(forms.values()) == {"binary"}, info[
        "explain"
    ]  # 4 binary convs + 1 binary FC
    assert sum(r["param_bytes"] for r in info["explain"]) == info["param_bytes"]
    assert main(["verify", ck, str(tmp_path / "m.bfn"), "--limit", "64", "--json"]) == 0
    rep = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert rep["sign_mismatches"] == 0 and rep["prediction_mismatches"] == 0
    # ABC-Net: M x N binary branches and their weighted sum, one summary line per layer
    rc = main(
        [
            "train",
            "--model",
            "bitflow_vgg_small",
            "--method",
            "abc",
            "--epochs",
            "1",
            "--limit-train",
            "128",
            "--limit-test",
            "32",
            "--model-arg",
            "width=4",
            "--model-arg",
            "fc=16",
            "--out",
            str(tmp_path / "b"),
            "--no-progress",
        ]
    )
    assert rc == 0
    capsys.readouterr()
    rc = main(
        ["convert", str(tmp_path / "b" / "best.pt"), "-o", str(tmp_path / "b.bfn"), "--explain"]
    )
    assert rc == 0
    out = capsys.readouterr().out
    assert out.count("ABC-Net layer") == 4 and "9 xnor-popcount branches" in out, out
    assert (
        main(["verify", str(tmp_path / "b" / "best.pt"), str(tmp_path / "b.bfn"), "--limit", "64"])
        == 0
    )


@pytest.mark.slow
def test_reproduce_survey_tiny(tmp_path: Path) -> None:
    from bitflow.analysis.reproduce_survey import reproduce_survey

    r = reproduce_survey(
        tmp_path,
        quick=True,
        methods_=["bnn", "abc", "kd"],
        epochs=1,
        limit_train=256,
        limit_test=64,
        width=4,
        repeat=3,
        log=lambda m: None,
    )
    rows = {x["method"]: x for x in r["rows"]}
    assert set(rows) == {"full precision", "bnn", "abc", "kd"}
    assert (
        rows["bnn"]["sign_mismatches"] == 0
        and rows["bnn"]["bfn_bytes"] > 0
        and rows["bnn"]["engine_ms"] > 0
    )
    assert not rows["abc"]["deploy"].startswith("not yet") and rows["abc"]["engine_ms"] > 0
    for f in ("report.md", "report.json", "accuracy_vs_latency.png"):
        assert (tmp_path / f).stat().st_size > 0
    with pytest.raises(KeyError, match="valid names"):
        reproduce_survey(tmp_path / "x", quick=True, methods_=["nope"])


def test_a_models_own_method_option_passes_through() -> None:
    # MBBN models take method="quantizer" | "encoder" (their own option, not a survey method)
    m = methods.build_model(
        "mbbn_vgg_small", None, None, method="encoder", bits_a=2, bits_w=2, **TINY
    )
    assert m.bitflow_config["kwargs"]["method"] == "encoder" and "method" not in {
        k for k in m.bitflow_config if k != "kwargs"
    }


def test_binaryconnect_stochastic_uses_glorots_range_per_layer(tmp_path: Path) -> None:
    """BinaryConnect's layers (Courbariaux et al. 2015; their code: ``H = sqrt(6 / (n_in +
    n_out)) / 2`` with ``n_in = I k_h k_w``, ``n_out = O k_h k_w``, weights ``U(-H, H)``, clipped
    to ``[-H, H]``, ``P(+1) = hard_sigmoid(w / H)``). Oracle: that formula written out per layer.
    ``glorot=False`` keeps the survey's ``H = 1``. A trained checkpoint rebuilds the same ranges
    and its latent weights stay inside them."""
    model = methods.build_model("bitflow_vgg_small", "binaryconnect_stochastic", **TINY)
    layers = [m for m in model.modules() if isinstance(m, (BinaryConv2d, BinaryLinear))]
    assert len(layers) == 5  # 4 binary convs and the binary FC of the VGG-small plan
    for m in layers:
        w = m.weight
        if w.dim() == 4:
            o, i, kh, kw = w.shape
            h = math.sqrt(6.0 / (i * kh * kw + o * kh * kw)) / 2.0
        else:
            h = math.sqrt(6.0 / (w.shape[1] + w.shape[0])) / 2.0
        q = m.weight_quantizer
        assert isinstance(q, S.StochasticBinaryConnect)
        assert q.h == pytest.approx(h, rel=1e-12) and m.weight_clip == pytest.approx(h, rel=1e-12)
        assert float(w.abs().max()) <= h and float(w.abs().max()) > 0.8 * h  # U(-H, H)
    plain = methods.build_model(
        "bitflow_vgg_small", "binaryconnect_stochastic", {"glorot": False}, **TINY
    )
    for m in plain.modules():
        if isinstance(m, (BinaryConv2d, BinaryLinear)):
            assert isinstance(m.weight_quantizer, S.StochasticBinaryConnect)
            assert m.weight_quantizer.h == 1.0 and m.weight_clip == 1.0
    with pytest.raises(ValueError, match="glorot must be true or false"):
        methods.build_model(
            "bitflow_vgg_small", "binaryconnect_stochastic", {"glorot": "no"}, **TINY
        )
    res = _train_tiny(tmp_path / "r", "binaryconnect_stochastic", 300)
    trained, _ = model_from_checkpoint(res["checkpoint"])
    got = [m for m in trained.modules() if isinstance(m, (BinaryConv2d, BinaryLinear))]
    for a, b in zip(got, layers, strict=True):
        assert a.weight_quantizer.h == b.weight_quantizer.h  # type: ignore[union-attr]
        h32 = float(torch.tensor(a.weight_quantizer.h, dtype=torch.float32))  # type: ignore[union-attr]
        assert float(a.weight.abs().max()) <= h32  # the clip, in the weights' float32


def test_binaryconnect_stochastic_batchnorm_fits_the_deterministic_network(tmp_path: Path) -> None:
    """BinaryConnect (stochastic) trains on sampled +-1 weights but is evaluated and deployed
    as ``sign(w)``; its recipe measures the BatchNorm statistics again under ``sign(w)`` after
    every epoch (``methods.method_recipe``: ``precise_bn``), so the checkpoint's running
    statistics are the population statistics of the deterministic network. Oracle: PyTorch's own
    BatchNorm in training mode with ``momentum=None`` (a cumulative average) over the whole
    training split in one batch, the rest of the model in eval mode (deterministic weights).
    Without the recipe entry the statistics are the moving averages of the sampled networks,
    and this fails."""
    from bitflow.data import get_data
    from bitflow.train.trainer import channels_last_

    assert methods.method_recipe("binaryconnect_stochastic") == {"precise_bn": 10_000}
    assert methods.method_recipe("binaryconnect") == {}
    assert methods.method_recipe(None) == {}
    res = _train_tiny(tmp_path / "r", "binaryconnect_stochastic", 300)
    model, state = model_from_checkpoint(res["checkpoint"])
    assert state["recipe"]["precise_bn"] == 10_000
    data = get_data("fashion-mnist", seed=0, limit_train=300, limit_test=64)
    n = len(data.train)
    assert 2 <= n <= 300  # all of it: precise BN takes min(10,000, n) samples
    x = torch.stack([data.train[i][0] for i in range(n)])
    # the oracle in float64 (precise BN accumulates in float64, but over the float32 forward pass
    # of the trainer, whose training-mode BatchNorms reduce in float32): measured here, the
    # checkpoint is within 1.1e-3 of the oracle (variance: relative; mean: in units of the
    # oracle's standard deviation), and >= 0.55 without the recipe entry (the moving averages of
    # the sampled networks); the test allows 1e-2
    oracle = copy.deepcopy(model).double()
    channels_last_(oracle, layout_hooks=True)
    oracle.eval()
    bns = [m for m in oracle.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    for m in bns:
        m.reset_running_stats()
        m.momentum = None
        m.train()
    with torch.no_grad():
        oracle(x.double())
    got = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for a, b in zip(got, bns, strict=True):
        sd = b.running_var.sqrt()
        assert float(((a.running_var - b.running_var).abs() / b.running_var).max()) < 1e-2
        assert float(((a.running_mean - b.running_mean).abs() / sd).max()) < 1e-2
