#!/usr/bin/env python3
"""Fuzz the ``.bfn`` loader and the engine with seeded mutations of valid model files.

    python scripts/fuzz_bfn.py --seconds 600                 # the long run (any seed)
    python scripts/fuzz_bfn.py --iterations 300 --seed 0     # what tests/python/test_fuzz.py runs

Each mutant (bytes flipped/inserted/truncated, or a JSON field of the header or the graph
replaced by a value of another type or size) is loaded with :func:`bitflow.ir.parse_bfn`; a
file that loads is built into an engine and run on a small random batch. The only acceptable
outcomes are success or a ``ValueError`` (``ModelFileError``/``GraphError`` included) with a
message; any other exception is a finding, printed with its traceback and saved under
``--out``. A crash of the process (a signal from the native code) leaves the mutant in
``--out/current.bfn`` so it can be replayed; run this script in a subprocess to catch it.

Seed models are small zoo models with random weights converted on the fly (a BitFlow LeNet
with a float and a fixed-point first layer, an MBBN 2/2 model) or ``--model FILE`` files.
Exit status: 0 when nothing was found, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

MAX_RUN_ELEMENTS = 1 << 20  # predict only when the per-sample input is at most this large


def seed_models() -> list[bytes]:
    """Valid ``.bfn`` files of a few small random models (needs torch)."""
    import torch

    from bitflow import models
    from bitflow.convert import convert

    out = []
    for name, kw in (
        ("bitflow_lenet", {"width": 4, "fc": 16, "last_layer": "binary"}),
        ("bitflow_lenet", {"width": 4, "fc": 16, "first_layer": "int8"}),
        ("mbbn_vgg_small", {"width": 4, "fc": 16, "bits_a": 2, "bits_w": 2}),
    ):
        torch.manual_seed(0)
        try:
            model = models.create(name, **kw).eval()
        except (KeyError, TypeError, ValueError):
            continue  # a zoo entry that does not exist in this version
        out.append(convert(model).to_bytes())
    return out


def _split(data: bytes) -> tuple[dict[str, Any], bytes]:
    n = int.from_bytes(data[:8], "little")
    return json.loads(data[8 : 8 + n]), data[8 + n :]


def _join(header: dict[str, Any], body: bytes) -> bytes:
    hb = json.dumps(header).encode()
    return len(hb).to_bytes(8, "little") + hb + body


_ODD_VALUES: list[Any] = [
    None,
    True,
    False,
    0,
    -1,
    1,
    2,
    3,
    63,
    64,
    65,
    2**31 - 1,
    2**31,
    -(2**31),
    2**63,
    2**64 + 1,
    10**40,
    0.5,
    -0.0,
    1e308,
    "",
    "x",
    "U64",
    "I32",
    "F32",
    "bits",
    "int32",
    "float32",
    "uint8",
    [],
    [0],
    [1, 1],
    [2**31, 1],
    [-1],
    [[1]],
    {},
    {"a": 1},
    {"dtype": "U64"},
    [None],
    ["input"],
    "input",
]


def _paths(node: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys / indices) into a JSON value, the root excluded."""
    out = []
    if isinstance(node, dict):
        for k, v in node.items():
            out.append(prefix + (k,))
            out.extend(_paths(v, prefix + (k,)))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.append(prefix + (i,))
            out.extend(_paths(v, prefix + (i,)))
    return out


def _mutate_json(doc: Any, rng: random.Random) -> Any:
    """Replace, delete or duplicate one node of a JSON document (in place; returns it)."""
    paths = _paths(doc)
    if not paths:
        return rng.choice(_ODD_VALUES)
    path = rng.choice(paths)
    parent = doc
    for key in path[:-1]:
        parent = parent[key]
    key = path[-1]
    r = rng.random()
    if r < 0.55:
        parent[key] = rng.choice(_ODD_VALUES)
    elif r < 0.7 and isinstance(parent, dict):
        del parent[key]
    elif r < 0.8 and isinstance(parent[key], int) and not isinstance(parent[key], bool):
        parent[key] = parent[key] + rng.choice([-2, -1, 1, 2, 64, -64])
    elif r < 0.9:  # copy another node of the document here (a type confusion that looks plausible)
        other = rng.choice(paths)
        node = doc
        for k in other:
            node = node[k]
        parent[key] = json.loads(json.dumps(node))
    elif isinstance(parent, list):
        parent.insert(key, json.loads(json.dumps(parent[key])))  # duplicate an op / list entry
    else:
        parent[key] = [parent[key]]
    return doc


def mutate(data: bytes, rng: random.Random) -> bytes:
    """One seeded mutation of a valid file."""
    r = rng.random()
    if r < 0.25:  # raw bytes
        b = bytearray(data)
        for _ in range(rng.randint(1, 8)):
            i = rng.randrange(len(b))
            b[i] = rng.randrange(256) if rng.random() < 0.5 else b[i] ^ (1 << rng.randrange(8))
        return bytes(b)
    if r < 0.3:
        return data[: rng.randrange(len(data))]
    if r < 0.33:
        i = rng.randrange(len(data))
        return data[:i] + bytes(rng.randrange(256) for _ in range(rng.randint(1, 16))) + data[i:]
    header, body = _split(data)
    if r < 0.55:  # the safetensors header (tensor entries, metadata)
        _mutate_json(header, rng)
        return _join(header, body)
    meta = header.get("__metadata__", {})
    graph = json.loads(meta["graph"])
    for _ in range(rng.choice([1, 1, 1, 2, 3])):
        graph = _mutate_json(graph, rng)
    meta["graph"] = json.dumps(graph)
    if rng.random() < 0.1:  # tensor data: change the values, never the layout
        b = bytearray(body)
        for _ in range(rng.randint(1, 32)):
            b[rng.randrange(len(b))] = rng.randrange(256)
        body = bytes(b)
    return _join(header, body)


def exercise(data: bytes, np_rng: np.random.Generator) -> str:
    """Load ``data`` and, if it loads, run it. Returns the outcome class; raises on a finding."""
    from bitflow.engine import Engine
    from bitflow.ir import parse_bfn

    try:
        graph = parse_bfn(data, "<mutant>")
    except ValueError as e:  # ModelFileError
        if not str(e):
            raise AssertionError("ValueError without a message") from e
        return "rejected"
    try:
        eng = Engine(graph, threads=1)
    except ValueError as e:
        if not str(e):
            raise AssertionError("ValueError without a message") from e
        return "engine-rejected"
    spec = graph.input
    if spec.channels * spec.height * spec.width > MAX_RUN_ELEMENTS:
        return "loaded"
    x = np_rng.random((2, spec.channels, spec.height, spec.width), dtype=np.float32)
    try:
        out = eng.predict(x)
    except KeyError:
        if _multi_use(graph):
            return "known-multi-use"  # issue 14: a value read by two ops (the DAG work fixes it)
        raise
    except ValueError as e:
        if not str(e):
            raise AssertionError("ValueError without a message") from e
        return "run-rejected"
    if out.shape != (2,):
        raise AssertionError(f"predict returned shape {out.shape}")
    return "ran"


def _multi_use(graph: Any) -> bool:
    seen: set[str] = set()
    for op in graph.ops:
        for v in op.inputs:
            if v in seen:
                return True
            seen.add(v)
    return False


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--iterations", type=int, default=None, help="stop after N mutants")
    ap.add_argument("--seconds", type=float, default=None, help="stop after this much time")
    ap.add_argument(
        "--model", action="append", default=[], help="seed .bfn file (default: built-in zoo models)"
    )
    ap.add_argument(
        "--out", default="runs/fuzz-bfn", help="where findings and the current mutant go"
    )
    a = ap.parse_args(argv)
    if a.iterations is None and a.seconds is None:
        a.iterations = 1000
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    corpus = [Path(p).read_bytes() for p in a.model] or seed_models()
    rng = random.Random(a.seed)
    np_rng = np.random.default_rng(a.seed)
    counts: dict[str, int] = {}
    findings = 0
    t0 = time.monotonic()
    i = 0
    while (a.iterations is None or i < a.iterations) and (
        a.seconds is None or time.monotonic() - t0 < a.seconds
    ):
        data = mutate(rng.choice(corpus), rng)
        (out / "current.bfn").write_bytes(data)  # left behind if the process dies
        try:
            outcome = exercise(data, np_rng)
        except Exception:  # noqa: BLE001 - every other exception is a finding
            findings += 1
            outcome = "FINDING"
            (out / f"finding-{a.seed}-{i}.bfn").write_bytes(data)
            print(
                f"--- finding at iteration {i} (seed {a.seed}), saved as finding-{a.seed}-{i}.bfn",
                file=sys.stderr,
            )
            traceback.print_exc()
        counts[outcome] = counts.get(outcome, 0) + 1
        i += 1
    (out / "current.bfn").unlink(missing_ok=True)
    print(
        json.dumps(
            {
                "iterations": i,
                "seconds": round(time.monotonic() - t0, 1),
                "outcomes": counts,
                "findings": findings,
            }
        )
    )
    return 1 if findings else 0


if __name__ == "__main__":
    sys.exit(main())
