"""The native engine against the reference executor and PyTorch, for every kernel set."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from test_convert import CASES, calibrate, images

import bitflow.engine as E
from bitflow.convert import convert
from bitflow.engine.check import compare_with_reference
from bitflow.models.zoo import FC, Conv, Plan, build

KERNELS = E.available_kernels()


def _model(case: dict, seed: int = 0):  # type: ignore[no-untyped-def]
    case = dict(case)
    w1, w2, w3 = case.pop("widths")
    plan = Plan(first=Conv(w1, 3, 1, 1), first_pool=None,
                convs=(Conv(w2, 3, 1, 1, (2, 2)), Conv(w3, 3, 2, 1)), fcs=(FC(17),), image_size=12)
    torch.manual_seed(seed + sum(map(ord, str(case))))
    model = build(plan, binary=True, num_classes=5, in_channels=3, **case)
    return calibrate(model, torch.from_numpy(images(64, 3, 12, seed=2)), seed=3)


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
        assert r["max_float_abs_diff"] < 1e-4, (case, r)


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
    parts = np.concatenate([eng.logits(x[i:i + 1]) for i in range(9)])
    np.testing.assert_array_equal(full, parts)  # batch 1 == batch 9, no state between calls
    pix = np.round(x * 255).astype(np.uint8)
    np.testing.assert_array_equal(eng.logits(pix), eng.logits(np.ascontiguousarray(pix / np.float32(255), dtype=np.float32)))
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
def test_info_reports_kernels_and_memory(graphs: list) -> None:
    _, g = graphs[0]
    info = E.Engine(g, kernels="ref", threads=1).info()
    assert info["kernels"] == "ref" and info["threads"] == 1
    assert info["param_bytes"] == sum(t.nbytes for t in g.tensors.values())
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
