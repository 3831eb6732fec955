"""bitflow export (issue 14, section 1): ONNX and QONNX checked by third-party executors
(onnx.checker full check, onnxruntime, qonnx's executor) against the native engine."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bitflow import models
from bitflow.cli import main as cli_main
from bitflow.convert import convert
from bitflow.data import load_arrays
from bitflow.engine import Engine
from bitflow.export import RULES, ExportError, to_onnx
from bitflow.export.agreement import agreement, onnxruntime_logits
from bitflow.ir import save_graph
from bitflow.ir.bits import pack_bits
from bitflow.ir.graph import Graph, InputSpec, Op
from bitflow.ir.ops import OPS

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

CASES = [
    ("bitflow_lenet", {"width": 8, "fc": 32}, "bitflow"),
    ("bitflow_lenet", {"width": 8, "fc": 32, "first_layer": "int8"}, "bitflow"),
    ("bitflow_vgg_small", {"width": 8, "fc": 32}, "bitflow"),
    ("xnor_lenet", {"width": 8, "fc": 32}, "xnor"),
    ("mbbn_vgg_small", {"width": 8, "fc": 32, "bits_a": 2, "bits_w": 2}, "bitflow"),
    (
        "mbbn_vgg_small",
        {
            "width": 8,
            "fc": 32,
            "bits_a": [2, 3, 1, 2, 2],
            "bits_w": [1, 2, 2, 3, 1],
            "first_layer": "int8",
        },
        "bitflow",
    ),
    # the fixed-point residual stream: requant_i32 (float64 floor) and saturating add_i32
    ("bireal_resnet20", {"width": 4, "residual": "int", "residual_bits": 8}, "bitflow"),
]


def _graph(name: str, kw: dict, mode: str):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    m = models.create(name, **kw).eval()
    with torch.no_grad():  # BatchNorms away from identity: thresholds of both directions
        for mod in m.modules():
            if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                mod.running_mean.normal_(0, 2)
                mod.running_var.uniform_(0.5, 3)
                mod.weight.normal_(0, 1)
                mod.bias.normal_(0, 0.5)
    return convert(m, mode=mode)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return load_arrays("fashion-mnist", limit=300)[0]


def test_every_engine_op_has_an_export_rule() -> None:
    # one rule per op of the op table (a new engine op needs one entry in RULES)
    assert set(OPS) - set(RULES) == set(), "ops without an export rule"
    assert set(RULES) - set(OPS) == set(), "export rules for unknown ops"


@pytest.mark.parametrize(("name", "kw", "mode"), CASES)
def test_onnxruntime_matches_the_engine(name: str, kw: dict, mode: str, images: np.ndarray) -> None:
    g = _graph(name, kw, mode)
    proto = to_onnx(g, "onnx")
    onnx.checker.check_model(proto, full_check=True)
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"input": images})[0]
    want = Engine(g, threads=1).logits(images)
    assert np.array_equal(got.argmax(1), want.argmax(1))
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


@pytest.mark.parametrize(("name", "kw", "mode"), [c for c in CASES if c[2] == "bitflow"])
def test_qonnx_executor_matches_the_engine(
    name: str, kw: dict, mode: str, images: np.ndarray
) -> None:
    pytest.importorskip("qonnx")
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    g = _graph(name, kw, mode)
    x = images[:100]
    proto = to_onnx(g, "qonnx", batch=len(x))
    onnx.checker.check_model(proto, full_check=True)
    types = {n.op_type for n in proto.graph.node}
    assert "MultiThreshold" in types and ("BipolarQuant" in types or "mbbn" in name)
    got = execute_onnx(ModelWrapper(proto).transform(InferShapes()), {"input": x})["logits"]
    want = Engine(g, threads=1).logits(x)
    assert np.array_equal(got.argmax(1), want.argmax(1))
    assert np.abs(got - want).max() <= 1e-4 * max(1.0, float(np.abs(want).max()))


def test_nan_is_refused_by_the_engine_and_computed_by_onnxruntime() -> None:
    # the documented convention that differs: bitflow refuses NaN input, ONNX computes with it
    g = _graph(*CASES[0])
    x = np.full((1, 1, 28, 28), np.nan, np.float32)
    with pytest.raises(ValueError, match="NaN"):
        Engine(g, threads=1).predict(x)
    sess = ort.InferenceSession(to_onnx(g).SerializeToString(), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"input": x})[0].shape == (1, 10)


def test_cli_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    g = _graph(*CASES[1])
    save_graph(g, tmp_path / "m.bfn")
    for fmt in ("onnx", "qonnx"):
        out = tmp_path / f"m.{fmt}.onnx"
        assert (
            cli_main(["export", str(tmp_path / "m.bfn"), "-o", str(out), "--format", fmt, "--json"])
            == 0
        )
        info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert info["format"] == fmt and info["input"] == (
            ["N", 1, 28, 28] if fmt == "onnx" else [1, 1, 28, 28]
        )
        onnx.checker.check_model(str(out), full_check=True)
    assert cli_main(["export", str(tmp_path), "-o", str(tmp_path / "x.onnx")]) == 2
    assert "is a directory" in capsys.readouterr().err


# ----------------------------------------------------------------------------- residual / DAG ops
RESIDUAL = [
    ("bireal_resnet20", {"width": 8}),  # float stem, float residual stream, avgpool shortcuts
    ("bireal_resnet20", {"width": 8, "first_layer": "int8"}),
    (
        "bitflow_resnet18",
        {"width": 8, "image_size": 28, "in_channels": 1, "num_classes": 10},
    ),  # relu, GAP
    (
        "xnor_resnet18",
        {"width": 8, "image_size": 28, "in_channels": 1, "num_classes": 10},
    ),  # bitpack on float
]


def _residual(name: str, kw: dict) -> Graph:
    g = _graph(name, kw, None)
    assert {"add_f32", "global_avgpool_f32"} <= {op.type for op in g.ops}
    return g


def _dag_graph(seed: int = 0) -> Graph:
    """A hand-built DAG with every multi-input op: add_i32 of 3 terms (one value read twice),
    concat of int32, of bits and of float32 values, max and average pools, add_f32, GAP."""
    rng = np.random.default_rng(seed)

    def bits(o: int, c: int, k: int = 3) -> np.ndarray:
        return pack_bits(rng.random((o, k, k, c)) < 0.5)

    def i32(a: np.ndarray) -> np.ndarray:
        return np.asarray(a, np.int32)

    t = {
        "w0": rng.normal(0, 1, (4, 3, 3, 1)).astype(np.float32),
        "b0": rng.normal(0, 0.3, 4).astype(np.float32),
        "t0": rng.normal(0, 0.5, 4).astype(np.float32),
        "d0": np.array([1, -1, 1, 1], np.int8),
        "w1": bits(6, 4),
        "w2": bits(6, 4),
        "t1": i32(rng.integers(-8, 9, 12)),
        "d1": np.where(rng.random(12) < 0.5, 1, -1).astype(np.int8),
        "w3": bits(5, 16),
        "s3": rng.uniform(0.1, 1, 5).astype(np.float32),
        "c3": rng.normal(0, 1, 5).astype(np.float32),
        "s4": rng.uniform(-1, 1, 9).astype(np.float32),
        "c4": rng.normal(0, 1, 9).astype(np.float32),
        "wd": rng.normal(0, 1, (3, 9)).astype(np.float32),
        "bd": rng.normal(0, 1, 3).astype(np.float32),
    }
    conv = {"stride": [1, 1], "padding": [1, 1]}
    ops = [
        Op("conv2d_f32", "c0", ["input"], ["f"], conv, {"w": "w0", "bias": "b0"}),
        Op("threshold_f32_bits", "th0", ["f"], ["b"], {}, {"thr": "t0", "direction": "d0"}),
        Op("bconv2d", "bc1", ["b"], ["c1"], {**conv, "channels": 4, "pad_value": 0}, {"w": "w1"}),
        Op("bconv2d", "bc2", ["b"], ["c2"], {**conv, "channels": 4, "pad_value": 1}, {"w": "w2"}),
        Op("add_i32", "s", ["c1", "c2", "c1"], ["s"]),
        Op("concat", "ci", ["s", "c2"], ["si"]),
        Op(
            "maxpool_i32",
            "mi",
            ["si"],
            ["sm"],
            {"kernel": [3, 3], "stride": [1, 1], "padding": [1, 1]},
        ),
        Op("threshold_bits", "th1", ["sm"], ["sb"], {}, {"thr": "t1", "direction": "d1"}),
        Op("concat", "cb", ["sb", "b"], ["cb"]),
        Op("bconv2d", "bc3", ["cb"], ["c3"], {**conv, "channels": 16, "pad_value": 0}, {"w": "w3"}),
        Op("scale_bias", "sc3", ["c3"], ["g"], {}, {"scale": "s3", "bias": "c3"}),
        Op("concat", "cf", ["g", "f"], ["gf"]),
        Op(
            "avgpool_f32",
            "ap",
            ["gf"],
            ["ap"],
            {"kernel": [3, 3], "stride": [2, 2], "padding": [1, 1]},
        ),
        Op("relu_f32", "r", ["ap"], ["r"]),
        Op("affine_f32", "af", ["r"], ["af"], {}, {"scale": "s4", "bias": "c4"}),
        Op("add_f32", "a", ["af", "r", "af"], ["a"]),
        Op("global_avgpool_f32", "gap", ["a"], ["gap"]),
        Op("flatten", "fl", ["gap"], ["fl"]),
        Op("dense_f32", "fc", ["fl"], ["out"], {}, {"w": "wd", "bias": "bd"}),
    ]
    g = Graph(InputSpec(1, 9, 9), ops, t, "out", mode="mixed")
    g.validate()
    return g


def _check_agreement(g: Graph, x: np.ndarray, other: object) -> None:
    a = agreement(g, x, other, Engine(g, threads=1).logits)  # type: ignore[arg-type]
    print(a.as_dict())
    assert a.unexplained == 0, a
    assert a.samples - a.near_threshold_samples >= 10, (
        a
    )  # the logit bound is checked on real samples
    assert a.agreement >= 0.98, a
    assert a.max_bound < 1e-2, a  # a derived tolerance that means something


@pytest.mark.parametrize(("name", "kw"), RESIDUAL)
def test_residual_models_export_and_onnxruntime_matches_the_engine(
    name: str, kw: dict, images: np.ndarray
) -> None:
    g = _residual(name, kw)
    proto = to_onnx(g, "onnx")
    onnx.checker.check_model(proto, full_check=True)
    _check_agreement(g, images, onnxruntime_logits(proto))


def test_hand_built_dag_exports_and_onnxruntime_matches_the_engine() -> None:
    g = _dag_graph()
    assert {op.type for op in g.ops} >= {
        "add_i32",
        "add_f32",
        "concat",
        "avgpool_f32",
        "global_avgpool_f32",
    }
    x = np.random.default_rng(1).random((200, 1, 9, 9), dtype=np.float32)
    proto = to_onnx(g, "onnx")
    onnx.checker.check_model(proto, full_check=True)
    _check_agreement(g, x, onnxruntime_logits(proto))


def _qonnx_logits(proto: object) -> object:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    model = ModelWrapper(proto).transform(InferShapes())
    return lambda xb: execute_onnx(model, {"input": np.ascontiguousarray(xb, np.float32)})["logits"]


@pytest.mark.parametrize("case", ["bireal_resnet20", "dag"])
def test_residual_qonnx_executor_matches_the_engine(case: str, images: np.ndarray) -> None:
    pytest.importorskip("qonnx")
    if case == "dag":
        g, x = _dag_graph(), np.random.default_rng(2).random((100, 1, 9, 9), dtype=np.float32)
    else:
        g, x = _residual(*RESIDUAL[0]), images[:100]
    proto = to_onnx(g, "qonnx", batch=len(x))
    onnx.checker.check_model(proto, full_check=True)
    types = {n.op_type for n in proto.graph.node}
    assert {
        "MultiThreshold",
        "BipolarQuant",
        "Add",
        "AveragePool",
        "GlobalAveragePool",
    } <= types | ({"AveragePool"} if case == "dag" else set())
    _check_agreement(g, x, _qonnx_logits(proto))


def test_integer_sums_beyond_float32_are_refused() -> None:
    # the exporter proves every int32 value exact in float32: a sum whose bound passes 2^24 is
    # refused with the op named, never written with silently rounded integers
    g = _dag_graph()
    add = next(op for op in g.ops if op.type == "add_i32")
    add.inputs = ["c1", "c2"] + ["c1"] * 600_000  # bound 36 * 600,002 > 2^24
    with pytest.raises(ExportError, match="'s' .*2\\^24"):
        to_onnx(g, "onnx")


def test_near_threshold_flags_exactly_the_decisions_within_the_bound() -> None:
    from bitflow.export.agreement import near_threshold
    from bitflow.ir import run
    from bitflow.ir.reference import float_error_bounds

    g = _dag_graph()
    x = np.random.default_rng(3).random((8, 1, 9, 9), dtype=np.float32)
    _, env = run(g, x, return_intermediates=True)  # type: ignore[misc]
    eb = float_error_bounds(g, env)
    far = np.full(4, 1e6, np.float32)
    g.tensors["t0"] = far  # every decision of the only float threshold is far: none near
    assert not near_threshold(g, env, eb).any()
    f, e = env["f"], eb["f"]
    t = far.copy()
    t[2] = f[5, 4, 4, 2] + np.float32(1.5 * e[5, 4, 4, 2])  # within 2E of sample 5's value only
    # precondition: no value of samples 0-4 lies within its own 2E of the threshold (the rule
    # near_threshold applies), so only sample 5 can be near it
    assert 1.5 * e[5, 4, 4, 2] > 0
    assert (np.abs(f[:5, :, :, 2] - t[2]) > 2 * e[:5, :, :, 2]).all()
    g.tensors["t0"] = t
    assert near_threshold(g, env, eb).tolist() == [i == 5 for i in range(8)]
    t[2] = f[5, 4, 4, 2] + np.float32(2.5 * e[5, 4, 4, 2])  # beyond 2E: not near
    assert not near_threshold(g, env, eb)[5]
