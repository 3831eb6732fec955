"""``bitflow reproduce survey``: the survey's methods (Qin et al. 2020, Tables 3-4) trained,
deployed and compared in one table on Fashion-MNIST (issue 12).

Same backbone (default ``bitflow_vgg_small``, the VGG-small chain) and the same recipe for every
method; one row per method: W/A bits, test accuracy (mean +- sd over the seeds), the survey's
reported CIFAR-10 / ImageNet number (table and network named), deploy form, ``.bfn`` bytes,
engine ms per image (batch 1, 1 thread, median), speed-up over the full-precision twin in
PyTorch (batch 1, 1 thread) measured in the same run, and the verify result (PyTorch vs the
integer model: sign and prediction mismatches). Methods that cannot run on the engine yet
show why (:mod:`bitflow.methods`). Writes ``report.md``, ``report.json`` and
``accuracy_vs_latency.png`` in ``out``.

Trainings are cached like the other reproductions: a run whose ``result.json`` holds the same
configuration is reused, so an interrupted reproduction continues where it stopped.

**Records** (``records=DIR``, ``--records DIR``): the full table is far more compute than one
sitting (15 epochs x 60,000 images x 3 seeds x 21 rows per backbone), so every finished run
also leaves a small JSON record, ``DIR/<backbone>/<recipe>/<method>/seed<S>.json`` (accuracy,
seconds per epoch; for the first seed of the sitting that deploys the row the deploy result:
``.bfn`` bytes, verify counts, engine and PyTorch fp32 twin ms measured back to back, and the
CPU they ran on). A row is deployed once: a later sitting with other seeds takes the recorded
deploy (conversion and a 10,000-image verify cost minutes of a CPU the trainings need). Records
are meant to be committed: a later run with the same recipe takes a recorded run as done, so the
table grows over sittings with ``--methods`` / ``--seeds`` slices, and ``collect=True``
(``--collect``) writes the table from the records alone, a row counting the seeds it has.

**Jobs** (``jobs=N``, ``--jobs N``): the sitting's trainings run ``N`` at a time in worker
processes, each with ``cpu_count // N`` threads (the twins first, then the methods, kd after its
teacher); conversion, verification and the engine timings follow in this process once they are
done, on a quiet machine. Small models train faster as N one-thread runs than as one run on N
threads. Each training is the same call with the same seed as in a one-job sitting.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from .._io import atomic_write_json, write_report
from ..convert import UnsupportedLayerError
from .reproduce import _train

#: the full-precision twin of each supported backbone (same widths and block order)
TWINS = {"bitflow_vgg_small": "vgg_small", "bitflow_lenet": "lenet", "bireal_resnet20": "resnet20"}


def _timing_torch(model: Any, x1: np.ndarray, repeat: int) -> float:
    import torch

    from ..bench import measure

    prev = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        xt = torch.from_numpy(x1)
        model.eval()
        with torch.no_grad():
            return measure(lambda: model(xt), repeat=repeat, warmup=5).median_ms
    finally:
        torch.set_num_threads(prev)


def _deploy(
    ckpt: str, data: str, limit_test: int | None, out_file: Path, repeat: int
) -> dict[str, Any]:
    """Convert, write the ``.bfn``, verify against PyTorch and time the engine (batch 1, 1 thread)."""
    from ..bench import measure
    from ..convert import convert, verify
    from ..data import eval_arrays
    from ..engine import Engine
    from ..methods import prepare_for_deploy
    from ..train import model_from_checkpoint

    model, _ = model_from_checkpoint(ckpt)
    model = prepare_for_deploy(model)
    graph = convert(model)
    graph.save(str(out_file))
    x, y = eval_arrays(data, limit_test)
    v = verify(model, graph, x, y)
    eng = Engine(graph, threads=1)
    x1 = x[:1]
    ms = measure(lambda: eng.logits(x1), repeat=repeat, warmup=5).median_ms
    return {
        "bfn_bytes": out_file.stat().st_size,
        "engine_ms": ms,
        "sign_mismatches": v["sign_mismatches"],
        "prediction_mismatches": v["prediction_mismatches"],
        "prediction_mismatches_unexplained": v["prediction_mismatches_unexplained"],
        "float_ties": v["float_ties"],
        "near_threshold": v["near_threshold"]["count"],
        "accuracy_integer": v["accuracy_integer"],
        "verify_samples": v["samples"],
    }


class _Records:
    """The committed per-run records of one backbone and recipe (module docstring); ``None``
    directory: no records (every run is trained, nothing is written)."""

    def __init__(self, root: str | Path | None, recipe: dict[str, Any]) -> None:
        self.recipe = recipe
        slug = "e{}-n{}-t{}-w{}".format(
            recipe["epochs"] or "recipe",
            recipe["limit_train"] or "all",
            recipe["limit_test"] or "all",
            recipe["width"] or "default",
        )
        if "precision" in recipe:  # bfloat16 runs: a recipe of their own (float32 has no suffix)
            slug += "-p" + recipe["precision"]
        self.dir = Path(root) / recipe["backbone"] / slug if root is not None else None

    def path(self, name: str, seed: int) -> Path | None:
        return None if self.dir is None else self.dir / name.replace(" ", "_") / f"seed{seed}.json"

    def get(self, name: str, seed: int) -> dict[str, Any] | None:
        p = self.path(name, seed)
        if p is None or not p.exists():
            return None
        rec = json.loads(p.read_text())
        return rec if rec.get("recipe") == self.recipe else None  # another recipe: not this run

    def deployed(self, name: str) -> tuple[int, dict[str, Any]] | None:
        """``(seed, deploy)`` of the lowest seed of row ``name`` whose record of this recipe
        holds a deploy (a row is deployed once, from one seed), else None."""
        if self.dir is None:
            return None
        for p in sorted((self.dir / name.replace(" ", "_")).glob("seed*.json")):
            try:
                seed = int(p.stem[4:])
            except ValueError:
                continue
            rec = self.get(name, seed)
            if rec is not None and "deploy" in rec:
                return seed, rec["deploy"]
        return None

    def put(self, name: str, seed: int, rec: dict[str, Any]) -> None:
        p = self.path(name, seed)
        if p is not None:
            p.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_json(p, {**rec, "recipe": self.recipe})


def _finished_checkpoint(run_dir: Path, rec: dict[str, Any]) -> str | None:
    """The checkpoint of a finished training in ``run_dir`` whose result is the record ``rec``
    (same test accuracy and seconds per epoch), else None."""
    try:
        res = json.loads((run_dir / "result.json").read_text())
    except (OSError, ValueError):
        return None
    same = res.get("test_accuracy") == rec["test_accuracy"] and res.get(
        "seconds_per_epoch"
    ) == rec.get("seconds_per_epoch")
    ckpt = res.get("checkpoint")
    return str(ckpt) if same and ckpt and Path(ckpt).exists() else None


def _worker_init(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)


def _pool_train(run_dir: Path, kw: dict[str, Any]) -> dict[str, Any]:
    """One training in a worker process (module level: spawned workers import it)."""
    return _train(run_dir, **kw)


def _executor(jobs: int) -> Any:
    """The worker pool of a ``jobs > 1`` sitting: spawned processes (a forked child of a process
    that already ran PyTorch's thread pools can hang), ``cpu_count // jobs`` threads each."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    threads = max(1, (os.cpu_count() or 1) // jobs)
    return ProcessPoolExecutor(
        max_workers=jobs,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(threads,),
    )


def _run_pool(
    jobs: int,
    tasks: list[tuple[str, int, Path, dict[str, Any]]],
    done: Callable[[str, int, dict[str, Any]], None],
    log: Any,
) -> None:
    """Run ``tasks`` (name, seed, run directory, training arguments) ``jobs`` at a time; call
    ``done(name, seed, result)`` in this process as each finishes. The first failure cancels
    what has not started and is raised once the running ones end."""
    from concurrent.futures import FIRST_EXCEPTION, wait

    if not tasks:
        return
    ex = _executor(jobs)
    try:
        futs = {}
        for name, s, run_dir, kw in tasks:
            futs[ex.submit(_pool_train, run_dir, kw)] = (name, s)
            log(f"[survey] {name}, seed {s} (queued, {jobs} jobs)")
        pending = set(futs)
        while pending:
            finished, pending = wait(pending, return_when=FIRST_EXCEPTION)
            for f in finished:
                name, s = futs[f]
                r = f.result()  # raises the worker's exception
                log(f"[survey] {name}, seed {s}: test accuracy {r['test_accuracy']:.4f}")
                done(name, s, r)
    except BaseException:
        ex.shutdown(wait=True, cancel_futures=True)
        raise
    ex.shutdown(wait=True)


def _recipe_width(data: str, backbone: str) -> int | None:
    """The width the backbone's default recipe trains it at (``model_defaults``; the Bi-Real
    ResNet-20's 24), passed to the twin too so that both have the same channels; else None (the
    models' own default)."""
    from ..train.recipes import default_recipe_for, load_recipe

    recipe = load_recipe(default_recipe_for(data, model=backbone))
    w = recipe.model_defaults.get(backbone, {}).get("width")
    return int(w) if w is not None else None


def cpu_name() -> str:
    """The CPU a timing ran on (model name from /proc/cpuinfo where there is one)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _mean_sd(accs: list[float]) -> tuple[float | None, float | None]:
    if not accs:
        return None, None
    return float(np.mean(accs)), float(np.std(accs, ddof=1)) if len(accs) > 1 else 0.0


def reproduce_survey(
    out: str | Path = "runs/reproduce-survey",
    *,
    data: str = "fashion-mnist",
    quick: bool = False,
    seeds: tuple[int, ...] | None = None,
    methods_: list[str] | None = None,
    backbone: str = "bitflow_vgg_small",
    epochs: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    width: int | None = None,
    repeat: int = 50,
    precision: str = "auto",
    records: str | Path | None = None,
    collect: bool = False,
    jobs: int = 1,
    log: Any = print,
) -> dict[str, Any]:
    """Train every method (``methods_``, default all) on ``backbone`` and the full-precision
    twin, deploy what deploys, and write the comparison table.

    ``quick``: 1 seed, 2 epochs on 5,000 training samples, width 8, 2,000 test samples (all 20
    methods and the twin in well under 45 minutes on this shared 2-core machine: a width-16,
    10,000-sample epoch of the twin took 140 s under load, i.e. over 80 minutes in all); full: seeds 0, 1, 2, 15 epochs (the Fashion-MNIST recipe),
    all 60,000 samples and the width of the backbone's default recipe (its model default
    otherwise), the same for the twin. The arguments override either.
    ``precision``: the trainings' arithmetic (:class:`bitflow.train.recipes.Recipe`): ``"auto"``
    (default) is bfloat16 convolutions where the CPU computes them natively (AMX or AVX512-BF16:
    both CPUs this table was measured on; about 1.8x faster per step of the VGG-small chain than
    float32), else float32. Evaluation, verification and deployment are float32 either way. A
    bfloat16 table is a recipe of its own in the records (its directory ends in ``-pbf16``).
    ``records`` / ``collect``: the committed per-run records (module docstring).
    ``jobs``: trainings run that many at a time in worker processes (module docstring)."""
    import torch

    from .. import methods as M
    from ..models import create
    from ..train.trainer import resolve_precision

    if not data.startswith("fashion-mnist"):
        raise ValueError("bitflow reproduce survey runs on Fashion-MNIST (--data fashion-mnist)")
    if backbone not in TWINS:
        raise ValueError(f"backbone must be one of {sorted(TWINS)}, got {backbone!r}")
    if precision not in ("fp32", "bf16", "auto"):
        raise ValueError(f"precision must be fp32, bf16 or auto, got {precision!r}")
    precision = resolve_precision(precision, torch.device("cpu"))
    if not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs must be an integer >= 1, got {jobs!r}")
    if collect and records is None:
        raise ValueError("collect=True (--collect) writes the table from records: give records=DIR")
    names = methods_ or M.list_methods()
    for n in names:
        M.get_method(n)  # unknown names fail before any training
    seeds = seeds or ((0,) if quick else (0, 1, 2))
    epochs = epochs or (2 if quick else None)
    limit_train = limit_train or (5000 if quick else None)
    limit_test = limit_test or (2000 if quick else None)
    width = width or (8 if quick else _recipe_width(data, backbone))
    small: dict[str, Any] = {"width": width} if width else {}  # the backbone and its twin alike
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    recipe: dict[str, Any] = {
        "data": data,
        "backbone": backbone,
        "epochs": epochs,
        "limit_train": limit_train,
        "limit_test": limit_test,
        "width": width,
    }
    if precision != "fp32":  # float32 records predate the option: their recipe has no key
        recipe["precision"] = precision
    store = _Records(records, recipe)
    common: dict[str, Any] = {
        "data": data,
        "real_epochs": 0,  # the same recipe for every row: no real-valued warm-up (bireal backbone)
        "epochs": epochs,
        "limit_train": limit_train,
        "limit_test": limit_test,
        "precision": precision,
    }
    t_start = time.perf_counter()
    twin = TWINS[backbone]
    ckpts: dict[tuple[str, int], str] = {}  # checkpoints trained in this sitting

    fp_kw: dict[str, Any] = {"model": twin, "model_kwargs": dict(small), **common}

    def fp_train(s: int) -> dict[str, Any]:
        log(f"[survey] full-precision twin {twin}, seed {s}")
        r = _train(out / "fp" / f"seed{s}", seed=s, **fp_kw)
        ckpts["fp", s] = r["checkpoint"]
        return r

    pooled: dict[tuple[str, int], dict[str, Any]] = {}  # records of the runs the pool trained

    def record(name: str, s: int, r: dict[str, Any]) -> dict[str, Any]:
        rec = {"test_accuracy": r["test_accuracy"], "seconds_per_epoch": r["seconds_per_epoch"]}
        store.put(name, s, rec)
        return rec

    def pool_done(name: str, s: int, r: dict[str, Any]) -> None:
        ckpts[name, s] = r["checkpoint"]
        pooled[name, s] = record(name, s, r)

    def method_kwargs(name: str, s: int, teacher: str | None) -> dict[str, Any]:
        return {
            "model": backbone,
            "seed": s,
            "model_kwargs": dict(small),
            "method": name,
            "method_args": {"teacher": teacher} if name == "kd" else {},
            **common,
        }

    if jobs > 1 and not collect:
        # the sitting's trainings in the pool: the twins first (kd's teacher: a twin whose
        # record exists but whose checkpoint is not on disk is trained again, as below), then
        # every method run without a record
        def twin_on_disk(s: int) -> str | None:
            rec = store.get("fp", s)
            return _finished_checkpoint(out / "fp" / f"seed{s}", rec) if rec else None

        on_disk = {s: c for s in seeds if (c := twin_on_disk(s)) is not None}
        todo = [(n, s) for s in seeds for n in names if store.get(n, s) is None]
        fp_seeds = [
            s
            for s in seeds
            if store.get("fp", s) is None or (("kd", s) in todo and s not in on_disk)
        ]
        _run_pool(
            jobs,
            [("fp", s, out / "fp" / f"seed{s}", {**fp_kw, "seed": s}) for s in fp_seeds],
            pool_done,
            log,
        )
        for s, c in on_disk.items():  # twins recorded before this sitting, checkpoint on disk
            ckpts.setdefault(("fp", s), c)
        _run_pool(
            jobs,
            [
                (n, s, out / n / f"seed{s}", method_kwargs(n, s, ckpts.get(("fp", s))))
                for n, s in todo
            ],
            pool_done,
            log,
        )

    def run(name: str, s: int, train_fn: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
        """The record of one run: recorded, else trained now (and recorded), else None."""
        if (name, s) in pooled:
            return pooled[name, s]
        rec = store.get(name, s)
        if rec is not None:
            # its checkpoint, when an earlier sitting with this ``out`` left it: kd's teacher
            # and a deploy that sitting did not reach need no new training
            done = _finished_checkpoint(out / name / f"seed{s}", rec)
            if done is not None:
                ckpts.setdefault((name, s), done)
            return rec
        if collect:
            return None
        return record(name, s, train_fn())

    from ..data import eval_arrays

    x1, _ = eval_arrays(data, 1)
    fp_recs = [r for s in seeds if (r := run("fp", s, partial(fp_train, s))) is not None]
    fp_mean, fp_sd = _mean_sd([r["test_accuracy"] for r in fp_recs])
    shape = {"num_classes": 10, "in_channels": 1, "image_size": 28}
    fp_ms = _timing_torch(create(twin, **shape, **small), x1, repeat)  # random weights: same speed
    rows: list[dict[str, Any]] = [
        {
            "method": "full precision",
            "title": f"{twin} (PyTorch fp32)",
            "w_bits": 32,
            "a_bits": 32,
            "accuracy_mean": fp_mean,
            "accuracy_sd": fp_sd,
            "accuracies": [r["test_accuracy"] for r in fp_recs],
            "survey": "CIFAR-10 93.8 (Table 3, VGG-Small 32/32)",
            "deploy": "PyTorch fp32 baseline",
            "torch_fp32_ms": fp_ms,
            "engine_ms": None,
            "speedup": None,
            "bfn_bytes": None,
        }
    ]
    for name in names:
        m = M.get_method(name)

        def method_train(s: int, name: str = name) -> dict[str, Any]:
            teacher = None
            if name == "kd":  # the teacher: this seed's twin, trained in this sitting if needed
                teacher = ckpts.get(("fp", s)) or fp_train(s)["checkpoint"]
            log(f"[survey] {name}, seed {s}")
            r = _train(out / name / f"seed{s}", **method_kwargs(name, s, teacher))
            ckpts[name, s] = r["checkpoint"]
            return r

        recs = {s: r for s in seeds if (r := run(name, s, partial(method_train, s))) is not None}
        accs = [r["test_accuracy"] for r in recs.values()]
        mean, sd = _mean_sd(accs)
        row: dict[str, Any] = {
            "method": name,
            "title": m.title,
            "w_bits": m.bits[0],
            "a_bits": m.bits[1],
            "accuracy_mean": mean,
            "accuracy_sd": sd,
            "accuracies": accs,
            "survey": m.survey,
            "seconds_per_epoch": (
                float(np.mean([r["seconds_per_epoch"] for r in recs.values()])) if recs else None
            ),
            "deploy": m.deploy_text,
            "engine_ms": None,
            "speedup": None,
            "bfn_bytes": None,
        }
        s0 = seeds[0]
        if m.deployable and s0 in recs:
            dep = recs[s0].get("deploy")
            if dep is None and (prior := store.deployed(name)) is not None:
                dep = prior[1]  # deployed from another seed's run: once per row
            if dep is None and (name, s0) in ckpts:
                log(f"[survey] {name}: convert, verify, time the engine")
                try:
                    dep = _deploy(
                        ckpts[name, s0], data, limit_test, out / name / "model.bfn", repeat
                    )
                except UnsupportedLayerError as e:
                    # deployable on the chain backbones, but not this model (XNOR++ with a
                    # BatchNorm of both directions after a pool): the row says so, the table goes on
                    log(f"[survey] {name}: not deployable: {e}")
                    dep = {"refused": f"not on {backbone}: {str(e).split('; supported:')[0]}"}
                except (ValueError, RuntimeError) as e:
                    # a model the converter should take but could not (a converter bug, a
                    # corrupt checkpoint): the row names the error and the table goes on; the
                    # record keeps no deploy, so a later sitting with this --out (the
                    # checkpoint still on disk) deploys it again once the cause is fixed
                    log(f"[survey] {name}: deploy failed: {type(e).__name__}: {e}")
                    row["deploy"] = f"deploy failed: {type(e).__name__}: {e}"
                    dep = None
                else:  # the twin timed right after the engine: the speed-up of this sitting
                    dep["torch_fp32_ms"] = _timing_torch(create(twin, **shape, **small), x1, repeat)
                    dep["cpu"] = cpu_name()
                if dep is not None:
                    store.put(name, s0, {**recs[s0], "deploy": dep})
            if dep is not None and "refused" in dep:
                row["deploy"] = dep["refused"]
            elif dep is not None:
                row.update(dep)
                row["speedup"] = dep["torch_fp32_ms"] / dep["engine_ms"]
        rows.append(row)
    report = {
        "quick": quick,
        "backbone": backbone,
        "twin": twin,
        "seeds": list(seeds),
        "epochs": epochs,
        "limit_train": limit_train,
        "limit_test": limit_test,
        "width": width,
        "precision": precision,
        "records": None if store.dir is None else str(store.dir),
        "rows": rows,
        "seconds": time.perf_counter() - t_start,
    }
    text = format_report(report)
    write_report(out, "report.md", text, report)
    _plot(rows, out / "accuracy_vs_latency.png")
    report["text"] = text
    return report


def _plot(rows: list[dict[str, Any]], path: Path) -> None:
    from .plots import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in rows:
        ms = r.get("engine_ms") or r.get("torch_fp32_ms")
        if ms is None or r["accuracy_mean"] is None:
            continue
        ax.scatter(
            ms,
            100 * r["accuracy_mean"],
            color="tab:red" if r["method"] == "full precision" else "tab:blue",
        )
        ax.annotate(
            r["method"],
            (ms, 100 * r["accuracy_mean"]),
            fontsize=7,
            xytext=(3, 3),
            textcoords="offset points",
        )
    ax.set_xscale("log")
    ax.set_xlabel("ms per image (batch 1, 1 thread): engine, or PyTorch fp32 for the twin")
    ax.set_ylabel("test accuracy (%)")
    ax.set_title("Survey methods on Fashion-MNIST: accuracy vs latency")
    ax.grid(True, alpha=0.3)
    _save(fig, path)
    plt.close(fig)


def format_report(r: dict[str, Any]) -> str:
    seeds = len(r["seeds"])
    head = (
        f"Survey methods on Fashion-MNIST ({'quick, ' if r['quick'] else ''}backbone {r['backbone']}, width "
        f"{r['width'] or 'default'}, {r['epochs'] or 'recipe'} epochs, {r['limit_train'] or 'all'} training samples, "
        f"{r.get('precision', 'fp32')} training, {seeds} seed{'s' if seeds > 1 else ''})"
    )
    lines = [
        head,
        "",
        "| method | W/A | test acc. % (mean +- sd) | survey (CIFAR-10 / ImageNet) | deploy | .bfn bytes | engine ms | "
        "speed-up vs fp32 | verify: sign / pred. mismatches (unexplained; PyTorch float32 ties) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for x in r["rows"]:
        n_acc = len(x["accuracies"])
        acc = (
            "no run yet"
            if x["accuracy_mean"] is None
            else f"{100 * x['accuracy_mean']:.2f} +- {100 * x['accuracy_sd']:.2f}"
            + ("" if n_acc == seeds else f" ({n_acc} of {seeds} seeds)")
        )
        ms = (
            f"{x['engine_ms']:.3f}"
            if x.get("engine_ms")
            else (f"({x['torch_fp32_ms']:.3f} torch)" if x.get("torch_fp32_ms") else "-")
        )
        sp = f"{x['speedup']:.1f}x" if x.get("speedup") else "-"
        by = str(x["bfn_bytes"]) if x.get("bfn_bytes") else "-"
        ver = (
            f"{x['sign_mismatches']} / {x['prediction_mismatches']} "
            f"({x.get('prediction_mismatches_unexplained', '?')}; {x.get('float_ties', '?')})"
            if "sign_mismatches" in x
            else "-"
        )
        lines.append(
            f"| {x['method']} | {x['w_bits']}/{x['a_bits']} | {acc} | {x['survey']} | {x['deploy']} | {by} | {ms} | "
            f"{sp} | {ver} |"
        )
    lines.append("")
    lines.append(f"total {r['seconds'] / 60:.1f} min")
    return "\n".join(lines)
