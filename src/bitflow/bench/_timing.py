"""Wall-clock timing: medians (plus min and max) of repeated calls after warm-up."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    """Milliseconds per call over ``runs`` timed calls: wall clock (median, min, max) and the
    median CPU time of the whole process per call (all its threads; on a shared machine this
    is what a call costs when other processes preempt it, so it is reported beside the wall
    clock, never instead of it)."""

    median_ms: float
    min_ms: float
    max_ms: float
    runs: int
    cpu_median_ms: float = float("nan")

    def to_json(self, key: str) -> dict[str, Any]:
        """``{key: median, key_min: min, key_max: max, key_cpu: CPU median}`` (``key`` ends in
        ``_ms``)."""
        return {
            key: self.median_ms,
            f"{key}_min": self.min_ms,
            f"{key}_max": self.max_ms,
            f"{key}_cpu": self.cpu_median_ms,
        }

    @classmethod
    def from_seconds(cls, wall: Sequence[float], cpu: Sequence[float] | None = None) -> Timing:
        """The timing of calls that took ``wall`` seconds each (and ``cpu`` seconds of process
        CPU time, if known): median (the mean of the two middle values for an even count),
        min and max in milliseconds."""
        if not wall:
            raise ValueError("no timed calls")
        ts = sorted(wall)
        return cls(
            1e3 * _median(ts),
            1e3 * ts[0],
            1e3 * ts[-1],
            len(ts),
            1e3 * _median(sorted(cpu)) if cpu else float("nan"),
        )


def measure(fn: Callable[[], Any], repeat: int, warmup: int) -> Timing:
    """Call ``fn`` ``warmup`` times untimed, then ``repeat`` times, each timed with
    ``time.perf_counter`` (and ``time.process_time``); returns the median (the mean of the two
    middle values for an even count), min and max in milliseconds."""
    return measure_interleaved({"fn": fn}, repeat, warmup)["fn"]


def measure_interleaved(
    fns: dict[str, Callable[[], Any]], repeat: int, warmup: int, rounds: int = 1
) -> dict[str, Timing]:
    """Like :func:`measure` for several runtimes at once, interleaved: ``rounds`` rounds, each
    calling every ``fn`` in turn ``ceil(repeat / rounds)`` times (after ``warmup`` untimed calls
    of each in the first round and one untimed call per later round), so that a slow phase of
    a shared machine (another process taking the core) hits every runtime alike instead of
    whichever block ran then. Returns each key's median, min and max over all its timed
    calls."""
    if repeat < 1:
        raise ValueError(f"repeat must be >= 1, got {repeat}")
    if warmup < 0 or rounds < 1:
        raise ValueError(
            f"warmup must be >= 0 and rounds >= 1, got warmup={warmup}, rounds={rounds}"
        )
    per = -(-repeat // rounds)
    times: dict[str, list[float]] = {k: [] for k in fns}
    cpu: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds):
        for key, fn in fns.items():
            for _ in range(warmup if r == 0 else min(1, warmup)):
                fn()
            for _ in range(per):
                c0 = time.process_time()
                t0 = time.perf_counter()
                fn()
                times[key].append(time.perf_counter() - t0)
                cpu[key].append(time.process_time() - c0)
    return {key: Timing.from_seconds(times[key], cpu[key]) for key in fns}


def _median(sorted_values: list[float]) -> float:
    mid = len(sorted_values) // 2
    return (
        sorted_values[mid]
        if len(sorted_values) % 2
        else 0.5 * (sorted_values[mid - 1] + sorted_values[mid])
    )
