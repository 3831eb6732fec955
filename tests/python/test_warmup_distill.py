"""Distillation from the run's own real-valued warm-up (recipe ``distill = "warmup"``).

Oracles: the trainer without distillation (its warm-up stage is the same computation, so the
teacher's weights must equal that run's end-of-warm-up weights bit for bit, and a zero weight on
the soft term must reproduce it exactly); the closed-form cross-entropy and its gradient
``d/dz_S H(p^T, softmax z_S) = (softmax z_S - p^T) / B`` for the loss term."""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_real_warmup import _cfg as _warmup_cfg

from bitflow.methods import apprentice_loss, soft_cross_entropy
from bitflow.nn import BinaryConv2d
from bitflow.train import TrainConfig, load_checkpoint, train
from bitflow.train.recipes import Recipe


def _recipe(tmp: Path, name: str, **extra: object) -> str:
    """The built-in Bi-Real recipe without its distillation, plus ``extra`` keys (strings and
    numbers only)."""
    text = (resources.files("bitflow.train") / "recipes" / "fashion-mnist-bireal.toml").read_text()
    text = "".join(ln for ln in text.splitlines(keepends=True) if not ln.startswith("distill"))
    text += "".join(
        f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v}\n" for k, v in extra.items()
    )
    path = tmp / f"{name}.toml"
    path.write_text(text)
    return str(path)


def _cfg(out: Path, recipe: str, **kw: object) -> TrainConfig:
    """test_real_warmup's tiny bireal_resnet20 run (3 epochs, 1 of them warm-up), smaller still."""
    return _warmup_cfg(out, recipe=recipe, seed=3, limit_train=128, limit_test=64, **kw)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_recipe_checks_distill() -> None:
    with pytest.raises(ValueError, match="distill must be 'warmup'"):
        Recipe(name="t", epochs=4, real_epochs=1, distill="teacher")
    with pytest.raises(ValueError, match="needs a real-valued warm-up"):
        Recipe(name="t", epochs=4, distill="warmup")
    with pytest.raises(ValueError, match="distill_weight"):
        Recipe(name="t", epochs=4, real_epochs=1, distill="warmup", distill_weight=float("nan"))
    r = Recipe(name="t", epochs=15, real_epochs=4, distill="warmup")
    # --epochs 1 leaves no warm-up (round(4 / 15) = 0): the teacher goes with it
    assert r.override(epochs=1).distill == "" and r.override(epochs=8).distill == "warmup"
    assert r.override(real_epochs=0).distill == ""


def test_soft_term_is_the_cross_entropy_and_its_gradient() -> None:
    g = torch.Generator().manual_seed(0)
    zs = torch.randn(6, 10, generator=g, dtype=torch.float64, requires_grad=True)
    zt = torch.randn(6, 10, generator=g, dtype=torch.float64) * 3
    y = torch.randint(0, 10, (6,), generator=g)
    h = soft_cross_entropy(F.log_softmax(zs, dim=1), zt)
    # closed form in numpy: H = -(1/B) sum_b sum_c p^T_bc log p^S_bc
    a, t = zs.detach().numpy(), zt.numpy()
    ps = np.exp(a - a.max(1, keepdims=True))
    ps /= ps.sum(1, keepdims=True)
    pt = np.exp(t - t.max(1, keepdims=True))
    pt /= pt.sum(1, keepdims=True)
    assert h.item() == pytest.approx(float(-(pt * np.log(ps)).sum(1).mean()), rel=1e-12)
    (grad,) = torch.autograd.grad(h, zs)
    np.testing.assert_allclose(grad.numpy(), (ps - pt) / 6, rtol=0, atol=1e-15)
    # the survey's Eq. 11 form is the hard term plus this one
    both = apprentice_loss(zs, zt, y, 1.0, 0.5)
    want = F.cross_entropy(zs, y) + 0.5 * h
    assert both.item() == pytest.approx(want.item(), rel=1e-12)


def test_teacher_is_the_end_of_the_warmup_and_resume_is_exact(tmp_path: Path) -> None:
    dist = _recipe(tmp_path, "dist", distill="warmup")
    plain = _recipe(tmp_path, "plain")
    train(_cfg(tmp_path / "warm", plain, stop_after=1))  # the warm-up epoch only
    train(_cfg(tmp_path / "full", dist))
    warm = load_checkpoint(tmp_path / "warm" / "last.pt")["model"]
    teacher = load_checkpoint(tmp_path / "full" / "warmup.pt")["model"]
    assert _same(warm, teacher)
    # interrupted inside the binarized stage: the teacher comes back from warmup.pt
    part = tmp_path / "part"
    train(_cfg(part, dist, stop_after=2))
    train(_cfg(part, dist, resume=True))
    assert _same(
        load_checkpoint(tmp_path / "full" / "last.pt")["model"],
        load_checkpoint(part / "last.pt")["model"],
    )
    (part / "warmup.pt").unlink()
    train(_cfg(part, dist, stop_after=2))
    (part / "warmup.pt").unlink()
    with pytest.raises(FileNotFoundError, match="warmup.pt"):
        train(_cfg(part, dist, resume=True))


def test_the_soft_term_is_what_changes_the_run(tmp_path: Path) -> None:
    plain = _recipe(tmp_path, "plain")
    zero = _recipe(tmp_path, "zero", distill="warmup", distill_weight=0.0)
    one = _recipe(tmp_path, "one", distill="warmup", distill_weight=1.0)
    runs = {}
    for name, r in (("plain", plain), ("zero", zero), ("one", one)):
        train(_cfg(tmp_path / name, r))
        runs[name] = load_checkpoint(tmp_path / name / "last.pt")["model"]
    # the teacher's forward pass leaves the student (weights, BatchNorm statistics) and the
    # random streams alone: weight 0 is the plain run exactly
    assert _same(runs["plain"], runs["zero"])
    assert not _same(runs["plain"], runs["one"])


def test_teacher_is_the_frozen_real_twin_and_the_student_stays_binary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from bitflow.models import create
    from bitflow.train import trainer
    from bitflow.train.checkpoint import model_from_checkpoint

    seen: list[torch.nn.Module] = []
    make = trainer._warmup_teacher

    def spy(*a: object, **k: object) -> torch.nn.Module:
        t = make(*a, **k)  # type: ignore[arg-type]
        seen.append(t)
        return t

    monkeypatch.setattr(trainer, "_warmup_teacher", spy)
    dist = _recipe(tmp_path, "dist", distill="warmup")
    train(_cfg(tmp_path / "a", dist, epochs=2))
    # the teacher computes what the full-precision twin (nn.Conv2d + Hardtanh, another class)
    # computes with the warm-up weights, in eval mode, and has no trainable parameters
    (teacher,) = seen
    # Both evaluated in float64 (copies): the two module trees round differently (operation
    # order), but in float64 each of the 20 layers' sums (<= 9 * 16 = 144 products) is off by at
    # most gamma_144 ~ 1.6e-14 relative (Higham Lemma 3.1), far below 1e-9 even after 1e3x
    # amplification through the BatchNorms; a binary (sign) teacher or other weights differ by
    # O(0.01-1) in the logits.
    twin = create("resnet20", width=4, activation="htanh")
    twin.load_state_dict(load_checkpoint(tmp_path / "a" / "warmup.pt")["model"])
    x = torch.randn(5, 1, 28, 28, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    with torch.no_grad():
        got = copy.deepcopy(teacher).double()(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(got, twin.double().eval()(x), rtol=0, atol=1e-9)
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    model, _ = model_from_checkpoint(tmp_path / "a" / "best.pt")
    assert not any(m.real for m in model.modules() if isinstance(m, BinaryConv2d))
    with pytest.raises(ValueError, match="brings its own teacher"):
        train(_cfg(tmp_path / "b", dist, method="kd"))
