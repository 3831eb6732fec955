"""Training-step time of a model under the trainer's arithmetic options, same run, medians.

    nice .venv/bin/python benchmarks/train_step.py --model bireal_resnet20
    nice .venv/bin/python benchmarks/train_step.py --model bireal_resnet20 --model-arg widths=16,32,128

One step = forward, cross entropy, backward, Adam step, on a random batch (``--batch``,
channels_last as ``bitflow train`` does), ``--threads`` intra-op threads; ``--method NAME``
builds the backbone with a survey method's quantizers. Eight settings: fp32 eager, fp32
``torch.compile``, bf16 autocast eager, bf16 autocast compiled (what ``bitflow train --precision
bf16 --compile`` runs), and the two eager ones again with the STEs as PyTorch expressions
instead of the native one-pass kernels (``torch STE``; compiled graphs always fuse the
expressions), and the two eager STE-native ones without the trainer's layout hooks
(``mixed layouts``: :func:`bitflow.train.trainer.channels_last_`). The settings are interleaved over
``--rounds`` rounds of ``--steps`` steps (so a busy machine slows each alike) after warm-up
steps that include compilation; reported: median ms per step and the ratio to fp32 eager, plus
the CPU's bfloat16 features (AMX-BF16, AVX512-BF16: without them bf16 is emulated). Not
collected by pytest; times are not comparable across machines or sessions, ratios are.
"""

from __future__ import annotations

import argparse
import statistics
import time
from typing import Any

import torch
import torch.nn.functional as F

from bitflow.methods import build_model
from bitflow.models import create
from bitflow.nn import functional as fn
from bitflow.options import parse_kv
from bitflow.train.trainer import channels_last_


def _cpu_bf16() -> list[str]:
    try:
        flags = open("/proc/cpuinfo").read().split()
    except OSError:
        return []
    return sorted({f for f in flags if f in ("amx_bf16", "avx512_bf16")})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--model", default="bireal_resnet20")
    ap.add_argument("--model-arg", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--method", default=None, help="a survey method (bitflow.methods)")
    ap.add_argument(
        "--eager-only",
        action="store_true",
        help="skip the compiled settings (their compilation takes minutes on a busy machine)",
    )
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--image-size", type=int, default=28)
    ap.add_argument("--channels", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=3)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    native_min = fn.NATIVE_MIN_NUMEL
    kw = {"in_channels": a.channels, "image_size": a.image_size, **parse_kv(a.model_arg)}
    g = torch.Generator().manual_seed(0)
    x = torch.randn(a.batch, a.channels, a.image_size, a.image_size, generator=g)
    x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (a.batch,), generator=g)

    settings: dict[str, Any] = {}
    for prec in ("fp32", "bf16"):
        for comp, ste, hooks in (
            (False, True, True),
            (True, True, False),
            (False, False, True),
            (False, True, False),
        ):
            if comp and a.eager_only:
                continue
            torch.manual_seed(0)
            model = (
                create(a.model, **kw) if a.method is None else build_model(a.model, a.method, **kw)
            ).train()
            channels_last_(model, layout_hooks=hooks)  # as bitflow train does
            net = torch.compile(model) if comp else model
            opt = torch.optim.Adam(model.parameters(), 1e-3)
            name = f"{prec} {'compiled' if comp else 'eager'}{'' if ste else ' (torch STE)'}"
            name += "" if hooks or comp else " (mixed layouts)"
            settings[name] = (net, opt, prec == "bf16", ste)

    def step(net: Any, opt: torch.optim.Optimizer, bf16: bool, ste: bool) -> None:
        fn.NATIVE_MIN_NUMEL = native_min if ste else 1 << 62
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for name, s in settings.items():
        t = time.perf_counter()
        for _ in range(a.warmup):
            step(*s)
        print(f"warm-up {name}: {time.perf_counter() - t:.1f} s (includes compilation)", flush=True)
    times: dict[str, list[float]] = {n: [] for n in settings}
    for _ in range(a.rounds):
        for name, s in settings.items():
            for _ in range(a.steps):
                t = time.perf_counter()
                step(*s)
                times[name].append(time.perf_counter() - t)
    base = statistics.median(times["fp32 eager"])
    print(
        f"\n{a.model} {a.method or ''} {kw}, batch {a.batch}, {a.threads} thread(s), torch {torch.__version__}, "
        f"CPU bfloat16 features: {', '.join(_cpu_bf16()) or 'none (emulated)'}"
    )
    print(f"{'setting':<28} {'ms/step':>9} {'speed-up':>9}")
    for name, ts in times.items():
        med = statistics.median(ts)
        print(f"{name:<28} {1e3 * med:9.1f} {base / med:8.2f}x")


if __name__ == "__main__":
    main()
