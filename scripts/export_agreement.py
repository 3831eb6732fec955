#!/usr/bin/env python3
"""Agreement of the exported ONNX / QONNX models with the native engine on Fashion-MNIST.

    python scripts/export_agreement.py                          # random-weight zoo models, 10,000 images
    python scripts/export_agreement.py --model fm.bfn --limit 2000 --formats onnx

For every model and format: export (``onnx.checker`` full check), run onnxruntime (``onnx``)
or qonnx's executor (``qonnx``) on the test images, and print one JSON line with the
:class:`bitflow.export.agreement.Agreement` counts: same predictions, near-threshold samples
(a float sign decision within the derived rounding bound of its threshold), unexplained
differences (must be 0), the largest logit difference and the derived tolerance on the
clean samples. Exit status 1 if any difference is unexplained.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np

# random-weight zoo models (BatchNorms moved away from identity so thresholds take both
# directions); (name, kwargs)
ZOO: list[tuple[str, dict[str, Any]]] = [
    ("bitflow_lenet", {"width": 8, "fc": 32}),
    ("mbbn_vgg_small", {"width": 8, "fc": 32, "bits_a": 2, "bits_w": 2}),
    ("bireal_resnet20", {"width": 8}),
    ("bireal_resnet20", {"width": 8, "first_layer": "int8"}),
    ("bitflow_resnet18", {"width": 8, "image_size": 28, "in_channels": 1, "num_classes": 10}),
]


def _zoo_graph(name: str, kw: dict[str, Any], seed: int) -> Any:
    import torch

    from bitflow import models
    from bitflow.convert import convert

    torch.manual_seed(seed)
    m = models.create(name, **kw).eval()
    with torch.no_grad():
        for mod in m.modules():
            if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
                mod.running_mean.normal_(0, 2)
                mod.running_var.uniform_(0.5, 3)
                mod.weight.normal_(0, 1)
                mod.bias.normal_(0, 0.5)
    return convert(m)


def _qonnx(proto: Any) -> Callable[[np.ndarray], np.ndarray]:
    from qonnx.core.modelwrapper import ModelWrapper
    from qonnx.core.onnx_exec import execute_onnx
    from qonnx.transformation.infer_shapes import InferShapes

    model = ModelWrapper(proto).transform(InferShapes())
    return lambda xb: execute_onnx(model, {"input": np.ascontiguousarray(xb, np.float32)})["logits"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--model",
        action="append",
        default=[],
        help=".bfn file (repeatable); default: random zoo models",
    )
    p.add_argument("--limit", type=int, default=10_000, help="test images (default all 10,000)")
    p.add_argument("--formats", default="onnx,qonnx")
    p.add_argument(
        "--batch",
        type=int,
        default=250,
        help="images per executor call (qonnx: the exported batch)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", default="", help="zoo models whose name contains this text")
    a = p.parse_args(argv)

    import onnx

    from bitflow.data import load_arrays
    from bitflow.engine import Engine
    from bitflow.export import to_onnx
    from bitflow.export.agreement import agreement, onnxruntime_logits
    from bitflow.ir import load_graph

    x = load_arrays("fashion-mnist", limit=a.limit)[0]
    if a.model:
        graphs = [(path, load_graph(path)) for path in a.model]
    else:
        graphs = [
            (f"{n} {json.dumps(kw)}", _zoo_graph(n, kw, a.seed)) for n, kw in ZOO if a.only in n
        ]
    bad = 0
    for label, g in graphs:
        eng = Engine(g).logits
        for fmt in a.formats.split(","):
            t0 = time.perf_counter()
            batch = a.batch if fmt == "qonnx" else None
            proto = to_onnx(g, fmt, batch=batch)
            onnx.checker.check_model(proto, full_check=True)
            run = onnxruntime_logits(proto) if fmt == "onnx" else _qonnx(proto)
            n = len(x) - len(x) % a.batch if fmt == "qonnx" else len(x)  # qonnx: a fixed batch
            r = agreement(g, x[:n], run, eng, batch_size=a.batch)
            bad += r.unexplained
            print(
                json.dumps(
                    {
                        "model": label,
                        "mode": g.mode,
                        "format": fmt,
                        **r.as_dict(),
                        "seconds": round(time.perf_counter() - t0, 1),
                    }
                ),
                flush=True,
            )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
