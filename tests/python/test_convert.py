"""Model-level tests: convert random small BNNs and compare the reference executor with PyTorch.

The oracle is the PyTorch model itself: every binary layer's +-1 input (captured at its
input_quantizer) must equal the executor's bits, predictions must match, logits must match
within float32 rounding (float last layer) or exactly (binary last layer + Scale).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bitflow import models
from bitflow.convert import UnsupportedLayerError, convert, load_graph, run, verify
from bitflow.models.zoo import FC, Conv, Plan, build
from bitflow.nn import BinaryConv2d, BinaryLinear, Int8Conv2d

U32 = 2.0**-24  # float32 unit roundoff


def float_logit_bound(graph, x: np.ndarray) -> np.ndarray:  # type: ignore[no-untyped-def]
    """Per-(sample, class) bound on ``|PyTorch logit - executor logit|`` for a float last layer.

    The float values before it come from an integer (a binary layer's exact output) through a
    chain of per-channel ``s x + b`` ops (the layer's scale and bias, BatchNorm) and ReLUs. Each
    such op is within ``6u (|s x| + |b|)`` of exact on both sides: PyTorch rounds at most four
    times (``(x - mean) * invstd * gamma + beta``), the executor twice with parameters folded in
    float64 and rounded once each (``u |s x| + u |b|``); a ReLU is exact and an earlier error
    ``d`` is scaled by ``|s|``. So the last layer's input differs by ``d_i`` at most, and its dot
    product (PyTorch: float32, any order, ``gamma_{K+1} <= (K+2) u``; executor: float64, rounded
    once, ``u``) by ``sum_i |w_ci| d_i + (K+3) u (sum_i |w_ci z_i| + |b_c|)``. The magic 2e-4 it
    replaces was ~100x the observed ~1e-6; this bound is ~1e-5."""
    _, env = run(graph, x, return_intermediates=True)
    producer = {op.outputs[0]: op for op in graph.ops}
    last = graph.ops[-1]
    assert last.type == "dense_f32", last.type
    chain = []
    v = last.inputs[0]
    while producer[v].type in ("affine_f32", "scale_bias", "relu_f32", "flatten"):
        chain.append(producer[v])
        v = producer[v].inputs[0]
    n = len(x)
    d = np.zeros(1)
    for op in reversed(chain):  # from the integer towards the last layer
        if op.type in ("affine_f32", "scale_bias"):
            sc = np.abs(graph.tensors[op.params["scale"]].astype(np.float64))
            bi = np.abs(graph.tensors[op.params["bias"]].astype(np.float64))
            xin = np.abs(env[op.inputs[0]].astype(np.float64)).reshape(n, -1)
            idx = np.arange(xin.shape[1]) % len(sc)
            d = d * sc[idx] + 6 * U32 * (sc[idx] * xin + bi[idx])
    z = np.abs(env[last.inputs[0]].astype(np.float64)).reshape(n, -1)
    w = np.abs(graph.tensors[last.params["w"]].astype(np.float64))
    b = (
        np.abs(graph.tensors[last.params["bias"]].astype(np.float64))
        if "bias" in last.params
        else 0.0
    )
    k = w.shape[1]
    return np.broadcast_to(d, z.shape) @ w.T + (k + 3) * U32 * (z @ w.T + b)


def calibrate(model: nn.Module, x: torch.Tensor, seed: int, gamma_sign: int = 0) -> nn.Module:
    """Give every BatchNorm realistic running statistics (one train-mode pass, momentum 1)
    and random affine parameters with both signs and some exact zeros, so thresholds are
    non-trivial and cover gamma < 0 and gamma = 0."""
    g = torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(x)
        for m in bns:
            n = m.num_features
            gamma = torch.rand(n, generator=g) * 3 - 1.5
            gamma[torch.rand(n, generator=g) < 0.1] = 0.0
            if gamma_sign:  # one direction everywhere: pools can run on bits (AND / OR)
                gamma = gamma.abs() * gamma_sign
            m.weight.copy_(gamma)
            m.bias.copy_(torch.rand(n, generator=g) * 2 - 1)
    return model.eval()


def images(n: int, c: int, s: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).random((n, c, s, s), dtype=np.float32)


def check(model: nn.Module, x: np.ndarray, *, binary_last: bool, mode: str | None = None) -> dict:
    graph = convert(model, mode=mode)
    r = verify(model, graph, x, batch_size=16)
    assert r["samples"] == len(x)
    assert r["sign_mismatches"] == 0, r
    # a prediction may only differ in a sample with a documented near-threshold event
    assert r["prediction_mismatches"] <= r["near_threshold"]["samples"], r
    if r["near_threshold"]["samples"] == 0:
        if binary_last:
            assert r["max_logit_abs_diff"] == 0.0, r
        else:
            bound = float(float_logit_bound(graph, x).max())
            assert r["max_logit_abs_diff"] <= bound, (r["max_logit_abs_diff"], bound)
    return r


CASES = [
    dict(first_layer="float", last_layer="float", pad_value=0, widths=(37, 65, 3)),
    dict(first_layer="int8", last_layer="float", pad_value=1, widths=(3, 37, 65)),
    dict(first_layer="int8", last_layer="binary", pad_value=0, widths=(65, 3, 37)),
    dict(first_layer="float", last_layer="binary", pad_value=1, widths=(8, 16, 37)),
    dict(
        first_layer="int8",
        last_layer="float",
        pad_value=0,
        widths=(16, 37, 8),
        weight_quantizer="sign",
    ),
    dict(first_layer="float", last_layer="float", pad_value=0, widths=(8, 65, 37), relu=False),
]


def case_model(case: dict, seed: int = 0) -> nn.Module:
    """The random small BNN of a ``CASES`` entry (12x12x3 input, three convs, one hidden FC, 5
    classes), not calibrated; ``seed`` is added to the case's own seed."""
    case = dict(case)
    w1, w2, w3 = case.pop("widths")
    plan = Plan(
        first=Conv(w1, 3, 1, 1),
        first_pool=None,
        convs=(Conv(w2, 3, 1, 1, (2, 2)), Conv(w3, 3, 2, 1)),
        fcs=(FC(17),),
        image_size=12,
    )
    torch.manual_seed(seed + sum(map(ord, str(case))))
    return build(plan, binary=True, num_classes=5, in_channels=3, **case)


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_random_models_match_pytorch(case: dict) -> None:
    model = case_model(case)
    x = images(24, 3, 12, seed=1)
    calibrate(model, torch.from_numpy(images(64, 3, 12, seed=2)), seed=3)
    r = check(model, x, binary_last=case["last_layer"] == "binary")
    assert r["signs_compared"] > 0
    # the executor also agrees with a second batch size (no state between batches)
    g = convert(model)
    np.testing.assert_array_equal(run(g, x, batch_size=5), run(g, x, batch_size=24))


def test_zoo_vgg_small_and_xnor_path_agree() -> None:
    torch.manual_seed(0)
    model = models.create("bitflow_vgg_small", width=8, fc=32)
    calibrate(model, torch.from_numpy(images(64, 1, 28, seed=4)), seed=5)
    x = images(16, 1, 28, seed=6)
    check(model, x, binary_last=False)
    gb, gx = convert(model, mode="bitflow"), convert(model, mode="xnor")
    assert gb.mode == "bitflow" and gx.mode == "xnor"
    assert {op.type for op in gx.ops} >= {"bitpack", "affine_f32", "scale_bias"}
    assert not {"scale_bias", "affine_f32", "relu_f32"} & {op.type for op in gb.ops[1:-4]}
    pb, px = run(gb, x).argmax(1), run(gx, x).argmax(1)
    np.testing.assert_array_equal(pb, px)
    check(model, x, binary_last=False, mode="xnor")


def test_xnor_models_default_to_the_xnor_path() -> None:
    model = models.create("xnor_lenet", width=4, fc=16).eval()
    assert convert(model).mode == "xnor"
    assert convert(models.create("bitflow_lenet", width=4, fc=16).eval()).mode == "bitflow"


class _GroupedFlatten(nn.Module):
    """BN2d before the flatten: per-channel thresholds, then bits flattened per pixel (groups)."""

    def __init__(self, bn_before_flatten: bool) -> None:
        super().__init__()
        self.conv = Int8Conv2d(2, 37, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(37)
        self.b1 = BinaryConv2d(37, 70, 3, padding=1, pad_value=0)
        self.bn2 = nn.BatchNorm2d(70) if bn_before_flatten else nn.Identity()
        self.fc = BinaryLinear(70 * 3 * 3, 9)
        self.scale = nn.Parameter(torch.tensor(0.5))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        x = F.max_pool2d(self.b1(self.bn1(x)), 2)
        x = torch.flatten(self.bn2(x), 1)
        return self.fc(x)


@pytest.mark.parametrize("bn_before_flatten", [True, False])
def test_flatten_with_per_pixel_word_padding(bn_before_flatten: bool) -> None:
    """70 channels = 2 words per pixel with 58 padding bits: the FC weights must be permuted from
    NCHW order into [H, W, C] with the same per-pixel padding; the dot stays exact."""
    torch.manual_seed(7)
    model = _GroupedFlatten(bn_before_flatten)
    calibrate(model, torch.from_numpy(images(32, 2, 6, seed=8)), seed=9)
    g = convert(model, example_input=torch.zeros(1, 2, 6, 6))
    flat = [g.values[op.outputs[0]] for op in g.ops if op.type == "flatten"]
    assert (
        len(flat) == 1
        and flat[0].dtype == "bits"
        and flat[0].groups == 9
        and flat[0].shape == (18,)
    )
    r = verify(model, g, images(20, 2, 6, seed=10))
    assert (
        r["sign_mismatches"] == 0
        and r["prediction_mismatches"] == 0
        and r["max_logit_abs_diff"] == 0.0
    )


class _UserNet(nn.Module):
    """A hand-written module using functional calls and x.view(x.size(0), -1)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.b1 = BinaryConv2d(8, 16, 3, padding=1, weight_quantizer="sign")
        self.bn2 = nn.BatchNorm1d(16 * 5 * 5)
        self.fc = BinaryLinear(16 * 5 * 5, 24)
        self.drop = nn.Dropout(0.5)
        self.bn3 = nn.BatchNorm1d(24)
        self.out = nn.Linear(24, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv(x))
        x = self.b1(self.bn1(x))
        x = F.max_pool2d(x.relu(), 2)
        x = x.view(x.size(0), -1)
        x = F.relu(self.fc(self.bn2(x)))
        return self.out(self.bn3(self.drop(x)))


def test_user_defined_module_converts() -> None:
    torch.manual_seed(11)
    model = _UserNet()
    calibrate(model, torch.from_numpy(images(32, 1, 10, seed=12)), seed=13)
    g = convert(model, example_input=torch.zeros(2, 1, 10, 10), class_names=list("abcd"))
    assert g.class_names == ["a", "b", "c", "d"]
    r = verify(model, g, images(16, 1, 10, seed=14), np.arange(16) % 4)
    assert r["sign_mismatches"] == 0
    assert r["prediction_mismatches"] <= r["near_threshold"]["samples"]
    assert r["accuracy_torch"] is not None and 0 <= r["accuracy_integer"] <= 1


def test_saved_graph_runs_identically(tmp_path) -> None:
    torch.manual_seed(15)
    model = models.create("bitflow_lenet", width=4, fc=16, first_layer="int8", last_layer="binary")
    calibrate(model, torch.from_numpy(images(32, 1, 28, seed=16)), seed=17)
    g = convert(model)
    path = tmp_path / "m.bfn"
    g.save(str(path))
    x = images(8, 1, 28, seed=18)
    np.testing.assert_array_equal(run(load_graph(path), x), run(g, x))
    from bitflow.convert.reference import run as reexported
    from bitflow.ir.reference import run as ir_run

    assert reexported is ir_run is run
    assert load_graph(path).provenance["model"] == "bitflow_lenet"


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.b = BinaryConv2d(4, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return y + self.b(y)


def test_unsupported_layers_raise_clear_errors() -> None:
    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.ReLU(),
        nn.Dropout2d(0.1),
        nn.BatchNorm2d(4),
        BinaryConv2d(4, 4, 3),
        nn.Flatten(),
        nn.Linear(4 * 24 * 24, 2),
    )
    with pytest.raises(
        UnsupportedLayerError, match=r"layer '2' \(nn.Dropout2d\) is not supported; supported:"
    ):
        convert(model, example_input=torch.zeros(1, 1, 28, 28))
    with pytest.raises(UnsupportedLayerError, match="must end with a classifier"):
        convert(
            _Branchy(), example_input=torch.zeros(1, 1, 8, 8)
        )  # a residual DAG, but no classifier
    with pytest.raises(UnsupportedLayerError, match="first layer"):
        convert(nn.Sequential(nn.Linear(4, 2)), example_input=torch.zeros(1, 1, 2, 2))
    avg = nn.Sequential(
        nn.Conv2d(1, 4, 3), nn.AvgPool2d(2, ceil_mode=True), nn.Flatten(), nn.Linear(36, 2)
    )
    with pytest.raises(
        UnsupportedLayerError, match=r"layer '1' \(avg-pool\) is not supported: ceil_mode=True"
    ):
        convert(avg, example_input=torch.zeros(1, 1, 8, 8))
    gap = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(16, 2))
    with pytest.raises(UnsupportedLayerError, match=r"only output size 1"):
        convert(gap, example_input=torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match="example_input"):
        convert(nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match="mode"):
        convert(models.create("bitflow_lenet", width=4, fc=8), mode="fast")
    with pytest.raises(TypeError):
        convert("not a model")  # type: ignore[arg-type]


def test_verify_separates_near_threshold_from_real_mismatches() -> None:
    """Move one float threshold of the first layer just above the smallest first-layer output
    that passed it: the executor flips exactly those signs, 1 ulp from its threshold, which
    verify must report as near_threshold (with the margin), not as a mismatch. Moving the
    threshold far instead must produce real sign mismatches."""
    torch.manual_seed(21)
    model = models.create("bitflow_vgg_small", width=4, fc=16)
    calibrate(model, torch.from_numpy(images(32, 1, 28, seed=22)), seed=23)
    x = images(6, 1, 28, seed=24)
    g = convert(model)
    thr_op = next(op for op in g.ops if op.type == "threshold_f32_bits")
    _, inter = run(g, x, return_intermediates=True)
    y = inter[thr_op.inputs[0]]
    thr = g.tensors[thr_op.params["thr"]]
    d = g.tensors[thr_op.params["direction"]]
    for c in range(len(thr)):
        if not np.isfinite(thr[c]):
            continue
        yc = y[..., c].ravel() * d[c]  # direction -1: +1 iff y <= thr, i.e. -y >= -thr
        passed = np.sort(yc[yc >= thr[c] * d[c]])
        if len(passed) and passed[0] - thr[c] * d[c] > 1e-4:  # clear of the original threshold
            break
    else:
        pytest.skip("no suitable channel")
    y0 = passed[0] * d[c]  # the passing output closest to the threshold
    moved = thr.copy()
    moved[c] = np.nextafter(y0, np.float32(np.inf * d[c]))  # now 1 ulp past it: y0 fails
    g.tensors[thr_op.params["thr"]] = moved
    r = verify(model, g, x)
    assert r["near_threshold"]["count"] == int((y[..., c] == y0).sum()) >= 1
    m0 = r["near_threshold"]["margins"][0]
    assert m0["margin"] <= m0["bound"] and m0["y"] == float(y0)
    assert r["sign_mismatches"] == 0
    moved[c] = thr[c] + np.float32(0.5) * (
        (y[..., c].max() if d[c] > 0 else y[..., c].min()) - thr[c]
    )
    g.tensors[thr_op.params["thr"]] = moved
    assert verify(model, g, x)["sign_mismatches"] > 0


def test_subclassed_binary_layers_are_refused() -> None:
    """A subclass may compute something else (MBBN layers scale levels): refuse, don't guess."""

    class MyConv(BinaryConv2d):
        pass

    model = nn.Sequential(
        nn.Conv2d(1, 4, 3),
        nn.BatchNorm2d(4),
        MyConv(4, 4, 3),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 2),
    )
    with pytest.raises(UnsupportedLayerError, match=r"layer '2' \(MyConv\).*subclasses"):
        convert(model, example_input=torch.zeros(1, 1, 8, 8))


@pytest.mark.parametrize(("gamma_sign", "pool_op"), [(1, "and"), (-1, "or")])
@pytest.mark.parametrize("first_layer", ["float", "int8"])
def test_pools_run_on_bits_when_directions_agree(
    gamma_sign: int, pool_op: str, first_layer: str
) -> None:
    """LeNet pools after the first layer and after the binary conv: with every gamma of one
    sign the converter thresholds first and pools the bits (AND for gamma > 0, OR for < 0)."""
    torch.manual_seed(31)
    model = models.create("bitflow_lenet", width=8, fc=24, first_layer=first_layer)
    calibrate(model, torch.from_numpy(images(32, 1, 28, seed=32)), seed=33, gamma_sign=gamma_sign)
    g = convert(model)
    pools = [op for op in g.ops if op.type.startswith("maxpool")]
    assert pools and pools[0].type == "maxpool_bits" and pools[0].attrs["op"] == pool_op
    check(model, images(12, 1, 28, seed=34), binary_last=False)


def test_float_logit_bound_is_tight_enough_to_catch_a_small_error() -> None:
    """Observed |logit diff| ~2.4e-7, derived bound ~6e-6: a 5e-5 error in the last layer's bias
    (which the old magic 2e-4 accepted) exceeds it."""
    model = case_model(CASES[0])
    calibrate(model, torch.from_numpy(images(64, 3, 12, seed=2)), seed=3)
    x = images(24, 3, 12, seed=1)
    g = convert(model)
    bound = float(float_logit_bound(g, x).max())
    assert verify(model, g, x)["max_logit_abs_diff"] <= bound < 2e-5
    last = g.ops[-1]
    g.tensors[last.params["bias"]] = g.tensors[last.params["bias"]] + np.float32(5e-5)
    assert bound < verify(model, g, x)["max_logit_abs_diff"] < 2e-4
