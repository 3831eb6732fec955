"""Per-step profile of the engine's fused plan: where a whole-model call spends its time.

    nice .venv/bin/python benchmarks/profile_steps.py --model bitflow_alexnet --model-arg first_layer=int8
    nice .venv/bin/python benchmarks/profile_steps.py --model bireal_resnet18 --threads 1

Every step of ``Engine._plan`` (one native call: a fused binary layer, a float stream, a pool,
...) is timed on its own input, ``--repeat`` calls after ``--warmup``, interleaved over
``--rounds`` rounds so that a busy machine slows every step alike; the input preparation
(``Engine._prepare``) is timed as step "prepare". Reported per step: median thread CPU ms of
the calling thread (``time.thread_time``; with one engine thread this is the step's whole
cost, unaffected by other processes taking the core) and median wall ms, plus the sum over
steps and a whole ``logits`` call for comparison. Nothing here changes the engine: the plan's
own callables are called. Not collected by pytest.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from typing import Any

import numpy as np

from bitflow.bench import zoo_model
from bitflow.engine import Engine


def _kv(items: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for it in items:
        k, v = it.split("=", 1)
        out[k] = int(v) if v.isdigit() else v
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--model", default="bitflow_alexnet")
    p.add_argument("--model-arg", action="append", default=[])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--kernels", default="auto")
    p.add_argument("--repeat", type=int, default=40)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--inputs", type=int, default=4, help="distinct input images, cycled")
    a = p.parse_args(argv)

    graph, _ = zoo_model(a.model, **_kv(a.model_arg))
    eng = Engine(graph, kernels=a.kernels, threads=a.threads)
    spec = graph.input
    # --inputs distinct images, cycled: a step timed on one repeated input lets the branch
    # predictor learn its data-dependent branches (a branchy RPReLU looked 5x faster than in a
    # whole call), so every step sees the inputs the images give it, in turn
    xs = [
        np.random.default_rng(i).random(
            (a.batch, spec.channels, spec.height, spec.width), dtype=np.float32
        )
        for i in range(a.inputs)
    ]
    envs = [{graph.input.name: eng._prepare(xi)} for xi in xs]
    turn = {"i": 0}

    def cycled(fn: Any, args: list[Any]) -> Any:
        def call() -> Any:
            turn["i"] = (turn["i"] + 1) % len(args)
            return fn(args[turn["i"]])

        return call

    calls: list[tuple[str, Any]] = [("prepare", cycled(eng._prepare, xs))]
    for step in eng._plan:
        inps = [[env[v] for v in step.srcs] for env in envs]
        for env, inp in zip(envs, inps, strict=True):
            env.update(step.outputs(step.fn(inp)))
        label = (
            "+".join(step.ops)
            if len(step.ops) <= 3
            else f"{step.ops[0]}+..+{step.ops[-1]} ({len(step.ops)} ops)"
        )
        calls.append((label, cycled(step.fn, inps)))
    calls.append(("WHOLE logits()", cycled(eng.logits, xs)))
    wall: dict[int, list[float]] = {i: [] for i in range(len(calls))}
    cpu: dict[int, list[float]] = {i: [] for i in range(len(calls))}
    per = -(-a.repeat // a.rounds)
    for r in range(a.rounds):
        for i, (_, fn) in enumerate(calls):
            for _ in range(a.warmup if r == 0 else 1):
                fn()
            for _ in range(per):
                c0, t0 = time.thread_time(), time.perf_counter()
                fn()
                wall[i].append(time.perf_counter() - t0)
                cpu[i].append(time.thread_time() - c0)
    print(f"{a.model} {a.model_arg} kernels={eng.kernels} threads={a.threads} batch={a.batch}")
    print(f"{'cpu ms':>8} {'wall ms':>8}  step")
    tot_c = tot_w = 0.0
    for i, (name, _) in enumerate(calls):
        c, w = 1e3 * statistics.median(cpu[i]), 1e3 * statistics.median(wall[i])
        if name.startswith("WHOLE"):
            print(f"{tot_c:8.3f} {tot_w:8.3f}  SUM of steps")
        else:
            tot_c += c
            tot_w += w
        print(f"{c:8.3f} {w:8.3f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
