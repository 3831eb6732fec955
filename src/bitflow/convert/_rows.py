"""Compute repeated output channels once: a convolution whose weight rows repeat becomes the
convolution over its distinct rows followed by ``gather_channels``.

MCN-1 (Sec. III-E) modulates every binarized filter by one positive scalar per plane, so output
channel ``(h, k)`` of an MCconv is ``a mean(M_k)`` times the response of the same ``+-1`` filter
``s_h`` for every ``k``: the lowered layer (:mod:`bitflow.convert._mcn`) has ``K`` equal weight
rows per map, and the integer results of equal rows are equal. So the xnor-popcount (or
``conv2d_u8b1``) op computes ``H`` rows instead of ``H K`` (``K`` times less popcount work and
weight storage), and ``gather_channels`` copies each row's int32 result to the ``K`` channels
whose per-channel thresholds / scales follow, which stay as they were. The results are the same
integers, so the graph computes exactly the same function (tested against the unshared graph).

Applies to every op with rows of 1-bit weights on axis 0 (``bconv2d``, ``conv2d_u8b1``,
``bdense``, ``dense_u8b1``) whose distinct rows are at most half its rows (a model without
repeated rows, the usual case, is left unchanged).
"""

from __future__ import annotations

import numpy as np

from ..ir.graph import Graph, Op

#: ops whose parameter ``w`` holds one row of packed weights per output channel (axis 0)
ROW_OPS = ("bconv2d", "conv2d_u8b1", "bdense", "dense_u8b1")


def _fresh(base: str, taken: set[str]) -> str:
    name, i = base, 1
    while name in taken:
        i += 1
        name = f"{base}{i}"
    taken.add(name)
    return name


def share_repeated_rows(graph: Graph) -> Graph:
    """``graph`` with every :data:`ROW_OPS` op whose weight rows repeat (distinct rows at most
    half of them) computing its distinct rows once, followed by ``gather_channels`` that
    restores its output channels (module docstring). Returns a new, validated graph (the
    input graph is not modified); the op keeps its name and attributes, and its output value
    keeps its name (now the gather's output), so every consumer and every ``source`` reference
    stays valid."""
    uses: dict[str, int] = {}
    for op in graph.ops:
        for t in op.params.values():
            uses[t] = uses.get(t, 0) + 1
    values = {v for op in graph.ops for v in (*op.inputs, *op.outputs)} | {graph.input.name}
    op_names = {op.name for op in graph.ops}
    tensors = dict(graph.tensors)
    ops: list[Op] = []
    for op in graph.ops:
        w = tensors.get(op.params.get("w", ""))
        if op.type not in ROW_OPS or w is None or w.ndim < 2 or len(op.outputs) != 1:
            ops.append(op)
            continue
        rows = np.ascontiguousarray(w.reshape(w.shape[0], -1))
        _, first, inverse = np.unique(rows, axis=0, return_index=True, return_inverse=True)
        if 2 * len(first) > w.shape[0]:
            ops.append(op)
            continue
        # distinct rows in order of first appearance; index[o] = the distinct row of channel o
        order = np.argsort(first, kind="stable")
        rank = np.empty_like(order)
        rank[order] = np.arange(len(order))
        index = rank[inverse.reshape(-1)].astype(np.int32)
        w_name = op.params["w"]
        if uses[w_name] > 1:  # shared with another op: leave that one's tensor alone
            w_name = _fresh(f"{w_name}.rows", set(tensors))
        tensors[w_name] = np.ascontiguousarray(w[np.sort(first)])
        idx_name = _fresh(f"{op.name}.rows.index", set(tensors))
        tensors[idx_name] = index
        inner = _fresh(f"{op.outputs[0]}.rows", values)
        ops.append(
            Op(
                op.type,
                op.name,
                list(op.inputs),
                [inner],
                dict(op.attrs),
                {**op.params, "w": w_name},
            )
        )
        gather_attrs = {"source": op.attrs["source"]} if "source" in op.attrs else {}
        ops.append(
            Op(
                "gather_channels",
                _fresh(f"{op.name}.rows", op_names),
                [inner],
                [op.outputs[0]],
                gather_attrs,
                {"index": idx_name},
            )
        )
    if len(ops) == len(graph.ops):
        return graph
    return _rebuilt(graph, ops, tensors)


def expand_shared_rows(graph: Graph) -> Graph:
    """The inverse of :func:`share_repeated_rows`: a ``gather_channels`` that is the only
    consumer of a :data:`ROW_OPS` op is folded back into that op's weight rows (``w[index]``),
    and the op writes the gather's output itself: the form without sharing, for comparisons
    (the same function; ``K`` times the popcount work for MCN-1)."""
    consumers = graph.consumers()
    fold: dict[str, Op] = {}  # producer's output value -> its gather
    for op in graph.ops:
        if op.type in ROW_OPS and len(op.outputs) == 1:
            users = consumers.get(op.outputs[0], [])
            if len(users) == 1 and users[0].type == "gather_channels":
                fold[op.outputs[0]] = users[0]
    folded = {id(g) for g in fold.values()}
    ops: list[Op] = []
    tensors = dict(graph.tensors)
    for op in graph.ops:
        if id(op) in folded:
            continue
        gop = fold.get(op.outputs[0]) if op.outputs else None
        if gop is None:
            ops.append(op)
            continue
        w = graph.tensors[op.params["w"]][graph.tensors[gop.params["index"]]]
        w_name = _fresh(f"{op.params['w']}.expanded", set(tensors))
        tensors[w_name] = np.ascontiguousarray(w)
        params = {**op.params, "w": w_name}
        ops.append(Op(op.type, op.name, list(op.inputs), list(gop.outputs), dict(op.attrs), params))
    return _rebuilt(graph, ops, tensors)


def _rebuilt(graph: Graph, ops: list[Op], tensors: dict[str, np.ndarray]) -> Graph:
    """``graph`` with ``ops``, keeping the tensors they use (validated)."""
    live = {t for op in ops for t in op.params.values()}
    out = Graph(
        input=graph.input,
        ops=ops,
        tensors={k: v for k, v in tensors.items() if k in live},
        output=graph.output,
        mode=graph.mode,
        class_names=list(graph.class_names),
        provenance=dict(graph.provenance),
        version=graph.version,
    )
    out.validate()
    return out


__all__ = ["ROW_OPS", "expand_shared_rows", "share_repeated_rows"]
