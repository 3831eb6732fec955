"""Repeated weight rows computed once (``bitflow.convert._rows``) and the ``gather_channels`` op.

Oracles: numpy's ``take`` for the op; for the pass, PyTorch through ``verify`` (random BatchNorm
statistics, so that a channel given another channel's result changes signs), the graph with the
rows expanded again (``expand_shared_rows``: every value equal, bit for bit), and the reference
executor against the engine on every kernel set.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_mcn_convert import randomize_mcn

from bitflow import _native as N
from bitflow.convert import convert, verify
from bitflow.convert._rows import expand_shared_rows, share_repeated_rows
from bitflow.engine import Engine, available_kernels
from bitflow.engine.check import compare_with_reference
from bitflow.ir import run
from bitflow.ir.graph import Graph, GraphError, InputSpec, Op
from bitflow.models import create
from bitflow.nn import BinaryConv2d


# ----------------------------------------------------------------------------- the op
@pytest.mark.parametrize("dtype", [np.float32, np.int32, np.uint8])
@given(
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    c=st.integers(1, 9),
    o=st.integers(1, 20),
    seed=st.integers(0, 2**31 - 1),
)
@settings(max_examples=30, deadline=None)
def test_gather_channels_native_is_numpy_take(
    dtype: type, shape: list[int], c: int, o: int, seed: int
) -> None:
    rng = np.random.default_rng(seed)
    if dtype is np.int32:
        x = rng.integers(-(2**31), 2**31 - 1, (*shape, c)).astype(dtype)
    else:
        x = (rng.random((*shape, c)) * 255).astype(dtype)
    index = rng.integers(0, c, o).astype(np.int32)
    got = N.gather_channels(x, index)
    assert got.dtype == x.dtype
    np.testing.assert_array_equal(got, np.take(x, index, axis=-1))


def test_gather_channels_rejects_bad_input() -> None:
    x = np.zeros((2, 3), np.int32)
    with pytest.raises(ValueError, match=r"index\[1\] = 3 is outside \[0, 3\)"):
        N.gather_channels(x, np.array([0, 3], np.int32))
    with pytest.raises(ValueError, match=r"index\[0\] = -1"):
        N.gather_channels(x, np.array([-1], np.int32))
    with pytest.raises(ValueError, match="empty"):
        N.gather_channels(x, np.zeros(0, np.int32))
    with pytest.raises(TypeError, match="float32, int32 or uint8"):
        N.gather_channels(x.astype(np.int64), np.array([0], np.int32))


def _gather_graph(index: np.ndarray) -> Graph:
    ops = [Op("gather_channels", "g", ["input"], ["y"], {}, {"index": "idx"})]
    return Graph(InputSpec(3, 2, 2), ops, {"idx": index}, "y")


def test_graph_validation_names_a_bad_index() -> None:
    with pytest.raises(GraphError, match=r"index values must lie in \[0, 3\)"):
        _gather_graph(np.array([0, 3], np.int32)).validate()
    with pytest.raises(GraphError, match="dtype int64, expected int32"):
        _gather_graph(np.array([0, 1], np.int64)).validate()
    with pytest.raises(GraphError, match="index is empty"):
        _gather_graph(np.zeros(0, np.int32)).validate()


# ----------------------------------------------------------------------------- the pass
class _Spy:
    """Wraps ``_native.BinaryLayer`` and counts the layers prepared with a gather index."""

    def __init__(self, real: type) -> None:
        self.real, self.with_index, self.total = real, 0, 0

    def __call__(self, *args: object, **kw: object) -> object:
        self.total += 1
        self.with_index += kw.get("index") is not None
        return self.real(*args, **kw)


def _same_function(g: Graph, x: np.ndarray, monkeypatch: pytest.MonkeyPatch) -> None:
    """``g`` (shared) and its expansion compute the same values, bit for bit, in the reference
    executor; the engine on every kernel set matches the reference on ``g``, both with the
    distinct rows gathered in the prepared layers' epilogue (``SHARED_ROWS_MIN_BITS = 0``) and
    with the rows expanded when the layer is prepared (a huge minimum)."""
    import bitflow.engine as engine_mod

    full = expand_shared_rows(g)
    assert full.ops != g.ops
    la, va = run(g, x, return_intermediates=True)  # type: ignore[misc]
    lb, vb = run(full, x, return_intermediates=True)  # type: ignore[misc]
    np.testing.assert_array_equal(la, lb)
    for k, v in vb.items():
        np.testing.assert_array_equal(va[k], v, err_msg=k)
    for min_bits in (0, 10**9):
        spy = _Spy(N.BinaryLayer)
        monkeypatch.setattr(engine_mod, "SHARED_ROWS_MIN_BITS", min_bits)
        monkeypatch.setattr(engine_mod.N, "BinaryLayer", spy)
        for k in available_kernels():
            eng = Engine(g, kernels=k)
            rep = compare_with_reference(eng, x)["reference"]
            assert rep["exact_mismatches"] == 0 and rep["op_by_op_mismatches"] == 0, k
            assert rep["prediction_mismatches_unexplained"] == 0, k
            np.testing.assert_array_equal(eng.predict(x), Engine(full, kernels=k).predict(x))
        producer = {op.outputs[0]: op.type for op in g.ops}
        n_gathers = sum(
            op.type == "gather_channels" and producer[op.inputs[0]] in ("bconv2d", "bdense")
            for op in g.ops
        )
        # every gather after a binary conv / dense runs inside its prepared layer when sharing
        # is on, in none when it is off (after conv2d_u8b1 it is an op of its own)
        assert spy.with_index == (n_gathers * len(available_kernels()) if min_bits == 0 else 0)
        monkeypatch.undo()


@pytest.mark.parametrize(
    "name,kw,op_type",
    [
        ("mcn1_xnor_mnist", {"widths": (4, 6, 8, 10)}, "bconv2d"),
        ("mcn1_xnor_wrn", {"widths": (4, 4, 8, 8), "depth": 8, "image_size": 16}, "bconv2d"),
        ("mcn1_mnist", {"widths": (2, 3, 4, 5), "act": "u8", "act_frac": 4}, "conv2d_u8b1"),
    ],
)
def test_mcn1_computes_each_map_once_and_stays_exact(
    name: str, kw: dict[str, object], op_type: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """MCN-1: the K = 4 equal rows of every map are one row; the graph is the same function."""
    torch.manual_seed(0)
    kw = {"in_channels": 1, "image_size": 28, **kw}
    model = randomize_mcn(create(name, **kw), 1)
    g = convert(model)
    convs = [op for op in g.ops if op.type == op_type]
    assert convs
    for op in convs:
        (gather,) = [o for o in g.ops if o.inputs == op.outputs]
        assert gather.type == "gather_channels"
        index = g.tensors[gather.params["index"]]
        rows = g.tensors[op.params["w"]].shape[0]
        assert len(index) == 4 * rows  # H rows for H x K channels
        np.testing.assert_array_equal(index, np.repeat(np.arange(rows), 4))  # (h, k) -> h
    s = int(kw["image_size"])  # type: ignore[call-overload]
    x = np.random.default_rng(0).random((12, 1, s, s), dtype=np.float32)
    _same_function(g, x, monkeypatch)
    res = verify(model, g, x)
    assert res["prediction_mismatches"] == 0 and res["sign_mismatches"] == 0
    assert res["signs_compared"] > 0


def test_a_model_without_repeated_rows_is_unchanged() -> None:
    torch.manual_seed(0)
    g = convert(create("bitflow_lenet", width=8, fc=16).eval())
    assert share_repeated_rows(g) is g
    assert not any(op.type == "gather_channels" for op in g.ops)


@given(
    width=st.integers(2, 12),
    distinct=st.integers(1, 6),
    seed=st.integers(0, 2**31 - 1),
)
@settings(max_examples=12, deadline=None)
def test_any_repeat_pattern_converts_exactly(width: int, distinct: int, seed: int) -> None:
    mp = pytest.MonkeyPatch()
    """A binary chain whose second conv has output rows drawn from ``distinct`` rows in a random
    order (not grouped): the converted graph shares them when they are at most half, and is
    exact against PyTorch and the unshared graph."""
    torch.manual_seed(seed % 1000)
    # random BatchNorm statistics and affines: thresholds spread over the accumulators' range
    # (with the default statistics every threshold sits at 0 and most signs agree anyway)
    model = randomize_mcn(create("bitflow_lenet", width=width, fc=8), seed % 1000)
    conv = [m for m in model.modules() if isinstance(m, BinaryConv2d)][0]
    o = conv.weight.shape[0]
    rng = np.random.default_rng(seed)
    pick = torch.from_numpy(rng.integers(0, min(distinct, o), o))
    with torch.no_grad():
        conv.weight.copy_(conv.weight[pick].clone())
    g = convert(model)
    n_rows = len(np.unique(pick.numpy()))
    gathers = [op for op in g.ops if op.type == "gather_channels"]
    assert len(gathers) == (1 if 2 * n_rows <= o else 0)
    x = np.random.default_rng(seed + 1).random((6, 1, 28, 28), dtype=np.float32)
    if gathers:
        _same_function(g, x, mp)
    res = verify(model, g, x)
    assert res["prediction_mismatches"] == 0 and res["sign_mismatches"] == 0


def test_binary_layer_rejects_a_bad_index() -> None:
    w = np.zeros((3, 1, 1, 1), np.uint64)
    with pytest.raises(ValueError, match=r"index\[1\] = 3 is outside \[0, 3\) \(the rows of w\)"):
        N.BinaryLayer(w, 8, index=np.array([0, 3], np.int32))
    with pytest.raises(ValueError, match="'index' is empty"):
        N.BinaryLayer(w, 8, index=np.zeros(0, np.int32))
    # thresholds follow the gathered channels: one per index entry
    with pytest.raises(ValueError, match=r"thr must have shape \(4,\)"):
        N.BinaryLayer(
            w,
            8,
            index=np.array([0, 1, 2, 2], np.int32),
            thr=np.zeros(3, np.int32),
            direction=np.ones(3, np.int8),
        )
    layer = N.BinaryLayer(w, 8, index=np.array([2, 0, 0, 1, 2], np.int32))
    assert layer.out_channels == 5
