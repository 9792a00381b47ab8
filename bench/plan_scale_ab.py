"""Planner scale, two source trees side by side in one run: this directory's
`plan_scale.py` run on each tree's `bwplan` in turn (ABAB..., a fresh interpreter each
time, so both are measured by the same harness), with each tree's median and range over
the rounds, the median and p10-p90 of the paired ratios (new / old, within a round) and
the load average before and after.

    python -m bench.plan_scale_ab OLD_TREE NEW_TREE [--rounds 5]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

_EXPLAIN = re.compile(r"explain, \d+ layers: median ([\d.]+) s")
_CPU = re.compile(r"explain CPU time: median ([\d.]+) s")
_REPLAN = re.compile(r"re-plan, \d+ layers: median ([\d.]+) ms \(min [\d.]+, max ([\d.]+)\)")
_HARNESS = Path(__file__).with_name("plan_scale.py")


def _run(tree: str) -> tuple[float, float, float, float]:
    """(explain wall s, explain CPU s, re-plan median ms, worst re-plan ms) of one tree."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    out = subprocess.run([sys.executable, str(_HARNESS)], cwd=tree, env=env,
                         capture_output=True, text=True, check=True).stdout
    explain, cpu, replan = _EXPLAIN.search(out), _CPU.search(out), _REPLAN.search(out)
    return (float(explain.group(1)), float(cpu.group(1)), float(replan.group(1)),
            float(replan.group(2)))


def _quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rounds", type=int, default=5)
    args = p.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    results: dict[str, list] = {args.old: [], args.new: []}
    for k in range(args.rounds):
        order = (args.old, args.new) if k % 2 == 0 else (args.new, args.old)
        for tree in order:
            results[tree].append(_run(tree))
            e, c, r, m = results[tree][-1]
            print(f"round {k + 1} {tree}: explain {e:.2f} s (CPU {c:.2f} s), re-plan "
                  f"{r:.1f} ms (max {m:.1f}); load {os.getloadavg()[0]:.2f}", flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    for tree, runs in results.items():
        walls, cpus = [r[0] for r in runs], [r[1] for r in runs]
        print(f"{tree}: explain median {statistics.median(walls):.2f} s ({min(walls):.2f}-"
              f"{max(walls):.2f}), CPU {statistics.median(cpus):.2f} s ({min(cpus):.2f}-"
              f"{max(cpus):.2f}); re-plan median {statistics.median(r[2] for r in runs):.1f} "
              f"ms, worst re-plan {max(r[3] for r in runs):.1f} ms")
    for what, i in (("explain wall", 0), ("explain CPU", 1), ("re-plan", 2)):
        ratios = [n[i] / o[i] for o, n in zip(results[args.old], results[args.new])]
        print(f"{what} new/old: median {statistics.median(ratios):.2f} "
              f"(p10 {_quantile(ratios, 0.1):.2f}, p90 {_quantile(ratios, 0.9):.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
