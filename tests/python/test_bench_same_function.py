"""The benchmark baselines compute the engine's function, so the speed ratios of ``bitflow bench``
and ``benchmarks/*.py`` compare like with like.

Every model the benchmarks time (the chain BNNs of ``bench_engine.py`` with a float or a
fixed-point first layer, the Bi-Real ResNet-18 variants of ``bench_resnet.py``: float
residual stream with a float or an int8 stem, integer residual stream; an MCN-1 WRN with its
repeated rows shared by ``gather_channels``), at a small size with
random weights and randomized BatchNorm statistics (:func:`bitflow.bench.zoo_model`, as the
benchmarks build them), is run by each baseline built from that graph: PyTorch fp32
(:func:`torch_model`), ONNX Runtime fp32 (the graph's ONNX export) and int8 (its integer
rewrite, :func:`ort_integer`), and OpenVINO's BinaryConvolution network (:func:`openvino_bnn`).

Oracle: the native engine on the same images. Integer and bit ops are exact in every baseline,
so the only allowed differences come from float32 rounding, and their tolerance is derived, not
guessed (:func:`bitflow.export.agreement.agreement`): with ``E`` the propagated float32 error
bound of :func:`bitflow.ir.reference.float_error_bounds`, two correct float32 executors can
take different signs only where a float value lies within ``2E`` of its threshold
(near-threshold samples, counted apart), and elsewhere their logits differ by at most
``2E[logits]``. A baseline that decides ``x > T`` instead of ``x >= T``, ignores a threshold's
direction, reads the dense features in another order or feeds other pixels fails here with
unexplained differences (each was checked by breaking the builder on purpose).

A backend that is not installed is skipped (``onnxruntime`` / ``openvino``: the ``bench`` extra).
"""

from __future__ import annotations

import zlib
from pathlib import Path

import numpy as np
import pytest

from bitflow import bench as B
from bitflow.engine import Engine
from bitflow.export.agreement import near_threshold
from bitflow.ir import Graph, run
from bitflow.ir.reference import float_error_bounds

pytest.importorskip("bitflow._native", reason="the compiled extension is not built")

# (zoo model, options): the benchmarks' models at a small size
MODELS: list[tuple[str, dict[str, object]]] = [
    ("bitflow_vgg_small", {"width": 8, "fc": 16}),
    ("bitflow_vgg_small", {"width": 8, "fc": 16, "first_layer": "int8"}),
    ("bitflow_lenet", {}),
    ("bireal_resnet18", {"image_size": 16, "width": 8, "num_classes": 10}),
    ("bireal_resnet18", {"image_size": 16, "width": 8, "num_classes": 10, "first_layer": "int8"}),
    ("bireal_resnet18", {"image_size": 16, "width": 8, "num_classes": 10, "residual": "int"}),
    # MCN-1 (ours, binary activations): shared rows and gather_channels (convert._rows)
    ("mcn1_xnor_wrn", {"widths": "4,4,8,16", "depth": 8, "image_size": 16}),
]
IDS = [f"{n}-{'-'.join(f'{k}={v}' for k, v in kw.items())}" for n, kw in MODELS]
SAMPLES = 16


class Case:
    """A model, its engine, the images and what the derived tolerance needs (computed once)."""

    def __init__(self, graph: Graph, x: np.ndarray) -> None:
        self.graph, self.x = graph, x
        self.engine = Engine(graph, threads=1)
        self.want = self.engine.logits(x).astype(np.float64)
        _, env = run(graph, x, return_intermediates=True)  # type: ignore[misc]
        eb = float_error_bounds(graph, env)
        # per image: some sign decided on a float value within 2E of its threshold
        self.near = near_threshold(graph, env, eb)
        # two correct float32 executors that take the same signs differ by at most 2E[logits]
        self.bound = 2 * np.broadcast_to(eb.get(graph.output, 0.0), self.want.shape)

    def check(self, got: np.ndarray) -> None:
        """Zero unexplained differences (the rule of :func:`bitflow.export.agreement.agreement`)."""
        got = np.asarray(got, np.float64)
        assert got.shape == self.want.shape
        clean = ~self.near
        # the check is not vacuous: at least a quarter of the images have no float sign near its
        # threshold (a float residual stream decides thousands of signs on floats per image; at
        # 16x16 about a third of the images have one within 2E)
        assert clean.sum() >= len(clean) // 4, self.near
        if not any(op.type in ("threshold_f32_bits", "bitpack") for op in self.graph.ops):
            assert clean.all()  # every sign is decided on an exact integer
        diff = np.abs(got - self.want)[clean]
        assert (diff <= self.bound[clean]).all(), (diff.max(), self.bound[clean].max())
        # the predictions agree too (no clean image here has a top-2 gap within the bound)
        assert (got.argmax(1) == self.want.argmax(1))[clean].all()


@pytest.fixture(scope="module", params=MODELS, ids=IDS)
def case(request: pytest.FixtureRequest) -> Case:
    name, kw = request.param
    graph, _ = B.zoo_model(name, seed=zlib.crc32(repr(request.param).encode()) % 1000, **kw)
    spec = graph.input
    x = np.random.default_rng(7).random(
        (SAMPLES, spec.channels, spec.height, spec.width), dtype=np.float32
    )
    return Case(graph, x)


def test_torch_fp32_baseline_computes_the_engine_function(case: Case) -> None:
    import torch

    from bitflow.bench._graph_models import torch_model

    with torch.no_grad():
        case.check(torch_model(case.graph)(torch.from_numpy(case.x)).numpy())


@pytest.mark.parametrize("kind", ["fp32", "int8"])
def test_onnxruntime_baselines_compute_the_engine_function(case: Case, kind: str) -> None:
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    from bitflow.bench._graph_models import ort_integer
    from bitflow.export import to_onnx

    graph = case.graph
    proto = to_onnx(graph, batch=None)
    if kind == "int8":
        proto = ort_integer(graph, proto)
        ops = {n.op_type for n in proto.graph.node}
        # every binary / fixed-point layer runs on integers, none as a float Conv / MatMul
        n_int = sum(n.op_type in ("ConvInteger", "MatMulInteger") for n in proto.graph.node)
        assert n_int == sum(op.type in ("bconv2d", "bdense", "conv2d_u8i8") for op in graph.ops), (
            ops
        )
    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    case.check(sess.run(None, {"input": case.x})[0])


def test_openvino_baseline_computes_the_engine_function(case: Case) -> None:
    ov = pytest.importorskip("openvino")
    from bitflow.bench._graph_models import openvino_bnn

    graph = case.graph
    if any(op.type in ("requant_i32", "add_i32") for op in graph.ops):
        # the integer residual stream needs exact int64 requantization, which OpenVINO's CPU
        # plugin does not have (it runs i64 as i32): the bench skips it with a note
        with pytest.raises(ValueError, match="no OpenVINO equivalent"):
            openvino_bnn(graph, SAMPLES)
        return
    model = openvino_bnn(graph, SAMPLES)
    n_binary = sum(op.type in ("bconv2d", "bdense") for op in graph.ops)
    assert [n.get_type_name() for n in model.get_ordered_ops()].count(
        "BinaryConvolution"
    ) == n_binary
    req = (
        ov.Core()
        .compile_model(
            model, "CPU", {"INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": 1}
        )
        .create_infer_request()
    )
    case.check(np.asarray(next(iter(req.infer(case.x).values()))))


def test_bench_reports_the_same_function_check(tmp_path: Path) -> None:
    """``bitflow bench`` runs the same check on every run and reports it."""
    graph, _ = B.zoo_model("bitflow_vgg_small", width=8, fc=16)
    res = B.bench(
        graph,
        threads=[1],
        batches=[2],
        repeat=1,
        warmup=0,
        layers=False,
        probe_seconds=0,
    )
    ch = res["checks"]
    assert ch["same_function_ok"], ch
    assert "torch_fp32" in ch["same_function"]
    for a in ch["same_function"].values():
        assert a["unexplained"] == 0 and a["samples"] == 2
    assert "same function as the engine ok" in B.format_report(res)


def test_bench_skips_onnxruntime_with_a_note_where_the_graph_cannot_be_exported() -> None:
    """A requantization whose |x m + b| may pass 2^53 has no exact ONNX form (float64): the
    bench reports the ONNX Runtime baselines as skipped, naming the op, instead of failing."""
    pytest.importorskip("onnxruntime")
    graph, _ = B.zoo_model("bireal_resnet20", width=8, residual="int")
    rq = next(op for op in graph.ops if op.type == "requant_i32")
    # the same function with 2^20 larger multipliers: beyond exact float64 in ONNX
    graph.tensors[rq.params["m"]] = graph.tensors[rq.params["m"]] * 2**20
    graph.tensors[rq.params["b"]] = graph.tensors[rq.params["b"]] * 2**20
    rq.attrs["shift"] = int(rq.attrs["shift"]) + 20
    res = B.bench(
        graph,
        threads=[1],
        batches=[1],
        repeat=1,
        warmup=0,
        baselines=["ort"],
        layers=False,
        probe_seconds=0,
    )
    assert any(
        n.startswith("ort_fp32_ms and ort_int8_ms skipped") and rq.name in n and "2^53" in n
        for n in res["notes"]
    ), res["notes"]
    assert "ort_fp32" not in res["checks"]["same_function"]
