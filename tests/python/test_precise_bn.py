"""Precise BatchNorm statistics (recipe ``precise_bn``, :func:`bitflow.train.trainer.precise_bn_`).

Oracle: the same forward pass written with ``torch.nn.functional`` (each BatchNorm normalizing
with its batch's statistics, as in training), its BatchNorm inputs collected over all batches, and
their mean and unbiased variance taken by ``torch.mean`` / ``torch.var`` in float64."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import TensorDataset

from bitflow.train.recipes import Recipe
from bitflow.train.trainer import precise_bn_


def _net() -> nn.Sequential:
    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(2, 3, 3, padding=1),
        nn.BatchNorm2d(3),
        nn.ReLU(),
        nn.Dropout(0.5),  # must stay in eval mode (identity) during the pass
        nn.Conv2d(3, 4, 3),
        nn.BatchNorm2d(4),
        nn.Flatten(),
        nn.Linear(4 * 3 * 3, 2),
    )
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # stale, wrong statistics to be replaced
            m.running_mean.uniform_(-3, 3)
            m.running_var.uniform_(0.1, 5)
            nn.init.uniform_(m.weight, 0.5, 2)
            nn.init.uniform_(m.bias, -1, 1)
    return net


def _oracle(net: nn.Sequential, x: torch.Tensor, order: torch.Tensor, bs: int) -> list[tuple]:
    c1, b1, _, _, c2, b2 = list(net)[:6]
    h1s, h2s = [], []
    with torch.no_grad():
        for i in range(0, len(order), bs):
            xb = x[order[i : i + bs]]
            h1 = c1(xb)
            y1 = F.batch_norm(h1, None, None, b1.weight, b1.bias, training=True, eps=b1.eps)
            h2 = c2(F.relu(y1))
            h1s.append(h1)
            h2s.append(h2)
    out = []
    for hs in (h1s, h2s):
        h = torch.cat(hs).double().transpose(0, 1).reshape(hs[0].shape[1], -1)
        out.append((h.mean(1), h.var(1, unbiased=True)))
    return out


@pytest.mark.parametrize(("samples", "bs"), [(40, 500), (40, 7), (25, 10)])
def test_running_statistics_become_the_population_statistics(samples: int, bs: int) -> None:
    net = _net().train()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(40, 2, 5, 5, generator=g) * 2 + 0.5
    ds = TensorDataset(x, torch.zeros(40, dtype=torch.long))
    order = torch.randperm(40, generator=torch.Generator().manual_seed(7))[:samples]
    want = _oracle(net, x, order, bs)
    assert precise_bn_(net, ds, torch.device("cpu"), samples, seed=7, batch_size=bs) == 2
    assert net.training  # the mode is restored
    for bn, (mean, var) in zip((net[1], net[5]), want, strict=True):
        torch.testing.assert_close(bn.running_mean, mean.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(bn.running_var, var.float(), rtol=1e-5, atol=1e-6)


def test_population_statistics_beat_a_lagging_moving_average() -> None:
    """In eval mode the network then normalizes exactly as a single batch of all samples would."""
    net = _net()
    x = torch.randn(64, 2, 5, 5, generator=torch.Generator().manual_seed(2))
    ds = TensorDataset(x, torch.zeros(64, dtype=torch.long))
    precise_bn_(net, ds, torch.device("cpu"), 64, seed=0, batch_size=64)
    net.eval()
    h1 = net[0](x)
    # one batch of everything: train-mode BN1 uses the biased batch variance, eval mode the stored
    # unbiased one; the two differ by the factor n / (n - 1) only
    n = h1.numel() // h1.shape[1]
    bn1 = net[1]
    y_eval = bn1(h1)
    y_batch = F.batch_norm(h1, None, None, bn1.weight, bn1.bias, training=True, eps=bn1.eps)
    scale = ((h1.var((0, 2, 3), unbiased=False) + bn1.eps) / (h1.var((0, 2, 3)) + bn1.eps)).sqrt()
    torch.testing.assert_close(
        (y_eval - bn1.bias[:, None, None]) / scale[:, None, None],
        y_batch - bn1.bias[:, None, None],
        rtol=1e-4,
        atol=1e-5,
    )
    assert n == 64 * 25


def test_recipe_rejects_negative_precise_bn() -> None:
    with pytest.raises(ValueError, match="precise_bn must be >= 0"):
        Recipe(name="t", precise_bn=-1)
