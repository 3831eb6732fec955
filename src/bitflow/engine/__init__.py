"""The native engine: run a ``.bfn`` model with the C++ kernels. numpy in, numpy out; never
imports torch.

    import bitflow.engine as e
    m = e.load("fm.bfn")                # kernels="auto" | "ref" | "scalar" | "avx2" | "avx512" | "neon"
    m.predict(x)                        # x: float32 [N, C, H, W] in [0, 1] (or uint8 pixels)
    m.logits(x), m.info()

Every op of the graph runs the native functions its op-table entry names
(:mod:`bitflow.ir.ops`), in topological order, each buffer released after its last reader;
the kernel set is chosen once (best eligible for this CPU, or ``BITFLOW_KERNELS``, or the
``kernels=`` argument). The binding releases the GIL and an ``Engine`` holds no mutable state
while it runs, so one engine may be shared by several Python threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from .. import _native as N
from ..ir import Graph, load_graph
from ..ir.graph import ValueInfo
from ..ir.ops import OPS, EngineContext

Kernel = Callable[[np.ndarray], np.ndarray]
TableKernel = Callable[[list[np.ndarray]], np.ndarray]


class Step(NamedTuple):
    """One call of a plan: ``env[dst] = fn([env[s] for s in srcs])``, covering graph ops
    ``ops``; ``free`` lists the values whose last reader this step is (released after it).
    A step with ``extra`` values produces several: ``fn`` then returns the tuple
    ``(dst value, *extra values)``; :meth:`outputs` names them either way."""

    srcs: tuple[str, ...]
    dst: str
    fn: TableKernel
    ops: tuple[str, ...]
    free: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()

    def outputs(self, result: Any) -> dict[str, np.ndarray]:
        """``{value name: array}`` of what ``fn`` returned."""
        if not self.extra:
            return {self.dst: result}
        return dict(zip((self.dst, *self.extra), result, strict=True))


_KERNEL_NAMES = ("auto", "ref", "scalar", "avx2", "avx512", "neon")
MAX_THREADS = 1024  # the native ops' limit (src/native/python/common.h check_threads)
#: A binary convolution followed by ``gather_channels`` (repeated rows computed once,
#: ``bitflow.convert._rows``) runs on its distinct rows, gathered in the epilogue, when each
#: output reads at least this many bits (``kh * kw * channels``); below, the gather costs more
#: than the popcounts it saves, and the layer is prepared with the rows expanded again
#: (``w[index]``: the same integers). Measured with ``benchmarks/bench_shared_rows.py``.
SHARED_ROWS_MIN_BITS = 1024


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
            threads = min(
                MAX_THREADS,
                len(os.sched_getaffinity(0))
                if hasattr(os, "sched_getaffinity")
                else (os.cpu_count() or 1),
            )
        if (
            isinstance(threads, bool)
            or not isinstance(threads, int)
            or not 1 <= threads <= MAX_THREADS
        ):
            raise ValueError(f"threads must be an integer in [1, {MAX_THREADS}], got {threads!r}")
        self.graph = graph
        self.values = graph.validate()
        self.kernels = N.default_kernels() if kernels == "auto" else kernels
        self.threads = threads
        ctx = EngineContext(N, self.kernels, self.threads, graph, self.values)
        steps = [
            Step(tuple(op.inputs), op.outputs[0], OPS[op.type].engine(ctx, op), (op.name,))
            for op in graph.ops
        ]
        self._steps = _with_frees(steps, graph.output)
        self._plan = _with_frees(self._fuse(), graph.output)

    # ------------------------------------------------------------------ fused fast plan
    def _fuse(self) -> list[Step]:
        """The plan :meth:`run` executes when intermediates are not kept: ``bconv2d
        [-> maxpool_i32] [-> flatten] -> threshold_bits`` and ``bdense -> threshold_bits`` (and
        a lone ``bconv2d`` or ``bdense``: int32 out) become one call of a prepared
        :class:`bitflow._native.BinaryLayer` (weights laid out and zero-padding correction
        prepared once, int32 activations never returned to Python; a lone batch-1 ``bdense``
        4096 -> 4096 reads its packed blocks in 0.035 instead of 0.062 ms with the unpacked
        ``bgemm``, hot cache, and 0.08 instead of 0.23 ms inside a whole AlexNet call), the
        fixed-point first layer ``conv2d_u8i8 [-> maxpool_i32] -> threshold_bits`` one call of
        :class:`bitflow._native.Int8ConvLayer` (weights packed for the VNNI kernel once); every
        other op is its own step. The fused steps compute the same ops with the same kernels,
        so the output is identical bit for bit (``_steps`` keeps the op-by-op form for checks).
        Residual graphs add three fusions, each a pass over rows with the same operations:
        :meth:`_fuse_pool_first` (a fixed-point stem pooled before its affine chain or its
        requantization), :meth:`_fuse_streams` (float residual stream) and
        :meth:`_fuse_int_streams` (integer residual stream)."""
        ops = self.graph.ops
        uses: dict[str, int] = {}
        for op in ops:
            for name in op.inputs:
                uses[name] = uses.get(name, 0) + 1

        def private(value: str) -> bool:  # consumed by exactly the next op, not an output
            return uses.get(value, 0) == 1 and value != self.graph.output

        pooled, absorbed = self._fuse_pool_first(ops, private)
        streams, absorbed = self._fuse_streams(ops, uses, private, absorbed)
        int_streams, absorbed = self._fuse_int_streams(ops, uses, private, absorbed)
        fused_at = {**pooled, **streams, **int_streams}
        plan: list[Step] = []
        i = 0
        while i < len(ops):
            op = ops[i]
            if i in fused_at:
                plan.append(fused_at[i])
                i += 1
                continue
            if i in absorbed:
                i += 1
                continue
            if op.type == "maxpool_f32":
                plan.append(self._steps[i]._replace(fn=self._maxpool_f32_fast(op)))
                i += 1
                continue
            if op.type == "conv2d_f32":  # weights laid out once, not on every call
                plan.append(
                    self._steps[i]._replace(fn=_one_f32(self._conv_f32_layer(op), self.threads))
                )
                i += 1
                continue
            fused = self._fuse_binary(ops, i, private)
            if fused is not None:
                n_ops, fn = fused
                plan.append(
                    Step(
                        (op.inputs[0],),
                        ops[i + n_ops - 1].outputs[0],
                        _one(fn),
                        tuple(o.name for o in ops[i : i + n_ops]),
                    )
                )
                i += n_ops
                continue
            plan.append(self._steps[i])
            i += 1
        return plan

    def _conv_f32_layer(self, op: Any) -> Any:
        """A ``conv2d_f32`` op as a prepared native layer (``_Conv2dF32Layer``: the weights
        packed for the float GEMM once; the same kernels, so the same values bit for bit)."""
        g, a = self.graph, op.attrs
        return N._Conv2dF32Layer(
            g.tensors[op.params["w"]],
            g.tensors.get(op.params.get("bias", "")),
            tuple(a["stride"]),
            tuple(a["padding"]),
            kernels=self.kernels,
        )

    def _maxpool_f32_fast(self, op: Any) -> TableKernel:
        a, th = op.attrs, self.threads
        k, s, p = tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"])
        ks = self.kernels
        return lambda xs: N.maxpool_f32_fast(xs[0], k, s, p, th, ks)

    def _fuse_pool_first(
        self, ops: list[Any], private: Callable[[str], bool]
    ) -> tuple[dict[int, Step], set[int]]:
        """A fixed-point stem ``conv2d_u8i8 -> scale_bias [-> affine_f32 ...] -> maxpool_f32``
        (every value between them private) runs as convolution -> int32 max-pool -> the affine
        chain: the chain on a quarter of the values and no float map of the full resolution
        (ResNet-18's stem: 112x112x64 pooled to 56x56x64; 1.15 -> 0.85 ms with the pool, loaded).

        Exact, bit for bit. Per channel the chain is ``f(y) = (...((y * s1) + b1) * s2 ...) + bk``
        with every operation rounded to float32. Rounding is monotone, so ``f`` is
        non-decreasing when the scales' signs multiply to +, non-increasing when to - and
        constant after a zero scale; hence ``max_i f(y_i) = f(max_i y_i)`` (or ``f(min_i
        y_i)``) as values. A channel whose ``f`` decreases is pooled on ``-y`` instead: its
        weights (and float bias) negated and ``s1`` negated, which gives ``float(-y) * -s1 =
        float(y) * s1`` exactly (negation and round-to-nearest commute); signs of zero may
        differ on the way, and they do not change any nonzero result. Equal values are
        bitwise equal unless they are +0 and -0, and the chain's result is -0 only when the
        last bias is -0 (a sum is -0 only when both addends are): so where that holds, the
        first maximum the float pool keeps and ``f`` of the integer maximum are the same bits.
        The rewrite is refused (the ops then run as before) unless the parameters are finite,
        no last bias is -0.0, no value can overflow to infinity (bounded through the chain
        from the largest possible convolution output, 255 * sum |w|) and no negated weight is
        -128. (A float stem is left alone: its input range is not bounded, so neither are its
        values.) Returns {index of the max-pool: step} and the absorbed ops."""
        g = self.graph
        producer = {op.outputs[0]: i for i, op in enumerate(ops)}
        steps: dict[int, Step] = {}
        absorbed: set[int] = set()
        for i, pool in enumerate(ops):
            if pool.type == "maxpool_f32":
                match = self._pool_first_float(ops, pool, producer, private)
            elif pool.type == "maxpool_i32":
                match = self._pool_first_int(ops, pool, producer, private)
            else:
                continue
            if match is None:
                continue
            chain, thr_type, build = match
            # a threshold of the pooled value joins the step (its bits from the same pass)
            y = pool.outputs[0]
            o = self.values[y].shape[-1]
            readers = [k for k, r in enumerate(ops) if y in r.inputs]
            thr_i = next(
                (
                    k
                    for k in readers
                    if ops[k].type == thr_type and g.tensors[ops[k].params["thr"]].shape == (o,)
                ),
                None,
            )
            keep_y = thr_i is None or len(readers) > 1 or y == g.output
            thr = ops[thr_i] if thr_i is not None else None
            fn = build(thr, keep_y)
            if fn is None:
                continue
            outs = ([y] if keep_y else []) + ([thr.outputs[0]] if thr is not None else [])
            names = [ops[j].name for j in sorted(chain)] + [pool.name]
            steps[i] = Step(
                (ops[min(chain)].inputs[0],),
                outs[0],
                fn,
                tuple(names + ([thr.name] if thr is not None else [])),
                (),
                tuple(outs[1:]),
            )
            absorbed.update([*chain, *([thr_i] if thr_i is not None else [])])
        return steps, absorbed

    def _pool_first_float(
        self, ops: list[Any], pool: Any, producer: dict[str, int], private: Callable[[str], bool]
    ) -> tuple[list[int], str, Callable[[Any | None, bool], TableKernel | None]] | None:
        """The float match of :meth:`_fuse_pool_first`: (the indices of the convolution and
        its affine chain, the threshold op type that may join, the step builder) or None."""
        g = self.graph
        stages: list[tuple[np.ndarray, np.ndarray]] = []
        taken: list[int] = []
        v = pool.inputs[0]
        while (
            v in producer and private(v) and ops[producer[v]].type in ("affine_f32", "scale_bias")
        ):
            j = producer[v]
            p = ops[j]
            stages.insert(0, (g.tensors[p.params["scale"]], g.tensors[p.params["bias"]]))
            taken.append(j)
            v = p.inputs[0]
            if p.type == "scale_bias":
                break
        if not stages or v not in producer or not private(v):
            return None
        conv = ops[producer[v]]
        if conv.type != "conv2d_u8i8" or ops[taken[-1]].type != "scale_bias":
            return None
        return (
            [producer[v], *taken],
            "threshold_f32_bits",
            lambda thr, keep_y: self._pool_first_step(conv, stages, pool, thr, keep_y),
        )

    def _pool_first_int(
        self, ops: list[Any], pool: Any, producer: dict[str, int], private: Callable[[str], bool]
    ) -> tuple[list[int], str, Callable[[Any | None, bool], TableKernel | None]] | None:
        """The integer form of :meth:`_fuse_pool_first`: ``conv2d_u8i8 -> requant_i32 ->
        maxpool_i32 [-> threshold_bits]`` (the fixed-point stem of the integer residual stream)
        runs as conv -> int32 max-pool -> requant (an :class:`IntStream` with the threshold).
        ``q(x) = clamp(floor((x m + b) / 2^shift))`` is non-decreasing in x for m >= 0 and
        non-increasing for m < 0, so the pool commutes with it; a channel with m < 0 is pooled
        on -x (its int8 weights and m negated: (-x)(-m) = x m). Integers: no ties to worry
        about. Refused where a weight to negate is -128, or where an unclamped requantization
        could leave int32 for a value the pool drops (the ops would raise; bounded from
        255 * sum |w|). Returns like :meth:`_pool_first_float`."""
        g, th = self.graph, self.threads
        v = pool.inputs[0]
        if v not in producer or not private(v) or ops[producer[v]].type != "requant_i32":
            return None
        rq = ops[producer[v]]
        u = rq.inputs[0]
        if u not in producer or not private(u) or ops[producer[u]].type != "conv2d_u8i8":
            return None
        conv = ops[producer[u]]
        w = g.tensors[conv.params["w"]]
        o = w.shape[0]
        m, b = g.tensors[rq.params["m"]], g.tensors[rq.params["b"]]
        shift = int(rq.attrs["shift"])
        lo, hi = rq.attrs.get("clamp", (None, None))
        if lo is None:
            bound = np.abs(w.reshape(o, -1).astype(np.int64)).sum(axis=1) * 255
            for c in range(o):
                q = (int(bound[c]) * abs(int(m[c])) + abs(int(b[c]))) // 2**shift + 1
                if q > 2**31 - 1:
                    return None
        flip = m < 0
        if bool(np.any(w[flip] == -128)):
            return None
        m2 = np.ascontiguousarray(np.where(flip, -m, m))
        layer = self._pooled_u8_layer(conv, np.where(flip.reshape(-1, 1, 1, 1), -w, w), pool)

        def build(thr: Any | None, keep_y: bool) -> TableKernel:
            ist = N.IntStream(
                o,
                [(m2, b, shift, lo, hi)],
                keep_y=keep_y,
                kernels=self.kernels,
                **self._thr_kw(thr),
            )
            return lambda xs: ist([layer(xs[0], th)], th)

        return [producer[u], producer[v]], "threshold_bits", build

    def _pooled_u8_layer(self, conv: Any, w: np.ndarray, pool: Any) -> Any:
        """``conv``'s prepared int8 layer with weights ``w`` and ``pool``'s int32 max-pool."""
        a, pa = conv.attrs, pool.attrs
        return N.Int8ConvLayer(
            np.ascontiguousarray(w),
            tuple(a["stride"]),
            tuple(a["padding"]),
            kernels=self.kernels,
            pool_kernel=tuple(pa["kernel"]),
            pool_stride=tuple(pa["stride"]),
            pool_padding=tuple(pa["padding"]),
        )

    def _thr_kw(self, thr: Any | None) -> dict[str, Any]:
        """The ``thr`` / ``direction`` keywords of a stream for threshold op ``thr`` (or none)."""
        if thr is None:
            return {}
        g = self.graph
        return {
            "thr": g.tensors[thr.params["thr"]],
            "direction": g.tensors[thr.params["direction"]],
        }

    def _pool_first_step(
        self,
        conv: Any,
        stages: list[tuple[np.ndarray, np.ndarray]],
        pool: Any,
        thr: Any | None,
        keep_y: bool,
    ) -> TableKernel | None:
        """The step of :meth:`_fuse_pool_first` for one match, or None where it is refused."""
        g, th = self.graph, self.threads
        w = g.tensors[conv.params["w"]]
        o = w.shape[0]
        scales = np.stack([s for s, _ in stages]).astype(np.float64)
        biases = np.stack([b for _, b in stages]).astype(np.float64)
        if not (np.isfinite(scales).all() and np.isfinite(biases).all()):
            return None
        last_b = stages[-1][1]
        if bool(np.any((last_b == 0) & np.signbit(last_b))):
            return None
        # the largest |convolution output|: uint8 pixels up to 255
        bound = np.abs(w.reshape(o, -1).astype(np.float64)).sum(axis=1) * 255.0
        for s, b in zip(scales, biases, strict=True):
            bound = (bound * np.abs(s) + np.abs(b)) * (1 + 2.0**-20)  # each rounding <= 2^-24
            if not np.all(bound < 1e37):
                return None
        flip = np.prod(np.sign(scales), axis=0) < 0
        if bool(np.any(w[flip] == -128)):
            return None
        s1 = np.ascontiguousarray(np.where(flip, -stages[0][0], stages[0][0]))
        fs = N.FloatStream(
            o,
            [True],
            [[(s1, stages[0][1]), *stages[1:]]],
            keep_y=keep_y,
            kernels=self.kernels,
            **self._thr_kw(thr),
        )
        layer = self._pooled_u8_layer(conv, np.where(flip.reshape(-1, 1, 1, 1), -w, w), pool)
        return lambda xs: fs([layer(xs[0], th)], th)

    def _fuse_streams(
        self,
        ops: list[Any],
        uses: dict[str, int],
        private: Callable[[str], bool],
        absorbed: set[int],
    ) -> tuple[dict[int, Step], set[int]]:
        """Float-stream fusion of residual DAGs (:class:`bitflow._native.FloatStream`): every
        ``add_f32``, with the private ``scale_bias`` / ``affine_f32`` chains that feed it, and
        every ``threshold_f32_bits`` (with the add it reads, if any, and the private affine
        chain before it) become one pass over the rows; where a chain starts at a lone
        ``bconv2d`` whose int32 output only it reads, the convolution runs with the stream as
        its epilogue (:meth:`FloatStream.after`), so the int32 map is never stored. A step
        that keeps the add's output and also thresholds it produces both values (``Step.extra``).
        Returns {index of the op at whose place the step runs: step} and the absorbed ops.
        The same float32 operations in the same order as the ops: identical bits and floats."""
        g, th = self.graph, self.threads
        producer = {op.outputs[0]: i for i, op in enumerate(ops)}
        readers: dict[str, list[int]] = {}
        for i, op in enumerate(ops):
            for v in op.inputs:
                readers.setdefault(v, []).append(i)
        streams: dict[int, Step] = {}
        absorbed = set(absorbed)

        def chain(v: str) -> tuple[str, bool, list[tuple[np.ndarray, np.ndarray]], list[int]]:
            stages: list[tuple[np.ndarray, np.ndarray]] = []
            taken: list[int] = []
            cur = v
            while cur in producer and private(cur):
                j = producer[cur]
                p = ops[j]
                if p.type not in ("affine_f32", "scale_bias") or j in absorbed:
                    break
                stages.insert(0, (g.tensors[p.params["scale"]], g.tensors[p.params["bias"]]))
                taken.append(j)
                cur = p.inputs[0]
                if p.type == "scale_bias":
                    break
            return cur, self.values[cur].dtype == "int32", stages, taken

        chain_ops = ("affine_f32", "scale_bias")

        def chain_end(i: int) -> bool:  # an affine op whose value no later stream op takes over
            v = ops[i].outputs[0]
            rs = readers.get(v, [])
            return not (
                private(v) and ops[rs[0]].type in (*chain_ops, "add_f32", "threshold_f32_bits")
            )

        def start_conv(v: str) -> list[int]:
            """Indices of the convolution that produces ``v`` for one stream alone (and of the
            ``gather_channels`` between them), or []."""
            if v not in producer or not private(v) or producer[v] in absorbed:
                return []
            j = producer[v]
            if ops[j].type == "gather_channels":
                u = ops[j].inputs[0]
                if u not in producer or not private(u) or producer[u] in absorbed:
                    return []
                if ops[producer[u]].type != "bconv2d":
                    return []
                return [producer[u], j]
            return [j]

        for i, op in enumerate(ops):
            if i in absorbed:
                continue
            thr_op = None
            if op.type == "add_f32":
                y = op.outputs[0]
                thr_i = next(
                    (r for r in readers.get(y, []) if ops[r].type == "threshold_f32_bits"), None
                )
                thr_op = ops[thr_i] if thr_i is not None else None
                keep_y = thr_op is None or uses.get(y, 0) > 1 or y == g.output
                operands = [chain(v) for v in op.inputs]
            elif op.type == "threshold_f32_bits":
                thr_i, thr_op, keep_y, y = i, op, False, op.outputs[0]
                operands = [chain(op.inputs[0])]
            elif op.type in chain_ops and chain_end(i):
                thr_i, keep_y, y = None, True, op.outputs[0]
                src, i32, stages, taken = chain(op.inputs[0])
                operands = [
                    (
                        src,
                        i32,
                        [*stages, (g.tensors[op.params["scale"]], g.tensors[op.params["bias"]])],
                        [*taken, i],
                    )
                ]
            else:
                continue
            o = self.values[y if op.type != "threshold_f32_bits" else op.inputs[0]].shape[-1]
            kw = self._thr_kw(thr_op)
            fs = N.FloatStream(
                o,
                [od[1] for od in operands],
                [list(od[2]) for od in operands],
                keep_y=keep_y,
                kernels=self.kernels,
                **kw,
            )
            used = [j for od in operands for j in od[3] if j != i]

            # A convolution at the start of one operand, read only by it: run it with the stream
            # as its epilogue (a lone binary or int8 convolution: int32 operand; a float
            # convolution: the single float operand, transformed in place).
            starts = [start_conv(od[0]) for od in operands]
            pos = next(
                (
                    k
                    for k, od in enumerate(operands)
                    if starts[k]
                    and self._epilogue_conv(ops[starts[k][0]], od[1], len(operands), keep_y)
                ),
                None,
            )
            if pos is not None:
                conv_ops = starts[pos]
                conv = ops[conv_ops[0]]
                gather = ops[conv_ops[1]] if len(conv_ops) > 1 else None
                fn = self._conv_with_stream(conv, fs, pos, gather)
                srcs = (conv.inputs[0], *(od[0] for k, od in enumerate(operands) if k != pos))
                used.extend(conv_ops)
            else:
                srcs = tuple(od[0] for od in operands)
                fn = _stream(fs, th)
            outs = ([y] if keep_y else []) + ([thr_op.outputs[0]] if thr_op is not None else [])
            names = [ops[j].name for j in sorted(used)]
            names.append(op.name)
            if thr_op is not None and thr_op is not op:
                names.append(thr_op.name)
                absorbed.add(thr_i)  # type: ignore[arg-type]
            absorbed.update(used)
            streams[i] = Step(srcs, outs[0], fn, tuple(names), (), tuple(outs[1:]))
        return streams, absorbed

    def _fuse_int_streams(
        self,
        ops: list[Any],
        uses: dict[str, int],
        private: Callable[[str], bool],
        absorbed: set[int],
    ) -> tuple[dict[int, Step], set[int]]:
        """Integer-stream fusion of the fixed-point residual stream
        (:class:`bitflow._native.IntStream`): every ``add_i32``, with the private
        ``requant_i32`` of each operand and the ``threshold_bits`` that reads the sum, becomes
        one pass over the rows; a requantized operand computed by a lone ``bconv2d`` that only
        it reads runs as that convolution's epilogue (the int32 map never stored). The same
        integer operations: identical integers and bits (and the same overflow error)."""
        g = self.graph
        producer = {op.outputs[0]: i for i, op in enumerate(ops)}
        readers: dict[str, list[int]] = {}
        for i, op in enumerate(ops):
            for v in op.inputs:
                readers.setdefault(v, []).append(i)
        steps: dict[int, Step] = {}
        absorbed = set(absorbed)
        for i, op in enumerate(ops):
            if i in absorbed or op.type != "add_i32":
                continue
            y = op.outputs[0]
            o = self.values[y].shape[-1]
            operands: list[tuple[str, tuple[Any, ...] | None, list[int]]] = []
            for v in op.inputs:
                j = producer.get(v)
                if (
                    j is not None
                    and private(v)
                    and j not in absorbed
                    and ops[j].type == "requant_i32"
                ):
                    rq = ops[j]
                    lo, hi = rq.attrs.get("clamp", (None, None))
                    spec = (
                        g.tensors[rq.params["m"]],
                        g.tensors[rq.params["b"]],
                        int(rq.attrs["shift"]),
                        lo,
                        hi,
                    )
                    operands.append((rq.inputs[0], spec, [j]))
                else:
                    operands.append((v, None, []))
            thr_i = next(
                (
                    r
                    for r in readers.get(y, [])
                    if ops[r].type == "threshold_bits"
                    and g.tensors[ops[r].params["thr"]].shape == (o,)
                ),
                None,
            )
            thr_op = ops[thr_i] if thr_i is not None else None
            keep_y = thr_op is None or uses.get(y, 0) > 1 or y == g.output
            lo, hi = op.attrs.get("clamp", (None, None))
            kw = self._thr_kw(thr_op)
            ist = N.IntStream(
                o,
                [spec for _, spec, _ in operands],
                lo,
                hi,
                keep_y=keep_y,
                kernels=self.kernels,
                **kw,
            )
            used = [j for _, _, taken in operands for j in taken]
            # a requantized operand straight from a lone binary convolution: its epilogue
            pos = next(
                (
                    k
                    for k, (src, spec, _) in enumerate(operands)
                    if spec is not None
                    and src in producer
                    and private(src)
                    and producer[src] not in absorbed
                    and ops[producer[src]].type == "bconv2d"
                    and self.values[ops[producer[src]].inputs[0]].planes == 1
                ),
                None,
            )
            th = self.threads
            if pos is not None:
                conv = ops[producer[operands[pos][0]]]
                a = conv.attrs
                layer = N.BinaryLayer(
                    g.tensors[conv.params["w"]],
                    a["channels"],
                    tuple(a["stride"]),
                    tuple(a["padding"]),
                    a["pad_value"],
                    kernels=self.kernels,
                )
                srcs = (
                    conv.inputs[0],
                    *(src for k, (src, _, _) in enumerate(operands) if k != pos),
                )
                used.append(producer[operands[pos][0]])

                fn = _after(ist, layer, pos, th)
            else:
                srcs = tuple(src for src, _, _ in operands)
                fn = _stream(ist, th)
            outs = ([y] if keep_y else []) + ([thr_op.outputs[0]] if thr_op is not None else [])
            names = [ops[j].name for j in sorted(used)] + [op.name]
            if thr_op is not None:
                names.append(thr_op.name)
                absorbed.add(thr_i)  # type: ignore[arg-type]
            absorbed.update(used)
            steps[i] = Step(srcs, outs[0], fn, tuple(names), (), tuple(outs[1:]))
        return steps, absorbed

    def _epilogue_conv(self, conv: Any, i32: bool, n_operands: int, keep_y: bool) -> bool:
        """Whether ``conv`` can run with a float stream as its epilogue (see _fuse_streams)."""
        if i32 and conv.type in ("bconv2d", "conv2d_u8i8"):
            return conv.type == "conv2d_u8i8" or self.values[conv.inputs[0]].planes == 1
        return not i32 and conv.type == "conv2d_f32" and n_operands == 1 and keep_y

    def _conv_with_stream(
        self, conv: Any, fs: Any, pos: int, gather: Any | None = None
    ) -> TableKernel:
        th, a = self.threads, conv.attrs
        w, index = self._rows(conv, gather)
        if conv.type == "conv2d_f32":
            layer32 = self._conv_f32_layer(conv)
            return lambda xs: fs.after_conv2d_layer(layer32, xs[0], th)
        layer: Any
        if conv.type == "conv2d_u8i8":
            layer = N.Int8ConvLayer(
                w, tuple(a["stride"]), tuple(a["padding"]), kernels=self.kernels
            )
        else:
            layer = N.BinaryLayer(
                w,
                a["channels"],
                tuple(a["stride"]),
                tuple(a["padding"]),
                a["pad_value"],
                kernels=self.kernels,
                index=index,
            )
        return _after(fs, layer, pos, th)

    def _rows(self, op: Any, gather: Any | None) -> tuple[np.ndarray, np.ndarray | None]:
        """The weight rows ``op``'s prepared layer computes and the gather index of its epilogue
        (None: none): the distinct rows and the index, or, below ``SHARED_ROWS_MIN_BITS`` bits
        per output, the rows expanded (``w[index]``) and no index. Both give the same integers."""
        w = self.graph.tensors[op.params["w"]]
        if gather is None:
            return w, None
        index = self.graph.tensors[gather.params["index"]]
        a = op.attrs
        bits = a["k_bits"] if op.type == "bdense" else w.shape[1] * w.shape[2] * a["channels"]
        if bits >= SHARED_ROWS_MIN_BITS:
            return w, index
        return np.ascontiguousarray(w[index]), None

    def _fuse_binary(
        self, ops: list[Any], i: int, private: Callable[[str], bool]
    ) -> tuple[int, Kernel] | None:
        op = ops[i]
        if op.type not in ("bconv2d", "bdense", "conv2d_u8i8"):
            return None
        if self.values[op.inputs[0]].planes != 1:
            return None
        g, th = self.graph, self.threads
        chain = [op]
        pool = None
        j = i + 1
        gather = None
        if (
            op.type in ("bconv2d", "bdense")
            and j < len(ops)
            and ops[j].type == "gather_channels"
            and private(op.outputs[0])
            and ops[j].inputs[0] == op.outputs[0]
        ):
            gather = ops[j]  # repeated rows computed once (convert._rows): gathered in the epilogue
            chain.append(gather)
            j += 1
        if (
            op.type in ("bconv2d", "conv2d_u8i8")
            and j < len(ops)
            and ops[j].type == "maxpool_i32"
            and private(chain[-1].outputs[0])
            and ops[j].inputs[0] == chain[-1].outputs[0]
        ):
            pool = ops[j]
            chain.append(pool)
            j += 1
        flat = None
        if (
            op.type in ("bconv2d", "conv2d_u8i8")
            and j < len(ops)
            and ops[j].type == "flatten"
            and private(chain[-1].outputs[0])
            and ops[j].inputs[0] == chain[-1].outputs[0]
            and self.values[ops[j].outputs[0]].dtype == "int32"
        ):
            flat = ops[j]  # int32 [Ho, Wo, O] -> [Ho * Wo * O]: the same memory
            chain.append(flat)
            j += 1
        thr = None
        if (
            j < len(ops)
            and ops[j].type == "threshold_bits"
            and private(chain[-1].outputs[0])
            and ops[j].inputs[0] == chain[-1].outputs[0]
        ):
            thr = ops[j]
            chain.append(thr)
        if thr is None:  # fuse pool / flatten only together with the threshold
            chain = chain[: 1 + (gather is not None)]
            pool = flat = None
        w, index = self._rows(op, gather)
        kw: dict[str, Any] = {"kernels": self.kernels}
        if index is not None:
            kw["index"] = index
        if thr is not None:
            kw["thr"] = g.tensors[thr.params["thr"]]
            kw["direction"] = g.tensors[thr.params["direction"]]
        if pool is not None:
            pa = pool.attrs
            kw.update(
                pool_kernel=tuple(pa["kernel"]),
                pool_stride=tuple(pa["stride"]),
                pool_padding=tuple(pa["padding"]),
            )
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
            layer = N.BinaryLayer(
                w, a["channels"], tuple(a["stride"]), tuple(a["padding"]), a["pad_value"], **kw
            )
            if flat is not None:
                # bits [N, words] (a 1x1 pooled output comes back as [N, 1, 1, words]: same memory)
                return len(chain), lambda x: layer(x, th).reshape(x.shape[0], -1)
            return len(chain), lambda x: layer(x, th)
        k_bits = op.attrs["k_bits"]
        if w.ndim != 2 or -(-k_bits // 64) != w.shape[1]:
            return None
        layer = N.BinaryLayer(
            np.ascontiguousarray(w.reshape(w.shape[0], 1, 1, w.shape[1])), k_bits, **kw
        )
        return len(chain), lambda x: layer(x.reshape(x.shape[0], 1, 1, x.shape[-1]), th).reshape(
            x.shape[0], -1
        )

    # ------------------------------------------------------------------ running
    def _prepare(self, x: np.ndarray) -> np.ndarray:
        spec = self.graph.input
        if not isinstance(x, np.ndarray):
            raise TypeError(f"input must be a numpy array, got {type(x).__name__}")
        if x.ndim == 3:
            x = x[None]
        want = (spec.channels, spec.height, spec.width)
        if x.ndim != 4 or tuple(x.shape[1:]) != want:
            raise ValueError(
                f"input must have shape [N, {want[0]}, {want[1]}, {want[2]}] (NCHW), got {list(x.shape)}"
            )
        if x.shape[0] == 0:
            raise ValueError("input batch is empty")
        if not x.flags.c_contiguous:
            raise ValueError("input must be C-contiguous (use np.ascontiguousarray(x))")
        if x.dtype == np.uint8:
            nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
            return nhwc if spec.preprocess == "uint8" else nhwc.astype(np.float32) / np.float32(255)
        if x.dtype != np.float32:
            raise TypeError(
                f"input dtype must be float32 (values in [0, 1]) or uint8 (pixels), got {x.dtype}"
            )
        # the reference executor's preprocessing (ir.reference.preprocess: NHWC, and for a
        # fixed-point first layer round(255 x) with round-half-to-even, exactly like Int8Conv2d
        # in training), native: the same float32 operations in one threaded pass; ValueError
        # on NaN / inf
        try:
            if spec.preprocess != "uint8":
                return N.nhwc_f32(x, self.threads)
            return N.quantize_u8_nhwc(x, self.threads, self.kernels)
        except ValueError:
            raise ValueError("input contains NaN or infinity") from None

    def run(self, x: np.ndarray, keep: bool = False) -> dict[str, np.ndarray]:
        """Run the graph in topological order; returns ``{output: logits}``. Without ``keep``
        the fused plan runs and every buffer is released after its last reader; with ``keep``
        every op runs on its own and every intermediate value is returned."""
        env = {self.graph.input.name: self._prepare(x)}
        if not keep:
            for step in self._plan:
                env.update(step.outputs(step.fn([env[v] for v in step.srcs])))
                for v in step.free:
                    del env[v]
            return env
        for step in self._steps:
            env[step.dst] = step.fn([env[v] for v in step.srcs])
        return env

    def peak_activation_bytes(self, fused: bool = True) -> int:
        """Peak bytes per sample of the values alive at once while the plan runs (the input
        included; a step's inputs and its output are alive together; a fused layer's int32
        scratch is not counted). ``fused=False``: the op-by-op plan that keeps nothing."""
        size = {v: _value_bytes(info) for v, info in self.values.items()}
        live = size[self.graph.input.name]
        peak = live
        for step in self._plan if fused else self._steps:
            live += size[step.dst] + sum(size[v] for v in step.extra)
            peak = max(peak, live)
            live -= sum(size[v] for v in step.free)
        return int(peak)

    def logits(self, x: np.ndarray) -> np.ndarray:
        """float32 ``[N, classes]`` logits for float32 ``[N, C, H, W]`` input in [0, 1]."""
        return self.run(x)[self.graph.output]

    def predict(self, x: np.ndarray) -> np.ndarray:
        """int64 ``[N]`` class indices (argmax of the logits)."""
        return self.logits(x).argmax(axis=1).astype(np.int64)

    def info(self) -> dict[str, Any]:
        """Ops, chosen kernels, threads, parameter bytes and activation memory per sample."""
        ops = []
        for op in self.graph.ops:
            v = self.values[op.outputs[0]]
            ops.append(
                {
                    "type": op.type,
                    "name": op.name,
                    "inputs": list(op.inputs),
                    "output": v.to_json(),
                    "output_bytes_per_sample": _value_bytes(v),
                    "param_bytes": int(
                        sum(self.graph.tensors[t].nbytes for t in op.params.values())
                    ),
                }
            )
        peak = self.peak_activation_bytes()
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


def _one(fn: Kernel) -> TableKernel:
    return lambda xs: fn(xs[0])


def _one_f32(layer: Any, threads: int) -> TableKernel:
    return lambda xs: layer(xs[0], threads)


def _stream(fs: Any, threads: int) -> TableKernel:
    return lambda xs: fs(list(xs), threads)


def _after(fs: Any, layer: Any, pos: int, threads: int) -> TableKernel:
    return lambda xs: fs.after(layer, xs[0], list(xs[1:]), pos, threads)


def _with_frees(steps: list[Step], output: str) -> list[Step]:
    """The steps with ``free`` set: each value (never the output) is released right after the
    last step that reads it."""
    last: dict[str, int] = {}
    for i, st in enumerate(steps):
        for v in st.srcs:
            last[v] = i
    frees: dict[int, list[str]] = {}
    for v, i in last.items():
        if v != output:
            frees.setdefault(i, []).append(v)
    return [st._replace(free=tuple(dict.fromkeys(frees.get(i, [])))) for i, st in enumerate(steps)]


def _value_bytes(v: ValueInfo) -> int:
    item = {"float32": 4, "int32": 4, "uint8": 1, "bits": 8}[v.dtype]
    return int(np.prod(v.shape)) * item * v.planes


def load(path: str | os.PathLike[str], kernels: str = "auto", threads: int | None = None) -> Engine:
    """Load and validate a ``.bfn`` model file (never executes code) and build an engine."""
    return Engine(load_graph(Path(path)), kernels=kernels, threads=threads)


__all__ = ["Engine", "Step", "available_kernels", "load"]
