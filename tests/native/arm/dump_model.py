"""Record a converted Fashion-MNIST model run on this machine's engine, for the ARM replay
(``kernel_selftest --replay DIR``, run under qemu by scripts/test_arm.sh).

    .venv/bin/python tests/native/arm/dump_model.py OUT_DIR [--model-file model.bfn] [--images 200]

The model is a ``.bfn`` file (scripts/test_arm.sh trains ``bitflow_lenet`` with the
fixed-point first layer on part of Fashion-MNIST and converts it), or without
``--model-file`` the zoo's ``bitflow_lenet`` (int8 first layer) with random weights; the
inputs are the first ``--images`` Fashion-MNIST test images (uint8 pixels). Written: ``manifest.txt`` (one line per tensor and per op, see the replay in
kernel_selftest.cc) and ``data.bin`` (the raw tensors): the graph's parameters, every value
the engine computed op by op (its own storage layout: NHWC, packed bits) and its
predictions. Not collected by pytest.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np

from bitflow.bench import zoo_model
from bitflow.data.idx import load_fashion_mnist
from bitflow.engine import Engine
from bitflow.ir import load_graph

_DTYPES = {
    np.dtype(np.uint8): "u8",
    np.dtype(np.int8): "i8",
    np.dtype(np.int32): "i32",
    np.dtype(np.uint64): "u64",
    np.dtype(np.float32): "f32",
    np.dtype(np.int64): "i64",
}
_INT_ATTRS = ("stride", "padding", "kernel", "channels", "pad_value", "k_bits")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("out", type=Path)
    p.add_argument("--model-file", type=Path, default=None)
    p.add_argument("--images", type=int, default=200)
    a = p.parse_args(argv)
    graph = (
        load_graph(a.model_file)
        if a.model_file
        else zoo_model("bitflow_lenet", first_layer="int8")[0]
    )
    images = load_fashion_mnist(split="test")[0][: a.images]
    x = np.ascontiguousarray(images.reshape(-1, 1, 28, 28).astype(np.uint8))
    engine = Engine(graph, threads=1)
    env = engine.run(x, keep=True)
    pred = engine.predict(x)
    a.out.mkdir(parents=True, exist_ok=True)
    lines: list[str] = []
    blobs: list[bytes] = []
    offset = 0

    def tensor(name: str, arr: Any) -> None:
        nonlocal offset
        arr = np.ascontiguousarray(arr)
        lines.append(
            f"tensor {name} {_DTYPES[arr.dtype]} {arr.ndim} {' '.join(map(str, arr.shape))} {offset}"
        )
        blobs.append(arr.tobytes())
        offset += arr.nbytes

    for name, t in graph.tensors.items():
        tensor(f"param/{name}", t)
    for name, v in env.items():
        tensor(f"value/{name}", v)
    tensor("predictions", pred)
    lines.append(f"input value/{graph.input.name}")
    lines.append(f"output value/{graph.output}")
    for op in graph.ops:
        attrs = []
        for k in _INT_ATTRS:
            if k in op.attrs:
                v = op.attrs[k]
                attrs.append(
                    f"{k}=" + ",".join(map(str, v if isinstance(v, list | tuple) else [v]))
                )
        if "op" in op.attrs:  # maxpool_bits: "and" | "or" -> and_op=1 | 0
            attrs.append(f"and_op={int(op.attrs['op'] == 'and')}")
        params = [f"param:{role}=param/{t}" for role, t in op.params.items()]
        lines.append(
            " ".join(
                ["op", op.type, f"value/{op.inputs[0]}", f"value/{op.outputs[0]}", *attrs, *params]
            )
        )
    (a.out / "manifest.txt").write_text("\n".join(lines) + "\n")
    (a.out / "data.bin").write_bytes(b"".join(blobs))
    classes = np.bincount(pred, minlength=len(graph.class_names) or 10)
    print(
        f"dump_model: {len(graph.ops)} ops, {len(x)} images, {offset} bytes -> {a.out}; predicted classes {classes.tolist()}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
