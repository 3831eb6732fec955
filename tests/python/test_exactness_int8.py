"""The README's exactness claim, unconditionally: with the fixed-point first layer
(``first_layer=int8``) a converted network is integer-only between its input and its last
layer, so PyTorch, the reference executor and the native engine agree on every sign and every
prediction, with no near-threshold event at all (no float decision is left to be near).

The other conversion tests allow differences in samples with near-threshold events; these do
not, so a broken threshold, weight layout or padding rule on an integer path cannot hide
behind ``near_threshold > 0``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_convert import CASES, calibrate, case_model, images

from bitflow import models
from bitflow.convert import convert, verify

INT8_CASES = [c for c in CASES if c["first_layer"] == "int8"]


def _case_model(case: dict) -> torch.nn.Module:
    model = case_model(case, 100)
    return calibrate(model, torch.from_numpy(images(64, 3, 12, seed=31)), seed=32)


def _assert_exact(model: torch.nn.Module, x: np.ndarray, *, binary_last: bool) -> None:
    g = convert(model)
    assert not {"conv2d_f32", "threshold_f32_bits", "threshold_f32_planes", "bitpack"} & {
        op.type for op in g.ops
    }
    r = verify(model, g, x, batch_size=32)
    assert r["signs_compared"] > 0
    assert r["near_threshold"]["count"] == 0 and r["near_threshold"]["samples"] == 0, r[
        "near_threshold"
    ]
    assert r["sign_mismatches"] == 0, r["sign_mismatches_by_layer"]
    assert r["prediction_mismatches"] == 0
    if binary_last:  # integer logits times one float scale: bit-identical
        assert r["max_logit_abs_diff"] == 0.0
    try:
        import bitflow.engine as E
        from bitflow.engine.check import compare_with_reference
    except ImportError:  # the numpy half of the claim still ran
        return
    for kernels in ("auto",):  # every kernel set against the reference: test_engine.py
        rr = compare_with_reference(E.Engine(g, kernels=kernels, threads=1), x, batch_size=32)[
            "reference"
        ]
        assert rr["exact_mismatches"] == 0 and rr["op_by_op_mismatches"] == 0, (kernels, rr)
        assert rr["near_threshold"] == 0 and rr["prediction_mismatches"] == 0, (kernels, rr)
        assert "first_layer_end_to_end" not in rr  # no float decision anywhere


@pytest.mark.parametrize("case", INT8_CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
def test_int8_first_layer_models_are_exact_everywhere(case: dict) -> None:
    x = images(64, 3, 12, seed=33)
    _assert_exact(_case_model(case), x, binary_last=case["last_layer"] == "binary")


@pytest.mark.parametrize("gamma_sign", [1, -1])
def test_int8_vgg_small_is_exact_everywhere(gamma_sign: int) -> None:
    """A zoo model (28x28, max-pools that run on bits when every gamma has one sign)."""
    torch.manual_seed(34)
    model = models.create("bitflow_vgg_small", width=8, fc=32, first_layer="int8")
    calibrate(model, torch.from_numpy(images(64, 1, 28, seed=35)), seed=36, gamma_sign=gamma_sign)
    _assert_exact(model, images(48, 1, 28, seed=37), binary_last=False)
