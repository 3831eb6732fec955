"""The baselines of ``bitflow bench``: the zoo model and its full-precision twin, PyTorch,
ONNX Runtime (fp32 and int8 QDQ) and OpenVINO runners, the BLAS environment."""

from __future__ import annotations

import logging
import os
import sys
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..engine import Engine
from ..ir import Graph
from ._timing import Timing

BASELINES = ("torch", "ort", "openvino")
_BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


def clean_blas_env(argv: Sequence[str] | None = None) -> None:
    """If ``OPENBLAS_CORETYPE`` or ``OPENBLAS_L2_SIZE`` is set, re-execute this process
    without them (BLAS reads them once when it loads, so the float baselines would run with a
    forced core type / cache size otherwise). ``argv``: the interpreter arguments of the new
    process (``["-m", "bitflow", ...]`` or ``[script, ...]``), default ``sys.argv``."""
    if not any(k in os.environ for k in _BLAS_OVERRIDES):
        return
    env = {k: v for k, v in os.environ.items() if k not in _BLAS_OVERRIDES}
    args = list(sys.argv if argv is None else argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *args], env)


def blas_info() -> list[dict[str, Any]]:
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return [{"note": "threadpoolctl not installed"}]
    keep = (
        "user_api",
        "internal_api",
        "num_threads",
        "version",
        "architecture",
        "threading_layer",
        "prefix",
    )
    return [{k: d.get(k) for k in keep} for d in threadpool_info()]


def zoo_model(name: str, seed: int = 0, **kwargs: Any) -> tuple[Graph, Any]:
    """A zoo BNN with random weights and randomized BatchNorm statistics (so thresholds are
    not trivial), converted with :func:`bitflow.convert.convert`, and its full-precision twin
    (the zoo model named without the ``bitflow_`` / ``xnor_`` prefix, float first layer)."""
    import torch

    from ..convert import convert
    from ..models import create, list_models

    if name not in list_models():
        raise ValueError(f"unknown model {name!r}; known: {', '.join(list_models())}")
    torch.manual_seed(seed)
    model = create(name, **kwargs)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                assert m.running_mean is not None and m.running_var is not None
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
                if m.affine:
                    m.weight.uniform_(-1.0, 1.0)
                    m.bias.uniform_(-0.5, 0.5)
    graph = convert(model)
    base, fixed = _TWINS.get(
        name, (name.split("_", 1)[1] if name.startswith(("bitflow_", "xnor_")) else None, {})
    )
    twin = None
    if base is not None and base in list_models():
        twin_kw = {k: v for k, v in kwargs.items() if k in _TWIN_KWARGS}
        twin = create(base, **fixed, **twin_kw).eval()
    return graph, twin


# Full-precision twins whose name or options do not follow from the BNN's name alone:
# BNN -> (twin, fixed twin options). Other ``bitflow_X`` / ``xnor_X`` models use ``X``.
_TWINS: dict[str, tuple[str, dict[str, Any]]] = {
    "bireal_resnet18": ("resnet18", {"block": "bireal"}),
    "bireal_resnet20": ("resnet20", {"block": "bireal"}),
    "bitflow_resnet18": ("resnet18", {"block": "bitflow"}),
    "xnor_resnet18": ("resnet18", {"block": "bitflow"}),
}
# BNN options passed on to the twin (shape options only: never residual / quantizers / first_layer).
_TWIN_KWARGS = (
    "num_classes",
    "in_channels",
    "image_size",
    "width",
    "fc",
    "stem",
    "downsample",
    "relu",
)


class _Baselines:
    """Lazily built baseline runners; each missing optional package becomes a note."""

    def __init__(
        self, graph: Graph, twin: Any, wanted: Iterable[str], workdir: Path, notes: list[str]
    ) -> None:
        self.graph, self.twin, self.workdir, self.notes = graph, twin, workdir, notes
        self.wanted = set(wanted)
        self._onnx: dict[str, str] = {}
        self._ov_models: dict[int, Any] = {}
        self.versions: dict[str, str | None] = {}
        if self.wanted & {"torch", "ort"}:
            import torch

            self.versions["torch"] = torch.__version__
            if self.twin is None:
                from ._graph_models import torch_twin

                self.twin = torch_twin(graph)
                notes.append(
                    "float32 twin built from the graph's layer shapes (no zoo twin for this model)"
                )
        if "ort" in self.wanted:
            try:
                import onnx  # noqa: F401
                import onnxruntime as ort

                self.versions["onnxruntime"] = ort.__version__
            except ImportError:
                notes.append(
                    "onnx / onnxruntime not installed: ort_fp32_ms and ort_int8_ms skipped "
                    "(pip install 'bitflow[bench]')"
                )
                self.wanted.discard("ort")
        if "openvino" in self.wanted:
            try:
                import openvino as ov

                self.versions["openvino"] = ov.__version__
            except ImportError:
                notes.append(
                    "openvino not installed: openvino_bnn_ms skipped (pip install openvino)"
                )
                self.wanted.discard("openvino")

    def _input(self, batch: int, seed: int = 0) -> np.ndarray:
        spec = self.graph.input
        return np.random.default_rng(seed).random(
            (batch, spec.channels, spec.height, spec.width), dtype=np.float32
        )

    def checks(self, engine: Engine, batch: int) -> dict[str, Any]:
        """Do the baselines compute the right thing? Output shapes of every runtime on one
        input (engine, twin, ORT fp32 / int8, OpenVINO BNN: ``[batch, classes]``), and ORT
        fp32 against PyTorch on the same weights (the twin and its ONNX export): max |diff|
        relative to max |torch logit|, which must stay under 1e-4 (float32 with another
        summation order). ORT int8 against PyTorch is reported, not judged (quantization
        error), with the share of equal argmaxes."""
        x = self._input(batch, seed=3)
        out: dict[str, Any] = {"batch": batch}
        shapes = {"engine": list(engine.logits(x).shape)}
        ref = None
        if self.twin is not None and self.wanted & {"torch", "ort"}:
            import torch

            with torch.no_grad():
                ref = self.twin(torch.from_numpy(x)).numpy()
            shapes["torch_fp32"] = list(ref.shape)
        if "ort" in self.wanted:
            import onnxruntime as ort

            for kind in ("fp32", "int8"):
                sess = ort.InferenceSession(
                    self._onnx_files()[kind], providers=["CPUExecutionProvider"]
                )
                y = sess.run(None, {"input": x})[0]
                shapes[f"ort_{kind}"] = list(y.shape)
                if ref is not None and y.shape == ref.shape:
                    scale = float(np.abs(ref).max()) or 1.0
                    rel = float(np.abs(y - ref).max()) / scale
                    out[f"ort_{kind}_vs_torch_max_rel_diff"] = rel
                    out[f"ort_{kind}_vs_torch_argmax_agree"] = float(
                        np.mean(y.argmax(1) == ref.argmax(1))
                    )
            if "ort_fp32_vs_torch_max_rel_diff" in out:
                out["ort_fp32_vs_torch_ok"] = bool(out["ort_fp32_vs_torch_max_rel_diff"] < 1e-4)
        if "openvino" in self.wanted:
            y = self._ov_compiled(1, batch, False).create_infer_request().infer(x)
            shapes["openvino_bnn"] = list(next(iter(y.values())).shape)
        out["output_shapes"] = shapes
        want = [batch, self.graph.validate()[self.graph.output].shape[-1]]
        out["output_shapes_ok"] = all(v == want for v in shapes.values())
        return out

    # -- torch
    def torch_fn(self, threads: int, batch: int) -> Any:
        import torch

        torch.set_num_threads(threads)
        x = torch.from_numpy(self._input(batch))
        model = self.twin

        def run() -> None:
            with torch.no_grad():
                model(x)

        return run

    # -- onnx runtime
    def _onnx_files(self) -> dict[str, str]:
        if self._onnx:
            return self._onnx
        import torch
        from onnxruntime.quantization import (
            CalibrationDataReader,
            QuantFormat,
            QuantType,
            quantize_static,
        )

        spec = self.graph.input
        fp32 = str(self.workdir / "twin_fp32.onnx")
        x = torch.from_numpy(self._input(1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter, on purpose
            torch.onnx.export(
                self.twin,
                (x,),
                fp32,
                opset_version=17,
                dynamo=False,
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}},
            )
        shape = (1, spec.channels, spec.height, spec.width)

        class Reader(CalibrationDataReader):  # type: ignore[misc]
            """Eight random calibration inputs in [0, 1]."""

            def __init__(self) -> None:
                rng = np.random.default_rng(1)
                self.items = iter(
                    [{"input": rng.random(shape, dtype=np.float32)} for _ in range(8)]
                )

            def get_next(self) -> dict[str, np.ndarray] | None:
                return next(self.items, None)

        int8 = str(self.workdir / "twin_int8_qdq.onnx")
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # its pre-processing advice, printed on every call
        try:
            quantize_static(
                fp32,
                int8,
                Reader(),
                quant_format=QuantFormat.QDQ,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                per_channel=True,
            )
        finally:
            root.setLevel(level)
        self._onnx = {"fp32": fp32, "int8": int8}
        return self._onnx

    def ort_fn(self, kind: str, threads: int, batch: int) -> Any:
        import onnxruntime as ort

        path = self._onnx_files()[kind]
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        feed = {"input": self._input(batch)}
        return lambda: sess.run(None, feed)

    # -- openvino
    def _ov_compiled(self, threads: int, batch: int, perf: bool) -> Any:
        import openvino as ov

        from ._graph_models import openvino_bnn

        if batch not in self._ov_models:
            self._ov_models[batch] = openvino_bnn(self.graph, batch)
        cfg: dict[str, Any] = {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": threads,
            "NUM_STREAMS": 1,
            "PERFORMANCE_HINT": "LATENCY",
        }
        if perf:
            cfg["PERF_COUNT"] = True
        return ov.Core().compile_model(self._ov_models[batch], "CPU", cfg)

    def ov_fn(self, threads: int, batch: int) -> Any:
        req = self._ov_compiled(threads, batch, False).create_infer_request()
        x = self._input(batch)
        return lambda: req.infer(x)

    def ov_layer_ms(
        self, threads: int, batch: int, repeat: int, warmup: int
    ) -> dict[str, dict[str, Any]]:
        """Per node median / min / max ms from OpenVINO's own profiling counters."""
        req = self._ov_compiled(threads, batch, True).create_infer_request()
        x = self._input(batch)
        for _ in range(warmup):
            req.infer(x)
        per: dict[str, list[float]] = {}
        for _ in range(repeat):
            req.infer(x)
            for pi in req.profiling_info:
                per.setdefault(pi.node_name, []).append(pi.real_time.total_seconds())
        out: dict[str, dict[str, Any]] = {}
        for name, ts in per.items():
            tm = Timing.from_seconds(ts)
            out[name] = {"median": tm.median_ms, "min": tm.min_ms, "max": tm.max_ms}
        return out


def _torch_layer_fn(layer: dict[str, Any], threads: int, batch: int) -> Any:
    import torch

    torch.set_num_threads(threads)
    if layer["type"].startswith("bconv2d"):
        c, h, w = layer["in_shape"]
        o = layer["out_shape"][0]
        mod: torch.nn.Module = torch.nn.Conv2d(
            c,
            o,
            kernel_size=layer["kernel"],
            stride=layer["stride"],
            padding=layer["padding"],
            bias=False,
        )
        x = torch.rand(batch, c, h, w)
    else:
        mod = torch.nn.Linear(layer["in_shape"][0], layer["out_shape"][0], bias=False)
        x = torch.rand(batch, layer["in_shape"][0])
    mod.eval()

    def run() -> None:
        with torch.no_grad():
            mod(x)

    return run
