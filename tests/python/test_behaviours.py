"""Behaviour the README states that had no test: augment_batch, recipe files, checkpoints of the
wrong architecture, malformed 11K Hands CSVs, training on 11K Hands data, verify's input checks,
and that best-checkpoint selection never looks at the test split."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from test_data import make_hands

from bitflow import cli
from bitflow.data import DatasetError, eval_arrays
from bitflow.data import folders as bd
from bitflow.models import create
from bitflow.train import TrainConfig, model_from_checkpoint, train
from bitflow.train.augment import augment_batch
from bitflow.train.checkpoint import CheckpointError, save_checkpoint
from bitflow.train.recipes import load_recipe

# ----------------------------------------------------------------------------- augment_batch


def test_augment_hflip_and_crop_against_a_per_image_oracle() -> None:
    """Every output image is the input, possibly mirrored (hflip), or a window of the input
    zero-padded by p (crop2 / crop4) at some offset in [0, 2p]^2: checked image by image against
    all candidates, and both cases must occur (seeded, 64 images)."""
    g = torch.Generator().manual_seed(0)
    x = torch.rand(64, 2, 5, 7, generator=g) + 0.5  # no zeros: padding is recognizable
    out = augment_batch(x, ("hflip",), torch.Generator().manual_seed(1))
    flipped = [bool(torch.equal(o, xi.flip(-1))) for o, xi in zip(out, x, strict=True)]
    same = [bool(torch.equal(o, xi)) for o, xi in zip(out, x, strict=True)]
    assert all(f or s for f, s in zip(flipped, same, strict=True)) and 10 < sum(flipped) < 54
    for p in (2, 4):
        out = augment_batch(x, (f"crop{p}",), torch.Generator().manual_seed(2))
        assert out.shape == x.shape
        offsets = set()
        for o, xi in zip(out, x, strict=True):
            padded = torch.nn.functional.pad(xi, (p, p, p, p))
            hits = [
                (dy, dx)
                for dy in range(2 * p + 1)
                for dx in range(2 * p + 1)
                if torch.equal(o, padded[:, dy : dy + 5, dx : dx + 7])
            ]
            assert hits, "not a window of the padded image"
            offsets.add(hits[0])
        assert len(offsets) > 5  # the offsets vary
    assert augment_batch(x, (), g) is x
    # reproducible: the same generator state gives the same batch
    a = augment_batch(x, ("hflip", "crop2"), torch.Generator().manual_seed(3))
    b = augment_batch(x, ("hflip", "crop2"), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------- recipes


def test_recipe_toml_files_valid_and_invalid(tmp_path: Path) -> None:
    good = tmp_path / "mine.toml"
    good.write_text(
        'optimizer = "sgd"\nlr = 0.05\nbatch_size = 32\nepochs = 3\nschedule = "multistep"\n'
        'milestones = [1, 2]\naugment = ["hflip"]\nnote = "kept"\n'
    )
    r = load_recipe(str(good))
    assert (r.name, r.optimizer, r.lr, r.batch_size, r.epochs, r.milestones, r.augment) == (
        "mine",
        "sgd",
        0.05,
        32,
        3,
        (1, 2),
        ("hflip",),
    )
    assert r.extra == {"note": "kept"}
    for text, msg in [
        ('optimizer = "lamb"', "optimizer"),
        ('schedule = "weird"', "schedule"),
        ('augment = ["mixup"]', "augmentations"),
        ("epochs = 0", "positive"),
        ("lr = -1.0", "positive"),
        ("epochs = ", "not valid TOML"),
    ]:
        bad = tmp_path / "bad.toml"
        bad.write_text(text + "\n")
        with pytest.raises(ValueError, match=msg):
            load_recipe(str(bad))
    with pytest.raises(KeyError, match="unknown recipe"):
        load_recipe(str(tmp_path / "missing.toml"))


# ----------------------------------------------------------------------------- checkpoints


def test_checkpoint_of_the_wrong_architecture_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = create("bitflow_lenet", width=4, fc=8)
    state = {
        "model": model.state_dict(),
        "model_config": {"name": "bitflow_lenet", "kwargs": {"width": 8, "fc": 8}},
    }
    p = tmp_path / "wrong.pt"
    save_checkpoint(p, state)
    with pytest.raises(CheckpointError, match="weights do not match model 'bitflow_lenet'"):
        model_from_checkpoint(p)
    assert cli.main(["convert", str(p), "-o", str(tmp_path / "x.bfn")]) == 2
    assert "do not match" in capsys.readouterr().err
    assert not (tmp_path / "x.bfn").exists()


# ----------------------------------------------------------------------------- 11K Hands CSVs


@pytest.mark.parametrize(
    "edit, msg",
    [
        (lambda lines: [], "empty"),
        (lambda lines: [lines[0], "0000000,20,male"], "row 2 has 3 fields, the header has 9"),
        (
            lambda lines: [lines[0], lines[1].replace("0000000,", ",", 1)],
            "row 2: empty imageName or id",
        ),
        (
            lambda lines: [lines[0], lines[1], lines[1]],
            "row 3: image 'Hand_0000000.jpg' is listed twice",
        ),
    ],
)
def test_malformed_hands_csv(tmp_path: Path, edit, msg: str) -> None:  # type: ignore[no-untyped-def]
    root = tmp_path / "h"
    make_hands(root, n_persons=2, per_person=2)
    csv = root / "HandInfo.csv"
    lines = csv.read_text().splitlines()
    csv.write_text("".join(line + "\n" for line in edit(lines)))
    with pytest.raises(DatasetError, match=msg):
        bd.read_hands11k(root)


def test_training_on_11k_hands_data(tmp_path: Path) -> None:
    """A tiny generated 11K Hands set trains end to end (group folds, 3-channel input), and the
    checkpoint converts and verifies."""
    from bitflow.convert import convert, verify

    make_hands(tmp_path / "h", n_persons=12, per_person=2)  # the recipe's 10 folds need 10+ persons
    r = train(
        TrainConfig(
            model="bitflow_lenet",
            data=f"hands11k:{tmp_path / 'h'}",
            out=str(tmp_path / "run"),
            epochs=1,
            batch_size=8,
            fold=1,
            image_size=28,
            progress=False,
            model_kwargs={"width": 4, "fc": 8},
        )
    )
    assert r["epochs_completed"] == 1 and 0.0 <= r["test_accuracy"] <= 1.0
    model, state = model_from_checkpoint(r["checkpoint"])
    assert state["num_classes"] == 2 and state["class_names"] == ["female", "male"]
    x = np.random.default_rng(0).random((4, 3, 28, 28), dtype=np.float32)
    rep = verify(model, convert(model), x)
    assert rep["sign_mismatches"] == 0 and rep["prediction_mismatches_unexplained"] == 0


# ----------------------------------------------------------------------------- best checkpoint


def test_best_checkpoint_is_chosen_on_validation_never_on_test(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``evaluate`` is observed: the test split (16 samples; validation: 0.5% of the 60,000
    Fashion-MNIST training images = 300) is evaluated exactly once, after the last epoch, and
    best.pt is the epoch of the first maximum of the validation accuracy in metrics.jsonl.
    The validation accuracies are scripted (0.40, 0.75, 0.60: the best epoch is the middle
    one, neither the last nor the first) so that a trainer that kept the last epoch, or chose
    on anything else, fails; the test accuracy is that of best.pt's weights."""
    import bitflow.train.trainer as T

    calls: list[int] = []
    orig = T.evaluate
    scripted_val = [0.40, 0.75, 0.60]

    def spy(model, ds, device, batch_size=500):  # type: ignore[no-untyped-def]
        calls.append(len(ds))
        loss, acc = orig(model, ds, device, batch_size)
        if len(ds) == 300:  # validation
            acc = scripted_val[calls.count(300) - 1]
        return loss, acc

    monkeypatch.setattr(T, "evaluate", spy)
    out = tmp_path / "run"
    r = train(
        TrainConfig(
            model="bitflow_lenet",
            out=str(out),
            epochs=3,
            batch_size=32,
            limit_train=200,
            limit_test=16,
            val_fraction=0.005,
            progress=False,
            model_kwargs={"width": 4, "fc": 8},
        )
    )
    assert calls == [300, 300, 300, 16]
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    vals = [row["val_accuracy"] for row in rows]
    assert vals == scripted_val
    assert r["best_epoch"] == int(np.argmax(vals)) == 1
    best = torch.load(out / "best.pt", weights_only=True)
    last = torch.load(out / "last.pt", weights_only=True)
    assert best["epoch"] == 1 and last["epoch"] == 2
    # the one test evaluation used best.pt's weights, not the last epoch's
    model, _ = model_from_checkpoint(out / "best.pt")
    x, y = eval_arrays("fashion-mnist", 16)
    with torch.no_grad():
        pred = model.eval()(torch.from_numpy(x)).argmax(1).numpy()
    assert r["test_accuracy"] == float(np.mean(pred == y))


# ----------------------------------------------------------------------------- verify inputs


def test_verify_input_checks() -> None:
    from bitflow.convert import convert, verify

    model = create("bitflow_lenet", width=4, fc=8).eval()
    g = convert(model)
    x = np.zeros((2, 1, 28, 28), np.float32)
    with pytest.raises(ValueError, match=r"x must have shape \[N, C, H, W\]"):
        verify(model, g, x[0])
    with pytest.raises(ValueError, match=r"y must have shape \[2\]"):
        verify(model, g, x, np.zeros(3))
    with pytest.raises(ValueError, match="which the model does not have"):
        verify(torch.nn.Sequential(*list(model)[:3]), g, x)
    other = create(
        "bitflow_vgg_small", width=4, fc=8
    ).eval()  # layer '4' is not a binary layer there
    with pytest.raises(ValueError, match="has no input_quantizer to observe"):
        verify(other, g, x)
    op = next(o for o in g.ops if o.type == "bconv2d")
    op.attrs["input_encoding"] = "thermometer"
    with pytest.raises(ValueError, match="thermometer"):
        verify(model, g, x)
