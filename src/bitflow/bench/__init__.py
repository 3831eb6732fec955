"""``bitflow bench``: latency of the native engine against float and binary baselines,
measured in the same process and run.

For a model (a ``.bfn`` file or a zoo model with random weights, converted on the fly) and
every (threads, batch) setting this measures, as medians with min and max over ``repeat``
timed calls after ``warmup`` untimed ones:

- ``engine_ms``: :class:`bitflow.engine.Engine` (its fused plan) on float32 NCHW input;
- ``torch_fp32_ms``: the graph's function in float32 PyTorch ops (+-1 values and weights in
  float convolutions, the engine's thresholds; :func:`~bitflow.bench._graph_models.torch_model`)
  under ``torch.no_grad``;
- ``ort_fp32_ms``: the graph exported with :func:`bitflow.export.to_onnx` (the same function,
  float32 ``Conv`` / ``MatMul`` on +-1 values) in ONNX Runtime;
- ``ort_int8_ms``: that export with every binary and fixed-point layer as ``ConvInteger`` /
  ``MatMulInteger`` on uint8 codes (ONNX Runtime's int8 GEMMs; exact integers, so the same
  function; :func:`~bitflow.bench._graph_models.ort_integer`);
- ``openvino_bnn_ms``: the graph built with OpenVINO's ``BinaryConvolution`` and
  ``FakeQuantize`` binarization (:func:`~bitflow.bench._graph_models.openvino_bnn`; the graph's
  weights, thresholds, directions and feature order), f32 inference-precision hint;

Every baseline computes the engine's function (integers and bits identical, float values within
float32 rounding): :meth:`_Baselines.checks` measures that on every run and
``tests/python/test_bench_same_function.py`` asserts it, so the speed-ups compare like with like.

and per binary layer ``engine_ms``, ``torch_fp32_ms`` (a float conv / linear of the same
shape), ``openvino_bnn_ms`` (OpenVINO's own per-node profile) and ``binary_macs_per_s``
(binary multiply-accumulates of the layer / engine median). The per-layer
``torch_fp32_ms`` is a float layer of the same shape on random data (timing only). Optional baselines whose package
is missing are skipped with a note. Memory: per-sample activation bytes of the middle
(binary) layers, packed bits vs float32; model file vs float32 weights.
"""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .. import _native as N
from ..engine import Engine
from ..ir import Graph, load_graph
from ..ir.graph import ValueInfo
from ..ir.ops import ops_in_group
from ._timing import Timing, measure, measure_interleaved

BASELINES = ("torch", "ort", "openvino")
BINARY_OPS = tuple(sorted(ops_in_group("binary")))  # the op table's binary group
_BLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")

__all__ = [
    "BASELINES",
    "Timing",
    "bench",
    "bench_file",
    "bench_zoo",
    "blas_info",
    "clean_blas_env",
    "format_report",
    "measure",
    "measure_interleaved",
    "parse_int_list",
    "zoo_model",
]


def parse_int_list(text: str, what: str) -> list[int]:
    """``"1,2"`` -> ``[1, 2]``; every value must be a positive integer."""
    try:
        vals = [int(t) for t in text.split(",") if t.strip()]
    except ValueError:
        raise ValueError(
            f"{what} must be a comma-separated list of positive integers, got {text!r}"
        ) from None
    if not vals or any(v < 1 for v in vals):
        raise ValueError(
            f"{what} must be a comma-separated list of positive integers, got {text!r}"
        )
    return vals


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


# ---------------------------------------------------------------------------------- models
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


# ---------------------------------------------------------------------------------- helpers
def _value_bytes(v: ValueInfo) -> int:
    item = {"float32": 4, "int32": 4, "uint8": 1, "bits": 8}[v.dtype]
    return int(np.prod(v.shape)) * item * v.planes


def _binary_layers(graph: Graph) -> list[dict[str, Any]]:
    """Shape facts of every binary layer: input/output NCHW shapes, binary MACs per sample,
    float32 weight bytes of a float layer of the same shape, packed bytes in the graph."""
    values = graph.validate()
    out = []
    for op in graph.ops:
        if op.type not in BINARY_OPS:
            continue
        a = op.attrs
        w = graph.tensors[op.params["w"]]
        vin, vout = values[op.inputs[0]], values[op.outputs[0]]
        pw = w.shape[0] if op.type.endswith("_planes") else 1
        pa = vin.planes
        in_shape: tuple[int, ...]
        out_shape: tuple[int, ...]
        if op.type.startswith("bconv2d"):
            o, kh, kw = w.shape[-4:-1]
            c = a["channels"]
            h, wd = vin.shape[0], vin.shape[1]
            ho, wo = vout.shape[0], vout.shape[1]
            macs = ho * wo * o * kh * kw * c
            fan = kh * kw * c
            in_shape, out_shape = (c, h, wd), (o, ho, wo)
        else:
            o, c = w.shape[-2], a["k_bits"]
            macs, fan = o * c, c
            in_shape, out_shape = (c,), (o,)
        out.append(
            {
                "name": op.name,
                "type": op.type,
                "in_shape": in_shape,
                "out_shape": out_shape,
                "stride": tuple(a.get("stride", (1, 1))),
                "padding": tuple(a.get("padding", (0, 0))),
                "binary_macs": int(macs) * pa * pw,
                "float32_weight_bytes": 4 * o * fan,
                "packed_weight_bytes": int(w.nbytes),
            }
        )
    return out


def _memory(graph: Graph, engine: Engine, layers: list[dict[str, Any]]) -> dict[str, Any]:
    """Per-sample activation bytes of the middle (binary) layers: the engine's stored values
    (input and output of each fused step) vs a float32 model (input and output of each layer),
    and the engine's int32 accumulator scratch, which lives only inside one call."""
    values = engine.values
    names = {layer["name"] for layer in layers}
    eng_peak = scratch = 0
    for step in engine._plan:
        if not names.intersection(step.ops):
            continue
        srcs = sum(_value_bytes(values.get(v, graph.input.value)) for v in step.srcs)
        eng_peak = max(eng_peak, srcs + _value_bytes(values[step.dst]))
        first = next(op for op in graph.ops if op.name == step.ops[0])
        scratch = max(scratch, _value_bytes(values[first.outputs[0]]))
    f32_peak = max(
        (4 * (int(np.prod(x["in_shape"])) + int(np.prod(x["out_shape"]))) for x in layers),
        default=0,
    )
    return {
        "engine_middle_peak_activation_bytes": int(eng_peak),
        "float32_middle_peak_activation_bytes": int(f32_peak),
        "ratio_float32_over_engine": float(f32_peak / eng_peak) if eng_peak else None,
        "engine_int32_scratch_bytes": int(scratch),
    }


def _float32_elems(v: ValueInfo) -> int:
    """Elements of a value in a float32 model (one float per channel; bit planes are levels of
    one value)."""
    if v.dtype == "bits":
        assert v.channels is not None
        return int(np.prod(v.shape[:-1], dtype=np.int64)) * v.groups * v.channels
    return int(np.prod(v.shape, dtype=np.int64))


def _activation_memory(engine: Engine) -> dict[str, Any]:
    """Peak activation bytes per sample of the whole network (the input included; a step's
    inputs and output alive together, every value released after its last reader):

    - ``engine_peak_bytes_per_sample``: the engine's fused plan (``Engine.info()``'s
      ``peak_activation_bytes_per_sample``; a fused layer's int32 scratch, reported
      separately, is not counted) and ``engine_op_by_op_peak_bytes_per_sample``;
    - ``float32_peak_bytes_per_sample``: the same graph run op by op with every value float32
      (one float per channel: what a float model of this architecture keeps, e.g. PyTorch's
      twin without in-place ops), the same liveness rule.
    """
    size = {v: 4 * _float32_elems(info) for v, info in engine.values.items()}
    live = peak = size[engine.graph.input.name]
    for step in engine._steps:
        live += size[step.dst]
        peak = max(peak, live)
        live -= sum(size[v] for v in step.free)
    eng = engine.info()["peak_activation_bytes_per_sample"]
    return {
        "engine_peak_bytes_per_sample": int(eng),
        "engine_op_by_op_peak_bytes_per_sample": int(engine.peak_activation_bytes(fused=False)),
        "float32_peak_bytes_per_sample": int(peak),
        "ratio_float32_over_engine": float(peak / eng) if eng else None,
        "rule": "values alive at once per sample (input included; a step's inputs and output together; "
        "released after the last reader); float32: the same graph with every value float32",
    }


def _file_sizes(
    graph: Graph, layers: list[dict[str, Any]], file_bytes: int, twin: Any
) -> dict[str, Any]:
    packed = sum(x["packed_weight_bytes"] for x in layers)
    f32 = sum(x["float32_weight_bytes"] for x in layers)
    thr = 0
    for op in graph.ops:
        if op.type.startswith("threshold") and op.type not in (
            "threshold_f32_bits",
            "threshold_f32_planes",
        ):
            thr += int(
                graph.tensors[op.params["thr"]].nbytes
                + graph.tensors[op.params["direction"]].nbytes
            )
    res: dict[str, Any] = {
        "bfn_bytes": int(file_bytes),
        "binary_layers_packed_weight_bytes": int(packed),
        "binary_layers_threshold_bytes": int(thr),
        "binary_layers_float32_weight_bytes": int(f32),
        "ratio_float32_over_packed": float(f32 / packed) if packed else None,
        "ratio_float32_over_packed_with_thresholds": float(f32 / (packed + thr))
        if packed + thr
        else None,
    }
    if twin is not None:
        res["float32_twin_param_bytes"] = int(sum(4 * p.numel() for p in twin.parameters()))
        res["ratio_float32_twin_over_bfn"] = (
            res["float32_twin_param_bytes"] / file_bytes if file_bytes else None
        )
    return res


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


# ---------------------------------------------------------------------------------- baselines
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

            self.twin = torch_twin(graph)  # only for float32_twin_param_bytes
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
                per.setdefault(pi.node_name, []).append(1e3 * pi.real_time.total_seconds())
        out: dict[str, dict[str, Any]] = {}
        for name, ts in per.items():
            ts.sort()
            m = len(ts) // 2
            out[name] = {
                "median": ts[m] if len(ts) % 2 else 0.5 * (ts[m - 1] + ts[m]),
                "min": ts[0],
                "max": ts[-1],
            }
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


# ---------------------------------------------------------------------------------- the bench
def bench(
    graph: Graph,
    *,
    twin: Any = None,
    threads: Sequence[int] = (1,),
    batches: Sequence[int] = (1,),
    repeat: int = 30,
    warmup: int = 5,
    baselines: Iterable[str] = BASELINES,
    layers: bool = True,
    kernels: str = "auto",
    file_bytes: int | None = None,
    model_name: str | None = None,
    probe_seconds: float = 0.2,
    rounds: int = 1,
) -> dict[str, Any]:
    """Measure ``graph`` on the engine and the requested baselines (see the module docstring)
    for every (threads, batch) pair; returns a JSON-ready dict. ``rounds`` > 1 interleaves
    the runtimes of a setting (:func:`measure_interleaved`: ``rounds`` rounds of
    ``repeat / rounds`` calls each, medians over all calls)."""
    baselines = list(baselines)
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from {list(BASELINES)}")
    if repeat < 1 or warmup < 0 or rounds < 1:
        raise ValueError(
            f"repeat and rounds must be >= 1 and warmup >= 0, got repeat={repeat}, rounds={rounds}, "
            f"warmup={warmup}"
        )
    if (
        not threads
        or not batches
        or any(int(t) < 1 for t in threads)
        or any(int(b) < 1 for b in batches)
    ):
        raise ValueError("threads and batches must be non-empty lists of positive integers")
    notes: list[str] = []
    shape_layers = _binary_layers(graph)
    for layer, op in zip(shape_layers, [o for o in graph.ops if o.type in BINARY_OPS], strict=True):
        if op.type.startswith("bconv2d"):
            w = graph.tensors[op.params["w"]]
            layer["kernel"] = (int(w.shape[-3]), int(w.shape[-2]))
    engine1 = Engine(graph, kernels=kernels, threads=1)
    first = graph.ops[0].type
    with tempfile.TemporaryDirectory(prefix="bitflow-bench-") as tmp:
        work = Path(tmp)
        if file_bytes is None:
            path = work / "model.bfn"
            graph.save(str(path))
            file_bytes = path.stat().st_size
        base = _Baselines(graph, twin, baselines, work, notes)
        spec = graph.input
        result: dict[str, Any] = {
            "model": model_name,
            "input": [spec.channels, spec.height, spec.width],
            "first_layer": {"conv2d_f32": "float", "conv2d_u8i8": "int8"}.get(first, first),
            "kernels": engine1.kernels,
            "kernel_info": dict(N.kernel_info(engine1.kernels)),
            "cpu_features": {k: bool(v) for k, v in N.cpu_features().items()},
            "peak_binary_macs_per_s": float(N.peak_probe(engine1.kernels, probe_seconds))
            if probe_seconds > 0
            else None,
            "repeat": repeat,
            "warmup": warmup,
            "versions": {"bitflow_engine": engine1.kernels, **base.versions},
            "blas": blas_info(),
            "rounds": rounds,
            "memory": _memory(graph, engine1, shape_layers),
            "activation_memory": _activation_memory(engine1),
            "file": _file_sizes(graph, shape_layers, file_bytes, base.twin),
            "settings": [],
            "notes": notes,
        }
        result["checks"] = base.checks(engine1, int(batches[0]))
        for t in threads:
            eng = Engine(graph, kernels=kernels, threads=int(t))
            for b in batches:
                result["settings"].append(
                    _setting(
                        eng, base, shape_layers, int(t), int(b), repeat, warmup, layers, rounds
                    )
                )
        result["blas_after"] = blas_info()
    return result


def _bind(fn: Any, arg: Any) -> Any:
    return lambda: fn(arg)


def _setting(
    eng: Engine,
    base: _Baselines,
    shape_layers: list[dict[str, Any]],
    t: int,
    b: int,
    repeat: int,
    warmup: int,
    layers: bool,
    rounds: int = 1,
) -> dict[str, Any]:
    spec = eng.graph.input
    x = np.random.default_rng(0).random(
        (b, spec.channels, spec.height, spec.width), dtype=np.float32
    )
    row: dict[str, Any] = {"threads": t, "batch": b}
    fns: dict[str, Any] = {"engine_ms": lambda: eng.logits(x)}
    if "torch" in base.wanted:
        fns["torch_fp32_ms"] = base.torch_fn(t, b)
    if "ort" in base.wanted:
        fns["ort_fp32_ms"] = base.ort_fn("fp32", t, b)
        fns["ort_int8_ms"] = base.ort_fn("int8", t, b)
    if "openvino" in base.wanted:
        fns["openvino_bnn_ms"] = base.ov_fn(t, b)
    if rounds > 1:
        for key, tm in measure_interleaved(fns, repeat, warmup, rounds).items():
            row.update(tm.to_json(key))
    else:
        for key, fn in fns.items():
            row.update(measure(fn, repeat, warmup).to_json(key))
    keys = [
        k for k in ("torch_fp32_ms", "ort_fp32_ms", "ort_int8_ms", "openvino_bnn_ms") if k in row
    ]
    row["speedup"] = {k[:-3]: row[k] / row["engine_ms"] for k in keys}
    # per-call process CPU time: comparable between runtimes only with one thread each
    if t == 1:
        row["speedup_cpu"] = {
            k[:-3]: row[f"{k}_cpu"] / row["engine_ms_cpu"] for k in keys if row["engine_ms_cpu"] > 0
        }
    if not layers:
        return row
    # every step of the engine's fused plan, timed on its own input
    env = {eng.graph.input.name: eng._prepare(x)}
    steps = []
    step_ms: dict[str, Timing] = {}
    for step in eng._plan:
        inp = [env[v] for v in step.srcs]
        tm = measure(_bind(step.fn, inp), repeat, warmup)
        env.update(step.outputs(step.fn(inp)))
        steps.append({"ops": list(step.ops), **tm.to_json("engine_ms")})
        for name in step.ops:
            step_ms[name] = tm
    row["engine_steps"] = steps
    ov_nodes = base.ov_layer_ms(t, b, repeat, warmup) if "openvino" in base.wanted else {}
    out_layers = []
    for layer in shape_layers:
        tm = step_ms[layer["name"]]
        ent: dict[str, Any] = {
            k: layer[k] for k in ("name", "type", "in_shape", "out_shape", "binary_macs")
        }
        ent["binary_macs"] = layer["binary_macs"] * b
        ent["engine_step_ops"] = next(s["ops"] for s in steps if layer["name"] in s["ops"])
        ent.update(tm.to_json("engine_ms"))
        ent["binary_macs_per_s"] = ent["binary_macs"] / (tm.median_ms * 1e-3)
        ent["binary_macs_per_s_best"] = ent["binary_macs"] / (tm.min_ms * 1e-3)
        if "torch" in base.wanted:
            ent.update(
                measure(_torch_layer_fn(layer, t, b), repeat, warmup).to_json("torch_fp32_ms")
            )
        if layer["name"] in ov_nodes:
            o = ov_nodes[layer["name"]]
            ent.update(
                {
                    "openvino_bnn_ms": o["median"],
                    "openvino_bnn_ms_min": o["min"],
                    "openvino_bnn_ms_max": o["max"],
                }
            )
            ent["openvino_binary_macs_per_s"] = (
                ent["binary_macs"] / (o["median"] * 1e-3) if o["median"] > 0 else None
            )
        out_layers.append(ent)
    row["layers"] = out_layers
    return row


def bench_zoo(
    name: str, *, seed: int = 0, model_kwargs: dict[str, Any] | None = None, **kw: Any
) -> dict[str, Any]:
    """:func:`bench` on a zoo model with random weights (see :func:`zoo_model`)."""
    graph, twin = zoo_model(name, seed=seed, **(model_kwargs or {}))
    res = bench(graph, twin=twin, model_name=name, **kw)
    res["source"] = "zoo (random weights, randomized BatchNorm statistics)"
    return res


def bench_file(path: str | os.PathLike[str], **kw: Any) -> dict[str, Any]:
    """:func:`bench` on a ``.bfn`` model file."""
    p = Path(path)
    graph = load_graph(p)
    res = bench(graph, file_bytes=p.stat().st_size, model_name=p.name, **kw)
    res["source"] = str(p)
    return res


def _fmt_ms(row: dict[str, Any], key: str) -> str:
    return f"{row[key]:.3f}" if key in row else "-"


def format_report(result: dict[str, Any]) -> str:
    """A plain-text summary of a :func:`bench` result (the JSON holds everything)."""
    lines = [
        f"{result.get('model')}: input {result['input']}, first layer {result['first_layer']}, "
        f"kernels {result['kernels']}, peak probe {result['peak_binary_macs_per_s'] or 0:.3g} binary MACs/s",
    ]
    cols = ("engine_ms", "torch_fp32_ms", "ort_fp32_ms", "ort_int8_ms", "openvino_bnn_ms")
    lines.append(
        f"{'threads':>7} {'batch':>5} " + " ".join(f"{c:>16}" for c in cols) + "  (median ms)"
    )
    for row in result["settings"]:
        lines.append(
            f"{row['threads']:>7} {row['batch']:>5} "
            + " ".join(f"{_fmt_ms(row, c):>16}" for c in cols)
        )
        lines.append(
            f"{'':>14}"
            + " ".join(f"{_fmt_ms(row, c + '_cpu'):>16}" for c in cols)
            + "  (CPU ms per call)"
        )
        sp = ", ".join(f"{k} {v:.2f}x" for k, v in row["speedup"].items())
        if sp:
            lines.append(f"{'':>14}engine speed-up: {sp}")
        sp = ", ".join(f"{k} {v:.2f}x" for k, v in row.get("speedup_cpu", {}).items())
        if sp:
            lines.append(f"{'':>14}engine speed-up in CPU time: {sp}")
        for layer in row.get("layers", []):
            ov = (
                f", openvino {layer['openvino_bnn_ms']:.3f} ms"
                if "openvino_bnn_ms" in layer
                else ""
            )
            tf = f", torch fp32 {layer['torch_fp32_ms']:.3f} ms" if "torch_fp32_ms" in layer else ""
            lines.append(
                f"{'':>14}{layer['type']} {layer['name']}: engine {layer['engine_ms']:.3f} ms "
                f"({layer['binary_macs_per_s']:.3g} binary MACs/s){tf}{ov}"
            )
    am = result.get("activation_memory")
    if am:
        lines.append(
            f"peak activation memory per sample (whole network): engine {am['engine_peak_bytes_per_sample']} B, "
            f"float32 model of the same graph {am['float32_peak_bytes_per_sample']} B "
            f"({(am['ratio_float32_over_engine'] or 0):.1f}x less)"
        )
    ch = result.get("checks")
    if ch:
        same = ", ".join(
            f"{k} {a['same_predictions']}/{a['samples']} same predictions, "
            f"{a['unexplained']} unexplained"
            for k, a in ch["same_function"].items()
        )
        lines.append(
            f"checks: output shapes {'equal' if ch['output_shapes_ok'] else 'DIFFER'} "
            f"({', '.join(f'{k} {v}' for k, v in ch['output_shapes'].items())}); "
            f"same function as the engine {'ok' if ch['same_function_ok'] else 'FAILED'}"
            + (f" ({same})" if same else "")
        )
    mem, f = result["memory"], result["file"]
    lines.append(
        f"middle-layer activations per sample: engine {mem['engine_middle_peak_activation_bytes']} B, "
        f"float32 {mem['float32_middle_peak_activation_bytes']} B "
        f"({(mem['ratio_float32_over_engine'] or 0):.1f}x); int32 scratch {mem['engine_int32_scratch_bytes']} B"
    )
    lines.append(
        f"binary-layer weights: packed {f['binary_layers_packed_weight_bytes']} B vs float32 "
        f"{f['binary_layers_float32_weight_bytes']} B ({(f['ratio_float32_over_packed'] or 0):.1f}x); "
        f"file {f['bfn_bytes']} B"
    )
    for note in result.get("notes", []):
        lines.append(f"note: {note}")
    return "\n".join(lines)
