"""Agreement of the native engine with the reference executor (numpy only, no torch).

Each step of the plan the engine runs (fused binary layers included) and each op on its own are
run on the reference executor's own input to that step ("teacher forcing"), so every step is
checked in isolation: integer and bit outputs must be identical, float outputs
agree within rounding, and a float first layer's threshold bits may differ only where the
reference value lies within the float32 summation error bound of the threshold (two correct
float32 convolutions sum in different orders; docs/architecture.md §3). End to end, the
engine's predictions are compared with the reference's.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from ..ir.bits import plane_levels, unpack_bits
from ..ir.graph import Graph
from ..ir.reference import conv_f32_error_bound
from ..ir.reference import run as reference_run
from . import Engine


def _float_conv_bounds(graph: Graph) -> dict[str, np.ndarray]:
    """Per-channel error bound of each conv2d_f32 output (:func:`conv_f32_error_bound`),
    propagated unchanged through max-pool and ReLU to the threshold that reads it."""
    bounds: dict[str, np.ndarray] = {}
    for op in graph.ops:
        if op.type == "conv2d_f32":
            bounds[op.outputs[0]] = conv_f32_error_bound(graph, op) + 1e-30
        elif op.type in ("maxpool_f32", "relu_f32") and op.inputs[0] in bounds:
            bounds[op.outputs[0]] = bounds[op.inputs[0]]
    return bounds


FLOAT_DECISIONS = ("threshold_f32_bits", "threshold_f32_planes")


def float_decision_diff(
    op_type: str,
    out: np.ndarray,
    want: np.ndarray,
    y: np.ndarray,
    thr: np.ndarray,
    bound: np.ndarray,
    channels: int,
) -> tuple[np.ndarray, np.ndarray]:
    """``(diff, near)`` over ``[..., channels]`` for a float threshold op's two outputs.

    ``threshold_f32_bits``: the bits differ, near when ``|y - thr| <= bound``.
    ``threshold_f32_planes`` (``[M, ..., words]``): the decoded levels ``sum_m 2^m c_m`` differ,
    near when ``y`` lies within ``bound`` of any of the channel's thresholds (two float32
    values on either side of none of them give the same level)."""
    yv = y.astype(np.float64)
    if op_type == "threshold_f32_bits":
        return unpack_bits(out, channels) != unpack_bits(want, channels), np.abs(yv - thr) <= bound
    if thr.shape[1] == 1:  # one plane (L = 1) has no plane axis
        out, want = out[None], want[None]
    dist = np.min(np.abs(yv[..., None] - thr.astype(np.float64)), axis=-1)
    return plane_levels(out, channels) != plane_levels(want, channels), dist <= bound


def _run_plan_keeping(engine: Engine, x: np.ndarray) -> dict[str, np.ndarray]:
    """The fused plan :meth:`Engine.run` executes, with every step's output kept (no frees)."""
    env = {engine.graph.input.name: engine._prepare(x)}
    for step in engine._plan:
        env.update(step.outputs(step.fn([env[v] for v in step.srcs])))
    return env


def compare_with_reference(
    engine: Engine,
    x: np.ndarray,
    y: np.ndarray | None = None,
    *,
    batch_size: int = 256,
    reference: bool = True,
    reference_graph: Graph | None = None,
) -> dict[str, Any]:
    """Accuracy and speed of ``engine`` on ``x`` and, with ``reference``, its agreement with the
    reference executor (see the module docstring).

    The steps checked are the ones :meth:`Engine.predict` runs: the fused plan (a fused binary
    layer ``bconv2d [-> pool] -> threshold_bits`` is checked on its output bits, from the
    reference's input to the layer) and, for localization, every op on its own (``by_op``).
    ``reference_graph`` (default: the engine's own graph) is the graph the reference executor
    runs; tests pass the uncorrupted graph to show that a corrupted engine is caught.

    ``reference`` report: ``exact_mismatches`` (integers / bits that differ, plus float-layer
    bits that differ farther than the error bound from their threshold, in the fused plan:
    must be 0), ``op_by_op_mismatches`` (the same over the unfused steps: must be 0),
    ``near_threshold`` (float-layer bits that differ within the bound), ``prediction_mismatches``
    and ``prediction_mismatches_unexplained`` (those in a sample whose end-to-end run took no
    near-threshold float-layer decision differently: must be 0), ``by_op`` / ``by_step``.
    """
    g = engine.graph
    rg = g if reference_graph is None else reference_graph
    n = int(x.shape[0])
    if n == 0:
        raise ValueError("no samples to run")
    preds = np.empty(n, np.int64)
    t_engine = 0.0
    ref_report: dict[str, Any] = {
        "prediction_mismatches": 0,
        "prediction_mismatches_unexplained": 0,
        "exact_mismatches": 0,
        "exact_values_compared": 0,
        "op_by_op_mismatches": 0,
        "max_float_abs_diff": 0.0,
        "near_threshold": 0,
        "by_op": {},
        "by_step": {},
    }
    bounds = _float_conv_bounds(rg)

    def check_step(
        stats: dict[str, Any],
        typ: str,
        src: str,
        dst: str,
        thr_name: str | None,
        out: np.ndarray,
        env: dict[str, np.ndarray],
        total: str,
    ) -> None:
        want = env[dst]
        v = engine.values[dst]
        if v.dtype == "float32":
            d = float(np.max(np.abs(out.astype(np.float64) - want))) if out.size else 0.0
            stats["max_abs_diff"] = max(stats["max_abs_diff"], d)
            ref_report["max_float_abs_diff"] = max(ref_report["max_float_abs_diff"], d)
            return
        if out.shape != want.shape:
            raise AssertionError(
                f"step {dst!r}: engine shape {out.shape} != reference {want.shape}"
            )
        if typ in FLOAT_DECISIONS and src in bounds:
            assert v.channels is not None and thr_name is not None
            diff, near = float_decision_diff(
                typ, out, want, env[src], rg.tensors[thr_name], bounds[src], v.channels
            )
            stats["near_threshold"] = stats.get("near_threshold", 0) + int((diff & near).sum())
            if total == "exact_mismatches":
                ref_report["near_threshold"] += int((diff & near).sum())
            mism = int((diff & ~near).sum())
        else:
            mism = int(np.count_nonzero(out != want))
        stats["mismatches"] += mism
        stats["compared"] += int(want.size)
        ref_report[total] += mism
        if total == "exact_mismatches":
            ref_report["exact_values_compared"] += int(want.size)

    for i in range(0, n, batch_size):
        xb = np.ascontiguousarray(x[i : i + batch_size], dtype=np.float32)
        nb = len(xb)
        t0 = time.perf_counter()
        logits = engine.logits(xb)
        t_engine += time.perf_counter() - t0
        preds[i : i + nb] = logits.argmax(1)
        if not reference:
            continue
        ref_logits, env = reference_run(rg, xb, return_intermediates=True)  # type: ignore[misc]
        mism_pred = ref_logits.argmax(1) != preds[i : i + nb]
        ref_report["prediction_mismatches"] += int(mism_pred.sum())
        ref_report["max_logit_abs_diff_end_to_end"] = max(
            ref_report.get("max_logit_abs_diff_end_to_end", 0.0),
            float(np.max(np.abs(logits - ref_logits))),
        )
        # End to end, only a float first layer's threshold can start a divergence: count its
        # bits that differ from the reference (in the plan that runs) and check each lies within
        # the error bound; a prediction may differ only in a sample with such a near decision.
        own = _run_plan_keeping(engine, xb)
        explained = np.zeros(nb, bool)
        for op in rg.ops:
            if op.type in FLOAT_DECISIONS and op.inputs[0] in bounds and op.outputs[0] in own:
                ch = engine.values[op.outputs[0]].channels
                assert ch is not None
                diff, near = float_decision_diff(
                    op.type,
                    own[op.outputs[0]],
                    env[op.outputs[0]],
                    env[op.inputs[0]],
                    rg.tensors[op.params["thr"]],
                    bounds[op.inputs[0]],
                    ch,
                )
                e2e = ref_report.setdefault(
                    "first_layer_end_to_end",
                    {"near_threshold": 0, "real": 0, "samples_affected": 0},
                )
                e2e["near_threshold"] += int((diff & near).sum())
                e2e["real"] += int((diff & ~near).sum())
                ref_report["exact_mismatches"] += int((diff & ~near).sum())
                e2e["samples_affected"] += int(diff.reshape(nb, -1).any(1).sum())
                explained |= (diff & near).reshape(nb, -1).any(1)
        ref_report["prediction_mismatches_unexplained"] += int((mism_pred & ~explained).sum())
        # the fused plan, step by step, each from the reference's input ("teacher forcing")
        producer = {o.outputs[0]: o for o in rg.ops}
        for step in engine._plan:
            outs = step.outputs(step.fn([np.ascontiguousarray(env[v]) for v in step.srcs]))
            key = "+".join(step.ops)
            for name, out in outs.items():  # a step may produce several values (fused streams)
                last = producer[name]
                stats = ref_report["by_step"].setdefault(
                    key if name == step.dst else f"{key}:{name}",
                    {"type": last.type, "mismatches": 0, "compared": 0, "max_abs_diff": 0.0},
                )
                check_step(
                    stats,
                    last.type,
                    last.inputs[0],  # the decision's own input (the reference has every value)
                    name,
                    last.params.get("thr"),
                    out,
                    env,
                    "exact_mismatches",
                )
        # and every op on its own (localizes a fused step's mismatch)
        for step, op in zip(engine._steps, rg.ops, strict=True):
            out = step.fn([np.ascontiguousarray(env[v]) for v in step.srcs])
            stats = ref_report["by_op"].setdefault(
                op.name, {"type": op.type, "mismatches": 0, "compared": 0, "max_abs_diff": 0.0}
            )
            check_step(
                stats,
                op.type,
                op.inputs[0],
                step.dst,
                op.params.get("thr"),
                out,
                env,
                "op_by_op_mismatches",
            )
    report: dict[str, Any] = {
        "samples": n,
        "kernels": engine.kernels,
        "threads": engine.threads,
        "batch_size": batch_size,
        "ms_per_sample": 1000 * t_engine / n,
    }
    if y is not None:
        report["accuracy"] = float((preds == np.asarray(y)).mean())
    if reference:
        report["reference"] = ref_report
    return report


def reference_ok(ref: dict[str, Any]) -> bool:
    """True when every difference from the reference is a legitimate one: no integer / bit
    mismatch, and every prediction difference lies in a sample that took a float first-layer
    decision within the float32 error bound of its threshold differently (``bitflow run`` exit 0)."""
    return (
        ref["exact_mismatches"] == 0
        and ref["op_by_op_mismatches"] == 0
        and ref["prediction_mismatches_unexplained"] == 0
    )
