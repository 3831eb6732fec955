"""The .bfn model file: round trip, validation of damaged files, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from bitflow import models
from bitflow.convert import convert
from bitflow.ir import Graph, ModelFileError, load_graph, save_graph
from bitflow.ir import bfn as B


@pytest.fixture(scope="module")
def graph() -> Graph:
    torch.manual_seed(0)
    model = models.create("bitflow_lenet", width=4, fc=16, last_layer="binary").eval()
    return convert(model)


def _split(data: bytes) -> tuple[dict, bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header: dict, body: bytes) -> bytes:
    hb = json.dumps(header).encode()
    return len(hb).to_bytes(8, "little") + hb + body


def _with_graph(data: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    header, body = _split(data)
    g = json.loads(header["__metadata__"]["graph"])
    edit(g)
    header["__metadata__"]["graph"] = json.dumps(g)
    return _join(header, body)


def test_round_trip_is_exact(graph: Graph, tmp_path: Path) -> None:
    p = tmp_path / "model.bfn"
    save_graph(graph, p)
    g2 = load_graph(p)
    assert g2.to_json() == graph.to_json()
    assert set(g2.tensors) == set(graph.tensors)
    for k, t in graph.tensors.items():
        assert g2.tensors[k].dtype == t.dtype and np.array_equal(g2.tensors[k], t), k
    mask = os.umask(0o022)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask  # not mkstemp's 0600
    header, body = _split(p.read_bytes())
    assert (
        header["__metadata__"]["format"] == "bitflow-bfn"
        and header["__metadata__"]["version"] == "2"
    )
    assert (8 + int.from_bytes(p.read_bytes()[:8], "little")) % 8 == 0  # header padded to 8 bytes
    dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert dtypes <= {"U64", "I32", "F32", "I8", "U8"} and "U64" in dtypes and "I32" in dtypes
    # a standard safetensors reader would find every tensor at its offsets (little-endian data)
    for k, v in header.items():
        if k == "__metadata__":
            continue
        b, e = v["data_offsets"]
        want = graph.tensors[k].astype(graph.tensors[k].dtype.newbyteorder("<")).tobytes()
        assert body[b:e] == want


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_graph(tmp_path / "nope.bfn")


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d[:5], "truncated"),
        (lambda d: d[:-3], "out of range|truncated|trailing"),
        (lambda d: d[: 8 + int.from_bytes(d[:8], "little") - 10], "truncated"),
        (lambda d: (10**12).to_bytes(8, "little") + d[8:], "header length"),
        (lambda d: d[:8] + b"#" + d[9:], "not valid JSON"),
        (lambda d: d + b"\0" * 8, "trailing"),
    ],
)
def test_damaged_bytes(graph: Graph, tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "m.bfn"
    save_graph(graph, p)
    p.write_bytes(mutate(p.read_bytes()))
    with pytest.raises(ModelFileError, match=message):
        load_graph(p)


def _meta(edit):  # type: ignore[no-untyped-def]
    def f(data: bytes) -> bytes:
        header, body = _split(data)
        edit(header)
        return _join(header, body)

    return f


def _op(g: dict, type_: str) -> dict:
    return next(o for o in g["ops"] if o["type"] == type_)


def _first_tensor(h: dict) -> str:
    return sorted(k for k in h if k != "__metadata__")[0]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (_meta(lambda h: h["__metadata__"].update(version="3")), "unsupported .bfn version '3'"),
        (_meta(lambda h: h["__metadata__"].update(format="other")), "not a bitflow model file"),
        (
            _meta(lambda h: h.update({_first_tensor(h): {**h[_first_tensor(h)], "dtype": "F64"}})),
            "unsupported dtype",
        ),
        (
            _meta(lambda h: h.update({_first_tensor(h): {**h[_first_tensor(h)], "shape": [3, 3]}})),
            "do not match shape",
        ),
        (_meta(lambda h: h[_first_tensor(h)].update(data_offsets=[0, 10**9])), "out of range"),
        (_meta(lambda h: h.pop(_first_tensor(h))), "gap|not in the file"),
        (lambda d: _with_graph(d, lambda g: g.update(version=99)), "graph version 99"),
        (
            lambda d: _with_graph(d, lambda g: g["ops"][1].update(type="conv3d")),
            "unknown op type 'conv3d'",
        ),
        (
            lambda d: _with_graph(d, lambda g: _op(g, "bconv2d")["params"].update(w="missing")),
            "'missing'.*not in the file",
        ),
        (
            lambda d: _with_graph(d, lambda g: _op(g, "bconv2d")["attrs"].update(channels=99)),
            "channels",
        ),
        (lambda d: _with_graph(d, lambda g: g["input"].update(shape=[1, 2])), "input shape"),
        (lambda d: _with_graph(d, lambda g: g["ops"].reverse()), "no earlier op produces"),
        (lambda d: _with_graph(d, lambda g: g.update(output="nothing")), "output"),
        (lambda d: _with_graph(d, lambda g: g.pop("ops")), "lacks field 'ops'"),
    ],
)
def test_inconsistent_files(graph: Graph, tmp_path: Path, mutate, message: str) -> None:  # type: ignore[no-untyped-def]
    p = tmp_path / "m.bfn"
    save_graph(graph, p)
    p.write_bytes(mutate(p.read_bytes()))
    with pytest.raises(ModelFileError, match=message):
        load_graph(p)


def test_wrong_tensor_shape_for_the_op(graph: Graph, tmp_path: Path) -> None:
    """A tensor whose bytes are consistent with its own entry but not with the op using it."""
    thr_op = next(op for op in graph.ops if op.type == "threshold_bits")
    name = thr_op.params["thr"]
    p = tmp_path / "m.bfn"
    save_graph(graph, p)
    header, body = _split(p.read_bytes())
    b, e = header[name]["data_offsets"]
    header[name]["shape"] = [(e - b) // 4, 1]  # same bytes, [O, 1] instead of [O]
    p.write_bytes(_join(header, body))
    with pytest.raises(ModelFileError, match=f"{name}.*shape"):
        load_graph(p)


def test_accumulator_overflow_is_rejected() -> None:
    """8-bit planes on both operands multiply the dot bound by (2^8 - 1)^2 = 65025; with
    3 x 3 x 3670 = 33030 positions the bound 33030 * 65025 = 2.148e9 exceeds 2^31 - 1."""
    from bitflow.ir import InputSpec, Op
    from bitflow.ir.graph import GraphError

    c = 3670
    cw = (c + 63) // 64
    thr = np.sort(np.random.default_rng(0).integers(-9, 9, size=(c, 255)), axis=1).astype(np.int32)
    ops = [
        Op(
            "conv2d_u8i8",
            "c1",
            ["input"],
            ["c1"],
            {"stride": [1, 1], "padding": [0, 0]},
            {"w": "w1"},
        ),
        Op(
            "threshold_planes",
            "t1",
            ["c1"],
            ["t1"],
            {"planes": 8},
            {"thr": "thr", "direction": "d"},
        ),
        Op(
            "bconv2d_planes",
            "b1",
            ["t1"],
            ["b1"],
            {"channels": c, "stride": [1, 1], "padding": [1, 1], "pad_value": 0},
            {"w": "w2"},
        ),
    ]
    tensors = {
        "w1": np.ones((c, 1, 1, 1), np.int8),
        "thr": thr,
        "d": np.ones(c, np.int8),
        "w2": np.zeros((8, 2, 3, 3, cw), np.uint64),
    }
    g = Graph(input=InputSpec(1, 4, 4, "uint8"), ops=ops, tensors=tensors, output="b1")
    with pytest.raises(GraphError, match="accumulator bound 2147775750 exceeds int32"):
        g.validate()
    tensors["w2"] = np.zeros((1, 2, 3, 3, cw), np.uint64)  # 1 weight plane: 33030 * 255 fits
    with pytest.raises(GraphError, match="output"):  # passes the accumulator check, fails later
        g.validate()


def test_atomic_write_leaves_no_partial_file(
    graph: Graph, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "m.bfn"
    save_graph(graph, p)
    before = p.read_bytes()

    def boom(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(B.os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_graph(graph, p)
    monkeypatch.undo()
    assert p.read_bytes() == before  # the old file is untouched
    assert os.listdir(tmp_path) == ["m.bfn"]  # and no temporary file is left behind
    with pytest.raises(FileNotFoundError, match="directory"):
        save_graph(graph, tmp_path / "no" / "m.bfn")


def test_parse_never_executes_code(graph: Graph, tmp_path: Path) -> None:
    """A pickle payload where the JSON should be is rejected as corrupt, not loaded."""
    import pickle

    payload = pickle.dumps({"a": 1})
    data = len(payload).to_bytes(8, "little") + payload
    with pytest.raises(ModelFileError, match="not valid JSON"):
        B.parse_bfn(data)
    deep = b"[" * 100000 + b"]" * 100000  # a nesting bomb is a clear error, not a crash
    with pytest.raises(ModelFileError, match="not valid JSON"):
        B.parse_bfn(len(deep).to_bytes(8, "little") + deep)


def test_loading_and_running_needs_no_torch(graph: Graph, tmp_path: Path) -> None:
    """bitflow.ir is torch-free: load + run a .bfn file in a process where torch cannot import."""
    import subprocess
    import sys

    p = tmp_path / "m.bfn"
    save_graph(graph, p)
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'torch' or name.startswith('torch.'):\n"
        "            raise ImportError('torch is blocked')\n"
        "sys.meta_path.insert(0, Block())\n"
        "import numpy as np\n"
        "from bitflow.ir import load_graph, run\n"
        f"g = load_graph({str(p)!r})\n"
        "out = run(g, np.zeros((2, 1, 28, 28), np.float32))\n"
        "assert out.shape == (2, 10) and 'torch' not in sys.modules\n"
        "print('ok')\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and res.stdout.strip() == "ok", res.stderr


def test_multi_plane_graph_round_trip(tmp_path: Path) -> None:
    """MBBN fields: a graph with 2-bit activations (threshold_planes -> *_planes ops, flatten per
    plane) and 2-plane weights validates, saves, loads and runs identically."""
    from bitflow.ir import InputSpec, Op, pack_bits, run

    rng = np.random.default_rng(5)
    c1, c2, m = 5, 7, 2
    L = 2**m - 1
    ops = [
        Op(
            "conv2d_u8i8",
            "c1",
            ["input"],
            ["c1"],
            {"stride": [1, 1], "padding": [1, 1]},
            {"w": "w1"},
        ),
        Op(
            "threshold_planes",
            "t1",
            ["c1"],
            ["t1"],
            {"planes": m},
            {"thr": "thr1", "direction": "d1"},
        ),
        Op(
            "bconv2d_planes",
            "b1",
            ["t1"],
            ["b1"],
            {"channels": c1, "stride": [1, 1], "padding": [1, 1], "pad_value": 0},
            {"w": "w2"},
        ),
        Op(
            "threshold_planes",
            "t2",
            ["b1"],
            ["t2"],
            {"planes": m},
            {"thr": "thr2", "direction": "d2"},
        ),
        Op("flatten", "f", ["t2"], ["f"]),
        Op("bdense_planes", "d", ["f"], ["d"], {"k_bits": 36 * c2}, {"w": "w3"}),
        Op("scale_bias", "out", ["d"], ["out"], {}, {"scale": "so", "bias": "bo"}),
    ]
    tensors = {
        "w1": rng.integers(-127, 128, size=(c1, 3, 3, 1)).astype(np.int8),
        "thr1": np.sort(rng.integers(-3000, 3000, size=(c1, L)), axis=1).astype(np.int32),
        "d1": np.where(rng.random(c1) < 0.5, 1, -1).astype(np.int8),
        "w2": pack_bits(rng.random((m, c2, 3, 3, c1)) < 0.5),
        "thr2": np.sort(rng.integers(-60, 60, size=(c2, L)), axis=1).astype(np.int32),
        "d2": np.ones(c2, np.int8),
        "w3": pack_bits(rng.random((m, 3, 36, c2)) < 0.5).reshape(m, 3, -1),
        "so": np.full(3, 0.25, np.float32),
        "bo": np.zeros(3, np.float32),
    }
    g = Graph(input=InputSpec(1, 6, 6, "uint8"), ops=ops, tensors=tensors, output="out")
    values = g.validate()
    assert values["t2"].planes == m and values["f"].planes == m and values["f"].groups == 36
    p = tmp_path / "planes.bfn"
    save_graph(g, p)
    g2 = load_graph(p)
    assert g2.values == g.values
    x = rng.random((3, 1, 6, 6)).astype(np.float32)
    out, inter = run(g2, x, return_intermediates=True)  # type: ignore[misc]
    np.testing.assert_array_equal(out, run(g, x))
    assert inter["f"].shape == (m, 3, 36 * 1)
    assert np.any(out != 0)
