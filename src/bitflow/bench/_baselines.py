"""The baselines of ``bitflow bench``: the zoo model and its full-precision twin, the runners
computing the graph's function in PyTorch, ONNX Runtime (the graph's ONNX export, fp32 and
ConvInteger / MatMulInteger int8) and OpenVINO, the BLAS environment."""

from __future__ import annotations

import os
import sys
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
    return graph, twin_model(name, kwargs)


def twin_model(name: str, kwargs: dict[str, Any]) -> Any | None:
    """The full-precision twin of the zoo BNN ``name`` built with ``kwargs`` (the zoo model
    named without the ``bitflow_`` / ``xnor_`` prefix, or :data:`_TWINS`; only the shape
    options are passed on), or None when it has none."""
    from ..models import create, list_models

    base, fixed = _TWINS.get(
        name, (name.split("_", 1)[1] if name.startswith(("bitflow_", "xnor_")) else None, {})
    )
    if base is None or base not in list_models():
        return None
    keys = _TWIN_KWARGS + (_MCN_TWIN_KWARGS if base in ("wrn", "mcn_mnist_float") else ())
    twin_kw = {k: v for k, v in kwargs.items() if k in keys}
    return create(base, **fixed, **twin_kw).eval()


# Full-precision twins whose name or options do not follow from the BNN's name alone:
# BNN -> (twin, fixed twin options). Other ``bitflow_X`` / ``xnor_X`` models use ``X``.
_TWINS: dict[str, tuple[str, dict[str, Any]]] = {
    "bireal_resnet18": ("resnet18", {"block": "bireal"}),
    "bireal_resnet20": ("resnet20", {"block": "bireal"}),
    "bitflow_resnet18": ("resnet18", {"block": "bitflow"}),
    "xnor_resnet18": ("resnet18", {"block": "bitflow"}),
}
# MCN (issue 11): every variant's full-precision twin is the registered one of its backbone
# (nn.Conv2d, one plane per map): ``*_wrn`` -> ``wrn`` (Table II's WRN), ``*_mnist`` ->
# ``mcn_mnist_float``, with the same depth and widths.
for _v in ("mcn", "mcn1", "mcn_xnor", "mcn1_xnor", "umcn"):
    _TWINS[f"{_v}_wrn"] = ("wrn", {})
    _TWINS[f"{_v}_mnist"] = ("mcn_mnist_float", {})
_MCN_TWIN_KWARGS = ("depth", "widths")
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
        self._torch: Any = None
        self.versions: dict[str, str | None] = {}
        if self.wanted & {"torch"}:
            import torch

            from ._graph_models import torch_model

            self.versions["torch"] = torch.__version__
            self._torch = torch_model(graph)
        if self.twin is None and "torch" in self.wanted:
            from ._graph_models import torch_twin

            try:
                self.twin = torch_twin(graph)  # only for float32_twin_param_bytes
            except ValueError as e:  # a DAG: the shape-only twin is built for chains
                notes.append(f"float32_twin_param_bytes skipped (no zoo twin in the file): {e}")
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
        if "ort" in self.wanted:
            from ..export import ExportError

            try:
                self._onnx_files()
            except ExportError as e:  # e.g. a requantization beyond exact float64 in ONNX
                notes.append(f"ort_fp32_ms and ort_int8_ms skipped: {e}")
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
        if "openvino" in self.wanted:
            from ._graph_models import openvino_bnn

            try:
                self._ov_models[1] = openvino_bnn(graph, 1)
            except ValueError as e:  # an op OpenVINO has no exact form of (multi-bit, int64)
                notes.append(f"openvino_bnn_ms skipped: {e}")
                self.wanted.discard("openvino")

    def _input(self, batch: int, seed: int = 0) -> np.ndarray:
        spec = self.graph.input
        return np.random.default_rng(seed).random(
            (batch, spec.channels, spec.height, spec.width), dtype=np.float32
        )

    def runners(self, batch: int) -> dict[str, Any]:
        """``images [batch, C, H, W] -> logits`` of every baseline asked for (one thread)."""
        out: dict[str, Any] = {}
        if "torch" in self.wanted:
            import torch

            model = self._torch

            def run_torch(x: np.ndarray) -> np.ndarray:
                with torch.no_grad():
                    return np.asarray(model(torch.from_numpy(x)).numpy())

            out["torch_fp32"] = run_torch
        if "ort" in self.wanted:
            import onnxruntime as ort

            for kind in ("fp32", "int8"):
                sess = ort.InferenceSession(
                    self._onnx_files()[kind], providers=["CPUExecutionProvider"]
                )
                out[f"ort_{kind}"] = _ort_runner(sess)
        if "openvino" in self.wanted:
            req = self._ov_compiled(1, batch, False).create_infer_request()
            out["openvino_bnn"] = lambda x: np.asarray(next(iter(req.infer(x).values())))
        return out

    def checks(self, engine: Engine, batch: int) -> dict[str, Any]:
        """Do the baselines compute the engine's function? Every baseline against the engine on
        ``batch`` random images (:func:`bitflow.export.agreement.agreement`): a difference is
        explained only by float32 rounding (a sign decided on a float value within twice its
        derived error bound of the threshold, or logits within the derived bound); the counts of
        unexplained differences must be 0 (``same_function_ok``). Also the output shapes."""
        from ..export.agreement import agreement

        x = self._input(batch, seed=3)
        out: dict[str, Any] = {"batch": batch}
        shapes = {"engine": list(engine.logits(x).shape)}
        agree: dict[str, Any] = {}
        for name, fn in self.runners(batch).items():
            shapes[name] = list(fn(x).shape)
            agree[name] = agreement(self.graph, x, fn, engine.logits).as_dict()
        out["output_shapes"] = shapes
        want = [batch, self.graph.validate()[self.graph.output].shape[-1]]
        out["output_shapes_ok"] = all(v == want for v in shapes.values())
        out["same_function"] = agree
        out["same_function_ok"] = all(a["unexplained"] == 0 for a in agree.values())
        return out

    # -- torch
    def torch_fn(self, threads: int, batch: int) -> Any:
        import torch

        torch.set_num_threads(threads)
        x = torch.from_numpy(self._input(batch))
        model = self._torch

        def run() -> None:
            with torch.no_grad():
                model(x)

        return run

    # -- onnx runtime
    def _onnx_files(self) -> dict[str, str]:
        if self._onnx:
            return self._onnx
        import onnx

        from ..export import to_onnx
        from ._graph_models import ort_integer

        proto = to_onnx(self.graph, batch=None)
        files = {"fp32": proto, "int8": ort_integer(self.graph, proto)}
        for kind, model in files.items():
            path = self.workdir / f"graph_{kind}.onnx"
            onnx.save(model, str(path))
            self._onnx[kind] = str(path)
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

        if batch not in self._ov_models:
            from ._graph_models import openvino_bnn

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


def _ort_runner(sess: Any) -> Any:
    return lambda x: np.asarray(sess.run(None, {"input": np.ascontiguousarray(x, np.float32)})[0])


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
