"""``bitflow reproduce bitflow-net``: Table 2, Fig. 2, Fig. 3 and Table 3 analogues on Fashion-MNIST.

- Table 2 analogue: the full-precision twin vs XNOR-Net vs BitFlow-Net test accuracy, on the
  10-class task and on a binary task built from two Fashion-MNIST classes (default T-shirt vs
  Shirt, mirroring the paper's binary gender task). XNOR-Net and BitFlow-Net are the same trained
  network executed two ways (float alpha + BatchNorm, Fig. 1a, vs integer thresholds, Fig. 1b)
  by the reference executor; they must agree on every prediction. The native engine's accuracy
  is reported beside them.
- Fig. 2 analogue: the per-layer sign changing rate over iterations with and without the
  scaling factor (``weight_quantizer`` ``xnor`` vs ``sign``), PNG.
- Fig. 3 analogue: BatchNorm output vs BatchShift output (Eq. 16) of one channel, PNG; the
  sign agreement is that of PyTorch's BatchNorm with the converted model's integer threshold
  (the bits the reference executor computes), not with a second derivation.
- Table 3: :func:`bitflow.analysis.summary.summarize` of ``bitflow_alexnet``.

Runs are cached: a training whose ``result.json`` exists in the output directory with the same
configuration is reused, so an interrupted reproduction continues where it stopped.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import write_report

PAPER_TABLE2 = {
    "alexnet": "(59.30%, 82.80%) | 99.80%",
    "xnor": "(44.87%, 69.70%) | 98.27%",
    "bitflow": "(44.87%, 69.70%) | 98.27%",
}


def _json(x: Any) -> Any:
    return json.loads(json.dumps(x))


def _train(out: Path, **kw: Any) -> dict[str, Any]:
    """``bitflow.train.train`` into ``out``, unless ``out`` holds that run already: a finished
    one (``result.json``) is returned, an interrupted one (``last.pt``) resumed. "That run" is the
    same config, the same recipe values (a method's recipe can change: ``resolve_recipe``) and
    the same method options with their current defaults; anything else trains from the start."""
    from ..methods import method_args
    from ..train import TrainConfig, train
    from ..train.trainer import resolve_recipe

    cfg = TrainConfig(out=str(out), progress=False, **kw)
    want_recipe = _json(resolve_recipe(cfg)[0].to_dict())
    want_args = _json(method_args(cfg.method, cfg.method_args)) if cfg.method else None
    res_path = out / "result.json"
    if res_path.exists():
        prev = json.loads(res_path.read_text())
        if (
            prev.get("config") == _json(asdict(cfg))
            and prev.get("recipe_values") == want_recipe
            and (prev.get("model_config") or {}).get("method_args") == want_args
        ):
            return prev  # type: ignore[no-any-return]
    resume = (out / "last.pt").exists()
    if resume:
        from ..train import load_checkpoint

        st = load_checkpoint(out / "last.pt")
        resume = (
            st.get("data") == cfg.data
            and st.get("seed") == cfg.seed
            and st["model_config"]["name"] == cfg.model
            and _json(st.get("recipe")) == want_recipe
            and _json(st["model_config"].get("method_args")) == want_args
        )
    cfg.resume = resume
    try:
        return train(cfg)
    except ValueError:
        if not resume:
            raise
        cfg.resume = False  # a stale checkpoint from another configuration: start over
        return train(cfg)


def _accuracies(ckpt: str, data: str, limit: int | None) -> dict[str, Any]:
    from ..convert import convert, verify
    from ..convert.reference import run
    from ..data import eval_arrays
    from ..engine import Engine
    from ..train import model_from_checkpoint

    model, _ = model_from_checkpoint(ckpt)
    x, y = eval_arrays(data, limit)
    g_bit = convert(model, mode="bitflow")
    g_xnor = convert(model, mode="xnor")
    t0 = time.perf_counter()
    v = verify(model, g_bit, x, y)
    p_xnor = np.asarray(run(g_xnor, x)).argmax(1)
    p_bit = np.asarray(run(g_bit, x)).argmax(1)
    p_eng = Engine(g_bit).predict(x)
    return {
        "samples": int(len(y)),
        "torch": v["accuracy_torch"],
        "xnor": float((p_xnor == y).mean()),
        "bitflow": float((p_bit == y).mean()),
        "engine": float((p_eng == y).mean()),
        "xnor_vs_bitflow_prediction_mismatches": int((p_xnor != p_bit).sum()),
        "engine_vs_bitflow_prediction_mismatches": int((p_eng != p_bit).sum()),
        "torch_vs_bitflow_prediction_mismatches": v["prediction_mismatches"],
        "sign_mismatches": v["sign_mismatches"],
        "ties": v["ties"],
        "seconds": time.perf_counter() - t0,
    }


def _fig3(ckpt: str, data: str, out_png: Path, limit: int = 200) -> dict[str, Any]:
    """BN output vs BatchShift (Eq. 16) output for one channel of the first binary conv layer
    that is followed by ReLU and the next block's BatchNorm without pooling in between."""
    from ..data import eval_arrays
    from ..nn import BinaryConv2d
    from ..nn.functional import sign
    from .plots import plot_batchshift

    model, _ = model_from_ckpt(ckpt)
    if not isinstance(model, nn.Sequential):
        raise ValueError(
            f"figure 3 needs a sequential zoo model (a BitFlow-Net), got {type(model).__name__}"
        )
    mods = list(model)
    idx = None
    for i, m in enumerate(mods[:-2]):
        if (
            isinstance(m, BinaryConv2d)
            and isinstance(mods[i + 1], nn.ReLU)
            and isinstance(mods[i + 2], nn.BatchNorm2d)
        ):
            idx = i
            break
    if idx is None:
        raise ValueError("Fig. 3 needs a BinaryConv2d -> ReLU -> BatchNorm2d sequence in the model")
    conv, bn = mods[idx], mods[idx + 2]
    assert isinstance(conv, BinaryConv2d) and isinstance(bn, nn.BatchNorm2d)  # as found above
    x, _ = eval_arrays(data, limit)
    captured: dict[str, torch.Tensor] = {}
    h = conv.register_forward_hook(lambda m, inp, out: captured.__setitem__("in", inp[0].detach()))
    with torch.no_grad():
        model(torch.from_numpy(x))
        h.remove()
        b, alpha = conv.quantized_weight()
        xi = torch.nn.functional.conv2d(
            sign(captured["in"]), sign(b), None, conv.stride, conv.padding
        )  # integer x
        z = xi * alpha.view(1, -1, 1, 1) if alpha is not None else xi
        bn_out = bn(torch.relu(z))
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError(
            "Fig. 3 needs a BatchNorm2d with running statistics (track_running_stats=True)"
        )
    gamma, beta = bn.weight.detach().double(), bn.bias.detach().double()
    mu, s = bn.running_mean.double(), torch.sqrt(bn.running_var.double() + bn.eps)
    a = alpha.double() if alpha is not None else torch.ones_like(gamma)
    c = mu - beta * s / torch.where(gamma == 0, torch.ones_like(gamma), gamma)
    # a channel with gamma > 0 whose threshold lies above 0 (so the ReLU does not decide it)
    # and with both signs present in the data
    cand = [int(ch) for ch in torch.nonzero((gamma > 0) & (c > 0)).flatten()]
    best = max(
        cand,
        key=lambda ch: float(
            torch.minimum((bn_out[:, ch] > 0).float().mean(), (bn_out[:, ch] < 0).float().mean())
        ),
        default=None,
    )
    if best is None:
        raise ValueError("no channel with gamma > 0 and a positive threshold for Fig. 3")
    tau = float(
        c[best] / a[best]
    )  # Eq. 16: BS(x) = (x - tau) sign(gamma), tau = E[alpha x]/alpha - f beta
    bn_vals = bn_out[:, best].flatten().double().numpy()
    # relu(alpha x) = alpha relu(x) for alpha > 0, so the ReLU moves to the integer side too
    bs_vals = np.maximum(xi[:, best].flatten().double().numpy(), 0.0) - tau
    plot_batchshift(bn_vals, bs_vals, out_png, title=f"layer {idx} channel {best}: tau = {tau:.3f}")
    # the agreement is measured on the real converted model: the bits the reference executor
    # computes with the converter's integer threshold for this BatchNorm, against PyTorch's signs
    from ..convert import convert
    from ..ir.bits import unpack_bits
    from ..ir.reference import run as reference_run

    graph = convert(model, mode="bitflow")
    bn_name = next(n for n, m in model.named_modules() if m is bn)
    thr_op = next(
        (
            op
            for op in graph.ops
            if op.type == "threshold_bits" and op.attrs.get("source") == bn_name
        ),
        None,
    )
    if thr_op is None:
        raise ValueError(f"the converted model has no integer threshold for BatchNorm {bn_name!r}")
    _, env = reference_run(graph, x, return_intermediates=True)  # type: ignore[misc]
    info = graph.validate()[thr_op.outputs[0]]
    assert info.channels is not None
    neg = unpack_bits(env[thr_op.outputs[0]], info.channels, info.groups)[
        ..., best
    ]  # [N, H, W]: bit 1 = -1
    torch_neg = (bn_out[:, best] < 0).numpy()
    threshold = int(graph.tensors[thr_op.params["thr"]][best])
    agree = neg == torch_neg
    return {
        "layer": idx,
        "channel": best,
        "tau": tau,
        "threshold": threshold,
        "points": int(bn_vals.size),
        "sign_agreement": float(agree.mean()),
        "sign_mismatches": int((~agree).sum()),
    }


def model_from_ckpt(path: str) -> tuple[nn.Module, dict[str, Any]]:
    from ..train import model_from_checkpoint

    return model_from_checkpoint(path)


def reproduce_bitflow_net(
    out: str | Path = "runs/reproduce-bitflow-net",
    *,
    data: str = "fashion-mnist",
    binary_classes: str = "0,6",
    quick: bool = False,
    seed: int = 0,
    log: Any = print,
    epochs: int | None = None,
    limit_train: int | None = None,
    limit_test: int | None = None,
    width: int | None = None,
) -> dict[str, Any]:
    """Run the reproduction; returns the report also written to ``out/report.json``.

    ``quick`` trains 3 epochs on 12,000 samples with width 16 (the full run: 15 epochs, all
    60,000 samples, width 32); ``epochs``, ``limit_train``, ``limit_test`` and ``width``
    override either (tests use tiny values)."""
    from .plots import plot_flip_rates
    from .summary import format_table, summarize

    if data != "fashion-mnist":
        raise ValueError(
            "bitflow reproduce bitflow-net runs on Fashion-MNIST (--data fashion-mnist)"
        )
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    epochs = epochs or (3 if quick else 15)
    common: dict[str, Any] = {"seed": seed, "epochs": epochs, "limit_test": limit_test}
    width = width or (16 if quick else None)
    small: dict[str, Any] = {"width": width} if width else {}
    limit_train = limit_train or (12000 if quick else None)
    # about 40 sign-changing-rate checks per run (Fig. 2): iterations = samples / 128 x epochs
    iters = -(-(limit_train or 54000) // 128) * epochs
    flip_every = max(1, iters // 40)
    tasks = {
        "fashion-mnist-10": "fashion-mnist",
        "fashion-mnist-binary": f"fashion-mnist-binary:{binary_classes}",
    }
    report: dict[str, Any] = {"quick": quick, "epochs": epochs, "tasks": {}}
    t_start = time.perf_counter()
    for task, spec in tasks.items():
        log(f"[table 2] {task}: full-precision twin")
        fp = _train(
            out / task / "fp",
            model="vgg_small",
            data=spec,
            limit_train=limit_train,
            model_kwargs=dict(small),
            **common,
        )
        log(f"[table 2] {task}: BitFlow-Net / XNOR-Net (one trained network)")
        bf = _train(
            out / task / "bitflow",
            model="bitflow_vgg_small",
            data=spec,
            limit_train=limit_train,
            model_kwargs=dict(small),
            flip_every=flip_every,
            **common,
        )
        acc = _accuracies(bf["checkpoint"], spec, limit_test)
        report["tasks"][task] = {
            "data": spec,
            "full_precision": fp["test_accuracy"],
            **acc,
            "seconds_per_epoch": {
                "fp": fp["seconds_per_epoch"],
                "bitflow": bf["seconds_per_epoch"],
            },
        }
    log("[fig 2] sign changing rate without the scaling factor")
    ten = tasks["fashion-mnist-10"]
    ns = _train(
        out / "fig2-no-scale",
        model="bitflow_vgg_small",
        data=ten,
        limit_train=limit_train,
        model_kwargs={**small, "weight_quantizer": "sign"},
        flip_every=flip_every,
        **common,
    )
    plot_flip_rates(
        [
            ("without scaling factor", out / "fig2-no-scale" / "flips.jsonl"),
            ("with scaling factor", out / "fashion-mnist-10" / "bitflow" / "flips.jsonl"),
        ],
        out / "fig2_sign_changing_rate.png",
    )
    flips = {}
    for name, path in (
        ("without_scale", out / "fig2-no-scale" / "flips.jsonl"),
        ("with_scale", out / "fashion-mnist-10" / "bitflow" / "flips.jsonl"),
    ):
        rows = [json.loads(r) for r in path.read_text().splitlines() if r.strip()]
        vals = np.array([list(r["flip_ratio"].values()) for r in rows])
        flips[name] = {
            "checks": len(rows),
            "mean": float(vals.mean()),
            "std_over_time": float(vals.std(0).mean()),
            "test_accuracy": ns["test_accuracy"] if name == "without_scale" else None,
        }
    report["fig2"] = {"png": str(out / "fig2_sign_changing_rate.png"), **flips}
    log("[fig 3] BatchNorm vs BatchShift output")
    report["fig3"] = {
        "png": str(out / "fig3_batchshift.png"),
        **_fig3(
            str(out / "fashion-mnist-10" / "bitflow" / "best.pt"),
            ten,
            out / "fig3_batchshift.png",
            limit=min(200, limit_test or 200),
        ),
    }
    log("[table 3] bitflow_alexnet accounting")
    from ..models import create

    t3 = summarize(create("bitflow_alexnet", num_classes=1000))
    report["table3"] = t3
    report["seconds"] = time.perf_counter() - t_start
    text = format_report(report) + "\n\n" + format_table(t3)
    write_report(out, "report.txt", text, report)
    return report


def format_report(r: dict[str, Any]) -> str:
    lines = [
        f"BitFlow-Net reproduction on Fashion-MNIST ({'quick, ' if r['quick'] else ''}{r['epochs']} epochs)",
        "",
        "Table 2 analogue (test accuracy; the paper's AlexNet ImageNet (top-1, top-5) | 11K Hands in the last column)",
        f"{'model':<22} {'FM 10-class':>12} {'FM binary':>10}   paper",
    ]
    t10, tb = r["tasks"]["fashion-mnist-10"], r["tasks"]["fashion-mnist-binary"]
    rows = [
        ("full precision (twin)", "full_precision", "alexnet"),
        ("XNOR-Net", "xnor", "xnor"),
        ("BitFlow-Net", "bitflow", "bitflow"),
        ("BitFlow-Net (engine)", "engine", None),
    ]
    for label, key, paper in rows:
        lines.append(
            f"{label:<22} {100 * t10[key]:>11.2f}% {100 * tb[key]:>9.2f}%   {PAPER_TABLE2.get(paper or '', '')}"
        )
    lines.append(
        f"XNOR vs BitFlow prediction mismatches: {t10['xnor_vs_bitflow_prediction_mismatches']} / "
        f"{tb['xnor_vs_bitflow_prediction_mismatches']}; PyTorch vs integer: {t10['torch_vs_bitflow_prediction_mismatches']} / "
        f"{tb['torch_vs_bitflow_prediction_mismatches']} predictions, {t10['sign_mismatches']} / {tb['sign_mismatches']} signs"
    )
    f2 = r["fig2"]
    lines += [
        "",
        f"Fig. 2 analogue: {f2['png']}",
        f"  mean sign changing rate: without scaling factor {100 * f2['without_scale']['mean']:.3f}% "
        f"(fluctuation {100 * f2['without_scale']['std_over_time']:.3f}%), with {100 * f2['with_scale']['mean']:.3f}% "
        f"(fluctuation {100 * f2['with_scale']['std_over_time']:.3f}%)",
    ]
    f3 = r["fig3"]
    lines += [
        "",
        f"Fig. 3 analogue: {f3['png']}  (layer {f3['layer']}, channel {f3['channel']}, "
        f"{f3['points']} outputs, converted threshold T = {f3['threshold']}, signs agree on "
        f"{100 * f3['sign_agreement']:.2f}%)",
    ]
    return "\n".join(lines)
