"""The native engine against the reference executor and PyTorch, for every kernel set."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_convert import CASES, calibrate, case_model, images

import bitflow.engine as E
from bitflow.convert import convert
from bitflow.engine.check import compare_with_reference

KERNELS = E.available_kernels()


def _model(case: dict, seed: int = 0):  # type: ignore[no-untyped-def]
    model = case_model(case, seed)
    return calibrate(model, torch.from_numpy(images(64, 3, 12, seed=2)), seed=3)


U32 = 2.0**-24  # float32 unit roundoff


def float_op_bounds(g, x: np.ndarray) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Derived bound on ``|engine - reference|`` of every float op, from the reference's own input.

    A dot product of ``K`` float32 products plus a bias, summed in float32 in any order, lies
    within ``gamma_{K+1} S`` of the exact value, where ``S = sum |w_i x_i| + |b|`` and
    ``gamma_n = n u / (1 - n u)`` (Higham, Accuracy and Stability, Eq. 3.5; each product's
    rounding adds one ``u``). The reference accumulates in float64 and rounds once: within
    ``u |y| + K 2^-53 S <= 2 u S`` of exact. So ``|engine - reference| <= (gamma_{K+1} + 2u) S``;
    we bound ``S`` per output channel by ``sum_i |w_ci| max|x| + |b_c|``. ``affine_f32`` /
    ``scale_bias`` (``s x + b``: at most two float32 roundings vs one) are within ``3u (|s x| +
    |b|)``; ReLU and max-pool select an input and are exact (0). The observed errors are ~1e-7,
    these bounds ~1e-5; the magic 1e-4 they replace was looser than both."""
    from bitflow.ir.reference import run as reference_run

    _, env = reference_run(g, x, return_intermediates=True)
    out: dict[str, float] = {}
    for op in g.ops:
        xin = np.abs(env[op.inputs[0]].astype(np.float64))
        if op.type in ("conv2d_f32", "dense_f32"):
            w = np.abs(g.tensors[op.params["w"]].astype(np.float64)).reshape(
                g.tensors[op.params["w"]].shape[0], -1
            )
            b = (
                np.abs(g.tensors[op.params["bias"]].astype(np.float64))
                if "bias" in op.params
                else 0.0
            )
            k = w.shape[1]
            gamma = (k + 1) * U32 / (1 - (k + 1) * U32)
            out[op.name] = float(np.max((gamma + 2 * U32) * (w.sum(1) * xin.max() + b)))
        elif op.type in ("affine_f32", "scale_bias"):
            sc = np.abs(g.tensors[op.params["scale"]].astype(np.float64))
            bi = np.abs(g.tensors[op.params["bias"]].astype(np.float64))
            out[op.name] = float(np.max(3 * U32 * (sc * xin.max() + bi)))
        elif op.type in ("relu_f32", "maxpool_f32"):
            out[op.name] = 0.0
    return out


@pytest.fixture(scope="module")
def graphs() -> list:
    return [(c, convert(_model(c))) for c in CASES]


@pytest.mark.native
@pytest.mark.parametrize("kernels", KERNELS)
@pytest.mark.parametrize("threads", [1, 2])
def test_engine_equals_reference_op_by_op(graphs: list, kernels: str, threads: int) -> None:
    x = images(20, 3, 12, seed=5)
    for case, g in graphs:
        eng = E.Engine(g, kernels=kernels, threads=threads)
        r = compare_with_reference(eng, x, batch_size=7)["reference"]
        assert r["exact_mismatches"] == 0, (case, r)
        # only a float first layer may diverge, and only at documented near-threshold bits
        e2e = r.get("first_layer_end_to_end", {"near_threshold": 0})
        assert r["prediction_mismatches"] <= e2e["near_threshold"], (case, r)
        bounds = float_op_bounds(g, x)
        for name, st in r["by_op"].items():
            if name in bounds:
                assert st["max_abs_diff"] <= bounds[name], (case, name, st, bounds[name])


@pytest.mark.native
def test_engine_predictions_equal_pytorch(graphs: list) -> None:
    x = images(32, 3, 12, seed=9)
    for case, g in graphs:
        model = _model(case)
        with torch.no_grad():
            torch_pred = model(torch.from_numpy(x)).argmax(1).numpy()
        eng = E.Engine(g)
        assert np.array_equal(eng.predict(x), torch_pred), case
        assert eng.logits(x).dtype == np.float32 and eng.logits(x).shape == (32, 5)


@pytest.mark.native
def test_batch_sizes_and_uint8_input(graphs: list) -> None:
    _, g = graphs[1]  # int8 first layer
    eng = E.Engine(g, threads=1)
    x = images(9, 3, 12, seed=4)
    full = eng.logits(x)
    parts = np.concatenate([eng.logits(x[i : i + 1]) for i in range(9)])
    np.testing.assert_array_equal(full, parts)  # batch 1 == batch 9, no state between calls
    pix = np.round(x * 255).astype(np.uint8)
    np.testing.assert_array_equal(
        eng.logits(pix), eng.logits(np.ascontiguousarray(pix / np.float32(255), dtype=np.float32))
    )
    np.testing.assert_array_equal(eng.logits(x[0]), full[:1])  # a single CHW image


@pytest.mark.native
def test_engine_shared_by_python_threads(graphs: list) -> None:
    _, g = graphs[0]
    eng = E.Engine(g, threads=2)
    xs = [images(8, 3, 12, seed=s) for s in range(6)]
    want = [eng.logits(x) for x in xs]
    got: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        for _ in range(3):
            got[i] = eng.logits(xs[i])

    ts = [threading.Thread(target=work, args=(i,)) for i in range(6)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    for i in range(6):
        np.testing.assert_array_equal(got[i], want[i])


@pytest.mark.native
def test_bad_input_errors(graphs: list, tmp_path: Path) -> None:
    _, g = graphs[0]
    eng = E.Engine(g)
    x = images(2, 3, 12, seed=1)
    with pytest.raises(ValueError, match="shape"):
        eng.predict(x[:, :2])
    with pytest.raises(TypeError, match="dtype"):
        eng.predict(x.astype(np.float64))
    with pytest.raises(ValueError, match="contiguous"):
        eng.predict(np.asfortranarray(x))
    with pytest.raises(ValueError, match="NaN"):
        eng.predict(np.full_like(x, np.nan))
    with pytest.raises(ValueError, match="empty"):
        eng.predict(x[:0])
    with pytest.raises(TypeError, match="numpy"):
        eng.predict(x.tolist())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kernels"):
        E.Engine(g, kernels="neon9")
    with pytest.raises(ValueError, match="threads"):
        E.Engine(g, threads=0)
    with pytest.raises(FileNotFoundError):
        E.load(tmp_path / "missing.bfn")
    p = tmp_path / "m.bfn"
    g.save(str(p))
    p.write_bytes(p.read_bytes()[:-100])
    with pytest.raises(ValueError, match="(?i)truncat|size|short"):
        E.load(p)


@pytest.mark.native
def test_info_reports_kernels_and_memory(graphs: list, tmp_path: Path) -> None:
    import json
    import struct

    _, g = graphs[0]
    info = E.Engine(g, kernels="ref", threads=1).info()
    assert info["kernels"] == "ref" and info["threads"] == 1
    # oracle: the saved file, whose bytes are an 8-byte length, the JSON header and the tensors
    p = tmp_path / "m.bfn"
    g.save(str(p))
    raw = p.read_bytes()
    (hlen,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + hlen])
    spans = sorted(v["data_offsets"] for k, v in header.items() if k != "__metadata__")
    assert info["param_bytes"] == len(raw) - 8 - hlen == sum(b - a for a, b in spans)
    assert len(info["ops"]) == len(g.ops) and info["peak_activation_bytes_per_sample"] > 0


@pytest.mark.native
def test_engine_imports_without_torch(graphs: list, tmp_path: Path) -> None:
    _, g = graphs[1]
    p = tmp_path / "m.bfn"
    g.save(str(p))
    x = images(3, 3, 12, seed=8)
    np.save(tmp_path / "x.npy", x)
    want = E.Engine(g).predict(x)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import numpy as np, bitflow.engine as e\n"
        f"m = e.load({str(p)!r}); print(m.predict(np.load({str(tmp_path / 'x.npy')!r})).tolist())\n"
        "assert 'torch' not in [k for k, v in sys.modules.items() if v is not None]\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == str(want.tolist())


# --------------------------------------------------------------------------- the checker catches
def _corrupted(g, how: str):  # type: ignore[no-untyped-def]
    """A copy of ``g`` with one fused binary layer broken: its threshold, one weight bit, or its
    zero-padding (pad_value 0 -> 1: the engine then pads +1 and applies no correction)."""
    import copy

    from bitflow.ir.graph import Graph

    bad = Graph.from_json(copy.deepcopy(g.to_json()), {k: v.copy() for k, v in g.tensors.items()})
    conv = next(
        op
        for op in bad.ops
        if op.type == "bconv2d" and op.attrs["padding"] != [0, 0] and op.attrs["pad_value"] == 0
    )
    thr = next(
        op
        for op in bad.ops
        if op.type == "threshold_bits"
        and op.inputs[0]
        in (conv.outputs[0], *(o.outputs[0] for o in bad.ops if o.inputs[0] == conv.outputs[0]))
    )
    if how == "threshold":
        bad.tensors[thr.params["thr"]] += 2  # every channel's T moves by two integers
    elif how == "weight":
        bad.tensors[conv.params["w"]].reshape(-1)[0] ^= np.uint64(
            1
        )  # filter 0, tap (0, 0), channel 0
    else:
        conv.attrs["pad_value"] = 1
    return bad, conv.name


@pytest.mark.native
@pytest.mark.parametrize("how", ["threshold", "weight", "padding"])
def test_checker_catches_a_corrupted_fused_layer(graphs: list, how: str) -> None:
    """``bitflow run``'s claim "integers and bits identical, op by op" can fail: an engine built
    from a corrupted copy of the graph, checked against the reference run of the good graph,
    must report exact mismatches in the fused step that holds the broken layer."""
    from bitflow.engine.check import reference_ok

    case, g = graphs[2]  # int8 first layer, zero padding: no float decision anywhere
    assert case["first_layer"] == "int8" and case["pad_value"] == 0
    x = images(16, 3, 12, seed=11)
    good = compare_with_reference(E.Engine(g, threads=1), x, reference_graph=g)["reference"]
    assert good["exact_mismatches"] == 0 and reference_ok(good)
    bad, conv_name = _corrupted(g, how)
    eng = E.Engine(bad, threads=1)
    fused = [st for st in eng._plan if conv_name in st.ops]
    assert (
        len(fused) == 1 and len(fused[0].ops) >= 2
    )  # the broken conv runs fused with its threshold
    r = compare_with_reference(eng, x, reference_graph=g)["reference"]
    assert r["by_step"]["+".join(fused[0].ops)]["mismatches"] > 0, r["by_step"]
    assert r["exact_mismatches"] > 0 and not reference_ok(r)


@pytest.mark.native
def test_checker_checks_the_fused_plan_not_only_the_unfused_steps(graphs: list) -> None:
    """A fault only in the fused plan (what predict() runs; the op-by-op steps stay correct) is
    caught: one output bit of a fused binary layer is flipped."""
    from bitflow.engine.check import reference_ok

    _, g = graphs[2]
    eng = E.Engine(g, threads=1)
    k = next(i for i, st in enumerate(eng._plan) if len(st.ops) >= 2)
    fn = eng._plan[k].fn

    def flipped(xs: list[np.ndarray]) -> np.ndarray:
        out = fn(xs).copy()
        out.reshape(-1)[0] ^= np.uint64(1)
        return out

    eng._plan[k] = eng._plan[k]._replace(fn=flipped)
    r = compare_with_reference(eng, images(8, 3, 12, seed=12))["reference"]
    assert r["op_by_op_mismatches"] == 0  # the unfused steps are right
    assert (
        r["by_step"]["+".join(eng._plan[k].ops)]["mismatches"] == 1
    )  # one flipped bit per batch of 8
    assert not reference_ok(r)


@pytest.mark.native
def test_float_bounds_are_tight_enough_to_catch_a_small_bias_error(graphs: list) -> None:
    """The derived bound catches a 3e-5 bias error on the float first layer that the magic 1e-4
    tolerance it replaces would have let through (a bias error is the same on every output)."""
    import copy

    from bitflow.ir.graph import Graph

    case, g = graphs[0]
    assert case["first_layer"] == "float"
    x = images(8, 3, 12, seed=13)
    bad = Graph.from_json(copy.deepcopy(g.to_json()), {k: v.copy() for k, v in g.tensors.items()})
    conv = next(op for op in bad.ops if op.type == "conv2d_f32")
    assert "bias" in conv.params
    bad.tensors[conv.params["bias"]] += np.float32(3e-5)
    r = compare_with_reference(E.Engine(bad, threads=1), x, reference_graph=g)["reference"]
    d = r["by_op"][conv.name]["max_abs_diff"]
    assert d < 1e-4  # what the old test accepted
    assert d > float_op_bounds(g, x)[conv.name]
