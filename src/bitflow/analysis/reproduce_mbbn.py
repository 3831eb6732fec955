"""``bitflow reproduce mbbn``: the MBBN paper's Table III / IV analogues and Fig. 7 speed-up curve.

- Table III analogue: ``mbbn_vgg_small`` on Fashion-MNIST with M = K in (8,) 4, 3, 2, 1 bits,
  trained by progressive initialisation (MBBN Sec. V.A: the full-precision twin initialises the
  highest-bit model, each model the next lower one), each converted to its integer multi-plane
  graph and checked against PyTorch (``verify``: level/sign and prediction mismatches). The
  compression column is the binarized layers' float32 weight bits over their K-bit weights
  (32/K) and, measured, the float32 twin's parameter bytes over the ``.bfn`` file's.
- Table IV style row: mixed precision per layer (higher bits in the first and last binary layer).
- Fig. 7 analogue: measured speed-up of the encoded GEMM (native ``bgemm_planes`` on packed
  planes) over float32 GEMM (numpy/BLAS) for M = K in 1..6 on a square shape, with the paper's
  theoretical ``S_MK`` (Eq. 16) beside it, PNG.
Trainings are cached in the output directory (see :mod:`bitflow.analysis.reproduce`).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from .._io import write_report
from .reproduce import _train


def _median_seconds(fn: Any, reps: int) -> float:
    """Median wall-clock seconds of ``reps`` calls after one untimed call (:func:`bitflow.bench.measure`)."""
    from ..bench import measure

    return measure(fn, reps, warmup=1).median_ms / 1e3


def speedup_curve(
    n: int, max_bits: int = 6, reps: int = 3, threads: int = 1, seed: int = 0
) -> list[dict[str, Any]]:
    """Encoded GEMM ``[n, n] x [n, n]`` with M = K bit planes vs float32 ``numpy.matmul``.

    Both sides compute the same integer product of odd levels (checked on a few entries); the
    encoded side is timed on pre-packed planes (the engine keeps weights packed and produces
    activation planes with its thresholds)."""
    from .. import _native as N
    from ..nn.mbbn import encode, pack_planes, speedup_theory

    rng = np.random.default_rng(seed)
    a32 = rng.standard_normal((n, n), dtype=np.float32)
    b32 = rng.standard_normal((n, n), dtype=np.float32)
    try:  # same thread count on both sides: the BLAS is limited to `threads` as well
        from threadpoolctl import threadpool_limits

        with threadpool_limits(limits=threads, user_api="blas"):
            t_float = _median_seconds(lambda: a32 @ b32.T, reps)
    except ImportError:
        t_float = _median_seconds(lambda: a32 @ b32.T, reps)
    rows = []
    for bits in range(1, max_bits + 1):
        top = 2**bits - 1
        va = rng.integers(0, 2**bits, (n, n)) * 2 - top
        vb = rng.integers(0, 2**bits, (n, n)) * 2 - top
        pa = np.ascontiguousarray(pack_planes(encode(va, bits)))
        pb = np.ascontiguousarray(pack_planes(encode(vb, bits)))
        out = N.bgemm_planes(pa, pb, n, "", threads)
        probe = rng.integers(0, n, 4)
        for i in probe:
            if int(out[i, i]) != int(va[i].astype(np.int64) @ vb[i].astype(np.int64)):
                raise AssertionError("encoded GEMM disagrees with the integer product")
        t_enc = _median_seconds(lambda pa=pa, pb=pb: N.bgemm_planes(pa, pb, n, "", threads), reps)
        rows.append(
            {
                "bits": bits,
                "float32_s": t_float,
                "encoded_s": t_enc,
                "measured_speedup": t_float / t_enc,
                "theory_speedup": speedup_theory(bits, bits, n),
            }
        )
    return rows


def _plot_speedup(rows: list[dict[str, Any]], n: int, out: Path) -> None:
    from .plots import _plt, _save

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    bits = [r["bits"] for r in rows]
    ax.semilogy(bits, [r["theory_speedup"] for r in rows], "o--", label="theory S_MK (Eq. 16)")
    ax.semilogy(
        bits,
        [r["measured_speedup"] for r in rows],
        "s-",
        label="measured vs float32 BLAS (1 thread)",
    )
    ax.axhline(1.0, color="k", lw=0.6)
    ax.set_xlabel("M = K (bits)")
    ax.set_ylabel("speed-up over float32 GEMM")
    ax.set_title(f"encoded GEMM {n}x{n}x{n}")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    _save(fig, out)
    plt.close(fig)


def _evaluate(ckpt: str, limit_test: int | None) -> dict[str, Any]:
    import os
    import tempfile

    from ..convert import convert, verify
    from ..data import eval_arrays
    from ..train import model_from_checkpoint

    model, _ = model_from_checkpoint(ckpt)
    graph = convert(model)
    x, y = eval_arrays("fashion-mnist", limit_test)
    v = verify(model, graph, x, y)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "m.bfn")
        graph.save(path)
        file_bytes = os.path.getsize(path)
    fp_bytes = 4 * sum(p.numel() for p in model.parameters())
    return {
        "accuracy_torch": v["accuracy_torch"],
        "accuracy_integer": v["accuracy_integer"],
        "prediction_mismatches": v["prediction_mismatches"],
        "sign_mismatches": v["sign_mismatches"],
        "file_bytes": file_bytes,
        "float32_param_bytes": fp_bytes,
    }


def reproduce_mbbn(
    out: str | Path = "runs/reproduce-mbbn",
    *,
    data: str = "fashion-mnist",
    quick: bool = False,
    seed: int = 0,
    log: Any = print,
    bits: tuple[int, ...] | None = None,
    epochs: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    width: int | None = None,
    gemm_size: int | None = None,
    method: str = "quantizer",
) -> dict[str, Any]:
    """Run the MBBN reproduction; returns the report also written to ``out/report.json``.

    ``quick``: 2 epochs per model on 12,000 samples, width 16, bits 4, 3, 2, 1, GEMM 1024^3;
    full: 15 epochs on all data, width 32, bits 8, 4, 3, 2, 1, GEMM 2048^3.

    ``method``: ``"quantizer"`` (default; Algorithm 2, the quantized network with learned ranges
    ``t`` transformed exactly into binary branches, the paper's route for its progressive
    8 -> 7 -> ... -> 1 bit experiments; at every initialisation the ranges are fitted to training
    data, see :func:`bitflow.nn.mbbn.calibrate_ranges`) or ``"encoder"`` (Algorithm 1, fixed
    range 1)."""
    if data != "fashion-mnist":
        raise ValueError("bitflow reproduce mbbn runs on Fashion-MNIST (--data fashion-mnist)")
    if epochs is not None and epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if bits is not None and (not bits or any(not 1 <= b <= 8 for b in bits)):
        raise ValueError(f"bits must be M = K values in 1..8, got {tuple(bits)}")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    epochs = epochs or (2 if quick else 15)
    limit_train = limit_train or (12000 if quick else None)
    width = width or (16 if quick else 32)
    bits = bits or ((4, 3, 2, 1) if quick else (8, 4, 3, 2, 1))
    gemm_size = gemm_size or (1024 if quick else 2048)
    common: dict[str, Any] = {
        "seed": seed,
        "epochs": epochs,
        "limit_train": limit_train,
        "limit_test": limit_test,
        "data": "fashion-mnist",
    }
    t0 = time.perf_counter()
    log("[table III] full-precision twin")
    fp = _train(out / "fp", model="vgg_small", model_kwargs={"width": width}, **common)
    rows: list[dict[str, Any]] = [
        {"bits": "32/32", "test_accuracy": fp["test_accuracy"], "compression_weights": 1.0}
    ]
    prev = fp["checkpoint"]
    for b in bits:
        log(f"[table III] M = K = {b} (initialised from {Path(prev).parent.name})")
        r = _train(
            out / f"m{b}k{b}",
            model="mbbn_vgg_small",
            model_kwargs={"width": width, "bits_a": b, "bits_w": b, "method": method},
            init_from=prev,
            **common,
        )
        ev = _evaluate(r["checkpoint"], limit_test)
        rows.append(
            {
                "bits": f"{b}/{b}",
                "test_accuracy": r["test_accuracy"],
                "compression_weights": 32 / b,
                "compression_file": ev["float32_param_bytes"] / ev["file_bytes"],
                **ev,
            }
        )
        prev = r["checkpoint"]
    log("[table IV] mixed precision")
    mixed = {"bits_a": [4, 2, 2, 2, 4], "bits_w": [2, 1, 1, 1, 2]}
    src = (
        out / "m4k4" / "best.pt" if (out / "m4k4" / "best.pt").exists() else Path(fp["checkpoint"])
    )
    r = _train(
        out / "mixed",
        model="mbbn_vgg_small",
        model_kwargs={"width": width, "method": method, **mixed},
        init_from=str(src),
        **common,
    )
    ev = _evaluate(r["checkpoint"], limit_test)
    rows.append(
        {
            "bits": "A 4,2,2,2,4 / W 2,1,1,1,2",
            "test_accuracy": r["test_accuracy"],
            **ev,
            "compression_file": ev["float32_param_bytes"] / ev["file_bytes"],
        }
    )
    log(f"[fig 7] encoded GEMM speed-up, {gemm_size}^3")
    curve = speedup_curve(gemm_size, reps=3)
    _plot_speedup(curve, gemm_size, out / "fig7_speedup.png")
    from ..bench import blas_info

    report: dict[str, Any] = {
        "quick": quick,
        "epochs": epochs,
        "width": width,
        "method": method,
        "table": rows,
        "speedup": curve,
        "blas": blas_info(),
        "gemm_size": gemm_size,
        "png": str(out / "fig7_speedup.png"),
        "seconds": time.perf_counter() - t0,
    }
    report["text"] = format_report(report)
    write_report(out, "report.txt", report["text"], report)
    return report


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"MBBN reproduction on Fashion-MNIST (mbbn_vgg_small width {r['width']}, {r['epochs']} epochs per model, "
        f"method {r.get('method', 'encoder')}, progressive initialisation)",
        "",
        f"{'bits A/W':<28} {'torch acc':>9} {'integer':>8} {'mism.':>6} {'32/K':>6} {'file ratio':>10}",
    ]
    for row in r["table"]:
        integer = f"{100 * row['accuracy_integer']:.2f}%" if "accuracy_integer" in row else "-"
        mism = (
            str(row["prediction_mismatches"] + row["sign_mismatches"])
            if "prediction_mismatches" in row
            else "-"
        )
        cw = f"{row['compression_weights']:.1f}x" if "compression_weights" in row else "-"
        cf = f"{row['compression_file']:.1f}x" if "compression_file" in row else "-"
        lines.append(
            f"{row['bits']:<28} {100 * row['test_accuracy']:>8.2f}% {integer:>8} {mism:>6} {cw:>6} {cf:>10}"
        )
    blas = ", ".join(
        f"{b.get('internal_api')} {b.get('version')} {b.get('architecture')} ({b.get('num_threads')} threads)"
        for b in r.get("blas", [])
        if b.get("user_api") == "blas"
    )
    lines += [
        "",
        f"Fig. 7 analogue ({r['png']}): encoded GEMM {r['gemm_size']}^3 vs float32 BLAS, 1 thread (BLAS: {blas or 'unknown'})",
        f"{'M=K':>4} {'float32 ms':>10} {'encoded ms':>10} {'measured':>9} {'S_MK theory':>11}",
    ]
    for c in r["speedup"]:
        lines.append(
            f"{c['bits']:>4} {1000 * c['float32_s']:>10.1f} {1000 * c['encoded_s']:>10.1f} "
            f"{c['measured_speedup']:>8.2f}x {c['theory_speedup']:>10.2f}x"
        )
    return "\n".join(lines)
