"""``bitflow bench --model mcn_*`` (issue 11): every MCN variant is benchmarked against the
full-precision twin of its backbone (``wrn`` / ``mcn_mnist_float``, same depth and widths), not a
twin rebuilt from the converted graph. Fast: no timing is asserted."""

from __future__ import annotations

import pytest
import torch

from bitflow.bench._baselines import zoo_model
from bitflow.models import create, list_models

MCN = sorted(n for n in list_models() if n.endswith(("_wrn", "_mnist")) and "mcn" in n)


def test_every_mcn_model_has_a_registered_twin() -> None:
    assert len(MCN) == 10, MCN


@pytest.mark.parametrize(
    ("name", "kw", "twin"),
    [
        ("mcn_wrn", {"depth": 8, "widths": [4, 4, 8, 8], "image_size": 8}, "wrn"),
        ("mcn1_xnor_wrn", {"depth": 8, "widths": [4, 8, 8, 16], "image_size": 8}, "wrn"),
        ("mcn_mnist", {"widths": [2, 4, 4, 8]}, "mcn_mnist_float"),
        ("umcn_mnist", {"widths": [2, 4, 4, 8]}, "mcn_mnist_float"),
    ],
)
def test_bench_wires_the_backbones_float_twin(name: str, kw: dict, twin: str) -> None:
    graph, got = zoo_model(name, **kw)
    assert got is not None and len(graph.ops) > 0
    assert got.bitflow_config["name"] == twin
    want = create(twin, **kw)  # the twin built directly: same shapes, parameter for parameter
    assert [tuple(p.shape) for p in got.parameters()] == [tuple(p.shape) for p in want.parameters()]
    assert not any("MCConv" in type(m).__name__ for m in got.modules())
    x = torch.rand(2, int(graph.input.channels), int(graph.input.height), int(graph.input.width))
    assert got(x).shape == (2, graph.values[graph.output].shape[0])
