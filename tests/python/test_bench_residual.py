"""``bitflow bench`` on residual (DAG) models: the twin of a Bi-Real model, OpenVINO's binary
network built for a DAG (adds, average pools, 1x1 downsample convolutions), the baseline checks
(output shapes, every baseline against the engine), interleaved timing and the
whole-network activation memory. Tiny models, tiny repetition counts: no speed is judged."""

from __future__ import annotations

import importlib.util

import pytest
from _bounds import U64, gamma

from bitflow import bench as B
from bitflow.bench import _timing

pytest.importorskip("bitflow._native", reason="the compiled extension is not built")


def test_measure_interleaved_alternates_runtimes(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    now = [0.0]
    monkeypatch.setattr(_timing.time, "perf_counter", lambda: now[0])

    def make(name: str, ms: float):  # type: ignore[no-untyped-def]
        def fn() -> None:
            calls.append(name)
            now[0] += ms / 1e3

        return fn

    res = B.measure_interleaved(
        {"a": make("a", 1.0), "b": make("b", 3.0)}, repeat=4, warmup=1, rounds=2
    )
    # round 1: a warm-up + 2 timed, b warm-up + 2 timed; round 2: one untimed + 2 timed each
    assert calls == ["a"] * 3 + ["b"] * 3 + ["a"] * 3 + ["b"] * 3
    assert res["a"].runs == res["b"].runs == 4
    # the fake clock: a float64 running sum of 12 steps (6 of 1 ms, 6 of 3 ms; <= 0.024 s): a
    # duration is within gamma_14 * 2 * 24 ms of exact (running sums, a subtraction, * 1e3),
    # and the median of two adds one rounding
    tol = gamma(15, U64) * 2 * 24
    assert res["a"].median_ms == pytest.approx(1.0, rel=0, abs=tol)
    assert res["b"].median_ms == pytest.approx(3.0, rel=0, abs=tol)
    with pytest.raises(ValueError, match="rounds"):
        B.measure_interleaved({"a": make("a", 1.0)}, repeat=1, warmup=0, rounds=0)


def test_zoo_twins_of_residual_models() -> None:
    graph, twin = B.zoo_model("bireal_resnet20", width=8)
    assert twin is not None and type(twin).__name__ == "ResNet"
    n_twin_convs = sum(1 for m in twin.modules() if type(m).__name__ == "Conv2d")
    n_graph = sum(1 for op in graph.ops if op.type in ("bconv2d", "conv2d_f32"))
    assert n_twin_convs == n_graph  # same architecture: every conv of the graph has its float twin


@pytest.mark.parametrize("baselines", [["torch", "ort", "openvino"]])
def test_bench_on_a_residual_dag(baselines: list[str]) -> None:
    have = [
        b
        for b in baselines
        if b == "torch"
        or (b == "ort" and importlib.util.find_spec("onnxruntime") is not None)
        or (b == "openvino" and importlib.util.find_spec("openvino") is not None)
    ]
    graph, twin = B.zoo_model("bireal_resnet20", width=8)
    assert any(op.type == "add_f32" for op in graph.ops) and any(
        op.type == "avgpool_f32" for op in graph.ops
    )
    res = B.bench(
        graph,
        twin=twin,
        threads=[1],
        batches=[2],
        repeat=2,
        warmup=0,
        rounds=2,
        baselines=have,
        layers=False,
        probe_seconds=0.01,
    )
    ch = res["checks"]
    assert ch["output_shapes_ok"], ch["output_shapes"]
    assert set(ch["output_shapes"]) == {"engine", "torch_fp32"} | (
        {"ort_fp32", "ort_int8"} if "ort" in have else set()
    ) | ({"openvino_bnn"} if "openvino" in have else set())
    # every baseline computes the engine's function (test_bench_same_function.py has the oracle)
    assert ch["same_function_ok"], ch["same_function"]
    assert set(ch["same_function"]) == set(ch["output_shapes"]) - {"engine"}
    row = res["settings"][0]
    for key in ("engine_ms", "torch_fp32_ms") + (
        ("openvino_bnn_ms",) if "openvino" in have else ()
    ):
        assert row[key] > 0 and row[f"{key}_min"] <= row[key] <= row[f"{key}_max"]
    am = res["activation_memory"]
    assert am["engine_peak_bytes_per_sample"] <= am["float32_peak_bytes_per_sample"]
    assert "peak activation memory" in B.format_report(res)
