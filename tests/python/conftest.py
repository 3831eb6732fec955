"""Fixtures shared by the tests of ``tests/python``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest


@dataclass(frozen=True)
class McnTiny:
    """The smallest ``bitflow reproduce mcn`` setting (one Table II width, depth 8, width-2
    MNIST and LeNet rows) and the facts its Table II row must show, whoever trains it (the real
    trainer in ``test_reproduce_mcn.py``, the stand-in in ``test_reproduce_drivers.py``)."""

    kwargs: dict[str, Any] = field(
        default_factory=lambda: {
            "epochs": 1,
            "widths": [(2, 2, 2, 4)],
            "depth": 8,
            "mnist_widths": (2, 2, 2, 2),
            "lenet": {"width": 2, "fc": 8},
            "paper_counts": False,
            "log": lambda m: None,
        }
    )
    # binarized parameters of mcn_wrn depth 8, widths 2-2-2-4, K = 4, one input channel:
    # 36 * (2*1 + [2*2 + 2*2] + [2*2 + 2*2] + [4*2 + 4*4]) + 4 * (2*2 + 4*2 shortcuts)
    # (a 3x3 filter holds 3 * 3 * K = 36 binarized entries per (input, output) map pair, a 1x1
    # shortcut K = 4;
    # stage 1: 2 -> 2 maps, stride 1, no shortcut; stages 2-3 change stride / width: a shortcut)
    binary_params: int = 36 * 42 + 4 * 12

    def check_table2_row(self, row: dict[str, Any]) -> None:
        """The one Table II row: its width and depth, every model's parameter count is that of
        the checkpoint it names (rebuilt independently), binarized counts by hand."""
        from bitflow.train import model_from_checkpoint

        assert row["widths"] == "2-2-2-4" and row["depth"] == 8
        assert set(row["models"]) == {"wrn", "umcn", "mcn", "mcn1"}
        assert row["paper"] is None  # no paper row at this width
        for key, x in row["models"].items():
            m, _ = model_from_checkpoint(x["checkpoint"])
            assert x["params"] == sum(p.numel() for p in m.parameters()), key
        models = row["models"]
        assert models["mcn"]["binary_params"] == self.binary_params
        assert models["mcn1"]["binary_params"] == self.binary_params
        assert models["wrn"]["binary_params"] == models["umcn"]["binary_params"] == 0


@pytest.fixture
def mcn_tiny() -> McnTiny:
    return McnTiny()
