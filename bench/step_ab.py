"""Whole training steps of two source trees, paired and interleaved in one run.

Each tree's program runs in a worker interpreter of its own (PYTHONPATH = that tree), both
compiled from the same seed with the same freezing and batch; the driver asks them for one
step at a time, in rotated order (A B, B A, ...), so that a noisy neighbour slows both
alike, and each worker reports its step's wall time and its process's CPU time (every
thread). The paired ratios are "new / old" per round, as bench/measure.py states them;
the first losses of the two trees are printed (equal where the arithmetic is).

    python -m bench.step_ab OLD_TREE NEW_TREE [--nets ...] [--scenarios ...]
        [--threads N] [--old-threads N] [--old-env KEY=VALUE ...] [--repeats 15] [--warmup 2]

`--old-env` sets environment variables in the old tree's worker only: with OLD = NEW, one
tree against itself, e.g. `--old-env BWPLAN_FUSE=0` times the unfused program against
the fused one.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from bench.measure import Ratio, Timing

# Runs inside each worker, importing bwplan and bench from its own tree: one line in
# ("step" or "quit"), one JSON line out.
WORKER = r"""
import json, sys, time
net, scenario, threads_n = sys.argv[1], sys.argv[2], int(sys.argv[3])
import bwplan
from bench.nets import available, scenario_rules
from bench.suite import compiled, random_batch
from bwplan.kernels.cpu import threads
bench_net = available([net])[0]
base = bwplan.compile(str(bench_net.path), target="reference")
prog = compiled(bench_net, scenario_rules(base.net, scenario), True, "cpu")
threads.configure(threads_n)
batch = random_batch(prog.net)
loss = prog.run_step(batch).loss
print(json.dumps({"loss": loss}), flush=True)
for line in sys.stdin:
    if line.strip() != "step":
        break
    c0, w0 = time.process_time(), time.perf_counter()
    prog.run_step(batch)
    print(json.dumps({"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0}),
          flush=True)
"""


class Worker:
    def __init__(self, tree: str, net: str, scenario: str, threads: int,
                 extra: dict[str, str] | None = None) -> None:
        env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), **(extra or {}))
        self.proc = subprocess.Popen(
            [sys.executable, "-c", WORKER, net, scenario, str(threads)], cwd=tree, env=env,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.first_loss = json.loads(self._line())["loss"]

    def _line(self) -> str:
        line = self.proc.stdout.readline()
        if not line:
            raise SystemExit(f"a worker stopped (exit status {self.proc.wait()})")
        return line

    def step(self) -> tuple[float, float]:
        self.proc.stdin.write("step\n")
        self.proc.stdin.flush()
        got = json.loads(self._line())
        return got["wall"], got["cpu"]

    def close(self) -> None:
        self.proc.stdin.write("quit\n")
        self.proc.stdin.close()
        self.proc.wait()


def _load() -> str:
    return ", ".join(f"{v:.1f}" for v in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--nets", nargs="*", default=["cnn_small"])
    p.add_argument("--scenarios", nargs="*", default=["full", "head"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--old-threads", type=int, default=None,
                   help="the old tree's thread count (default --threads): with OLD = NEW, "
                        "one tree at two thread counts")
    p.add_argument("--old-env", nargs="*", default=[], metavar="KEY=VALUE",
                   help="environment variables of the old tree's worker only")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=2)
    args = p.parse_args(argv)
    old_threads = args.threads if args.old_threads is None else args.old_threads
    old_env = dict(item.partition("=")[::2] for item in args.old_env)
    settings = "".join(f", {k}={v}" for k, v in old_env.items())
    print(f"old {args.old} ({old_threads} threads{settings}), new {args.new} "
          f"({args.threads} threads); {args.repeats} rounds after {args.warmup} warm-up; "
          f"load average {_load()}")
    print("| net | scenario | step ms old | step ms new | new / old: wall (p10-p90) | "
          "cpu (p10-p90) | cpu ms old / new | first loss old / new | load |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for net in args.nets:
        for scenario in args.scenarios:
            workers = {"old": Worker(args.old, net, scenario, old_threads, old_env),
                       "new": Worker(args.new, net, scenario, args.threads)}
            wall: dict[str, list[float]] = {k: [] for k in workers}
            cpu: dict[str, list[float]] = {k: [] for k in workers}
            names = list(workers)
            for r in range(args.warmup + args.repeats):
                for name in names[r % 2:] + names[:r % 2]:
                    w, c = workers[name].step()
                    if r >= args.warmup:
                        wall[name].append(w)
                        cpu[name].append(c)
            t = {k: Timing.of(wall[k], cpu[k]) for k in workers}
            rw = Ratio.of(t["new"].samples, t["old"].samples)
            rc = Ratio.of(t["new"].cpu, t["old"].cpu)
            print(f"| {net} | {scenario} | {t['old'].ms()} | {t['new'].ms()} | {rw.text()} | "
                  f"{rc.text()} | {t['old'].cpu_median * 1e3:.1f} / "
                  f"{t['new'].cpu_median * 1e3:.1f} | {workers['old'].first_loss:.7g} / "
                  f"{workers['new'].first_loss:.7g} | {_load()} |", flush=True)
            for w in workers.values():
                w.close()
    print(f"load average at the end {_load()}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
