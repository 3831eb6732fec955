"""Trainer: resume equality, determinism, flip ratio, checkpoints, DDP, CLI contract."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from bitflow.models import create
from bitflow.train import FlipTracker, TrainConfig, load_checkpoint, train
from bitflow.train.checkpoint import CheckpointError, model_from_checkpoint, save_checkpoint
from bitflow.train.recipes import list_recipes, load_recipe

TINY = {"width": 4, "fc": 16}


def _cfg(out: Path, **kw: object) -> TrainConfig:
    base = dict(
        model="bitflow_vgg_small",
        data="fashion-mnist",
        out=str(out),
        epochs=3,
        batch_size=64,
        limit_train=384,
        limit_test=128,
        seed=3,
        progress=False,
        model_kwargs=dict(TINY),
    )
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    full = train(_cfg(tmp_path / "full"))
    part = tmp_path / "part"
    train(_cfg(part, stop_after=1))
    assert load_checkpoint(part / "last.pt")["epoch"] == 0
    resumed = train(_cfg(part, resume=True))
    a, b = _weights(tmp_path / "full" / "last.pt"), _weights(part / "last.pt")
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    assert resumed["test_accuracy"] == full["test_accuracy"]
    # metrics.jsonl has one row per epoch, no duplicates after the resume
    rows = [json.loads(r) for r in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [0, 1, 2]
    full_rows = [
        json.loads(r) for r in (tmp_path / "full" / "metrics.jsonl").read_text().splitlines()
    ]
    assert [r["train_loss"] for r in rows] == [r["train_loss"] for r in full_rows]


def test_same_seed_same_result_and_flip_log(tmp_path: Path) -> None:
    r1 = train(_cfg(tmp_path / "a", epochs=1, flip_every=2))
    r2 = train(_cfg(tmp_path / "b", epochs=1, flip_every=2))
    assert r1["test_accuracy"] == r2["test_accuracy"]
    for k, v in _weights(tmp_path / "a" / "last.pt").items():
        assert torch.equal(v, _weights(tmp_path / "b" / "last.pt")[k])
    # limit_train=384 (applied after the validation split) / batch 64 = 6 iterations; logged
    # every 2 iterations -> rows at iterations 2, 4, 6, one value in [0, 1] per binary layer.
    rows = [json.loads(r) for r in (tmp_path / "a" / "flips.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [2, 4, 6]
    layers = set(rows[0]["flip_ratio"])
    assert len(layers) == 5 and all(0.0 <= v <= 1.0 for r in rows for v in r["flip_ratio"].values())
    assert any(v > 0 for r in rows for v in r["flip_ratio"].values())  # Adam at lr 2e-3 flips signs
    assert r1["flip_ratio"] == rows[-1]["flip_ratio"]


def test_result_json_contract(tmp_path: Path) -> None:
    res = train(_cfg(tmp_path / "r", epochs=1))
    for key in ("test_accuracy", "epochs", "seconds_per_epoch", "checkpoint", "flip_ratio"):
        assert key in res
    assert (
        json.loads((tmp_path / "r" / "result.json").read_text())["test_accuracy"]
        == res["test_accuracy"]
    )
    assert 0.0 <= res["test_accuracy"] <= 1.0
    model, st = model_from_checkpoint(res["checkpoint"])
    assert st["model_config"]["name"] == "bitflow_vgg_small"
    assert not model.training


def test_flip_tracker_counts_flips() -> None:
    torch.manual_seed(0)
    m = create("bitflow_lenet", width=4, fc=8)
    tr = FlipTracker(m)
    layer = next(iter(tr.layers.values()))
    with torch.no_grad():
        w = layer.weight.view(-1)
        k = w.numel() // 4
        w[:k] = -w[:k]  # flips exactly the k entries that are non-zero
        nonzero = int((layer.weight.view(-1)[:k] != 0).sum())
    ratios = tr.update()
    name = next(iter(tr.layers))
    assert ratios[name] == pytest.approx(nonzero / w.numel())
    assert all(v == 0.0 for n, v in ratios.items() if n != name)
    assert all(v == 0.0 for v in tr.update().values())  # nothing changed since the snapshot


def test_flip_tracker_sign_zero_is_plus() -> None:
    m = create("bitflow_lenet", width=4, fc=8)
    tr = FlipTracker(m)
    layer = next(iter(tr.layers.values()))
    with torch.no_grad():
        layer.weight.abs_()
        tr.update()
        layer.weight.zero_()  # +|w| -> 0 keeps sign +1 (Eq. 2): no flip
    assert next(iter(tr.update().values())) == 0.0


def test_checkpoint_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_checkpoint(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="bad.pt"):
        load_checkpoint(bad)
    good = tmp_path / "good.pt"
    save_checkpoint(good, {"model": {}, "model_config": {"name": "bitflow_lenet", "kwargs": {}}})
    trunc = tmp_path / "trunc.pt"
    trunc.write_bytes(good.read_bytes()[:-40])
    with pytest.raises(CheckpointError):
        load_checkpoint(trunc)
    save_checkpoint(tmp_path / "other.pt", {"weights": 1})
    with pytest.raises(CheckpointError, match="not a bitflow checkpoint"):
        load_checkpoint(tmp_path / "other.pt")


def test_atomic_checkpoint_write_keeps_old_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    p = tmp_path / "c.pt"
    save_checkpoint(p, {"model": {"a": torch.ones(2)}, "model_config": {"name": "x"}})
    before = p.read_bytes()

    def boom(*a: object, **k: object) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        save_checkpoint(p, {"model": {"a": torch.zeros(2)}, "model_config": {"name": "x"}})
    assert p.read_bytes() == before
    assert [f.name for f in tmp_path.iterdir()] == ["c.pt"]  # no temp file left behind


def test_resume_mismatch_and_missing(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="resume"):
        train(_cfg(tmp_path / "none", resume=True))
    train(_cfg(tmp_path / "m", epochs=1))
    with pytest.raises(ValueError, match="resume"):
        train(_cfg(tmp_path / "m", epochs=2, resume=True, seed=4))


def test_recipes_load() -> None:
    names = list_recipes()
    assert {"fashion-mnist", "bitflow-alexnet-imagenet", "bitflow-alexnet-11khands"} <= set(names)
    r = load_recipe("bitflow-alexnet-11khands")
    # BitFlow-Net Sec. IV.C: 100 epochs, batch 128, lr 1e-4 decayed x0.1 at 5, 15, 35, 75
    assert (r.epochs, r.batch_size, r.lr, r.milestones, r.gamma) == (
        100,
        128,
        1e-4,
        (5, 15, 35, 75),
        0.1,
    )
    r = load_recipe("bitflow-alexnet-imagenet")
    assert (r.optimizer, r.lr, r.batch_size, r.epochs) == ("adam", 1e-4, 128, 50)
    with pytest.raises(KeyError, match="fashion-mnist"):
        load_recipe("nope")


def test_multistep_schedule_matches_paper(tmp_path: Path) -> None:
    from bitflow.train.trainer import _lr_lambda

    f = _lr_lambda(load_recipe("bitflow-alexnet-11khands"))
    # factor 0.1^(number of milestones <= epoch)
    assert [f(e) for e in (0, 4, 5, 14, 15, 35, 75, 99)] == pytest.approx(
        [1, 1, 0.1, 0.1, 0.01, 1e-3, 1e-4, 1e-4]
    )


def _cli(
    *args: str, cwd: Path, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "bitflow", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
    )


@pytest.mark.e2e
def test_cli_version_and_json(tmp_path: Path) -> None:
    r = _cli("--version", cwd=tmp_path)
    assert r.returncode == 0 and r.stdout.startswith("bitflow ")
    r = _cli(
        "train",
        "--model",
        "bitflow_lenet",
        "--data",
        "fashion-mnist-binary:0,6",
        "--epochs",
        "1",
        "--limit-train",
        "256",
        "--limit-test",
        "64",
        "--out",
        "run",
        "--json",
        "--model-arg",
        "width=4",
        "--model-arg",
        "fc=8",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    res = json.loads(r.stdout.strip().splitlines()[-1])
    assert res["test_samples"] == 64 and Path(tmp_path / res["checkpoint"]).exists()
    st = load_checkpoint(tmp_path / res["checkpoint"])
    assert st["num_classes"] == 2


@pytest.mark.e2e
def test_cli_errors_are_clear(tmp_path: Path) -> None:
    r = _cli("train", "--model", "nope", "--epochs", "1", "--out", "x", cwd=tmp_path)
    assert (
        r.returncode == 2 and "unknown model 'nope'" in r.stderr and "bitflow_vgg_small" in r.stderr
    )
    r = _cli(
        "train",
        "--model",
        "bitflow_lenet",
        "--data",
        "folder:/does/not/exist",
        "--out",
        "x",
        cwd=tmp_path,
    )
    assert r.returncode == 2 and "/does/not/exist" in r.stderr
    env = dict(os.environ, BITFLOW_FASHION_MNIST=str(tmp_path / "empty"))
    r = _cli("train", "--model", "bitflow_lenet", "--out", "x", cwd=tmp_path, env=env)
    assert r.returncode == 2 and "empty" in r.stderr


@pytest.mark.e2e
@pytest.mark.skipif(
    shutil.which("torchrun", path=str(Path(sys.executable).parent)) is None,
    reason="torchrun missing",
)
def test_ddp_two_processes_gloo(tmp_path: Path) -> None:
    """What DDP must do, observed inside ``bitflow.train.train`` on two gloo ranks
    (``ddp_worker.py`` records each rank's batches, gradients and parameters):

    - the ranks train on disjoint, equal shards whose union is every training sample once;
    - the gradient the optimizer sees on both ranks is the mean of the two shards' gradients,
      recomputed here in one process from the recorded initial model and shards. BatchNorm
      normalizes each rank's shard on its own (no SyncBatchNorm), so this per-shard mean, not the
      gradient of the union batch, is the single-process oracle. Tolerance 0, derived: the
      per-shard backward runs the same kernels on the same shapes with one thread here and in
      the workers (OMP_NUM_THREADS=1), so each shard's gradient is bit-identical; DDP computes
      ``g0/2 + g1/2`` and the oracle ``(g0 + g1)/2``: halving is exact in float32, so both are
      the one rounding of the same real sum;
    - the parameters are then identical on both ranks (buffers are not: each rank's BatchNorm
      running statistics follow its own shard; rank 0's are the checkpoint's).
    """
    import torch.nn.functional as F

    from bitflow.models import create

    torchrun = str(Path(sys.executable).parent / "torchrun")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            str(Path(__file__).with_name("ddp_worker.py")),
            str(tmp_path),
        ],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    recs = [torch.load(tmp_path / f"rank{i}.pt", weights_only=False) for i in (0, 1)]
    res = json.loads((tmp_path / "run" / "result.json").read_text())
    assert res["world_size"] == 2 and recs[0]["world_size"] == 2
    rows = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [x["epoch"] for x in rows] == [0]
    steps = len(recs[0]["x"])
    assert steps == len(recs[1]["x"]) == len(recs[0]["steps"]) == 2  # 72 samples, batch 64: 64 + 8
    seen: list[int] = []
    for k in range(steps):
        a, b = (set(rec["indices"][k].tolist()) for rec in recs)  # training batches come first
        assert not a & b and len(a) == len(b) > 0, (k, a & b)
        seen += [*a, *b]
    assert sorted(seen) == list(range(72))  # every training sample once per epoch
    torch.set_num_threads(1)
    assert all("initial" in rec for rec in recs), (
        "the trainer did not wrap the model in DistributedDataParallel"
    )
    model = create("bitflow_lenet", width=4, fc=8)
    model.load_state_dict(recs[0]["initial"])
    model.train()
    grads = []
    for rec in recs:  # step 0 of each rank, from the same initial model
        model.zero_grad()
        F.cross_entropy(model(rec["x"][0]), rec["y"][0]).backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    names = [n for n, _ in model.named_parameters()]
    for n in names:
        want = (grads[0][n] + grads[1][n]) / 2
        for rec in recs:
            assert torch.equal(rec["steps"][0]["grads"][n], want), (
                n,
                (rec["steps"][0]["grads"][n] - want).abs().max(),
            )
    assert not torch.equal(grads[0][names[0]], grads[1][names[0]])  # the shards do differ
    for k in range(steps):
        p0, p1 = recs[0]["steps"][k]["params"], recs[1]["steps"][k]["params"]
        for n in names:
            assert torch.equal(p0[n], p1[n]), (k, n)
    assert not torch.equal(
        recs[0]["steps"][0]["params"][names[0]], recs[0]["initial"][names[0]]
    )  # a step was taken
    model, _ = model_from_checkpoint(tmp_path / "run" / "last.pt")
    assert model(torch.rand(2, 1, 28, 28)).shape == (2, 10)


def test_channels_last_is_a_layout_not_a_model_change(tmp_path: Path) -> None:
    """Training in NHWC (the default) computes what NCHW computes: one batch in one epoch, so the
    logged training loss is the loss at the initial weights (a forward pass in either layout;
    equal up to float32 summation order, far below the 1e-4 used); the checkpoint is stored
    contiguous, and the model trained with channels_last really held its 4-d weights in NHWC."""
    kw = dict(epochs=1, batch_size=64, limit_train=64)
    train(_cfg(tmp_path / "nhwc", **kw))
    train(_cfg(tmp_path / "nchw", channels_last=False, **kw))
    rows = [
        json.loads((tmp_path / d / "metrics.jsonl").read_text().splitlines()[0])
        for d in ("nhwc", "nchw")
    ]
    assert rows[0]["train_loss"] == pytest.approx(rows[1]["train_loss"], rel=1e-4)
    for name, t in _weights(tmp_path / "nhwc" / "last.pt").items():
        assert t.is_contiguous(), name
    seen: list[bool] = []
    moved = False
    from bitflow.train import trainer as tr

    model = create("bitflow_vgg_small", **TINY)
    tr.channels_last_(model)
    for p in model.parameters():
        if p.dim() == 4:
            seen.append(p.is_contiguous(memory_format=torch.channels_last))
            moved = moved or not p.is_contiguous()  # (a 1-channel conv is both layouts at once)
    assert seen and all(seen) and moved


def _bn_layouts(model: torch.nn.Module, x: torch.Tensor, bf16: bool) -> list[tuple[str, str, str]]:
    """(BatchNorm2d name, input layout, gradient layout) of one training step's forward and
    backward; layouts 'cl', 'nchw' or 'both' (a tensor with C = 1 or H = W = 1 is both)."""

    def lay(t: torch.Tensor) -> str:
        cl = t.is_contiguous(memory_format=torch.channels_last)
        nc = t.is_contiguous()
        return "both" if cl and nc else "cl" if cl else "nchw" if nc else "other"

    seen: list[tuple[str, str, str]] = []
    hs = []
    for name, m in model.named_modules():
        if isinstance(m, torch.nn.BatchNorm2d):

            def fh(_m: Any, inp: Any, out: torch.Tensor, name: str = name) -> None:
                row = [name, lay(inp[0]), ""]
                seen.append(row)  # type: ignore[arg-type]
                out.register_hook(lambda g, row=row: row.__setitem__(2, lay(g)))

            hs.append(m.register_forward_hook(fh))
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        loss = torch.nn.functional.cross_entropy(model(x).float(), torch.arange(len(x)) % 10)
    loss.backward()
    for h in hs:
        h.remove()
    return [tuple(r) for r in seen]  # type: ignore[misc]


@pytest.mark.parametrize(
    ("backbone", "method", "kw"),
    [
        ("bitflow_vgg_small", "bnn", {"width": 4, "fc": 16}),
        ("bireal_resnet20", "bnn", {"width": 4}),
        ("bireal_resnet20", "reactnet", {"width": 4}),
        ("bitflow_vgg_small", "xnor", {"width": 4, "fc": 16}),
    ],
)
def test_layout_hooks_keep_batchnorm_in_one_layout_and_change_no_value(
    backbone: str, method: str, kw: dict[str, Any]
) -> None:
    """``channels_last_(model, layout_hooks=True)`` (what eager training does): every BatchNorm2d
    sees its input and its gradient in the same layout (mixed, its backward takes a slow generic
    path: 28x slower measured on one shape, see the docstring), and the loss and every gradient
    are PyTorch's without the hooks (float32; equal up to summation order). Without the hooks the
    mix is there (the 1-channel stem convolution returns NCHW, the gradients come back NHWC)."""
    from bitflow.methods import build_model
    from bitflow.train import trainer as tr

    x = torch.rand(8, 1, 28, 28).contiguous(memory_format=torch.channels_last)

    def make(hooks: bool) -> tuple[torch.nn.Module, list[Any]]:
        torch.manual_seed(3)
        m = build_model(backbone, method, **kw).train()
        return m, tr.channels_last_(m, layout_hooks=hooks)

    plain, h0 = make(False)
    hooked, h1 = make(True)
    assert h0 == [] and len(h1) > 0
    mixed = [r for r in _bn_layouts(plain, x, bf16=True) if "both" not in r and r[1] != r[2]]
    if backbone == "bitflow_vgg_small" or method == "bnn":
        assert mixed  # the case the hooks are for exists in this model
    for name, xin, grad in _bn_layouts(hooked, x, bf16=True):
        assert "both" in (xin, grad) or xin == grad == "cl", (name, xin, grad)
    # the same values: fp32 forward and backward with and without the hooks
    for m in (plain, hooked):
        m.zero_grad()
        torch.manual_seed(5)
        torch.nn.functional.cross_entropy(m(x), torch.arange(8) % 10).backward()
    gp = dict(plain.named_parameters())
    for n, p in hooked.named_parameters():
        if p.grad is None:
            assert gp[n].grad is None, n
            continue
        torch.testing.assert_close(p.grad, gp[n].grad, rtol=1e-4, atol=1e-5, msg=n)
    for h in h1:
        h.remove()
    assert _bn_layouts(hooked, x, bf16=True) == _bn_layouts(plain, x, bf16=True)
