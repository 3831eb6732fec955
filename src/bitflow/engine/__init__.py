"""The native engine: run a ``.bfn`` model with the C++ kernels. numpy in, numpy out; never
imports torch.

    import bitflow.engine as e
    m = e.load("fm.bfn")                # kernels="auto" | "ref" | "scalar" | "avx2" | "avx512"
    m.predict(x)                        # x: float32 [N, C, H, W] in [0, 1] (or uint8 pixels)
    m.logits(x), m.info()

Every op of the graph (:mod:`bitflow.ir.graph`) maps to one native op of ``bitflow._native``;
the kernel set is chosen once (best eligible for this CPU, or ``BITFLOW_KERNELS``, or the
``kernels=`` argument). The binding releases the GIL and an ``Engine`` holds no mutable state
while it runs, so one engine may be shared by several Python threads.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .. import _native as N
from ..ir import Graph, load_graph
from ..ir.graph import ValueInfo
from ..ir.reference import preprocess

Kernel = Callable[[np.ndarray], np.ndarray]


class Step(NamedTuple):
    """One call of the fused plan: ``env[dst] = fn(env[src])``, covering graph ops ``ops``."""

    src: str
    dst: str
    fn: Kernel
    ops: tuple[str, ...]

_KERNEL_NAMES = ("auto", "ref", "scalar", "avx2", "avx512")


def available_kernels() -> list[str]:
    """Kernel sets that are built and supported by this CPU."""
    return list(N.available_kernels())


class Engine:
    """A loaded model ready to run. See the module docstring."""

    def __init__(self, graph: Graph, kernels: str = "auto", threads: int | None = None) -> None:
        if kernels not in _KERNEL_NAMES:
            raise ValueError(f"kernels must be one of {_KERNEL_NAMES}, got {kernels!r}")
        if kernels != "auto" and kernels not in N.available_kernels():
            raise ValueError(
                f"kernel set {kernels!r} is not available on this machine (built and supported: "
                f"{', '.join(N.available_kernels())})"
            )
        if threads is None:
            threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        if not isinstance(threads, int) or threads < 1:
            raise ValueError(f"threads must be a positive integer, got {threads!r}")
        self.graph = graph
        self.values = graph.validate()
        self.kernels = N.default_kernels() if kernels == "auto" else kernels
        self.threads = threads
        self._steps: list[tuple[str, str, str, Kernel]] = [
            (op.type, op.inputs[0], op.outputs[0], self._compile(op)) for op in graph.ops
        ]
        self._plan = self._fuse()
        self._lock = threading.Lock()

    # ------------------------------------------------------------------ fused fast plan
    def _fuse(self) -> list[Step]:
        """The plan :meth:`run` executes when intermediates are not kept: ``bconv2d
        [-> maxpool_i32] [-> flatten] -> threshold_bits`` and ``bdense -> threshold_bits`` (and
        a lone ``bconv2d``) become one call of a prepared :class:`bitflow._native.BinaryLayer`
        (weights laid out and zero-padding correction prepared once, int32 activations never
        returned to Python), the fixed-point first layer ``conv2d_u8i8 [-> maxpool_i32] ->
        threshold_bits`` one call of :class:`bitflow._native.Int8ConvLayer` (weights packed
        for the VNNI kernel once); every other op is its own step. The fused steps compute the same ops with the same kernels, so the
        output is identical bit for bit (``_steps`` keeps the op-by-op form for checks)."""
        ops = self.graph.ops
        uses: dict[str, int] = {}
        for op in ops:
            for name in op.inputs:
                uses[name] = uses.get(name, 0) + 1

        def private(value: str) -> bool:  # consumed by exactly the next op, not an output
            return uses.get(value, 0) == 1 and value != self.graph.output

        plan: list[Step] = []
        i = 0
        while i < len(ops):
            op = ops[i]
            fused = self._fuse_binary(ops, i, private)
            if fused is not None:
                n_ops, fn = fused
                plan.append(Step(op.inputs[0], ops[i + n_ops - 1].outputs[0], fn, tuple(o.name for o in ops[i: i + n_ops])))
                i += n_ops
                continue
            plan.append(Step(op.inputs[0], op.outputs[0], self._steps[i][3], (op.name,)))
            i += 1
        return plan

    def _fuse_binary(self, ops: list[Any], i: int, private: Callable[[str], bool]) -> tuple[int, Kernel] | None:
        op = ops[i]
        if op.type not in ("bconv2d", "bdense", "conv2d_u8i8"):
            return None
        g, th = self.graph, self.threads
        chain = [op]
        pool = None
        j = i + 1
        if op.type in ("bconv2d", "conv2d_u8i8") and j < len(ops) and ops[j].type == "maxpool_i32" and private(chain[-1].outputs[0]) \
                and ops[j].inputs[0] == chain[-1].outputs[0]:
            pool = ops[j]
            chain.append(pool)
            j += 1
        flat = None
        if op.type in ("bconv2d", "conv2d_u8i8") and j < len(ops) and ops[j].type == "flatten" and private(chain[-1].outputs[0]) \
                and ops[j].inputs[0] == chain[-1].outputs[0] and self.values[ops[j].outputs[0]].dtype == "int32":
            flat = ops[j]  # int32 [Ho, Wo, O] -> [Ho * Wo * O]: the same memory
            chain.append(flat)
            j += 1
        thr = None
        if j < len(ops) and ops[j].type == "threshold_bits" and private(chain[-1].outputs[0]) \
                and ops[j].inputs[0] == chain[-1].outputs[0]:
            thr = ops[j]
            chain.append(thr)
        if thr is None:  # fuse pool / flatten only together with the threshold
            chain = chain[:1]
            pool = flat = None
        if len(chain) == 1 and op.type == "bdense":
            return None
        w = g.tensors[op.params["w"]]
        kw: dict[str, Any] = {"kernels": self.kernels}
        if thr is not None:
            kw["thr"] = g.tensors[thr.params["thr"]]
            kw["direction"] = g.tensors[thr.params["direction"]]
        if pool is not None:
            pa = pool.attrs
            kw.update(pool_kernel=tuple(pa["kernel"]), pool_stride=tuple(pa["stride"]), pool_padding=tuple(pa["padding"]))
        if op.type == "conv2d_u8i8":
            if thr is None:
                return None
            a = op.attrs
            layer8 = N.Int8ConvLayer(w, tuple(a["stride"]), tuple(a["padding"]), **kw)
            if flat is not None:
                return len(chain), lambda x: layer8(x, th).reshape(x.shape[0], -1)
            return len(chain), lambda x: layer8(x, th)
        if op.type == "bconv2d":
            a = op.attrs
            layer = N.BinaryLayer(w, a["channels"], tuple(a["stride"]), tuple(a["padding"]), a["pad_value"], **kw)
            if flat is not None:
                # bits [N, words] (a 1x1 pooled output comes back as [N, 1, 1, words]: same memory)
                return len(chain), lambda x: layer(x, th).reshape(x.shape[0], -1)
            return len(chain), lambda x: layer(x, th)
        k_bits = op.attrs["k_bits"]
        if w.ndim != 2 or -(-k_bits // 64) != w.shape[1]:
            return None
        layer = N.BinaryLayer(np.ascontiguousarray(w.reshape(w.shape[0], 1, 1, w.shape[1])), k_bits, **kw)
        return len(chain), lambda x: layer(x.reshape(x.shape[0], 1, 1, x.shape[-1]), th).reshape(x.shape[0], -1)

    # ------------------------------------------------------------------ op compilation
    def _compile(self, op: Any) -> Kernel:
        g, a, k, th = self.graph, op.attrs, self.kernels, self.threads
        p = {role: g.tensors[name] for role, name in op.params.items()}
        t = op.type
        if t == "conv2d_f32":
            return lambda x: N.conv2d_f32(x, p["w"], p.get("bias"), tuple(a["stride"]), tuple(a["padding"]), k, th)
        if t == "conv2d_u8i8":
            return lambda x: N.conv2d_u8i8(x, p["w"], tuple(a["stride"]), tuple(a["padding"]), k, th)
        if t == "bconv2d":
            return lambda x: N.bconv2d(x, p["w"], a["channels"], tuple(a["stride"]), tuple(a["padding"]), a["pad_value"], k, th)
        if t == "bconv2d_planes":
            # a one-plane value is stored without its plane axis (ValueInfo.storage_shape)
            one = self.values[op.inputs[0]].planes == 1
            return lambda x: N.bconv2d_planes(x[None] if one else x, p["w"], a["channels"], tuple(a["stride"]), tuple(a["padding"]), a["pad_value"], k, th)
        if t == "bdense":
            return lambda x: N.bgemm(x, p["w"], a["k_bits"], k, th)
        if t == "bdense_planes":
            one = self.values[op.inputs[0]].planes == 1
            return lambda x: N.bgemm_planes(x[None] if one else x, p["w"], a["k_bits"], k, th)
        if t == "maxpool_bits":
            return lambda x: N.maxpool_bits(x, tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]), a["op"])
        if t == "maxpool_i32":
            return lambda x: N.maxpool_i32(x, tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]))
        if t == "maxpool_f32":
            return lambda x: N.maxpool_f32(x, tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]))
        if t == "threshold_bits":
            # the kernel set's range form: +1 iff lo <= acc <= hi, [T, INT32_MAX] for direction
            # +1 and [INT32_MIN, T] for -1 (common.h); equal to N.threshold_bits
            d = p["direction"]
            if d.shape != p["thr"].shape or not np.all(np.abs(d.astype(np.int64)) == 1):
                return lambda x: N.threshold_bits(x, p["thr"], p["direction"])
            lo = np.where(d > 0, p["thr"], np.iinfo(np.int32).min).astype(np.int32)
            hi = np.where(d > 0, np.iinfo(np.int32).max, p["thr"]).astype(np.int32)
            return lambda x: N.threshold_bits_range(x, lo, hi, k)
        if t == "threshold_f32_bits":
            return lambda x: N.threshold_f32_bits(x, p["thr"], p["direction"])
        if t == "threshold_f32_planes":
            if int(a["planes"]) == 1:
                return lambda x: N.threshold_f32_planes(x, p["thr"], p["direction"])[0]
            return lambda x: N.threshold_f32_planes(x, p["thr"], p["direction"])
        if t == "threshold_planes":
            if int(a["planes"]) == 1:
                return lambda x: N.threshold_planes(x, p["thr"], p["direction"])[0]
            return lambda x: N.threshold_planes(x, p["thr"], p["direction"])
        if t == "scale_bias":
            return lambda x: N.scale_bias(x, p["scale"], p["bias"])
        if t == "affine_f32":
            return lambda x: (x * p["scale"] + p["bias"]).astype(np.float32, copy=False)
        if t == "relu_f32":
            return lambda x: np.maximum(x, np.float32(0))
        if t == "bitpack":
            return lambda x: N.bitpack(np.ascontiguousarray(x), k)
        if t == "flatten":
            out = self.values[op.outputs[0]]
            return lambda x: _flatten(x, out)
        if t == "dense_f32":
            return lambda x: N.dense_f32(x, p["w"], p.get("bias"), k, th)
        raise ValueError(f"op {op.name!r}: the engine has no kernel for op type {t!r}")

    # ------------------------------------------------------------------ running
    def _prepare(self, x: np.ndarray) -> np.ndarray:
        spec = self.graph.input
        if not isinstance(x, np.ndarray):
            raise TypeError(f"input must be a numpy array, got {type(x).__name__}")
        if x.ndim == 3:
            x = x[None]
        want = (spec.channels, spec.height, spec.width)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(f"input must have shape [N, {want[0]}, {want[1]}, {want[2]}] (NCHW), got {list(x.shape)}")
        if x.shape[0] == 0:
            raise ValueError("input batch is empty")
        if not x.flags.c_contiguous:
            raise ValueError("input must be C-contiguous (use np.ascontiguousarray(x))")
        if x.dtype == np.uint8:
            nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            return nhwc if spec.preprocess == "uint8" else nhwc.astype(np.float32) / np.float32(255)
        if x.dtype != np.float32:
            raise TypeError(f"input dtype must be float32 (values in [0, 1]) or uint8 (pixels), got {x.dtype}")
        # the reference executor's preprocessing: NHWC, and for a fixed-point first layer
        # round(255 x) with round-half-to-even, exactly like Int8Conv2d in training; done here
        # in place in one NHWC buffer (the same float32 operations, fewer temporaries)
        if spec.preprocess != "uint8":
            return preprocess(self.graph, x)
        nhwc = np.empty((x.shape[0], spec.height, spec.width, spec.channels), np.float32)
        np.multiply(x.transpose(0, 2, 3, 1), np.float32(255), out=nhwc)
        np.rint(nhwc, out=nhwc)
        if not np.isfinite(nhwc).all():
            raise ValueError("input contains NaN or infinity")
        np.clip(nhwc, 0, 255, out=nhwc)
        return nhwc.astype(np.uint8)

    def run(self, x: np.ndarray, keep: bool = False) -> dict[str, np.ndarray]:
        """Run the graph; returns the output value (and with ``keep`` every intermediate)."""
        env = {self.graph.input.name: self._prepare(x)}
        if not keep:
            for step in self._plan:
                env[step.dst] = step.fn(env.pop(step.src))
            return env
        for _, src, dst, fn in self._steps:
            env[dst] = fn(env[src])
            if not keep:
                del env[src]
        return env

    def logits(self, x: np.ndarray) -> np.ndarray:
        """float32 ``[N, classes]`` logits for float32 ``[N, C, H, W]`` input in [0, 1]."""
        return self.run(x)[self.graph.output]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """int64 ``[N]`` class indices (argmax of the logits)."""
        return self.logits(x).argmax(axis=1).astype(np.int64)

    def info(self) -> dict[str, Any]:
        """Ops, chosen kernels, threads, parameter bytes and activation memory per sample."""
        ops = []
        peak = 0
        for op in self.graph.ops:
            v = self.values[op.outputs[0]]
            b = _value_bytes(v)
            peak = max(peak, b + _value_bytes(self.values.get(op.inputs[0], self.graph.input.value)))
            ops.append({"type": op.type, "name": op.name, "output": v.to_json(), "output_bytes_per_sample": b,
                        "param_bytes": int(sum(self.graph.tensors[t].nbytes for t in op.params.values()))})
        return {
            "kernels": self.kernels,
            "available_kernels": available_kernels(),
            "cpu_features": {k: bool(v) for k, v in N.cpu_features().items()},
            "threads": self.threads,
            "mode": self.graph.mode,
            "input": self.graph.input.to_json(),
            "classes": self.graph.class_names,
            "ops": ops,
            "param_bytes": int(sum(t.nbytes for t in self.graph.tensors.values())),
            "peak_activation_bytes_per_sample": peak,
        }


def _value_bytes(v: ValueInfo) -> int:
    item = {"float32": 4, "int32": 4, "uint8": 1, "bits": 8}[v.dtype]
    return int(np.prod(v.shape)) * item * v.planes


def _flatten(x: np.ndarray, out: ValueInfo) -> np.ndarray:
    if out.planes > 1:
        return x.reshape(x.shape[0], x.shape[1], -1)
    return x.reshape(x.shape[0], -1)


def load(path: str | os.PathLike[str], kernels: str = "auto", threads: int | None = None) -> Engine:
    """Load and validate a ``.bfn`` model file (never executes code) and build an engine."""
    return Engine(load_graph(Path(path)), kernels=kernels, threads=threads)


__all__ = ["Engine", "Step", "available_kernels", "load"]
