"""Planner scale, two source trees side by side in one run: `python -m bench.plan_scale` of
each tree in turn (ABAB..., a fresh interpreter each time), with the medians over rounds
and the load average before and after.

    python -m bench.plan_scale_ab OLD_TREE NEW_TREE [--rounds 3]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys

_EXPLAIN = re.compile(r"explain, \d+ layers: median ([\d.]+) s")
_REPLAN = re.compile(r"re-plan, \d+ layers: median ([\d.]+) ms \(min [\d.]+, max ([\d.]+)\)")


def _run(tree: str) -> tuple[float, float, float]:
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree))
    out = subprocess.run([sys.executable, "-m", "bench.plan_scale"], cwd=tree, env=env,
                         capture_output=True, text=True, check=True).stdout
    explain, replan = _EXPLAIN.search(out), _REPLAN.search(out)
    return float(explain.group(1)), float(replan.group(1)), float(replan.group(2))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args(argv)
    print(f"load average before: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    results: dict[str, list] = {args.old: [], args.new: []}
    for k in range(args.rounds):
        order = (args.old, args.new) if k % 2 == 0 else (args.new, args.old)
        for tree in order:
            results[tree].append(_run(tree))
            e, r, m = results[tree][-1]
            print(f"round {k + 1} {tree}: explain {e:.2f} s, re-plan {r:.1f} ms (max {m:.1f})",
                  flush=True)
    print(f"load average after: {os.getloadavg()[0]:.2f} {os.getloadavg()[1]:.2f}")
    for tree, runs in results.items():
        print(f"{tree}: explain median {statistics.median(r[0] for r in runs):.2f} s, "
              f"re-plan median {statistics.median(r[1] for r in runs):.1f} ms, "
              f"worst re-plan {max(r[2] for r in runs):.1f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
