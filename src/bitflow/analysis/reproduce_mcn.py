"""``bitflow reproduce mcn``: Fashion-MNIST analogues of the MCN paper's Tables II and III
(Wang et al., "Modulated Convolutional Networks"), issue 11.

- **Table II** (CIFAR-10, 20-layer WRN vs U-MCN vs MCN vs MCN-1 at four widths): the same four
  models (``wrn``, ``umcn_wrn``, ``mcn_wrn``, ``mcn1_wrn``) trained with one recipe at the
  chosen widths; per row the real parameter counts of the trained models (all parameters, and
  the binarized ones, ``MCNNet.binary_parameters()``: Table II's column) and the test
  accuracies, the paper's numbers beside them. A second part counts the binarized parameters of
  the paper's own four settings (depth 20, RGB input) without training.
- **Table III** (MNIST column; the CIFAR-10 one printed for reference): the MNIST-style net
  (``mcn_mnist``: four MCconv + FC) as MCN and MCN-1, its full-precision twin, BinaryConnect /
  BNN / XNOR-Net from the zoo (``bitflow_lenet`` with ``--method``, the same recipe; a different
  backbone, said in the table), plus bitflow's W1/A8 MCN-1 (``act=u8``, ours), converted and
  verified against PyTorch.

Writes ``report.md``, ``report.json`` and ``mcn_tables.png`` in ``out``; trainings are cached
(a run whose ``result.json`` holds the same configuration is reused).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from .._io import write_report
from .reproduce import _train

#: Table II of the paper (CIFAR-10, 20 layers): widths -> parameters (M) and accuracies (%)
PAPER_TABLE2: dict[tuple[int, int, int, int], dict[str, float | None]] = {
    (16, 16, 32, 64): {"params_m": 1.1, "wrn": 92.31, "umcn": 93.69, "mcn": 92.08, "mcn1": 92.10},
    (16, 32, 64, 128): {"params_m": 4.3, "wrn": None, "umcn": 94.88, "mcn": 93.98, "mcn1": 93.94},
    (32, 64, 128, 256): {"params_m": 17.1, "wrn": None, "umcn": 95.50, "mcn": 95.13, "mcn1": 95.33},
    (64, 64, 128, 256): {
        "params_m": 17.2,
        "wrn": 95.75,
        "umcn": 95.72,
        "mcn": 95.30,
        "mcn1": 95.34,
    },
}
#: Table III of the paper: (MNIST, CIFAR-10) accuracy (%) per method, None where it has "-"
PAPER_TABLE3: dict[str, tuple[float | None, float | None]] = {
    "mcn1": (None, 95.47),
    "mcn": (99.52, 95.39),
    "binaryconnect": (98.99, 91.73),
    "bnn": (98.60, 89.85),
    "xnor": (None, 89.83),
}
TABLE2_MODELS = (("wrn", "wrn"), ("umcn", "umcn_wrn"), ("mcn", "mcn_wrn"), ("mcn1", "mcn1_wrn"))


def _counts(model: Any) -> dict[str, int]:
    """All parameters and the binarized ones: elements of every ``C^`` (MCN), the weights of
    the 1-bit-weight layers (``BinaryConv2d`` / ``BinaryLinear``: BinaryConnect, BNN, XNOR), 0
    for float models."""
    from ..nn import BinaryConv2d, BinaryLinear

    total = sum(int(p.numel()) for p in model.parameters())
    if hasattr(model, "binary_parameters"):
        binary = int(model.binary_parameters())
    else:
        binary = sum(
            int(m.weight.numel())
            for m in model.modules()
            if isinstance(m, (BinaryConv2d, BinaryLinear))
            and int(getattr(m.weight_quantizer, "bits", 32)) == 1
        )
    return {"params": total, "binary_params": binary}


def paper_width_counts(depth: int = 20) -> list[dict[str, Any]]:
    """Binarized parameters of ``mcn_wrn`` at the paper's four Table II settings (RGB, depth 20)."""
    from ..models import create

    rows = []
    for w, ref in PAPER_TABLE2.items():
        m: Any = create("mcn_wrn", in_channels=3, image_size=32, depth=depth, widths=w)
        rows.append(
            {
                "widths": "-".join(map(str, w)),
                "binary_params": int(m.binary_parameters()),
                "paper_m": ref["params_m"],
            }
        )
    return rows


def _deploy(ckpt: str, data: str, limit_test: int | None) -> dict[str, Any]:
    from ..convert import convert, verify
    from ..data import eval_arrays
    from ..train import model_from_checkpoint

    model, _ = model_from_checkpoint(ckpt)
    graph = convert(model)
    x, y = eval_arrays(data, limit_test)
    v = verify(model, graph, x, y)
    ops = sorted({op.type for op in graph.ops})
    return {
        "mode": graph.mode,
        "ops": ops,
        "accuracy_integer": v["accuracy_integer"],
        "sign_mismatches": v["sign_mismatches"],
        "signs_compared": v["signs_compared"],
        "prediction_mismatches": v["prediction_mismatches"],
        "prediction_mismatches_unexplained": v["prediction_mismatches_unexplained"],
        "near_threshold": v["near_threshold"]["count"],
        "samples": v["samples"],
    }


def reproduce_mcn(
    out: str | Path = "runs/reproduce-mcn",
    *,
    data: str = "fashion-mnist",
    quick: bool = False,
    seed: int = 0,
    epochs: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    widths: list[tuple[int, int, int, int]] | None = None,
    depth: int | None = None,
    mnist_widths: tuple[int, int, int, int] | None = None,
    lenet: dict[str, Any] | None = None,
    paper_counts: bool = True,
    log: Any = print,
) -> dict[str, Any]:
    """Train the Table II and Table III models and write the report (module docstring).

    ``quick``: 1 epoch on 2,000 training samples, 1,000 test samples, WRN depth 8 at widths
    4-4-8-16 (x K = 4 planes: 16-16-32-64 channels), ``mcn_mnist`` widths 4-8-16-32, the lenet
    backbone at width 16 (every model in well under 30 minutes here); full: the recipe's epochs,
    all samples, depth 20 at 16-16-32-64 and 16-32-64-128, ``mcn_mnist`` 8-16-32-64, lenet
    defaults. The arguments override either. ``paper_counts``: count the binarized parameters
    of the paper's four settings (builds the 1-17 M parameter models, ~30 s here)."""
    if not data.startswith("fashion-mnist"):
        raise ValueError("bitflow reproduce mcn runs on Fashion-MNIST (--data fashion-mnist)")
    epochs = epochs or (1 if quick else None)
    limit_train = limit_train or (2000 if quick else None)
    limit_test = limit_test or (1000 if quick else None)
    widths = widths or ([(4, 4, 8, 16)] if quick else [(16, 16, 32, 64), (16, 32, 64, 128)])
    depth = depth or (8 if quick else 20)
    mnist_widths = mnist_widths or ((4, 8, 16, 32) if quick else (8, 16, 32, 64))
    lenet = lenet if lenet is not None else ({"width": 16} if quick else {})
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    common: dict[str, Any] = {
        "data": data,
        "epochs": epochs,
        "limit_train": limit_train,
        "limit_test": limit_test,
        "seed": seed,
    }
    t0 = time.perf_counter()
    from ..train import model_from_checkpoint

    def run(sub: str, model: str, kwargs: dict[str, Any], **extra: Any) -> dict[str, Any]:
        log(f"[mcn] {sub}: {model} {kwargs} {extra}")
        r = _train(out / sub, model=model, model_kwargs=kwargs, **common, **extra)
        m, _ = model_from_checkpoint(r["checkpoint"])
        return {
            "model": model,
            "kwargs": kwargs,
            "test_accuracy": r["test_accuracy"],
            "seconds_per_epoch": r["seconds_per_epoch"],
            "checkpoint": r["checkpoint"],
            **_counts(m),
        }

    table2 = []
    for w in widths:
        wk = {"widths": list(w), "depth": depth}
        row: dict[str, Any] = {"widths": "-".join(map(str, w)), "depth": depth, "models": {}}
        for key, model in TABLE2_MODELS:
            row["models"][key] = run(f"t2/{row['widths']}/{key}", model, dict(wk))
        ref = PAPER_TABLE2.get(tuple(w))  # type: ignore[arg-type]
        row["paper"] = ref
        table2.append(row)

    mk = {"widths": list(mnist_widths)}
    table3: list[dict[str, Any]] = []
    for key, title, model, kw, method in (
        ("mcn1", "MCN-1 (W1/A32)", "mcn1_mnist", dict(mk), None),
        ("mcn", "MCN (W1/A32)", "mcn_mnist", dict(mk), None),
        ("mcn1_u8", "MCN-1 W1/A8 (bitflow's, deployed)", "mcn1_mnist", {**mk, "act": "u8"}, None),
        ("float", "full-precision twin", "mcn_mnist_float", dict(mk), None),
        (
            "binaryconnect",
            "BinaryConnect (bitflow_lenet)",
            "bitflow_lenet",
            dict(lenet),
            "binaryconnect",
        ),
        ("bnn", "BNN (bitflow_lenet)", "bitflow_lenet", dict(lenet), "bnn"),
        ("xnor", "XNOR-Net (bitflow_lenet)", "bitflow_lenet", dict(lenet), "xnor"),
    ):
        extra = {"method": method} if method else {}
        r = run(f"t3/{key}", model, kw, **extra)
        r.update({"key": key, "title": title, "paper": PAPER_TABLE3.get(key, (None, None))})
        if key == "mcn1_u8":
            log("[mcn] t3/mcn1_u8: convert and verify")
            r["deploy"] = _deploy(r["checkpoint"], data, limit_test)
        table3.append(r)

    report = {
        "quick": quick,
        "data": data,
        "seed": seed,
        "epochs": epochs,
        "limit_train": limit_train,
        "limit_test": limit_test,
        "table2": table2,
        "table2_paper_widths": paper_width_counts() if paper_counts else [],
        "table3": table3,
        "seconds": time.perf_counter() - t0,
    }
    text = format_report(report)
    write_report(out, "report.md", text, report)
    _plot(report, out / "mcn_tables.png")
    report["text"] = text
    return report


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{100 * v:.2f}"


def _paper(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f}"


def format_report(r: dict[str, Any]) -> str:
    head = (
        f"MCN on {r['data']} ({'quick, ' if r['quick'] else ''}{r['epochs'] or 'recipe'} epochs, "
        f"{r['limit_train'] or 'all'} training samples, {r['limit_test'] or 'all'} test samples, "
        f"seed {r['seed']}); paper: CIFAR-10 (Table II) and MNIST / CIFAR-10 (Table III)"
    )
    lines = [
        head,
        "",
        "Table II analogue: WRN vs U-MCN vs MCN vs MCN-1 (test accuracy %, ours | paper)",
        "",
    ]
    lines.append(
        "| widths (maps) | depth | params WRN | params U-MCN | binary params MCN (= MCN-1) | paper params (M) "
        "| WRN | U-MCN | MCN | MCN-1 |"
    )
    lines.append("|---|---|---|---|---|---|---|---|---|---|")
    for row in r["table2"]:
        m, p = row["models"], row["paper"] or {}

        def cell(k: str, m: dict[str, Any] = m, p: dict[str, Any] = p) -> str:
            return f"{_pct(m[k]['test_accuracy'])} \\| {_paper(p.get(k))}"

        lines.append(
            f"| {row['widths']} | {row['depth']} | {m['wrn']['params']:,} | {m['umcn']['params']:,} | "
            f"{m['mcn']['binary_params']:,} | {_paper(p.get('params_m'))} | {cell('wrn')} | {cell('umcn')} | "
            f"{cell('mcn')} | {cell('mcn1')} |"
        )
    lines += ["", "Binarized parameters at the paper's settings (depth 20, RGB input, K = 4):", ""]
    lines.append("| widths | ours | paper (M) |")
    lines.append("|---|---|---|")
    for x in r["table2_paper_widths"]:
        lines.append(
            f"| {x['widths']} | {x['binary_params']:,} ({x['binary_params'] / 1e6:.2f} M) | {x['paper_m']} |"
        )
    lines += ["", "Table III analogue (test accuracy %; paper: MNIST, CIFAR-10)", ""]
    lines.append(
        "| method | model | params | binary params | ours | paper MNIST | paper CIFAR-10 | deploy (verify) |"
    )
    lines.append("|---|---|---|---|---|---|---|---|")
    for x in r["table3"]:
        d = x.get("deploy")
        dep = (
            f"{d['mode']}: {d['sign_mismatches']} code mismatches / {d['signs_compared']:,}, "
            f"{d['prediction_mismatches']} pred. mismatches ({d['prediction_mismatches_unexplained']} "
            f"unexplained), {d['near_threshold']} near-threshold; integer acc. {_pct(d['accuracy_integer'])}"
            if d
            else "-"
        )
        lines.append(
            f"| {x['title']} | {x['model']} | {x['params']:,} | {x['binary_params']:,} | "
            f"{_pct(x['test_accuracy'])} | {_paper(x['paper'][0])} | {_paper(x['paper'][1])} | {dep} |"
        )
    lines += ["", f"total {r['seconds'] / 60:.1f} min"]
    return "\n".join(lines)


def _plot(r: dict[str, Any], path: Path) -> None:
    from .plots import _plt, _save

    plt = _plt()
    fig, (a2, a3) = plt.subplots(1, 2, figsize=(11, 4))
    keys = [k for k, _ in TABLE2_MODELS]
    for i, row in enumerate(r["table2"]):
        ys = [100 * row["models"][k]["test_accuracy"] for k in keys]
        a2.plot(keys, ys, "o-", label=f"ours {row['widths']}")
        p = row["paper"] or {}
        pv = [p.get(k) for k in keys]
        if any(v is not None for v in pv):
            a2.plot(
                [k for k, v in zip(keys, pv, strict=True) if v is not None],
                [v for v in pv if v is not None],
                "s--",
                label=f"paper {row['widths']} (CIFAR-10)",
                color=f"C{i}",
                alpha=0.5,
            )
    a2.set_ylabel("test accuracy (%)")
    a2.set_title("Table II analogue")
    a2.legend(fontsize=7)
    a2.grid(True, alpha=0.3)
    names = [x["key"] for x in r["table3"]]
    a3.bar(names, [100 * x["test_accuracy"] for x in r["table3"]], color="tab:blue", label="ours")
    pm = [(n, x["paper"][0]) for n, x in zip(names, r["table3"], strict=True) if x["paper"][0]]
    if pm:
        a3.scatter([n for n, _ in pm], [v for _, v in pm], color="tab:red", label="paper (MNIST)")
    a3.set_title("Table III analogue")
    a3.tick_params(axis="x", rotation=45, labelsize=7)
    a3.legend(fontsize=7)
    _save(fig, path)
    plt.close(fig)


__all__ = ["PAPER_TABLE2", "PAPER_TABLE3", "format_report", "paper_width_counts", "reproduce_mcn"]
