"""Real-valued warm-up (Bi-Real Sec. 3.3 inside one run): ``set_real_mode``, the recipe's
``real_epochs`` stages, the per-stage schedule and the trainer's stage handling.

Oracles: the full-precision twin (``resnet20 --model-arg activation=htanh``, a separate model
class built from ``nn.Conv2d`` / ``nn.Hardtanh``) for the real mode; a freshly built binary model
for the switch back; the cosine formula for the schedule."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from bitflow.models import create
from bitflow.nn import BinaryConv2d, set_real_mode
from bitflow.train import TrainConfig, load_checkpoint, model_from_checkpoint, train
from bitflow.train.recipes import Recipe, default_recipe_for, load_recipe
from bitflow.train.trainer import _lr_lambda


def _randomized(model: torch.nn.Module, seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=g))
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.5)
    return model.eval()


@pytest.mark.parametrize("kw", [{}, {"downsample": "conv"}])
def test_real_mode_is_the_htanh_twin(kw: dict[str, str]) -> None:
    """A Bi-Real model in real mode computes exactly its twin with ``activation="htanh"`` (same
    state dict, same ops in the same order: bitwise equal); switched back it computes exactly a
    binary model built from the same state dict."""
    torch.manual_seed(0)
    binary = _randomized(create("bireal_resnet20", width=4, **kw), 1)
    twin = create("resnet20", width=4, activation="htanh", **kw).eval()
    twin.load_state_dict(binary.state_dict())
    x = torch.randn(8, 1, 28, 28) * 2  # beyond [-1, 1], so the clip matters
    assert set_real_mode(binary, True) == 18 + (0 if kw else 0)
    with torch.no_grad():
        assert torch.equal(binary(x), twin(x))
    set_real_mode(binary, False)
    fresh = create("bireal_resnet20", width=4, **kw).eval()
    fresh.load_state_dict(binary.state_dict())
    with torch.no_grad():
        y_bin, y_fresh, y_twin = binary(x), fresh(x), twin(x)
    assert torch.equal(y_bin, y_fresh)
    assert not torch.allclose(y_bin, y_twin)  # the modes really differ


def test_real_mode_gradient_is_the_twins() -> None:
    """In real mode the latent weights get the twin's gradient (no STE, no alpha)."""
    torch.manual_seed(0)
    binary = _randomized(create("bireal_resnet20", width=4), 2).train()
    twin = create("resnet20", width=4, activation="htanh").train()
    twin.load_state_dict(binary.state_dict())
    set_real_mode(binary, True)
    x = torch.randn(4, 1, 28, 28)
    binary(x).square().sum().backward()
    twin(x).square().sum().backward()
    gb = dict(binary.named_parameters())
    for name, p in twin.named_parameters():
        assert p.grad is not None and gb[name].grad is not None
        assert torch.equal(p.grad, gb[name].grad), name


def test_real_mode_counts_and_ignores_other_layers() -> None:
    m = create("bitflow_vgg_small", width=4, fc=16)
    n = sum(isinstance(x, BinaryConv2d) for x in m.modules())
    assert 0 < n <= set_real_mode(m, True)  # every binary conv (and binary linear) switched
    assert all(x.real for x in m.modules() if isinstance(x, BinaryConv2d))
    set_real_mode(m, False)
    assert not any(x.real for x in m.modules() if isinstance(x, BinaryConv2d))


# ----------------------------------------------------------------------------- recipe


def test_recipe_stages_and_validation() -> None:
    r = Recipe(name="t", epochs=15, real_epochs=4)
    assert [r.stage(e) for e in (0, 3, 4, 14)] == [
        ("real", 0, 4),
        ("real", 3, 4),
        ("binary", 0, 11),
        ("binary", 10, 11),
    ]
    assert Recipe(name="t", epochs=3).stage(2) == ("binary", 2, 3)
    for bad in (-1, 15, 16):
        with pytest.raises(ValueError, match="real_epochs"):
            Recipe(name="t", epochs=15, real_epochs=bad)


@pytest.mark.parametrize(
    ("epochs", "want"),
    # round(4 * epochs / 15), at most epochs - 1: 1 -> 0 (binary only), 2 -> round(0.53) = 1,
    # 4 -> round(1.07) = 1, 8 -> round(2.13) = 2, 30 -> 8
    [(1, 0), (2, 1), (4, 1), (8, 2), (30, 8)],
)
def test_epochs_override_keeps_the_warmup_share(epochs: int, want: int) -> None:
    r = load_recipe("fashion-mnist-bireal")
    assert (r.epochs, r.real_epochs) == (15, 4)
    assert r.override(epochs=epochs).real_epochs == want
    assert r.override(epochs=epochs, real_epochs=0).real_epochs == 0


def test_default_recipe_of_the_bireal_model() -> None:
    assert default_recipe_for("fashion-mnist", model="bireal_resnet20") == "fashion-mnist-bireal"
    assert default_recipe_for("fashion-mnist", model="bitflow_vgg_small") == "fashion-mnist"
    plain, warm = load_recipe("fashion-mnist"), load_recipe("fashion-mnist-bireal")
    # the plain recipe plus the warm-up, its distillation, batch 64, flips only and native bf16
    a, b = plain.to_dict(), warm.to_dict()
    changed = {
        "real_epochs": (0, 4),
        "distill": ("", "warmup"),
        "batch_size": (128, 64),
        "augment": (["hflip", "crop2"], ["hflip"]),
        "precision": ("fp32", "auto"),
        "model_defaults": ({}, {"bireal_resnet20": {"width": 24}}),
    }
    for k, (va, vb) in changed.items():
        assert (a.pop(k), b.pop(k)) == (va, vb), k
    for k in ("name", "description"):
        a.pop(k), b.pop(k)
    assert a == b


def test_cosine_restarts_at_the_switch() -> None:
    f = _lr_lambda(Recipe(name="t", epochs=15, real_epochs=4, schedule="cosine"))
    for e in range(15):
        e0, n = (e, 4) if e < 4 else (e - 4, 11)
        assert f(e) == pytest.approx(0.5 * (1 + math.cos(math.pi * e0 / n)))
    assert f(4) == 1.0 and f(3) < 0.2
    g = _lr_lambda(
        Recipe(name="t", epochs=10, real_epochs=2, schedule="multistep", milestones=(3,))
    )
    assert [g(e) for e in range(10)] == pytest.approx([1, 1, 1, 1, 1, 0.1, 0.1, 0.1, 0.1, 0.1])


# ----------------------------------------------------------------------------- trainer


def _cfg(out: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = dict(
        model="bireal_resnet20",
        data="fashion-mnist",
        out=str(out),
        epochs=3,
        real_epochs=1,
        batch_size=64,
        limit_train=256,
        limit_test=128,
        seed=5,
        progress=False,
        model_kwargs={"width": 4},
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def test_trainer_runs_the_stages_and_keeps_a_binary_best(tmp_path: Path) -> None:
    res = train(_cfg(tmp_path / "a"))
    rows = [json.loads(r) for r in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    assert [r["stage"] for r in rows] == ["real", "binary", "binary"]
    assert res["real_epochs"] == 1 and res["best_epoch"] >= 1
    # restart: epoch 1 is the first binarized epoch and runs at the full rate again
    assert rows[1]["lr"] == pytest.approx(0.5 * 2e-3 * (1 + math.cos(math.pi / 2)))
    best = load_checkpoint(tmp_path / "a" / "best.pt")
    assert best["epoch"] >= 1
    # the optimizer starts afresh at the switch: Adam's step counts only the binarized
    # iterations (256 samples / batch 64 = 4 per epoch, 2 binarized epochs)
    last = load_checkpoint(tmp_path / "a" / "last.pt")
    steps = {float(s["step"]) for s in last["optimizer"]["state"].values()}
    assert steps == {8.0}
    # the result's test accuracy is the binary model's: re-evaluate best.pt built afresh
    from bitflow.data import eval_arrays
    from bitflow.train.checkpoint import model_from_checkpoint

    model, _ = model_from_checkpoint(tmp_path / "a" / "best.pt")
    assert not any(m.real for m in model.modules() if isinstance(m, BinaryConv2d))
    x, y = eval_arrays("fashion-mnist", 128)
    with torch.no_grad():
        acc = float((model.eval()(torch.from_numpy(x)).argmax(1).numpy() == y).mean())
    assert acc == pytest.approx(res["test_accuracy"])


def test_resume_across_the_switch_equals_uninterrupted(tmp_path: Path) -> None:
    train(_cfg(tmp_path / "full"))
    part = tmp_path / "part"
    train(_cfg(part, stop_after=1))  # stops after the warm-up epoch
    train(_cfg(part, resume=True))
    a = load_checkpoint(tmp_path / "full" / "last.pt")["model"]
    b = load_checkpoint(part / "last.pt")["model"]
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_recipe_model_defaults_apply_unless_the_run_sets_them(tmp_path: Path) -> None:
    """The Bi-Real recipe trains bireal_resnet20 at width 24 (its measured default); a run's own
    --model-arg wins; the checkpoint records the width, so it rebuilds at that width; another
    model under the same recipe is not touched; a malformed table is refused."""
    small = {"epochs": 1, "real_epochs": 0, "limit_train": 64, "limit_test": 32}
    r = train(_cfg(tmp_path / "a", model_kwargs={}, **small))
    assert load_checkpoint(r["checkpoint"])["model_config"]["kwargs"]["width"] == 24
    model, _ = model_from_checkpoint(r["checkpoint"])
    assert model.stem[0].out_channels == 24  # type: ignore[index]
    r = train(_cfg(tmp_path / "b", model_kwargs={"width": 4}, **small))
    assert load_checkpoint(r["checkpoint"])["model_config"]["kwargs"]["width"] == 4
    r = train(
        _cfg(
            tmp_path / "c",
            model="bitflow_lenet",
            recipe="fashion-mnist-bireal",
            model_kwargs={"fc": 16},
            **small,
        )
    )
    assert "width" not in load_checkpoint(r["checkpoint"])["model_config"]["kwargs"]
    with pytest.raises(ValueError, match="model_defaults"):
        Recipe(name="t", model_defaults={"bireal_resnet20": 24})  # type: ignore[dict-item]
