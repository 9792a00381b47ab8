"""Timing with warm-up excluded, several repeats, and the contestants interleaved (A, B,
C, A, B, C, ...) so that a noisy neighbour slows all of them alike."""
from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    median: float
    low: float
    high: float
    samples: tuple[float, ...]

    @staticmethod
    def of(samples: list[float]) -> "Timing":
        return Timing(statistics.median(samples), min(samples), max(samples), tuple(samples))

    def ms(self) -> str:
        return f"{self.median * 1e3:.1f} ({self.low * 1e3:.1f}-{self.high * 1e3:.1f})"


def interleaved(runs: dict[str, Callable[[], None]], warmup: int, repeats: int
                ) -> dict[str, Timing]:
    """Each callable once per round, its wall time measured; `warmup` rounds discarded."""
    samples: dict[str, list[float]] = {k: [] for k in runs}
    for round_ in range(warmup + repeats):
        for name, fn in runs.items():
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            if round_ >= warmup:
                samples[name].append(elapsed)
    return {k: Timing.of(v) for k, v in samples.items()}
