"""Timing with warm-up excluded, several rounds, and the contestants interleaved so that a
noisy neighbour slows all of them alike: each round runs every contestant once, the start
rotating by one per round (A B C, B C A, C A B, ...) so that none always runs first (after
an idle gap) or last. Each call's wall time and the process's CPU time are recorded: on a
shared machine the CPU time shows the work done, the wall time what a descheduled thread
cost. Comparisons are paired: a ratio per round (the two calls ran under the same load),
then the median and the 10th-90th percentiles of those ratios."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


def percentile(values, q: float) -> float:
    """The q-quantile (0..1) of values, linearly interpolated."""
    xs = sorted(values)
    if not xs:
        raise ValueError("no values")
    at = q * (len(xs) - 1)
    lo = int(at)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (at - lo)


@dataclass(frozen=True)
class Timing:
    median: float
    low: float
    high: float
    samples: tuple[float, ...]
    # the process's CPU time (every thread) during each call, in the order of samples
    cpu: tuple[float, ...] = ()

    @staticmethod
    def of(samples: list[float], cpu: list[float] | None = None) -> "Timing":
        return Timing(statistics.median(samples), min(samples), max(samples), tuple(samples),
                      tuple(cpu or ()))

    @property
    def cpu_median(self) -> float:
        return statistics.median(self.cpu) if self.cpu else 0.0

    def ms(self) -> str:
        return f"{self.median * 1e3:.1f} ({self.low * 1e3:.1f}-{self.high * 1e3:.1f})"


@dataclass(frozen=True)
class Ratio:
    """Paired ratios a/b, one per round: median and 10th-90th percentiles."""

    median: float
    p10: float
    p90: float
    rounds: int

    @staticmethod
    def of(a: tuple[float, ...], b: tuple[float, ...]) -> "Ratio":
        if len(a) != len(b) or not a:
            raise ValueError("paired ratios need as many samples on each side")
        r = [x / y for x, y in zip(a, b)]
        return Ratio(statistics.median(r), percentile(r, 0.1), percentile(r, 0.9), len(r))

    def text(self) -> str:
        return f"{self.median:.2f} ({self.p10:.2f}-{self.p90:.2f})"


def interleaved(runs: dict[str, Callable[[], None]], warmup: int, repeats: int
                ) -> dict[str, Timing]:
    """Each callable once per round, in rotated order, its wall and CPU time measured;
    `warmup` rounds discarded."""
    names = list(runs)
    wall: dict[str, list[float]] = {k: [] for k in runs}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    for round_ in range(warmup + repeats):
        shift = round_ % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            c0, start = time.process_time(), time.perf_counter()
            runs[name]()
            elapsed, used = time.perf_counter() - start, time.process_time() - c0
            if round_ >= warmup:
                wall[name].append(elapsed)
                cpu[name].append(used)
    return {k: Timing.of(wall[k], cpu[k]) for k in runs}
