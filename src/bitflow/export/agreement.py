"""Agreement of another executor (onnxruntime, qonnx) with the native engine, with the float
tolerance derived, not guessed.

Integer and bit ops are exact in every exported model, so two executors can differ only through
float32 rounding: a float first layer, a float residual stream (``mixed`` graphs) or XNOR-Net's
float BatchNorm, and the float head. :func:`bitflow.ir.reference.float_error_bounds` gives, for
every float value ``v`` of a run, a bound ``E[v]`` on ``|computed - exact|`` that holds for any
correct float32 implementation, so two of them differ by at most ``2 E[v]`` (docs/architecture.md, section 3):

- a sign decided on a float value ``y`` against threshold ``T`` (``threshold_f32_*``, ``bitpack``
  on float) may differ between them only if ``|y - T| <= 2 E[y]``: such a sample is
  *near-threshold* and reported apart, with its count;
- on every other sample all signs agree, so the logits differ by at most ``2 E[logits]`` and the
  predictions agree unless the engine's top-2 gap is within ``4 E[logits]``.

A difference outside these bounds is *unexplained*: an export bug. :func:`agreement` counts
all of them; the tests require zero unexplained differences.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from ..ir import Graph
from ..ir.reference import float_error_bounds, run

_FLOAT_DECISIONS = ("threshold_f32_bits", "threshold_f32_planes", "bitpack")


@dataclass(frozen=True)
class Agreement:
    """How ``other`` logits compare with the engine's on ``samples`` images."""

    samples: int
    same_predictions: int
    near_threshold_samples: int  # some float sign decision within 2E of its threshold
    unexplained: int  # clean samples whose logits or prediction differ beyond the bound
    max_abs_diff: float  # max |other - engine| over the clean samples
    max_bound: float  # max 2 E[logits] over the clean samples (the derived tolerance)

    @property
    def agreement(self) -> float:
        return self.same_predictions / self.samples if self.samples else 1.0

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "agreement": self.agreement}


def near_threshold(
    graph: Graph, env: dict[str, np.ndarray], bounds: dict[str, np.ndarray]
) -> np.ndarray:
    """Per sample: whether some sign decided on a float value lies within ``2 E`` of its
    threshold (two correct float32 executors may take different signs there)."""
    n = env[graph.input.name].shape[0]
    near = np.zeros(n, bool)
    for op in graph.ops:
        y = env[op.inputs[0]]
        if op.type not in _FLOAT_DECISIONS or y.dtype != np.float32:
            continue
        c = y.shape[-1]
        thr = (
            graph.tensors[op.params["thr"]].astype(np.float64).reshape(c, -1)
            if "thr" in op.params
            else np.zeros((c, 1))
        )
        e = np.broadcast_to(bounds.get(op.inputs[0], 0.0), y.shape)
        close = np.abs(y.astype(np.float64)[..., None] - thr) <= 2 * e[..., None]
        near |= close.reshape(n, -1).any(1)
    return near


def agreement(
    graph: Graph,
    x: np.ndarray,
    other: Callable[[np.ndarray], np.ndarray],
    engine: Callable[[np.ndarray], np.ndarray],
    batch_size: int = 256,
) -> Agreement:
    """Run ``other`` and ``engine`` (images ``[B, C, H, W]`` -> logits ``[B, classes]``) on ``x``
    in batches and classify every difference (module docstring)."""
    n = len(x)
    same = near_n = unexplained = 0
    max_diff = max_bound = 0.0
    for i in range(0, n, batch_size):
        xb = x[i : i + batch_size]
        got = np.asarray(other(xb), np.float64)
        want = np.asarray(engine(xb), np.float64)
        _, env = run(graph, xb, return_intermediates=True)  # type: ignore[misc]
        eb = float_error_bounds(graph, env)
        near = near_threshold(graph, env, eb)
        bound = 2 * np.broadcast_to(eb.get(graph.output, 0.0), want.shape) * (1 + 1e-6) + 1e-30
        diff = np.abs(got - want)
        top2 = np.sort(want, axis=1)[:, -2:] if want.shape[1] > 1 else np.zeros((len(want), 2))
        tied = (top2[:, 1] - top2[:, 0]) <= 2 * bound.max(1)
        agree = got.argmax(1) == want.argmax(1)
        clean = ~near
        bad = clean & ((diff > bound).any(1) | (~agree & ~tied))
        same += int(agree.sum())
        near_n += int(near.sum())
        unexplained += int(bad.sum())
        if clean.any():
            max_diff = max(max_diff, float(diff[clean].max()))
            max_bound = max(max_bound, float(bound[clean].max()))
    return Agreement(n, same, near_n, unexplained, max_diff, max_bound)


def onnxruntime_logits(proto: Any) -> Callable[[np.ndarray], np.ndarray]:
    """An onnxruntime session of ``proto`` (an ``onnx.ModelProto``) as ``images -> logits``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    return lambda xb: sess.run(None, {"input": np.ascontiguousarray(xb, np.float32)})[0]


__all__ = ["Agreement", "agreement", "near_threshold", "onnxruntime_logits"]
