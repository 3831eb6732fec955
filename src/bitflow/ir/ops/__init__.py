"""The op table: every engine op declared once.

An :class:`OpDef` holds everything the rest of bitflow needs to know about one op type: its
input arity, parameter roles, group (``binary`` / ``integer`` / ``float`` / ``layout``), the
shape rule (``infer``: validation and output :class:`~bitflow.ir.graph.ValueInfo`), the numpy
reference (``reference``: the definition), the engine builder (``engine``: which native
functions of ``bitflow._native`` run it, given the native module, so that this package never
imports it) and ``native``, the names of those native functions. Graph validation, the
reference executor, the engine, the benchmark's op groups and the op table in ``docs/ops.md``
(:func:`markdown_table`) are all derived from :data:`OPS`; ``tests/python/test_op_table.py``
checks that every op has all its parts and that every native op binding is declared here.

Adding an op: one ``register(OpDef(...))`` in the family module (``binary``, ``thresholds``,
``dense_conv``, ``elementwise``, ``w1``, ``survey``), its native kernel and binding, and nothing
else.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from ..nodes import Op, ValueInfo


class HasTensors(Protocol):
    """What a reference function and an engine builder read of a graph: its parameter tensors
    by name (a :class:`~bitflow.ir.graph.Graph`, which validates itself with this table)."""

    tensors: dict[str, np.ndarray]


InferFn = Callable[[Op, Sequence[ValueInfo], Mapping[str, np.ndarray]], ValueInfo]
RefFn = Callable[[HasTensors, Op, list[np.ndarray], list[ValueInfo]], np.ndarray]
Kernel = Callable[[list[np.ndarray]], np.ndarray]
EngineFn = Callable[["EngineContext", "Op"], Kernel]

GROUPS = ("binary", "integer", "float", "layout")


@dataclass(frozen=True)
class OpDef:
    """One op type. ``inputs``: ``(min, max)`` number of inputs (``max = None``: any number).

    ``group``: ``"binary"`` (xnor-popcount layers), ``"integer"`` (integer/bit arithmetic that
    may run between binary layers in a bitflow graph), ``"float"`` (float arithmetic: allowed
    in a ``bitflow`` graph only outside the binary section, or on a declared float residual
    stream), ``"layout"`` (pools, flatten, concat: follow their input's dtype).
    ``signature`` and ``params_doc`` are the two columns of the docs table.
    """

    name: str
    group: str
    signature: str
    params_doc: str
    roles: frozenset[str]
    infer: InferFn
    reference: RefFn
    engine: EngineFn
    native: tuple[str, ...]
    inputs: tuple[int, int | None] = (1, 1)
    doc: str = ""

    def __post_init__(self) -> None:
        if self.group not in GROUPS:
            raise ValueError(f"op {self.name!r}: group must be one of {GROUPS}")


OPS: dict[str, OpDef] = {}

# Public names of ``bitflow._native`` that are not op kernels: CPU/kernel-set queries, the
# peak probe, and the prepared fused layers the engine builds from declared ops (a binary or
# int8 conv/dense with its pool and threshold; see ``bitflow.engine.Engine._fuse``).
NATIVE_NON_OPS = frozenset(
    {
        "available_kernels",
        "compiled_kernels",
        "compose_kernels",
        "cpu_features",
        "default_kernels",
        "kernel_info",
        "peak_probe",
        "quantize_u8_nhwc",
        "nhwc_f32",
        "BinaryLayer",
        "Int8ConvLayer",
        "FloatStream",  # the engine's fused plan: affine chains -> add_f32 -> threshold_f32_bits
        "IntStream",  # the engine's fused plan: requant_i32 -> add_i32 -> threshold_bits
        "maxpool_f32_fast",  # the engine's fused plan: maxpool_f32 vectorized and threaded
        # training, not inference: the one-pass STE passes of bitflow.nn.functional
        "ste_sign",
        "ste_gate",
        "approx_sign_grad",
    }
)


def register(d: OpDef) -> OpDef:
    if d.name in OPS:
        raise ValueError(f"op {d.name!r} is declared twice")
    OPS[d.name] = d
    return d


@dataclass
class EngineContext:
    """What an engine builder may use: the native module, the kernel set, the thread count,
    the graph (tensors) and every value's description (the input included)."""

    native: Any
    kernels: str
    threads: int
    graph: HasTensors
    values: Mapping[str, ValueInfo]

    def params(self, op: Op) -> dict[str, np.ndarray]:
        return {role: self.graph.tensors[name] for role, name in op.params.items()}


def one(fn: Callable[[np.ndarray], np.ndarray]) -> Kernel:
    """A single-input kernel as a table kernel (``xs -> fn(xs[0])``)."""
    return lambda xs: fn(xs[0])


def ops_in_group(*groups: str) -> frozenset[str]:
    """Names of the declared ops in ``groups`` (e.g. the benchmark's binary op group)."""
    return frozenset(n for n, d in OPS.items() if d.group in groups)


def markdown_table() -> str:
    """The op table of ``docs/ops.md`` (generated; a test keeps the file in sync)."""
    lines = [
        "| op | group | inputs -> output | parameters / attributes | native |",
        "|---|---|---|---|---|",
    ]
    for name in sorted(OPS):
        d = OPS[name]
        nat = ", ".join(f"`{n}`" for n in d.native) or "(view, no kernel)"
        cells = [f"`{name}`", d.group, d.signature, d.params_doc, nat]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


# the families register their ops on import
from . import binary, dense_conv, elementwise, survey, thresholds, w1  # noqa: E402,F401

__all__ = [
    "GROUPS",
    "NATIVE_NON_OPS",
    "OPS",
    "EngineContext",
    "HasTensors",
    "Kernel",
    "OpDef",
    "markdown_table",
    "one",
    "ops_in_group",
    "register",
]


def docs_page() -> str:
    """The whole ``docs/ops.md`` page."""
    return DOCS_HEADER + markdown_table() + "\n"


DOCS_HEADER = """# Engine ops

Generated from the op table (`bitflow.ir.ops`, `python -m bitflow.ir.ops.docs > docs/ops.md`);
`tests/python/test_op_table.py` keeps this file in sync. Every op has one declaration: shape
rule, numpy reference (the definition), engine builder and native entry points. Groups:
`binary` (xnor-popcount layers), `integer` (may run between binary layers of a `bitflow`
graph), `float` (first/last layers, XNOR-Net mode, float residual streams of `mixed` graphs),
`layout` (follows its input's dtype).

"""
