"""Plumbing of ``bitflow bench`` on tiny models with tiny repetition counts (no benchmark
numbers are judged here): timing statistics, layer accounting against independent shape
arithmetic, JSON keys, the command line and its errors."""

from __future__ import annotations

import importlib.util
import json
import statistics

import pytest
import torch
from _bounds import U64, gamma

from bitflow import bench as B
from bitflow import cli, models
from bitflow.bench import _timing
from bitflow.convert import convert

pytest.importorskip("bitflow._native", reason="the compiled extension is not built")


def test_measure_statistics_with_a_fake_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """Durations 5, 1, 4, 2 ms (after one warm-up call of 9 ms): median 3 = (2 + 4) / 2."""
    durations = iter([0.009, 0.005, 0.001, 0.004, 0.002])
    now = [0.0]
    monkeypatch.setattr(_timing.time, "perf_counter", lambda: now[0])

    def fn() -> None:
        now[0] += next(durations)

    t = B.measure(fn, repeat=4, warmup=1)
    assert t.runs == 4
    # the fake clock is a float64 running sum of <= 5 durations (<= 0.021 s): each reading is
    # within gamma_5 0.021 s of exact, a duration (two readings, one subtraction, * 1e3) within
    # gamma_7 * 2 * 21 ms, and the median of two adds one rounding
    tol = gamma(8, U64) * 2 * 21
    assert t.median_ms == pytest.approx(statistics.median([5, 1, 4, 2]), rel=0, abs=tol)
    assert (t.min_ms, t.max_ms) == (
        pytest.approx(1.0, rel=0, abs=tol),
        pytest.approx(5.0, rel=0, abs=tol),
    )
    assert t.to_json("x_ms") == {
        "x_ms": t.median_ms,
        "x_ms_min": t.min_ms,
        "x_ms_max": t.max_ms,
        "x_ms_cpu": t.cpu_median_ms,
    }
    assert t.cpu_median_ms >= 0
    with pytest.raises(ValueError, match="repeat"):
        B.measure(fn, repeat=0, warmup=0)


def test_parse_int_list() -> None:
    assert B.parse_int_list("1,2, 16", "--batch") == [1, 2, 16]
    for bad in ("", "0", "1,x", "-1"):
        with pytest.raises(ValueError, match="--batch"):
            B.parse_int_list(bad, "--batch")


@pytest.fixture(scope="module")
def tiny() -> tuple:
    torch.manual_seed(0)
    model = models.create("bitflow_vgg_small", width=8, fc=16).eval()
    return convert(model), models.create("vgg_small", width=8, fc=16).eval()


def test_bench_engine_and_torch_keys_and_layer_accounting(tiny: tuple) -> None:
    graph, twin = tiny
    res = B.bench(
        graph,
        twin=twin,
        threads=[1, 2],
        batches=[2],
        repeat=2,
        warmup=0,
        baselines=["torch"],
        probe_seconds=0.01,
    )
    assert [(r["threads"], r["batch"]) for r in res["settings"]] == [(1, 2), (2, 2)]
    # independent count from the twin's float convolutions: 28x28 -> [8, pool] 14 -> [16]
    # -> [16, pool] 7 -> [32, pool] 3, FC 288 -> 16; MACs = Ho Wo O k^2 C (Linear: O K)
    convs = [(28, 8, 8), (14, 16, 8), (14, 16, 16), (7, 32, 16)]
    want = [s * s * o * 9 * c for s, o, c in convs] + [16 * 32 * 3 * 3]
    for row in res["settings"]:
        assert row["engine_ms_min"] <= row["engine_ms"] <= row["engine_ms_max"]
        assert row["speedup"]["torch_fp32"] == pytest.approx(
            row["torch_fp32_ms"] / row["engine_ms"]
        )
        assert "ort_fp32_ms" not in row and "openvino_bnn_ms" not in row
        layers = row["layers"]
        assert [x["binary_macs"] for x in layers] == [2 * m for m in want]
        for x in layers:
            assert x["binary_macs_per_s"] == pytest.approx(
                x["binary_macs"] / (x["engine_ms"] * 1e-3)
            )
            assert x["torch_fp32_ms"] > 0
        # the per-step list covers every op once, in order
        assert [n for s in row["engine_steps"] for n in s["ops"]] == [op.name for op in graph.ops]
    # float32 weights of the binary layers: 4 bytes x (sum of O k^2 C + the FC's 16 x 288)
    f32 = 4 * (sum(o * 9 * c for _, o, c in convs) + 16 * 288)
    assert res["file"]["binary_layers_float32_weight_bytes"] == f32
    packed = sum(
        graph.tensors[op.params["w"]].nbytes for op in graph.ops if op.type in ("bconv2d", "bdense")
    )
    assert res["file"]["binary_layers_packed_weight_bytes"] == packed
    # float32 middle peak: the largest (input + output) of a binary layer, 4 bytes x
    # (C + O) x size^2 (same-padded 3x3 convs keep the size) = the first one, 28x28, 8 -> 8
    assert res["memory"]["float32_middle_peak_activation_bytes"] == max(
        4 * (c + o) * s * s for s, o, c in convs
    )
    assert res["memory"]["float32_middle_peak_activation_bytes"] == 4 * 16 * 784
    json.dumps(res)  # JSON-ready
    assert "engine_ms" in B.format_report(res)


def test_bench_rejects_bad_arguments(tiny: tuple) -> None:
    graph, twin = tiny
    with pytest.raises(ValueError, match="unknown baselines"):
        B.bench(graph, baselines=["tensorflow"])
    with pytest.raises(ValueError, match="threads and batches"):
        B.bench(graph, threads=[0], baselines=[])
    with pytest.raises(ValueError, match="unknown model"):
        B.zoo_model("no_such_model")


@pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("openvino") is None,
    reason="onnxruntime / openvino not installed (optional benchmark dependencies)",
)
def test_bench_all_baselines_run_on_a_tiny_model(tiny: tuple) -> None:
    graph, twin = tiny
    res = B.bench(
        graph, twin=twin, threads=[1], batches=[1], repeat=1, warmup=0, probe_seconds=0.01
    )
    row = res["settings"][0]
    for key in ("engine_ms", "torch_fp32_ms", "ort_fp32_ms", "ort_int8_ms", "openvino_bnn_ms"):
        assert row[key] > 0 and row[f"{key}_min"] <= row[key] <= row[f"{key}_max"]
    # OpenVINO's profile names its BinaryConvolution nodes after the graph's binary ops
    assert all("openvino_bnn_ms" in x for x in row["layers"] if x["type"] == "bconv2d")
    assert set(res["versions"]) >= {"torch", "onnxruntime", "openvino"}


def test_openvino_model_has_binary_convolutions(tiny: tuple) -> None:
    pytest.importorskip("openvino")
    from bitflow.bench._graph_models import openvino_bnn

    graph, _ = tiny
    ops = [n.get_type_name() for n in openvino_bnn(graph, 2).get_ordered_ops()]
    n_binary = sum(op.type in ("bconv2d", "bdense") for op in graph.ops)
    assert ops.count("BinaryConvolution") == n_binary
    assert "MatMul" in ops


def test_torch_twin_from_graph_has_the_graph_shapes(tiny: tuple) -> None:
    from bitflow.bench._graph_models import torch_twin

    graph, twin = tiny
    built = torch_twin(graph)
    x = torch.rand(2, 1, 28, 28)
    assert built(x).shape == twin(x).shape == (2, 10)
    convs = [
        (m.in_channels, m.out_channels) for m in built.modules() if isinstance(m, torch.nn.Conv2d)
    ]
    assert convs == [
        (m.in_channels, m.out_channels) for m in twin.modules() if isinstance(m, torch.nn.Conv2d)
    ]


@pytest.mark.e2e
def test_cli_bench_zoo_json(capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(
        [
            "bench",
            "--model",
            "bitflow_lenet",
            "--model-arg",
            "width=8",
            "--model-arg",
            "fc=16",
            "--threads",
            "1",
            "--batch",
            "1,2",
            "--repeat",
            "2",
            "--warmup",
            "0",
            "--baselines",
            "torch",
            "--json",
        ]
    )
    assert code == 0
    res = json.loads(capsys.readouterr().out)
    assert res["model"] == "bitflow_lenet" and res["first_layer"] == "float"
    assert [(r["threads"], r["batch"]) for r in res["settings"]] == [(1, 1), (1, 2)]
    assert all("torch_fp32_ms" in r and "engine_ms" in r for r in res["settings"])


@pytest.mark.e2e
def test_cli_bench_file_and_errors(
    tiny: tuple, tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    graph, _ = tiny
    path = tmp_path / "tiny.bfn"
    graph.save(path)
    out = tmp_path / "r.json"
    assert (
        cli.main(
            [
                "bench",
                str(path),
                "--repeat",
                "1",
                "--warmup",
                "0",
                "--baselines",
                "none",
                "--no-layers",
                "--output",
                str(out),
            ]
        )
        == 0
    )
    text = capsys.readouterr().out
    assert "engine_ms" in text
    saved = json.loads(out.read_text())
    assert (
        saved["file"]["bfn_bytes"] == path.stat().st_size and "layers" not in saved["settings"][0]
    )
    assert saved["notes"] == []  # no baseline asked for, nothing skipped or substituted
    for argv, msg in [
        (["bench"], "either a .bfn model file or --model"),
        (["bench", str(path), "--model", "bitflow_lenet"], "either a .bfn model file or --model"),
        (["bench", str(tmp_path / "missing.bfn")], "not found"),
        (["bench", str(path), "--threads", "0"], "--threads"),
        (["bench", str(path), "--baselines", "tf"], "--baselines"),
    ]:
        assert cli.main(argv) == 2
        assert msg in capsys.readouterr().err


def test_bench_file_of_a_residual_model_uses_its_zoo_twin(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """A DAG ``.bfn`` (Bi-Real ResNet-20, MCN-1 with shared rows): the file's provenance names
    the zoo model, whose full-precision twin gives the float32 parameter bytes (the shape-only
    twin is built for chains); without provenance the bytes are skipped with a note, not a crash."""
    torch.manual_seed(0)
    for name, kw, twin_name, twin_kw in [
        ("bireal_resnet20", {"width": 4}, "resnet20", {"width": 4, "block": "bireal"}),
        (
            "mcn1_xnor_wrn",
            {"widths": [2, 2, 4, 4], "depth": 8, "in_channels": 1, "image_size": 16},
            "wrn",
            {"widths": [2, 2, 4, 4], "depth": 8, "in_channels": 1, "image_size": 16},
        ),
    ]:
        graph = convert(models.create(name, **kw).eval())
        path = tmp_path / f"{name}.bfn"
        graph.save(path)
        res = B.bench_file(path, repeat=1, warmup=0, baselines=["torch"], layers=False)
        twin = models.create(twin_name, **twin_kw)
        assert res["file"]["float32_twin_param_bytes"] == 4 * sum(
            p.numel() for p in twin.parameters()
        )
        graph.provenance = {}
        graph.save(path)
        res = B.bench_file(path, repeat=1, warmup=0, baselines=["torch"], layers=False)
        assert "float32_twin_param_bytes" not in res["file"]
        assert any("float32_twin_param_bytes skipped" in n for n in res["notes"])
