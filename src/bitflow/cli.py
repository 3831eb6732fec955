"""The ``bitflow`` command line: ``bitflow train | convert | verify | run | export | bench | summary | reproduce``."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Sequence
from typing import Any

from . import __version__
from .options import parse_kv


def _bits_list(text: str | None) -> int | list[int] | None:
    """``"2"`` -> 2, ``"1,2,2,4"`` -> [1, 2, 2, 4] (per layer), None -> None."""
    if text is None:
        return None
    try:
        vals = [int(v) for v in text.split(",")]
    except ValueError:
        raise SystemExit(
            f"bitflow: bit widths must be integers or a comma-separated list, got {text!r}"
        ) from None
    return vals[0] if len(vals) == 1 else vals


def _bits_kwargs(a: argparse.Namespace) -> dict[str, Any]:
    out = {}
    for key in ("bits_a", "bits_w"):
        v = _bits_list(getattr(a, key))
        if v is not None:
            out[key] = v
    return out


def _cmd_train(a: argparse.Namespace) -> int:
    from .train import TrainConfig, train

    cfg = TrainConfig(
        model=a.model,
        data=a.data,
        out=a.out,
        recipe=a.recipe,
        epochs=a.epochs,
        batch_size=a.batch_size,
        lr=a.lr,
        seed=a.seed,
        resume=a.resume,
        limit_train=a.limit_train,
        limit_test=a.limit_test,
        fold=a.fold,
        device=a.device,
        val_fraction=a.val_fraction,
        workers=a.workers,
        progress=False if (a.json or a.no_progress) else None,
        model_kwargs={**_bits_kwargs(a), **parse_kv(a.model_arg)},
        method=a.method,
        method_args=parse_kv(a.method_arg, "--method-arg"),
        stop_after=a.stop_after,
        flip_every=a.flip_every,
        init_from=a.init_from,
        real_epochs=a.real_epochs,
        channels_last=not a.no_channels_last,
        precision=a.precision,
        precise_bn=a.precise_bn,
        compile=a.compile,
        calibrate=not a.no_calibrate,
        image_size=a.image_size,
        channels=a.channels,
    )
    result = train(cfg)
    if result:
        if a.json:
            print(json.dumps(result))
        else:
            print(
                f"test accuracy {result['test_accuracy']:.4f} (best val {result['val_accuracy']:.4f} at epoch "
                f"{result['best_epoch'] + 1}); {result['seconds_per_epoch']:.1f} s/epoch; checkpoint {result['checkpoint']}"
            )
    return 0


def _add_train(sub: Any) -> None:
    p = sub.add_parser("train", help="train a model (see bitflow.models.list_models())")
    p.add_argument(
        "--model", required=True, help="model name, e.g. bitflow_vgg_small, bitflow_alexnet"
    )
    p.add_argument(
        "--data",
        default="fashion-mnist",
        help="fashion-mnist | fashion-mnist-binary:A,B | folder:PATH | hands11k:PATH",
    )
    p.add_argument(
        "--recipe",
        default=None,
        help="built-in recipe name or a .toml path (default depends on --data)",
    )
    p.add_argument("--epochs", type=_COUNT, default=None)
    p.add_argument("--batch-size", type=_COUNT, default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--out",
        default="runs/train",
        help="output directory (checkpoints, metrics.jsonl, flips.jsonl)",
    )
    p.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    p.add_argument(
        "--limit-train", type=_COUNT, default=None, help="use only the first N training samples"
    )
    p.add_argument(
        "--limit-test", type=_COUNT, default=None, help="use only the first N test samples"
    )
    p.add_argument(
        "--image-size",
        type=_positive("--image-size", 4096),
        default=None,
        metavar="N",
        help="folder/hands11k: resize images to NxN (default: the images' own size when they all "
        "agree, else 224)",
    )
    p.add_argument(
        "--channels",
        type=int,
        choices=(1, 3),
        default=None,
        help="folder/hands11k: 1 = grey, 3 = RGB (default: 1 when every image is grey)",
    )
    p.add_argument(
        "--fold", type=int, default=None, help="cross-validation test fold (0-based; hands11k)"
    )
    p.add_argument(
        "--val-fraction", type=float, default=0.1, help="validation share carved from training data"
    )
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda if present)")
    p.add_argument(
        "--workers", type=int, default=0, help="data-loader worker processes (image folders)"
    )
    p.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="model option, e.g. width=64, first_layer=int8, last_layer=binary, weight_quantizer=sign",
    )
    p.add_argument(
        "--stop-after",
        type=int,
        default=None,
        metavar="N",
        help="stop after N epochs of this invocation (continue later with --resume)",
    )
    p.add_argument(
        "--flip-every",
        type=int,
        default=None,
        metavar="N",
        help="log the per-layer sign changing rate every N iterations (default: the recipe's)",
    )
    p.add_argument(
        "--bits-a",
        default=None,
        metavar="M[,M...]",
        help="MBBN activation bits (one value or one per layer)",
    )
    p.add_argument(
        "--bits-w",
        default=None,
        metavar="K[,K...]",
        help="MBBN weight bits (one value or one per layer)",
    )
    p.add_argument(
        "--init-from",
        default=None,
        metavar="CKPT",
        help="initialise from a checkpoint (MBBN: progressive init from a higher-bit model, Sec. V.A)",
    )
    p.add_argument(
        "--real-epochs",
        type=int,
        default=None,
        metavar="N",
        help="real-valued warm-up: train the binary layers as their real twin (clip(x,-1,1), latent "
        "weights; Bi-Real Sec. 3.3) for the first N epochs, then binarized (default: the recipe's; "
        "bireal_resnet20 on fashion-mnist: 4 of 15)",
    )
    p.add_argument(
        "--no-channels-last",
        action="store_true",
        help="train in the contiguous NCHW layout instead of channels_last (NHWC, the default: "
        "~1.5x faster convolution backward on CPU; same operations, rounding may differ)",
    )
    p.add_argument(
        "--precision",
        choices=("fp32", "bf16", "auto"),
        default=None,
        help="training arithmetic (default: the recipe's; fp32, auto for bireal_resnet20 on "
        "fashion-mnist): bf16 = torch.autocast bfloat16 convolutions and linear layers with float32 "
        "BatchNorm, stream, losses and weights; ~2x faster with --compile on CPUs with "
        "AMX/AVX512-BF16; auto = bf16 where the CPU/GPU has native bfloat16, else fp32. "
        "Evaluation and conversion stay float32",
    )
    p.add_argument(
        "--precise-bn",
        type=int,
        default=None,
        metavar="N",
        help="after each epoch, set the BatchNorm statistics to their population values over N "
        "training samples under the final weights (default: the recipe's, 0 = off); helps "
        "binarized-weight models whose moving averages lag the flipping weights (MCN)",
    )
    p.add_argument(
        "--compile",
        action="store_true",
        help="torch.compile the training forward pass (~1.2x per step on CPU after a minute or "
        "two of compilation; evaluation stays eager)",
    )
    p.add_argument(
        "--no-calibrate",
        action="store_true",
        help="with --init-from: keep the copied quantizer ranges (default: fit Algorithm 2's ranges t "
        "to 1,024 training samples, bitflow.nn.mbbn.calibrate_ranges)",
    )
    p.add_argument(
        "--method",
        default=None,
        metavar="NAME",
        help="a BNN method of the survey (bitflow.methods.list_methods(): bnn, xnor, irnet, reactnet, ...)",
    )
    p.add_argument(
        "--method-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="method option, e.g. teacher=runs/fp/best.pt (kd), lam=1e-6 (bnnplus), M=3 (abc)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument(
        "--json", action="store_true", help="print one JSON object with the results at the end"
    )
    p.set_defaults(func=_cmd_train)


def _cmd_summary(a: argparse.Namespace) -> int:
    from .analysis.summary import format_table, summarize
    from .models import create

    kwargs = parse_kv(a.model_arg)
    if a.num_classes is not None:
        kwargs["num_classes"] = a.num_classes
    model = create(a.model, **kwargs)
    summary = summarize(model)
    summary["model"] = a.model
    from .analysis.mcn_summary import format_mcn_storage, mcn_storage

    mcn = mcn_storage(model)
    if mcn["layers"]:
        summary["mcn_storage"] = mcn
    if a.json:
        print(json.dumps(summary))
    else:
        print(f"{a.model}: binarized middle layers (BitFlow-Net Table 3; ours, paper in brackets)")
        print(format_table(summary))
    if mcn["layers"] and not a.json:
        print(f"\n{a.model}: MCconv storage (MCN Sec. IV-B2; bytes)")
        print(format_mcn_storage(mcn))
    return 0


def _add_summary(sub: Any) -> None:
    p = sub.add_parser(
        "summary", help="per-layer Size/Mem/MFLOP of the binary layers (the paper's Table 3)"
    )
    p.add_argument("--model", required=True)
    p.add_argument("--num-classes", type=int, default=None)
    p.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_summary)


def _model_arrays(spec: str, limit: int | None, graph: Any, seed: int = 0) -> tuple[Any, Any]:
    """The evaluation split of ``spec`` shaped like the model's own input (channels, size)."""
    from .data import eval_arrays

    inp = graph.input
    if inp.height != inp.width:
        raise ValueError(
            f"the model takes non-square {inp.height}x{inp.width} input; data specs give square images"
        )
    return eval_arrays(spec, limit, channels=inp.channels, image_size=inp.height, seed=seed)


def _positive(kind: str, upper: int | None = None) -> Callable[[str], int]:
    """argparse type: an integer >= 1 (and <= ``upper``), with a message naming the range."""

    def parse(text: str) -> int:
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{kind} must be an integer, got {text!r}") from None
        if v < 1 or (upper is not None and v > upper):
            rng = f"in [1, {upper}]" if upper is not None else ">= 1"
            raise argparse.ArgumentTypeError(f"{kind} must be {rng}, got {v}")
        return v

    return parse


_COUNT = _positive("a count")
_THREADS = _positive("threads", 1024)


def _cmd_convert(a: argparse.Namespace) -> int:
    import os

    from .convert import convert
    from .methods import prepare_for_deploy
    from .train import model_from_checkpoint

    model, state = model_from_checkpoint(a.checkpoint)
    model = prepare_for_deploy(
        model
    )  # a method's deployable form, or a clear UnsupportedLayerError
    graph = convert(model, mode=a.mode, class_names=state.get("class_names"), strict=a.strict)
    graph.provenance.update(
        {
            "checkpoint": os.path.basename(a.checkpoint),
            "data": state.get("data"),
            "seed": state.get("seed"),
        }
    )
    graph.save(a.output)
    info = {
        "output": a.output,
        "mode": graph.mode,
        "ops": len(graph.ops),
        "file_bytes": os.path.getsize(a.output),
        "param_bytes": int(sum(t.nbytes for t in graph.tensors.values())),
        "input": graph.input.to_json(),
        "classes": len(graph.class_names),
    }
    if a.explain:
        from .analysis.explain import explain, format_explain

        info["explain"] = explain(graph)
    if a.json:
        print(json.dumps(info))
    else:
        print(format_explain(info["explain"]) if a.explain else graph.summary())
        print(f"wrote {a.output}: {info['file_bytes']} bytes, {info['ops']} ops, mode {graph.mode}")
    return 0


def _add_convert(sub: Any) -> None:
    p = sub.add_parser(
        "convert", help="BatchShift fusion + bit packing: checkpoint -> .bfn model file"
    )
    p.add_argument(
        "checkpoint", help="a checkpoint written by bitflow train (e.g. runs/fm/best.pt)"
    )
    p.add_argument("-o", "--output", required=True, help="the .bfn file to write (atomically)")
    p.add_argument(
        "--mode",
        choices=("bitflow", "xnor"),
        default=None,
        help="bitflow: integer thresholds (default for bitflow_* models); xnor: float alpha + BatchNorm",
    )
    p.add_argument(
        "--explain",
        action="store_true",
        help="per engine op: the form it became (binary / threshold / integer / float) and its bytes",
    )
    p.add_argument(
        "--strict",
        action="store_true",
        help="fail (exit 2) if a binarized layer would compute in float32 (e.g. BinaryConnect / BWN's "
        "+-1-weight float convolutions) instead of an xnor-popcount or integer op",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_convert)


def _cmd_verify(a: argparse.Namespace) -> int:
    from .convert import load_graph, verify
    from .convert.verify import verify_ok
    from .methods import prepare_for_deploy
    from .train import model_from_checkpoint

    model, state = model_from_checkpoint(a.checkpoint)
    model = prepare_for_deploy(model)
    graph = load_graph(a.model_file)
    x, y = _model_arrays(a.data, a.limit, graph, seed=int(state.get("seed") or 0))
    report = verify(model, graph, x, y)
    report.update({"checkpoint": a.checkpoint, "model_file": a.model_file, "data": a.data})
    if a.json:
        print(json.dumps(report))
    else:
        print(
            f"{report['samples']} samples: accuracy torch {report['accuracy_torch']:.4f}, integer model "
            f"{report['accuracy_integer']:.4f}; prediction mismatches {report['prediction_mismatches']} "
            f"({report['prediction_mismatches_unexplained']} not explained by near-threshold events), "
            f"sign mismatches {report['sign_mismatches']} of {report.get('signs_compared', '?')}, "
            f"ties {report['ties']}, near-threshold {report['near_threshold']['count']}"
            + _near_by_layer(report["near_threshold"].get("by_layer", {}))
            + f", max |logit diff| {report['max_logit_abs_diff']:.3g}"
        )
    # exit 0 when every difference is legitimate (near-threshold decisions and the predictions
    # they change); 1 for a real sign mismatch or an unexplained prediction (README "Exit codes")
    return 0 if verify_ok(report) else 1


def _near_by_layer(counts: dict[str, int]) -> str:
    """`` (layer '14' 1200, layer '19' 1167)`` for the layers with near-threshold events."""
    parts = [f"layer {k!r} {v}" for k, v in counts.items() if v]
    return f" ({', '.join(parts)})" if parts else ""


def _add_verify(sub: Any) -> None:
    p = sub.add_parser("verify", help="compare a checkpoint (PyTorch) with its .bfn integer model")
    p.add_argument("checkpoint")
    p.add_argument("model_file")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--limit", type=_COUNT, default=None, help="only the first N test samples")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_verify)


def _cmd_run(a: argparse.Namespace) -> int:
    from .engine import load
    from .engine.check import compare_with_reference, reference_ok

    eng = load(a.model_file, kernels=a.kernels, threads=a.threads)
    seed = eng.graph.provenance.get("seed")
    x, y = _model_arrays(
        a.data, a.limit, eng.graph, seed=seed if isinstance(seed, int) and seed >= 0 else 0
    )
    report = compare_with_reference(
        eng, x, y, batch_size=a.batch_size, reference=not a.no_reference
    )
    report.update({"model_file": a.model_file, "data": a.data})
    if a.json:
        print(json.dumps(report))
    else:
        line = (
            f"{report['samples']} samples: accuracy {report['accuracy']:.4f} with kernels {report['kernels']} "
            f"({report['threads']} threads), {report['ms_per_sample']:.3f} ms/sample"
        )
        if "reference" in report:
            r = report["reference"]
            line += (
                f"; vs reference executor: prediction mismatches {r['prediction_mismatches']} "
                f"({r['prediction_mismatches_unexplained']} not explained by near-threshold bits), "
                f"integer/bit mismatches {r['exact_mismatches']}, near-threshold float-layer bits {r['near_threshold']}, "
                f"max |float diff| {r['max_float_abs_diff']:.3g}"
            )
        print(line)
    ref = report.get("reference")
    # exit 0 when every difference is legitimate (near-threshold float first-layer decisions
    # and the predictions they change); 1 for any real mismatch (README "Exit codes")
    return 0 if ref is None or reference_ok(ref) else 1


def _add_run(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="run a .bfn model on the native engine and check it against the reference executor",
    )
    p.add_argument("model_file")
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument("--limit", type=_COUNT, default=None)
    p.add_argument("--kernels", default="auto", choices=("auto", "ref", "scalar", "avx2", "avx512"))
    p.add_argument("--threads", type=_THREADS, default=None)
    p.add_argument("--batch-size", type=_COUNT, default=256)
    p.add_argument(
        "--no-reference",
        action="store_true",
        help="skip the comparison with the reference executor",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_run)


def _cmd_export(a: argparse.Namespace) -> int:
    import os

    from .export import export_onnx
    from .ir import load_graph

    graph = load_graph(a.model_file)
    batch = None if a.batch == "N" else int(a.batch) if a.batch is not None else "default"
    proto = export_onnx(graph, a.output, format=a.format, batch=batch)
    info = {
        "output": a.output,
        "format": a.format,
        "bytes": os.path.getsize(a.output),
        "nodes": len(proto.graph.node),
        "ops": len(graph.ops),
        "input": [
            d.dim_param or d.dim_value for d in proto.graph.input[0].type.tensor_type.shape.dim
        ],
    }
    if a.json:
        print(json.dumps(info))
    else:
        print(
            f"wrote {a.output}: {a.format}, {info['nodes']} nodes for {info['ops']} engine ops, input {info['input']}, "
            f"{info['bytes']} bytes (onnx.checker full check passed)"
        )
    return 0


def _batch_arg(text: str) -> str:
    if text != "N":
        _COUNT(text)
    return text


def _add_export(sub: Any) -> None:
    p = sub.add_parser(
        "export",
        help="write a .bfn model as ONNX (onnxruntime, Netron) or QONNX (Brevitas/FINN tools)",
    )
    p.add_argument("model_file")
    p.add_argument("-o", "--output", required=True, help="the .onnx file to write (atomically)")
    p.add_argument("--format", choices=("onnx", "qonnx"), default="onnx")
    p.add_argument(
        "--batch",
        type=_batch_arg,
        default=None,
        metavar="N|B",
        help="batch size in the model's shapes: N = symbolic (default for onnx), or a number "
        "(default 1 for qonnx)",
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_export)


def _cmd_reproduce(a: argparse.Namespace) -> int:
    log = lambda m: print(m, file=sys.stderr, flush=True)  # noqa: E731
    if a.paper == "mbbn":
        from .analysis.reproduce_mbbn import reproduce_mbbn
        from .bench import clean_blas_env

        # the float32 GEMM baseline runs without OPENBLAS_CORETYPE / OPENBLAS_L2_SIZE (re-exec)
        clean_blas_env(["-m", "bitflow", *sys.argv[1:]])

        parsed = _bits_list(a.bits)
        bits = None if parsed is None else tuple(parsed) if isinstance(parsed, list) else (parsed,)
        rep = reproduce_mbbn(
            a.out or "runs/reproduce-mbbn",
            data=a.data,
            quick=a.quick,
            seed=a.seed,
            log=log,
            epochs=a.epochs,
            bits=bits,
            method=a.method,
        )
        print(json.dumps(rep) if a.json else rep["text"])
        return 0
    if a.paper == "survey":
        from .analysis.reproduce_survey import reproduce_survey

        seeds = tuple(int(v) for v in a.seeds.split(",")) if a.seeds else None
        rep = reproduce_survey(
            a.out or "runs/reproduce-survey",
            data=a.data,
            quick=a.quick,
            seeds=seeds,
            methods_=[m.strip() for m in a.methods.split(",")] if a.methods else None,
            backbone=a.backbone,
            epochs=a.epochs,
            limit_train=a.limit_train,
            width=a.width,
            precision=a.precision,
            records=a.records,
            collect=a.collect,
            jobs=a.jobs,
            log=log,
        )
        print(json.dumps(rep) if a.json else rep["text"])
        return 0
    if a.paper == "mcn":
        from .analysis.reproduce_mcn import reproduce_mcn

        rep = reproduce_mcn(
            a.out or "runs/reproduce-mcn",
            data=a.data,
            quick=a.quick,
            seed=a.seed,
            epochs=a.epochs,
            log=log,
        )
        print(json.dumps(rep) if a.json else rep["text"])
        return 0
    from .analysis.reproduce import format_report, reproduce_bitflow_net

    out = a.out or "runs/reproduce-bitflow-net"
    report = reproduce_bitflow_net(
        out, data=a.data, binary_classes=a.binary_classes, quick=a.quick, seed=a.seed, log=log
    )
    if a.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
        print(f"(tables and figures in {out}/report.txt, {out}/*.png)")
    return 0


def _add_reproduce(sub: Any) -> None:
    p = sub.add_parser(
        "reproduce", help="reproduce a paper's tables and figures (bitflow-net, mbbn, survey, mcn)"
    )
    p.add_argument("paper", choices=("bitflow-net", "mbbn", "survey", "mcn"))
    p.add_argument("--data", default="fashion-mnist")
    p.add_argument(
        "--binary-classes", default="0,6", help="the two-class task (default T-shirt vs Shirt)"
    )
    p.add_argument("--quick", action="store_true", help="short trainings (under 10 minutes here)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None)
    p.add_argument("--json", action="store_true")
    p.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="mbbn: epochs per model (default 15; --quick 2); mcn: epochs (default recipe; --quick 1)",
    )
    p.add_argument(
        "--bits",
        default=None,
        help="mbbn: comma-separated M = K values of the table, highest first (default 8,4,3,2,1; --quick 4,3,2,1)",
    )
    p.add_argument(
        "--method",
        default="quantizer",
        choices=("quantizer", "encoder"),
        help="mbbn: Algorithm 2 (learned ranges, default) or Algorithm 1 (MBitEncoder)",
    )
    p.add_argument(
        "--methods",
        default=None,
        help="survey: comma-separated method names (default: all, bitflow.methods.list_methods())",
    )
    p.add_argument(
        "--seeds", default=None, help="survey: comma-separated seeds (default 0,1,2; --quick 0)"
    )
    p.add_argument(
        "--backbone",
        default="bitflow_vgg_small",
        help="survey: bitflow_vgg_small | bitflow_lenet | bireal_resnet20",
    )
    p.add_argument(
        "--records",
        default=None,
        help="survey: a directory of per-run records (commit them): recorded runs of the same "
        "recipe are not trained again, finished runs are added",
    )
    p.add_argument(
        "--precision",
        default="auto",
        choices=("fp32", "bf16", "auto"),
        help="survey: training arithmetic (default auto: bfloat16 convolutions where the CPU has "
        "them natively, else float32; a recipe of its own in --records)",
    )
    p.add_argument(
        "--collect",
        action="store_true",
        help="survey: write the table from --records alone (no training; rows count their seeds)",
    )
    p.add_argument(
        "--limit-train",
        type=_COUNT,
        default=None,
        help="survey: train on the first N training samples (default all; --quick 5000); a "
        "recipe of its own in --records",
    )
    p.add_argument(
        "--width",
        type=_COUNT,
        default=None,
        help="survey: the backbone's (and its twin's) width (default: the recipe's; --quick 8)",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="survey: trainings run this many at a time in worker processes, each with "
        "cpu_count/JOBS threads (default 1); deploys and timings follow when they are done",
    )
    p.set_defaults(func=_cmd_reproduce)


def _cmd_bench(a: argparse.Namespace) -> int:
    import os

    from .bench import (
        BASELINES,
        bench_file,
        bench_zoo,
        clean_blas_env,
        format_report,
        parse_int_list,
    )

    if (a.model_file is None) == (a.model is None):
        raise ValueError(
            "give either a .bfn model file or --model NAME (a zoo model with random weights)"
        )
    threads = parse_int_list(a.threads, "--threads")
    batches = parse_int_list(a.batch, "--batch")
    baselines = (
        []
        if a.baselines in ("", "none")
        else [b.strip() for b in a.baselines.split(",") if b.strip()]
    )
    unknown = sorted(set(baselines) - set(BASELINES))
    if unknown:
        raise ValueError(
            f"--baselines: unknown {unknown}; choose from {', '.join(BASELINES)} or 'none'"
        )
    if a.model_file is not None and not os.path.exists(a.model_file):
        raise FileNotFoundError(f"model file not found: {a.model_file}")
    clean_blas_env(["-m", "bitflow", *sys.argv[1:]])
    kw = {
        "threads": threads,
        "batches": batches,
        "repeat": a.repeat,
        "warmup": a.warmup,
        "baselines": baselines,
        "layers": not a.no_layers,
        "kernels": a.kernels,
        "rounds": a.rounds,
    }
    if a.model is not None:
        result = bench_zoo(a.model, model_kwargs=parse_kv(a.model_arg), **kw)
    else:
        result = bench_file(a.model_file, **kw)
    if a.output:
        with open(a.output, "w") as f:
            f.write(json.dumps(result, indent=1) + "\n")
    print(json.dumps(result) if a.json else format_report(result))
    return 0


def _add_bench(sub: Any) -> None:
    p = sub.add_parser(
        "bench",
        help="engine latency vs PyTorch fp32, ONNX Runtime fp32/int8 and OpenVINO's BNN, same run",
    )
    p.add_argument("model_file", nargs="?", default=None, help="a .bfn model file (or use --model)")
    p.add_argument(
        "--model",
        default=None,
        help="a zoo model with random weights, converted on the fly (e.g. bitflow_alexnet)",
    )
    p.add_argument(
        "--model-arg",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="zoo model option, e.g. first_layer=int8",
    )
    p.add_argument("--threads", default="1", help="comma-separated thread counts (default 1)")
    p.add_argument("--batch", default="1", help="comma-separated batch sizes (default 1)")
    p.add_argument(
        "--repeat", type=_COUNT, default=30, help="timed runs per measurement (median, min, max)"
    )
    p.add_argument("--warmup", type=int, default=5, help="untimed runs before each measurement")
    p.add_argument(
        "--rounds",
        type=_COUNT,
        default=5,
        help="interleave the runtimes of a setting in this many rounds of repeat/rounds calls "
        "(medians over all calls; 1: one block per runtime)",
    )
    p.add_argument("--kernels", default="auto", choices=("auto", "ref", "scalar", "avx2", "avx512"))
    p.add_argument(
        "--baselines",
        default="torch,ort,openvino",
        help="comma-separated subset of torch,ort,openvino, or 'none'",
    )
    p.add_argument("--no-layers", action="store_true", help="whole-model numbers only")
    p.add_argument(
        "--output", default=None, help="also write the JSON result (indented) to this file"
    )
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_bench)


_ADDERS: list[Callable[[Any], None]] = [
    _add_train,
    _add_convert,
    _add_verify,
    _add_run,
    _add_export,
    _add_summary,
    _add_reproduce,
    _add_bench,
]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bitflow", description="Binarized neural networks: train, convert, run."
    )
    parser.add_argument("--version", action="version", version=f"bitflow {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in _ADDERS:
        add(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except (
        FileNotFoundError,
        IsADirectoryError,
        PermissionError,
        ValueError,
        KeyError,
        TypeError,
    ) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"bitflow {args.command}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"bitflow {args.command}: interrupted", file=sys.stderr)
        return 130
