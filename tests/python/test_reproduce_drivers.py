"""The reproduction drivers ``bitflow reproduce survey`` and ``bitflow reproduce mcn`` in the
fast suite: their tables, deployments and reports checked against independent facts.

Training is what must be small (a real one-epoch run reads and validates on thousands of
images, ~10 s each here, and the drivers run 3 to 11 of them; the end-to-end runs are the slow
tests of ``test_survey_methods.py`` / ``test_reproduce_mcn.py``). So the drivers' trainer
(``_train``) is replaced by :func:`_standin`, which builds the requested model exactly as
training would (``methods.build_model`` with the data's input shape, seeded), writes a real
checkpoint with its ``model_config`` and returns a result whose test accuracy and epoch time
are distinct per run. Everything after training runs for real: checkpoint loading, conversion,
``.bfn`` files, verification, engine timing, the tables and the reports.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from bitflow import methods as M
from bitflow.analysis import reproduce_mcn as RM
from bitflow.analysis import reproduce_survey as RS
from bitflow.convert import UnsupportedLayerError, convert
from bitflow.data import eval_arrays
from bitflow.ir import load_graph, run
from bitflow.train import model_from_checkpoint, save_checkpoint

FASHION = Path("/usr/share/datasets/fashion-mnist")
pytestmark = pytest.mark.skipif(
    not (FASHION / "t10k-images-idx3-ubyte.gz").exists(), reason="Fashion-MNIST not installed"
)


class _Trainer:
    """Stand-in for ``analysis.reproduce._train``: records every call, returns distinct numbers."""

    def __init__(self, edit: Any = None) -> None:
        self.calls: list[tuple[Path, dict[str, Any], dict[str, Any]]] = []
        self.edit = edit  # edit(model, kw): changes the "trained" weights before saving

    def __call__(self, out: Path, **kw: Any) -> dict[str, Any]:
        torch.manual_seed(int(kw.get("seed", 0)))
        # as the trainer builds it for Fashion-MNIST: the data's classes and input, then the
        # run's model options, then the method (if any)
        shape = {"num_classes": 10, "in_channels": 1, "image_size": 28}
        model = M.build_model(
            kw["model"],
            kw.get("method"),
            kw.get("method_args") or None,
            **{**shape, **kw["model_kwargs"]},
        )
        if self.edit is not None:
            self.edit(model, kw)
        out.mkdir(parents=True, exist_ok=True)
        ckpt = out / "best.pt"
        save_checkpoint(
            ckpt, {"model": model.state_dict(), "model_config": dict(model.bitflow_config)}
        )
        n = len(self.calls) + 1
        res = {"checkpoint": str(ckpt), "test_accuracy": n / 64, "seconds_per_epoch": 0.5 * n}
        (out / "result.json").write_text(json.dumps(res))  # as the real _train leaves it
        self.calls.append((out, kw, res))
        return res

    def runs(self, under: Path) -> list[dict[str, Any]]:
        return [res for out, _, res in self.calls if out.parent == under]


def _file_accuracy(bfn: Path, data: str, limit: int) -> float:
    """Accuracy of the saved model file on the evaluation images (numpy reference executor)."""
    x, y = eval_arrays(data, limit)
    return float(np.mean(np.asarray(run(load_graph(bfn), x)).argmax(1) == y))


def _tiny_survey(
    out: Path,
    names: list[str],
    seeds: tuple[int, ...],
    backbone: str = "bitflow_lenet",
    **kw: Any,
) -> dict[str, Any]:
    """``reproduce_survey`` on a width-2 backbone: 1 epoch, 32 / 16 images, 2 timings."""
    return RS.reproduce_survey(
        out,
        methods_=names,
        backbone=backbone,
        seeds=seeds,
        epochs=kw.pop("epochs", 1),
        limit_train=32,
        limit_test=16,
        width=kw.pop("width", 2),
        repeat=2,
        precision=kw.pop("precision", "fp32"),
        log=lambda m: None,
        **kw,
    )


def test_reproduce_survey_rows_are_the_runs_and_the_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tr = _Trainer()
    monkeypatch.setattr(RS, "_train", tr)
    names = ["bnn", "abc", "kd"]  # xnor-popcount, weighted binary branches, distilled from the twin
    r = _tiny_survey(tmp_path, names, (0, 1))
    assert [x["method"] for x in r["rows"]] == ["full precision", *names]
    rows = {x["method"]: x for x in r["rows"]}
    # every training: the same recipe, the twin for the fp row, the backbone with the method
    # for the others, the kd teacher is the twin's checkpoint of the same seed
    assert len(tr.calls) == 2 * (1 + len(names))
    for out, kw, _ in tr.calls:
        assert (kw["epochs"], kw["limit_train"], kw["limit_test"], kw["real_epochs"]) == (
            1,
            32,
            16,
            0,
        )
        assert kw["data"] == "fashion-mnist" and kw["model_kwargs"] == {"width": 2}
        assert kw["model"] == ("lenet" if out.parent.name == "fp" else "bitflow_lenet")
        assert kw.get("method") == (None if out.parent.name == "fp" else out.parent.name)
        assert out.name == f"seed{kw['seed']}"
    fp_ckpt = {
        kw["seed"]: res["checkpoint"] for out, kw, res in tr.calls if out.parent.name == "fp"
    }
    for out, kw, _ in tr.calls:
        if out.parent.name == "kd":
            assert kw["method_args"] == {"teacher": fp_ckpt[kw["seed"]]}
    # the accuracies of a row are its runs' test accuracies (distinct per run), mean and sd
    for key, sub in [("full precision", "fp"), *[(n, n) for n in names]]:
        want = [res["test_accuracy"] for res in tr.runs(tmp_path / sub)]
        assert rows[key]["accuracies"] == want, key
        assert rows[key]["accuracy_mean"] == pytest.approx(statistics.fmean(want), abs=1e-15)
        assert rows[key]["accuracy_sd"] == pytest.approx(statistics.stdev(want), abs=1e-15)
    assert rows["bnn"]["seconds_per_epoch"] == statistics.fmean(
        res["seconds_per_epoch"] for res in tr.runs(tmp_path / "bnn")
    )
    # titles, bits and deploy forms are the method registry's
    for n in names:
        m = M.get_method(n)
        assert (rows[n]["title"], rows[n]["w_bits"], rows[n]["a_bits"]) == (m.title, *m.bits)
    for n in names:
        row, bfn = rows[n], tmp_path / n / "model.bfn"
        assert row["deploy"] == M.DEPLOY_FORMS[M.get_method(n).deploy]
        # the file is the conversion of the first seed's checkpoint, and the row its size
        model, _ = model_from_checkpoint(tr.runs(tmp_path / n)[0]["checkpoint"])
        assert bfn.read_bytes() == convert(model).to_bytes()
        assert row["bfn_bytes"] == bfn.stat().st_size
        assert row["verify_samples"] == 16 and row["sign_mismatches"] == 0
        # the verify numbers are the converter's own verify() on the same checkpoint and images
        from bitflow.convert import verify
        from bitflow.data import eval_arrays

        xv, yv = eval_arrays("fashion-mnist", 16)
        v = verify(M.prepare_for_deploy(model), convert(model), xv, yv)
        want = (v["prediction_mismatches_unexplained"], v["float_ties"])
        assert (row["prediction_mismatches_unexplained"], row["float_ties"]) == want
        assert row["accuracy_integer"] == _file_accuracy(bfn, "fashion-mnist", 16)
        # the speed-up: the twin in PyTorch timed right after this row's engine, on this CPU
        assert row["speedup"] == row["torch_fp32_ms"] / row["engine_ms"]
        assert row["torch_fp32_ms"] > 0 and isinstance(row["cpu"], str) and row["cpu"]
    # the reports: JSON = the returned report, one markdown row per method with its numbers
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == json.loads(json.dumps({k: v for k, v in r.items() if k != "text"}))
    md = (tmp_path / "report.md").read_text()
    assert md == r["text"] + "\n"
    table = {
        ln.split(" | ")[0][2:]: ln.split(" | ") for ln in md.splitlines() if ln.startswith("| ")
    }
    for n in names:
        acc = rows[n]["accuracy_mean"]
        assert table[n][2].startswith(f"{100 * acc:.2f} +- "), table[n]
    assert all(table[n][5] == str(rows[n]["bfn_bytes"]) for n in names)
    for n in names:
        x = rows[n]
        assert table[n][8] == (
            f"{x['sign_mismatches']} / {x['prediction_mismatches']} "
            f"({x['prediction_mismatches_unexplained']}; {x['float_ties']}) |"
        ), table[n]
    assert (tmp_path / "accuracy_vs_latency.png").read_bytes()[:4] == b"\x89PNG"


def test_reproduce_survey_row_of_a_method_without_an_engine_form(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # none of the 20 built-in methods lacks an engine form, but methods.register takes user
    # methods: one registered for this test, BNN's quantizers with a deploy reason instead
    future = replace(M.get_method("bnn"), name="future", title="A future method", deploy="op X")
    assert not future.deployable
    monkeypatch.setitem(M._METHODS._items, "future", future)
    tr = _Trainer()
    monkeypatch.setattr(RS, "_train", tr)
    r = _tiny_survey(tmp_path, ["future"], (0,))
    row = r["rows"][1]
    # trained like every other row, not deployed: no file, no engine numbers, the reason shown
    assert row["method"] == "future" and row["accuracies"] == [
        tr.runs(tmp_path / "future")[0]["test_accuracy"]
    ]
    assert row["deploy"] == "not yet: op X"
    assert row["engine_ms"] is row["speedup"] is row["bfn_bytes"] is None
    assert "sign_mismatches" not in row and not (tmp_path / "future" / "model.bfn").exists()
    (line,) = [ln for ln in r["text"].splitlines() if ln.startswith("| future |")]
    assert line.split(" | ")[4:] == ["not yet: op X", "-", "-", "-", "- |"], line
    assert (tmp_path / "accuracy_vs_latency.png").exists()
    assert {x["method"]: x["deploy"] for x in M.describe()}["future"] == "not yet: op X"
    # and its checkpoint is refused by the deploy path with the reason
    model, _ = model_from_checkpoint(tr.runs(tmp_path / "future")[0]["checkpoint"])
    with pytest.raises(
        UnsupportedLayerError, match="'future' .*cannot run on the engine yet: op X"
    ):
        M.convert(model)


def test_reproduce_survey_goes_on_past_a_method_the_model_cannot_deploy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # XNOR++ deploys when the BatchNorm after a pooled XNOR++ conv keeps one direction; a run
    # whose BatchNorm decreases in one channel and increases in the others is refused by the
    # converter (the pool of the decisions would be an AND in some channels and an OR in
    # others); the table keeps its row, with the reason, and the rows after it
    def mixed_bn(model: torch.nn.Module, kw: dict[str, Any]) -> None:
        if kw.get("method") == "xnorpp":
            with torch.no_grad():
                for m in model.modules():
                    if isinstance(m, torch.nn.BatchNorm2d):
                        m.weight.abs_()
                        m.weight[0] = -1.0

    tr = _Trainer(mixed_bn)
    monkeypatch.setattr(RS, "_train", tr)
    r = _tiny_survey(tmp_path, ["xnorpp", "bnn"], (0,), backbone="bitflow_vgg_small")
    rows = {x["method"]: x for x in r["rows"]}
    model, _ = model_from_checkpoint(tr.runs(tmp_path / "xnorpp")[0]["checkpoint"])
    with pytest.raises(UnsupportedLayerError, match="one direction") as e:
        M.convert(model)
    want = str(e.value).split("; supported:")[0]
    assert rows["xnorpp"]["deploy"] == f"not on bitflow_vgg_small: {want}"
    assert rows["xnorpp"]["engine_ms"] is rows["xnorpp"]["speedup"] is None
    assert not (tmp_path / "xnorpp" / "model.bfn").exists()
    assert rows["bnn"]["engine_ms"] > 0 and rows["bnn"]["sign_mismatches"] == 0
    assert (tmp_path / "report.md").exists()


def test_reproduce_survey_goes_on_past_a_deploy_that_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # a conversion that raises (here a stand-in for a converter bug: the BNN+ alpha = 0 channel
    # refused before it was handled) costs that row its deploy, not the sitting: the row names
    # the error, the rows after it deploy, the record keeps no deploy, and the next sitting with
    # the same --out deploys the checkpoint left on disk
    rec, out = tmp_path / "records", tmp_path / "out"
    monkeypatch.setattr(RS, "_train", _Trainer())
    real = RS._deploy

    def failing(ckpt: str, *a: Any, **k: Any) -> dict[str, Any]:
        if "/xnor/" in ckpt.replace("\\", "/"):
            raise ValueError("layer '3': a converter bug")
        return real(ckpt, *a, **k)

    monkeypatch.setattr(RS, "_deploy", failing)
    r = _tiny_survey(out, ["xnor", "bnn"], (0,), records=rec)
    rows = {x["method"]: x for x in r["rows"]}
    assert rows["xnor"]["deploy"] == "deploy failed: ValueError: layer '3': a converter bug"
    assert rows["xnor"]["engine_ms"] is None and rows["bnn"]["sign_mismatches"] == 0
    d = rec / "bitflow_lenet" / "e1-n32-t16-w2"
    assert "deploy" not in json.loads((d / "xnor" / "seed0.json").read_text())
    assert "deploy failed" in (out / "report.md").read_text()
    monkeypatch.setattr(RS, "_deploy", real)
    again = {x["method"]: x for x in _tiny_survey(out, ["xnor"], (0,), records=rec)["rows"]}
    assert again["xnor"]["sign_mismatches"] == 0 and again["xnor"]["engine_ms"] > 0
    assert json.loads((d / "xnor" / "seed0.json").read_text())["deploy"]["bfn_bytes"] > 0


def test_reproduce_survey_jobs_train_each_run_once_twins_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``jobs=2``: every missing run trained exactly once with the arguments a one-job sitting
    passes (the pool here is threads, so the stand-in trainer is seen; the real one spawns
    processes, next test), the twins before any method, kd taught by its own seed's twin, a
    record per run, deploys after the pool; a second sitting trains nothing; the table is the
    one a one-job sitting writes from the same records."""
    from concurrent.futures import ThreadPoolExecutor

    rec, out = tmp_path / "records", tmp_path / "out"
    tr = _Trainer()
    monkeypatch.setattr(RS, "_train", tr)
    made: list[int] = []
    monkeypatch.setattr(
        RS, "_executor", lambda jobs: made.append(jobs) or ThreadPoolExecutor(max_workers=jobs)
    )
    r = _tiny_survey(out, ["bnn", "kd"], (0, 1), records=rec, jobs=2)
    assert made == [2, 2]  # one pool for the twins, one for the methods
    runs = [(o.parent.name, kw["seed"]) for o, kw, _ in tr.calls]
    assert sorted(runs) == sorted((n, s) for n in ("fp", "bnn", "kd") for s in (0, 1))
    assert {n for n, _ in runs[:2]} == {"fp"}  # the twins first
    for o, kw, _ in tr.calls:
        if o.parent.name == "kd":
            assert kw["method_args"] == {
                "teacher": str(out / "fp" / f"seed{kw['seed']}" / "best.pt")
            }
    # the same training arguments as a one-job sitting gives
    tr1 = _Trainer()
    monkeypatch.setattr(RS, "_train", tr1)
    _tiny_survey(tmp_path / "one", ["bnn", "kd"], (0, 1))
    key = lambda c: (c[0].parent.name, c[1]["seed"])  # noqa: E731
    one = {key(c): c[1] for c in tr1.calls}
    for c in tr.calls:
        kw, want = dict(c[1]), dict(one[key(c)])
        if "teacher" in (kw.get("method_args") or {}):
            kw["method_args"] = want["method_args"] = "teacher"  # a path under each sitting's out
        assert kw == want, key(c)
    d = rec / "bitflow_lenet" / "e1-n32-t16-w2"
    for o, kw, res in tr.calls:
        got = json.loads((d / o.parent.name / f"seed{kw['seed']}.json").read_text())
        assert got["test_accuracy"] == res["test_accuracy"]
    rows = {x["method"]: x for x in r["rows"]}
    assert rows["bnn"]["sign_mismatches"] == 0 and (out / "kd" / "model.bfn").exists()
    tr2 = _Trainer()
    monkeypatch.setattr(RS, "_train", tr2)
    again = _tiny_survey(tmp_path / "again", ["bnn", "kd"], (0, 1), records=rec, jobs=2)
    assert tr2.calls == []
    col = _tiny_survey(tmp_path / "col", ["bnn", "kd"], (0, 1), records=rec, collect=True)
    strip = lambda rs: [{k: v for k, v in x.items() if k != "torch_fp32_ms"} for x in rs]  # noqa: E731
    assert strip(again["rows"]) == strip(col["rows"]) == strip(r["rows"])
    # without records: the pool's runs are the table's (nothing trained twice)
    tr3 = _Trainer()
    monkeypatch.setattr(RS, "_train", tr3)
    norec = _tiny_survey(tmp_path / "norec", ["bnn"], (0,), jobs=2)
    assert sorted(o.parent.name for o, _, _ in tr3.calls) == ["bnn", "fp"]
    assert {x["method"]: x for x in norec["rows"]}["bnn"]["accuracies"] == [
        tr3.runs(tmp_path / "norec" / "bnn")[0]["test_accuracy"]
    ]
    with pytest.raises(ValueError, match="jobs"):
        _tiny_survey(tmp_path / "bad", ["bnn"], (0,), jobs=0)


@pytest.mark.slow  # ~1 minute idle, 2.5 under load: real trainings and spawned interpreters
def test_reproduce_survey_jobs_spawn_real_trainings(tmp_path: Path) -> None:
    """The real pool (spawned worker processes, real trainings of a width-2 LeNet on 32 images):
    the same accuracies as the same runs trained in this process, one job."""
    two = _tiny_survey(tmp_path / "two", ["bnn", "xnor"], (0,), jobs=2)
    one = _tiny_survey(tmp_path / "one", ["bnn", "xnor"], (0,))
    assert [x["accuracies"] for x in two["rows"]] == [x["accuracies"] for x in one["rows"]]
    for n in ("fp", "bnn", "xnor"):
        assert (tmp_path / "two" / n / "seed0" / "best.pt").exists()


def test_reproduce_survey_records_make_the_table_grow_over_sittings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every finished run leaves a record; a later sitting with the same recipe takes recorded
    runs as done (no training), trains only what is missing (kd's teacher too, when its
    checkpoint is not at hand), and collect=True writes the table from the records alone."""
    rec = tmp_path / "records"
    tr = _Trainer()
    monkeypatch.setattr(RS, "_train", tr)
    first = _tiny_survey(tmp_path / "a", ["bnn", "kd"], (0, 1), records=rec)
    d = rec / "bitflow_lenet" / "e1-n32-t16-w2"
    files = sorted(str(p.relative_to(d)) for p in d.rglob("*.json"))
    assert files == [f"{n}/seed{s}.json" for n in ("bnn", "fp", "kd") for s in (0, 1)]
    r0 = json.loads((d / "bnn" / "seed0.json").read_text())
    assert r0["recipe"]["epochs"] == 1 and r0["recipe"]["backbone"] == "bitflow_lenet"
    row = {x["method"]: x for x in first["rows"]}["bnn"]
    assert r0["test_accuracy"] == row["accuracies"][0]
    assert r0["deploy"]["engine_ms"] == row["engine_ms"] and "deploy" not in json.loads(
        (d / "bnn" / "seed1.json").read_text()
    )
    # 2. a new sitting (nothing on disk but the records): nothing trained, the same table
    tr2 = _Trainer()
    monkeypatch.setattr(RS, "_train", tr2)
    again = _tiny_survey(tmp_path / "b", ["bnn", "kd"], (0, 1), records=rec)
    assert tr2.calls == []
    assert again["rows"][1:] == first["rows"][1:]  # every method row: from the records
    assert again["rows"][0]["accuracies"] == first["rows"][0]["accuracies"]
    # 3. one run missing: collect shows the row with the seeds it has, and trains nothing
    (d / "kd" / "seed1.json").unlink()
    col = _tiny_survey(tmp_path / "c", ["bnn", "kd"], (0, 1), records=rec, collect=True)
    assert tr2.calls == []
    kd = {x["method"]: x for x in col["rows"]}["kd"]
    assert kd["accuracies"] == [first["rows"][2]["accuracies"][0]]
    assert "(1 of 2 seeds)" in next(
        ln for ln in col["text"].splitlines() if ln.startswith("| kd |")
    )
    # 4. a sitting that runs it: kd seed 1 and, for its teacher, the twin of seed 1 (its record
    # exists, its checkpoint does not)
    _tiny_survey(tmp_path / "d", ["bnn", "kd"], (0, 1), records=rec)
    trained = sorted((out.parent.name, kw["seed"]) for out, kw, _ in tr2.calls)
    assert trained == [("fp", 1), ("kd", 1)]
    kd_kw = next(kw for out, kw, _ in tr2.calls if out.parent.name == "kd")
    assert kd_kw["method_args"] == {"teacher": tr2.runs(tmp_path / "d" / "fp")[0]["checkpoint"]}
    # 5. another recipe never takes these records: neither from its own directory nor a record
    # whose recipe differs at this path
    tr3 = _Trainer()
    monkeypatch.setattr(RS, "_train", tr3)
    _tiny_survey(tmp_path / "e", ["bnn"], (0,), records=rec, epochs=2)
    assert len(tr3.calls) == 2  # the twin and bnn, trained
    stale = json.loads((d / "bnn" / "seed0.json").read_text())
    stale["recipe"]["data"] = "fashion-mnist:other"
    (d / "bnn" / "seed0.json").write_text(json.dumps(stale))
    _tiny_survey(tmp_path / "g", ["bnn"], (0,), records=rec)
    assert [(out.parent.name, kw["seed"]) for out, kw, _ in tr3.calls[2:]] == [("bnn", 0)]
    with pytest.raises(ValueError, match="records"):
        _tiny_survey(tmp_path / "f", ["bnn"], (0,), collect=True)


def test_reproduce_survey_takes_up_an_interrupted_sitting(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A sitting stopped after a training but before its deploy (the record has no deploy),
    then run again with the same ``out``: the finished checkpoint on disk is deployed, and kd's
    teacher is the twin's checkpoint on disk, with nothing trained again; a result on disk that
    is not the record's run is not taken."""
    rec, out = tmp_path / "records", tmp_path / "out"
    tr = _Trainer()
    monkeypatch.setattr(RS, "_train", tr)
    first = _tiny_survey(out, ["bnn"], (0,), records=rec)
    d = rec / "bitflow_lenet" / "e1-n32-t16-w2"
    r = json.loads((d / "bnn" / "seed0.json").read_text())
    dep = r.pop("deploy")
    (d / "bnn" / "seed0.json").write_text(json.dumps(r))  # stopped before the deploy
    n = len(tr.calls)
    again = _tiny_survey(out, ["bnn", "kd"], (0,), records=rec)
    assert [(o.parent.name, kw["seed"]) for o, kw, _ in tr.calls[n:]] == [("kd", 0)]
    assert tr.calls[-1][1]["method_args"] == {"teacher": str(out / "fp" / "seed0" / "best.pt")}
    redone = json.loads((d / "bnn" / "seed0.json").read_text())["deploy"]
    assert redone["bfn_bytes"] == dep["bfn_bytes"] and redone["sign_mismatches"] == 0
    assert {x["method"]: x for x in again["rows"]}["bnn"]["bfn_bytes"] == first["rows"][1][
        "bfn_bytes"
    ]
    # another run's result in the twin's directory: not the record's, so the twin is retrained
    res = json.loads((out / "fp" / "seed0" / "result.json").read_text())
    res["test_accuracy"] += 0.25
    (out / "fp" / "seed0" / "result.json").write_text(json.dumps(res))
    (d / "kd" / "seed0.json").unlink()
    n = len(tr.calls)
    _tiny_survey(out, ["kd"], (0,), records=rec)
    assert [o.parent.name for o, _, _ in tr.calls[n:]] == ["fp", "kd"]


def test_reproduce_survey_bf16_is_a_recipe_of_its_own(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """bfloat16 trainings get the precision passed to every training and a records directory of
    their own (``-pbf16``); the float32 records keep the directory and recipe they had before the
    option existed (no precision key), so neither sitting takes the other's runs."""
    rec = tmp_path / "records"
    tr = _Trainer()
    monkeypatch.setattr(RS, "_train", tr)
    _tiny_survey(tmp_path / "a", ["bnn"], (0,), records=rec, precision="fp32")
    _tiny_survey(tmp_path / "b", ["bnn"], (0,), records=rec, precision="bf16")
    assert [kw["precision"] for _, kw, _ in tr.calls] == ["fp32", "fp32", "bf16", "bf16"]
    base = rec / "bitflow_lenet"
    assert sorted(p.name for p in base.iterdir()) == ["e1-n32-t16-w2", "e1-n32-t16-w2-pbf16"]
    r32 = json.loads((base / "e1-n32-t16-w2" / "bnn" / "seed0.json").read_text())
    r16 = json.loads((base / "e1-n32-t16-w2-pbf16" / "bnn" / "seed0.json").read_text())
    assert "precision" not in r32["recipe"] and r16["recipe"]["precision"] == "bf16"
    # each sitting again: both recorded, nothing trained; the report says which arithmetic
    n = len(tr.calls)
    again = _tiny_survey(tmp_path / "c", ["bnn"], (0,), records=rec, precision="bf16")
    assert len(tr.calls) == n and "bf16 training" in again["text"]
    # auto: what this CPU computes natively (the trainer's own rule), recorded as such
    from bitflow.train.trainer import native_bf16

    _tiny_survey(tmp_path / "e", ["bnn"], (0,), records=rec, precision="auto")
    assert len(tr.calls) == n  # recorded under the resolved precision: nothing trained
    col = _tiny_survey(tmp_path / "f", ["bnn"], (0,), records=rec, precision="auto", collect=True)
    assert ("bf16 training" if native_bf16(torch.device("cpu")) else "fp32 training") in col["text"]
    with pytest.raises(ValueError, match="precision"):
        _tiny_survey(tmp_path / "d", ["bnn"], (0,), precision="half")


def test_reproduce_survey_full_width_is_the_recipes_for_backbone_and_twin(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # without a width the backbone trains at its default recipe's width (the Bi-Real recipe's
    # model_defaults: 24), and the twin at the same, so that the speed-up compares equal channels
    assert RS._recipe_width("fashion-mnist", "bireal_resnet20") == 24
    assert RS._recipe_width("fashion-mnist", "bitflow_vgg_small") is None
    tr = _Trainer()
    monkeypatch.setattr(RS, "_train", tr)
    _tiny_survey(tmp_path, ["bnn"], (0,), backbone="bireal_resnet20", width=None)
    assert [(out.parent.name, kw["model_kwargs"]) for out, kw, _ in tr.calls] == [
        ("fp", {"width": 24}),
        ("bnn", {"width": 24}),
    ]


def test_reproduce_survey_refuses_what_it_cannot_run(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="Fashion-MNIST"):
        RS.reproduce_survey(tmp_path, data="folder:/nowhere")
    with pytest.raises(ValueError, match="backbone must be one of"):
        RS.reproduce_survey(tmp_path, backbone="resnet18")
    with pytest.raises(KeyError, match="valid names"):
        RS.reproduce_survey(tmp_path, methods_=["bnn", "nope"])
    assert not any(tmp_path.iterdir())  # nothing trained or written before the checks


def test_reproduce_mcn_tables_are_the_runs_and_the_models(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mcn_tiny: Any
) -> None:
    tr = _Trainer()
    monkeypatch.setattr(RM, "_train", tr)
    r = RM.reproduce_mcn(tmp_path, **mcn_tiny.kwargs, limit_train=32, limit_test=16)
    by_out = {out.relative_to(tmp_path).as_posix(): (kw, res) for out, kw, res in tr.calls}
    assert len(by_out) == 4 + 7  # four Table II models at one width, seven Table III rows
    for kw, _ in by_out.values():
        assert (kw["epochs"], kw["limit_train"], kw["limit_test"], kw["seed"]) == (1, 32, 16, 0)
    (row,) = r["table2"]
    mcn_tiny.check_table2_row(row)  # counts of the checkpoints' models, binarized ones by hand
    for key, model in RM.TABLE2_MODELS:
        kw, res = by_out[f"t2/2-2-2-4/{key}"]
        x = row["models"][key]
        assert (x["model"], kw["model"]) == (model, model)
        assert kw["model_kwargs"] == {"widths": [2, 2, 2, 4], "depth": 8}
        assert x["test_accuracy"] == res["test_accuracy"]
        assert x["seconds_per_epoch"] == res["seconds_per_epoch"]
        assert x["checkpoint"] == res["checkpoint"]
    t3 = r["table3"]
    keys = ["mcn1", "mcn", "mcn1_u8", "float", "binaryconnect", "bnn", "xnor"]
    assert [x["key"] for x in t3] == keys
    for x in t3:
        kw, res = by_out[f"t3/{x['key']}"]
        assert x["test_accuracy"] == res["test_accuracy"], x["key"]
        assert tuple(x["paper"]) == RM.PAPER_TABLE3.get(x["key"], (None, None))
        if x["key"] in ("binaryconnect", "bnn", "xnor"):
            assert (kw["model"], kw["method"], kw["model_kwargs"]) == (
                "bitflow_lenet",
                x["key"],
                {"width": 2, "fc": 8},
            )
    t3k = {x["key"]: x for x in t3}
    assert by_out["t3/mcn1_u8"][0]["model_kwargs"] == {"widths": [2, 2, 2, 2], "act": "u8"}
    assert t3k["float"]["binary_params"] == 0
    # the three 1-bit-weight lenets share one backbone: the same binarized weights
    assert len({t3k[k]["binary_params"] for k in ("binaryconnect", "bnn", "xnor")}) == 1
    # the deployed row: the conversion of its checkpoint, verified on limit_test images
    d = t3k["mcn1_u8"]["deploy"]
    model, _ = model_from_checkpoint(by_out["t3/mcn1_u8"][1]["checkpoint"])
    g = convert(model)
    assert d["ops"] == sorted({op.type for op in g.ops}) and d["mode"] == g.mode
    assert d["samples"] == 16 and d["sign_mismatches"] == 0
    x, y = eval_arrays("fashion-mnist", 16)
    assert d["accuracy_integer"] == float(np.mean(np.asarray(run(g, x)).argmax(1) == y))
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved == json.loads(json.dumps({k: v for k, v in r.items() if k != "text"}))
    md = (tmp_path / "report.md").read_text()
    assert md == r["text"] + "\n"
    (line,) = [ln for ln in md.splitlines() if ln.startswith("| 2-2-2-4 | 8 |")]
    assert f"| {row['models']['wrn']['params']:,} |" in line
    assert f"{100 * row['models']['mcn1']['test_accuracy']:.2f} \\| -" in line
    assert (tmp_path / "mcn_tables.png").read_bytes()[:4] == b"\x89PNG"


def test_reproduce_survey_cli_passes_the_recipe_options(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``bitflow reproduce survey --limit-train N --width W --epochs E`` reaches the driver as
    that recipe (a shorter one for the ResNet-20 backbone); a non-positive count is refused."""
    from bitflow.cli import main

    seen: dict = {}

    def fake(out: str, **kw: object) -> dict:
        seen.update(kw, out=out)
        return {"text": "table"}

    monkeypatch.setattr(RS, "reproduce_survey", fake)
    argv = ["reproduce", "survey", "--backbone", "bireal_resnet20", "--out", str(tmp_path)]
    rc = main([*argv, "--limit-train", "20000", "--width", "16", "--epochs", "10"])
    assert rc == 0
    assert (seen["limit_train"], seen["width"], seen["epochs"]) == (20000, 16, 10)
    assert seen["backbone"] == "bireal_resnet20" and seen["out"] == str(tmp_path)
    main([*argv])
    assert (seen["limit_train"], seen["width"], seen["epochs"]) == (None, None, None)
    with pytest.raises(SystemExit):
        main([*argv, "--limit-train", "0"])


def test_reproduce_survey_deploys_a_row_once_across_sittings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row is converted, verified and timed once: a later sitting that adds another seed
    (``--seeds 1``) takes the deploy recorded with seed 0 instead of deploying again."""
    tr = _Trainer()
    monkeypatch.setattr(RS, "_train", tr)
    deploys: list[str] = []
    real = RS._deploy

    def counting(ckpt: str, *a: Any, **k: Any) -> Any:
        deploys.append(ckpt)
        return real(ckpt, *a, **k)

    monkeypatch.setattr(RS, "_deploy", counting)
    rec = tmp_path / "records"
    r0 = _tiny_survey(tmp_path / "s0", ["bnn"], (0,), records=rec)
    assert len(deploys) == 1
    r1 = _tiny_survey(tmp_path / "s1", ["bnn"], (1,), records=rec)
    assert len(deploys) == 1 and len(tr.calls) == 4  # twin + bnn, per seed
    row0 = next(x for x in r0["rows"] if x["method"] == "bnn")
    row1 = next(x for x in r1["rows"] if x["method"] == "bnn")
    assert row1["bfn_bytes"] == row0["bfn_bytes"] and row1["engine_ms"] == row0["engine_ms"]
    assert row1["accuracies"] == [tr.calls[3][2]["test_accuracy"]]
    seed1 = json.loads(next(rec.rglob("bnn/seed1.json")).read_text())
    assert "deploy" not in seed1


def test_a_run_on_disk_is_taken_only_if_it_is_the_same_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The drivers take a finished run in their ``--out`` directory as done and resume an
    interrupted one. A run with the same config but an older definition of its method is not
    that run: BinaryConnect stochastic's recipe gained precise BN and its layers Glorot's range
    (both with the same ``TrainConfig``), and a sitting took the old run's 18.29 % as the new
    method's. A real one-epoch training first; then the definition changes (the method's recipe,
    a default option) must train again, from the start."""
    import bitflow.train as BT
    from bitflow.analysis import reproduce as R
    from bitflow.train import trainer as T

    kw: dict[str, Any] = {
        "model": "bitflow_lenet",
        "data": "fashion-mnist",
        "epochs": 1,
        "limit_train": 64,
        "limit_test": 16,
        "seed": 0,
        "model_kwargs": {"width": 2, "fc": 8},
        "method": "binaryconnect_stochastic",
        "precision": "fp32",
    }
    first = R._train(tmp_path, **kw)
    assert first["recipe_values"]["precise_bn"] == 10_000
    assert first["model_config"]["method_args"] == {"glorot": True}
    calls: list[bool] = []

    def fake_train(cfg: Any) -> dict[str, Any]:
        calls.append(cfg.resume)
        return {"trained": True}

    monkeypatch.setattr(BT, "train", fake_train)
    result = (tmp_path / "result.json").read_text()
    assert R._train(tmp_path, **kw) == first and calls == []  # the same run: taken as done
    (tmp_path / "result.json").unlink()  # interrupted after its last checkpoint: resumed
    assert R._train(tmp_path, **kw) == {"trained": True} and calls == [True]
    real_recipe, real_args = T.method_recipe, M.method_args
    changes = [  # the method's recipe; a method option's default (the run's config is the same)
        (T, "method_recipe", lambda n: {**real_recipe(n), "precise_bn": 5_000}),
        (M, "method_args", lambda n, g=None: {**real_args(n, g), "glorot": False}),
    ]
    for module, name, changed in changes:
        with monkeypatch.context() as mp:
            mp.setattr(module, name, changed)
            for finished in (True, False):  # finished or interrupted: trained from the start
                if finished:
                    (tmp_path / "result.json").write_text(result)
                else:
                    (tmp_path / "result.json").unlink()
                calls.clear()
                assert R._train(tmp_path, **kw) == {"trained": True} and calls == [False]
