"""MCN deployment (issue 11): MCN-XNOR with MCN-1 modulation lowers to binary convs + BatchShift
thresholds and converts exactly; the other variants are refused with the reason."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from _bounds import assert_within, reference_and_bound
from torch import nn

from bitflow.convert import UnsupportedLayerError, convert, verify
from bitflow.convert._mcn import lower_mcn
from bitflow.engine import Engine, available_kernels
from bitflow.models import create
from bitflow.nn import BinaryConv2d
from bitflow.nn.mcn import MCConv2d


def randomize_mcn(model: nn.Module, seed: int, beta_low: float = -1.0) -> nn.Module:
    """Random BN statistics/affines (gamma of both signs, beta in ``[beta_low, beta_low + 2)``:
    nontrivial thresholds) and random M-Filters > 0."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 2 + beta_low)
        if isinstance(m, MCConv2d):
            m.m_filter.data.uniform_(0.1, 2.0, generator=g)
    return model.eval()


CASES = [
    ("mcn1_xnor_mnist", {"in_channels": 1, "image_size": 28, "widths": (4, 6, 8, 10)}),
    ("mcn1_xnor_wrn", {"in_channels": 1, "image_size": 16, "widths": (4, 4, 8, 8), "depth": 8}),
]


@pytest.mark.parametrize("name,kw", CASES)
def test_mcn1_xnor_converts_exactly(name: str, kw: dict[str, object]) -> None:
    torch.manual_seed(0)
    model = randomize_mcn(create(name, **kw), 1)
    lowered = lower_mcn(model)
    n_mc = sum(
        1 for m in model.modules() if isinstance(m, MCConv2d) and m.input_quantizer is not None
    )
    assert sum(1 for m in lowered.modules() if type(m) is BinaryConv2d) == n_mc
    s = int(kw["image_size"])  # type: ignore[call-overload]
    x = np.random.default_rng(0).random((16, 1, s, s), dtype=np.float32)
    with torch.no_grad():  # the lowered model is the same function, bit for bit
        assert torch.equal(lowered(torch.from_numpy(x)), model(torch.from_numpy(x)))
    graph = convert(model)
    assert sum(1 for op in graph.ops if op.type == "bconv2d") == n_mc
    res = verify(model, graph, x)
    assert res["prediction_mismatches"] == 0
    assert res["sign_mismatches"] == 0 and res["signs_compared"] > 0
    assert res["near_threshold"]["count"] == 0
    ref, bound = reference_and_bound(graph, x)
    for k in available_kernels():
        eng = Engine(graph, kernels=k)
        assert (eng.predict(x) == ref.argmax(1)).all()
        # engine vs reference: the same integers and bits (checked), so only the float layers'
        # roundings differ: at most 2 E (float_error_bounds, _bounds.reference_and_bound)
        assert_within(eng.logits(x), ref, bound, k, empirical=(1e-4, 1e-4))  # measured <= 1.8e-7


@pytest.mark.parametrize(
    "name,kw,why",
    [
        ("umcn_mnist", {"act": "u8"}, "U-MCN with quantized inputs"),
        ("mcn_mnist", {"act": "u8", "symmetric": False}, "symmetric"),
    ],
)
def test_undeployable_variants_are_refused_with_the_reason(
    name: str, kw: dict[str, object], why: str
) -> None:
    # (every variant with real activations converts as a float conv: test_mcn_deploy.py)
    with pytest.raises(UnsupportedLayerError, match=why):
        convert(create(name, in_channels=1, image_size=28, **kw).eval())


def test_non_symmetric_centers_are_refused() -> None:
    m = create("mcn1_xnor_mnist", in_channels=1, image_size=28, symmetric=False)
    with pytest.raises(UnsupportedLayerError, match="symmetric"):
        convert(m.eval())


def test_mcn_storage_matches_the_converted_file_and_the_32x_32k_ratios() -> None:
    from bitflow.analysis.mcn_summary import mcn_storage

    # widths 16 and 20 maps: 64 and 80 input channels (1 and 2 words per tap)
    model = randomize_mcn(
        create("mcn1_xnor_mnist", in_channels=1, image_size=28, widths=(4, 16, 20, 6)), 2
    )
    s = mcn_storage(model)
    graph = convert(model)
    for r in s["layers"]:
        stored = sum(  # the packed rows (one per map: K equal rows shared) + the gather index
            graph.tensors[t].nbytes
            for op in graph.ops
            if op.attrs.get("source") == r["layer"]
            for role, t in op.params.items()
            if role in ("w", "index")
        )
        assert r["bfn_weight_bytes"] == stored, r["layer"]
        assert r["float_same_params_bytes"] * 8 == 32 * r["binary_bits"]
        assert r["float_same_channels_bytes"] * 8 == 32 * 4 * r["binary_bits"]  # 32 K, K = 4
    umcn = mcn_storage(create("umcn_mnist", in_channels=1, image_size=28))
    assert all(r["binary_bits"] == 0 and r["deploy"].startswith("float") for r in umcn["layers"])
