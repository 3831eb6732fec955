"""MCN through ``bitflow train``: the model's hooks (two learning rates with their decays,
extra losses, M <- |M|, k-means every N epochs) and exact resume, projection state included."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from bitflow.train import TrainConfig, load_checkpoint, train

BASE_LR = 2e-3  # the fashion-mnist recipe: Adam, cosine over the run's epochs


def _cfg(out: Path, **kw: object) -> TrainConfig:
    base = dict(
        model="mcn_mnist",
        data="fashion-mnist",
        out=str(out),
        epochs=3,
        batch_size=64,
        limit_train=192,
        limit_test=64,
        seed=5,
        val_fraction=0.005,
        progress=False,
        model_kwargs={
            "widths": [2, 3, 2, 2],
            "kmeans_every": 2,
            "lr_decay_m": 0.5,
            "theta": 1e-2,
            "lam": 1e-2,
        },
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_mcn_resume_equals_uninterrupted_and_hooks_act(tmp_path: Path) -> None:
    full = train(_cfg(tmp_path / "full"))
    part = tmp_path / "part"
    train(_cfg(part, stop_after=1))
    st = load_checkpoint(part / "last.pt")
    # after epoch 0 the scheduler is at epoch 1: cosine factor (1 + cos(pi/3))/2 = 0.75;
    # group C at eta_1, group M at eta_2 = 0.1 eta_1 times lambda_2^1 = 0.5
    lrs = [g["lr"] for g in st["optimizer"]["param_groups"]]
    assert lrs == [pytest.approx(BASE_LR * 0.75), pytest.approx(BASE_LR * 0.1 * 0.75 * 0.5)]
    sd = st["model"]
    for k, v in sd.items():
        if k.endswith("m_filter"):
            assert (v >= 0).all(), k  # M <- |M| after every step
        if k.endswith("proj_state"):
            assert v[0] == 1 and math.isclose(float(v[1]), BASE_LR)  # eta_1 of the last step
    assert sd["center_loss.centers"].abs().sum() > 0  # Wen et al. updates ran
    resumed = train(_cfg(part, resume=True))
    a, b = (
        load_checkpoint(tmp_path / "full" / "last.pt")["model"],
        load_checkpoint(part / "last.pt")["model"],
    )
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["test_accuracy"] == full["test_accuracy"]
