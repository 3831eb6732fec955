"""Full-precision twins convert to a float graph that the engine runs (issue 14), and the float
error bound :func:`bitflow.ir.reference.float_error_bounds` holds and is tight on deep float
chains, checked against an independent float64 re-execution of the graph (PyTorch ops in
float64, op by op).

Oracle and bound: ``E[v]`` bounds ``|computed - exact|`` for every float32 implementation of the
graph, where "exact" is the graph's function in real arithmetic; the float64 re-execution is
exact to ``~K 2^-53`` relative, 2^29 times finer than float32's rounding, so it stands in for
exact. Two float32 implementations (the engine, PyTorch's float32 model) are then within
``2 E`` of each other, and their argmaxes agree wherever the reference's top-2 logit gap is
larger than ``4 E`` (each logit can move by ``2 E``).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_zoo import _cost, small_kwargs
from torch import nn

from bitflow import models
from bitflow.convert import convert
from bitflow.engine import Engine, available_kernels
from bitflow.ir import Graph, run
from bitflow.ir.reference import float_error_bounds, gamma32

# the full-precision twins of the zoo: every registered model with float inference and no
# layer of bitflow.nn (the MCN models with real activations, W1/A32, are not twins: their
# MCConv2d raises a clear UnsupportedLayerError, tests/python/test_mcn_convert.py)
FLOAT_TWINS = [
    n
    for n in models.list_models()
    if models.create(n).inference == "float"
    and not any(type(x).__module__.startswith("bitflow.nn") for x in models.create(n).modules())
]
FLOAT_OPS = {
    "conv2d_f32",
    "dense_f32",
    "affine_f32",
    "relu_f32",
    "maxpool_f32",
    "avgpool_f32",
    "global_avgpool_f32",
    "add_f32",
    "concat",
    "flatten",
}


def _randomize_bn(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters (a fresh BN is the identity)."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 1.5 + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) * 2 - 1)
            m.bias.data.copy_(torch.rand(n, generator=g) - 0.5)
    return model.eval()


def exact64(graph: Graph, x: np.ndarray) -> dict[str, np.ndarray]:
    """Every float value of ``graph`` on ``x`` (NCHW in [0, 1]) recomputed in float64 with
    PyTorch's own ops (values in the graph's NHWC storage layout)."""
    t = {k: torch.from_numpy(v.astype(np.float64)) for k, v in graph.tensors.items()}
    env: dict[str, torch.Tensor] = {graph.input.name: torch.from_numpy(x.astype(np.float64))}
    env[graph.input.name] = env[graph.input.name].permute(0, 2, 3, 1)
    nchw = lambda a: a.permute(0, 3, 1, 2)  # noqa: E731
    nhwc = lambda a: a.permute(0, 2, 3, 1)  # noqa: E731
    for op in graph.ops:
        x0 = env[op.inputs[0]]
        p = {role: t[name] for role, name in op.params.items()}
        a: dict[str, Any] = op.attrs
        if op.type == "conv2d_f32":
            y = nhwc(
                F.conv2d(
                    nchw(x0),
                    p["w"].permute(0, 3, 1, 2),
                    p.get("bias"),
                    stride=tuple(a["stride"]),
                    padding=tuple(a["padding"]),
                )
            )
        elif op.type == "dense_f32":
            y = F.linear(x0, p["w"], p.get("bias"))
        elif op.type in ("affine_f32", "scale_bias"):
            y = x0 * p["scale"] + p["bias"]
        elif op.type == "relu_f32":
            y = x0.clamp(min=0)
        elif op.type == "maxpool_f32":
            y = nhwc(
                F.max_pool2d(nchw(x0), tuple(a["kernel"]), tuple(a["stride"]), tuple(a["padding"]))
            )
        elif op.type == "flatten":
            y = x0.reshape(x0.shape[0], -1)
        else:
            raise AssertionError(f"no float64 rule for {op.type}")
        env[op.outputs[0]] = y
    return {k: v.numpy() for k, v in env.items()}


@pytest.mark.parametrize("name", [pytest.param(n, marks=_cost(n)) for n in FLOAT_TWINS])
def test_every_float_twin_converts_and_the_engine_matches_pytorch_within_the_bound(
    name: str,
) -> None:
    """Every twin converts to float ops only; on every kernel set the engine's logits are within
    ``2 E`` of PyTorch's float32 model (both within ``E`` of the exact value) and its
    predictions equal PyTorch's."""
    torch.manual_seed(0)
    m = _randomize_bn(models.create(name, **small_kwargs(name)), 1)
    g = convert(m)
    assert {op.type for op in g.ops} <= FLOAT_OPS, (
        "a full-precision twin converts to float ops only"
    )
    c, s = m.in_channels, m.image_size
    x = np.random.default_rng(2).random((8, c, s, s), dtype=np.float32)
    with torch.no_grad():
        lt = m(torch.from_numpy(x)).numpy()
    ref, env = run(g, x, return_intermediates=True)  # type: ignore[misc]
    e = float_error_bounds(g, env)[g.output]
    assert (np.abs(lt - ref) <= 2 * e).all()
    for k in available_kernels():
        lg = Engine(g, kernels=k).logits(x)
        assert (np.abs(lg - lt) <= 2 * e).all(), k
        np.testing.assert_array_equal(lg.argmax(1), lt.argmax(1))


def _deep_chain(depth: int, width: int, seed: int) -> nn.Sequential:
    """A float chain of ``depth`` 3x3 convs (BN -> conv -> ReLU, as the twins), 2x2 max-pools
    after every third, a float FC head: ``depth + 2`` layers of rounding in sequence."""
    torch.manual_seed(seed)
    mods: list[nn.Module] = [nn.Conv2d(1, width, 3, padding=1), nn.ReLU()]
    size = 16
    for i in range(depth):
        mods += [
            nn.BatchNorm2d(width),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.ReLU(),
        ]
        if i % 3 == 2 and size > 2:
            mods.append(nn.MaxPool2d(2))
            size //= 2
    mods += [nn.Flatten(), nn.BatchNorm1d(width * size * size), nn.Linear(width * size * size, 10)]
    m = nn.Sequential(*mods)
    m.image_size, m.in_channels, m.num_classes = 16, 1, 10  # type: ignore[assignment]
    return _randomize_bn(m, seed)


def test_float_error_bound_holds_and_is_tight_on_a_deep_float_chain() -> None:
    """12 convs + BN + FC (width 8): every float value of the reference executor is within its
    bound of the float64 re-execution, so are the engine's logits on every kernel set, and the
    logits' bound is useful: below 1e-3 of the largest logit. The forward rule alone (the worst
    case for every error sign, |W| E carried layer after layer) gives 1.5e-2 here; the adjoint
    (each output's own signed Jacobian applied to the ops' roundings) 2.3e-4. Measured error:
    ~1e-8, so both bounds hold with room."""
    m = _deep_chain(12, 8, 3)
    g = convert(m)
    x = np.random.default_rng(4).random((8, 1, 16, 16), dtype=np.float32)
    ref, env = run(g, x, return_intermediates=True)  # type: ignore[misc]
    eb = float_error_bounds(g, env)
    fwd = float_error_bounds(g, env, adjoint_max_outputs=0)
    ex = exact64(g, x)
    n_checked = 0
    for op in g.ops:
        v = op.outputs[0]
        if env[v].dtype != np.float32:
            continue
        err = np.abs(env[v].astype(np.float64) - ex[v])
        assert (err <= eb[v]).all() and (err <= fwd[v]).all(), op.name
        n_checked += err.size
    assert n_checked > 100_000
    out, scale = g.output, float(np.abs(ex[g.output]).max())
    assert eb[out].max() < 1e-3 * scale, eb[out].max() / scale
    assert (eb[out] <= fwd[out]).all()
    for k in available_kernels():
        lg = Engine(g, kernels=k).logits(x)
        assert (np.abs(lg - ex[out]) <= eb[out]).all(), k


def test_gamma_is_highams_constant() -> None:
    """gamma_n = n u / (1 - n u), u = 2^-24 (Higham Eq. 3.8); n u >= 1 has no bound."""
    u = 2.0**-24
    assert gamma32(1) == u / (1 - u)
    # gamma_n / (n u) - 1 = n u / (1 - n u) = 5.96e-5 for n = 1000: first order is n u
    assert gamma32(1000) == pytest.approx(1000 * u, rel=6e-5)
    assert gamma32(1000) != pytest.approx(1000 * u, rel=5.9e-5)
    with pytest.raises(ValueError, match="undefined"):
        gamma32(2**24)
