"""Data-parallel benchmark: `python -m bench.data_parallel [--ranks 2]` re-runs itself under
`mpiexec -n RANKS` and, for each network and freezing scenario, measures on the CPU target:

- the bytes one step all-reduces (the plan's gradient buckets) against every learnable
  parameter (what Caffe's multi-GPU solver sends: one flat buffer of all of them);
- the step time with each bucket's all-reduce started as the backward completes it
  (overlapped), and with every bucket started after the backward (blocking), interleaved
  step by step so that a noisy neighbour slows both alike;
- the time rank 0's update waited on the network in each mode; the exposed communication,
  that wait less the time rank 0 waited for the last rank to finish its backward (the ranks'
  skew, measured on the machine's one monotonic clock); and the communication alone (the
  same buckets all-reduced right after a barrier);
- the share of communication hidden behind the backward: 1 - exposed(overlapped) /
  exposed(blocking), from the medians.

The global batch is each net's declared batch; each rank runs half of it. Rank 0 writes
JSON and prints a Markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench.data_parallel")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--nets", nargs="*", default=None)
    p.add_argument("--scenarios", nargs="*", default=None)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--repeats", type=int, default=10, help="steps of each mode")
    p.add_argument("--bucket-kib", type=int, default=256)
    p.add_argument("--out", default="bench/out/data_parallel.json")
    return p.parse_args(argv)


def measure(bench_net, scenario: str, comm, args) -> dict:
    import numpy as np

    import bwplan
    from bench.nets import scenario_rules
    from bench.suite import LR, DECAY, MOMENTUM, random_batch
    from bwplan.runtime.distributed import DataParallel

    base = bwplan.compile(str(bench_net.path), target="reference")
    rules = scenario_rules(base.net, scenario)
    prog = bwplan.compile(str(bench_net.path), target="cpu", rules=rules, seed=0)
    prog.set_optimizer(LR, MOMENTUM, DECAY)
    dp = DataParallel(prog, comm, args.bucket_kib << 10, announce=lambda text: None)
    dp.synchronise()
    batch = dp.local(random_batch(prog.net))
    samples = {True: [], False: []}
    waits = {True: [], False: []}
    exposed = {True: [], False: []}
    ready = np.zeros(comm.size)
    alone = []
    for round_ in range(args.warmup + args.repeats):
        for overlap in (True, False):
            dp.overlap = overlap
            comm.wait(comm.comm.Ibarrier(), "the barrier")
            start = time.perf_counter()
            prog.run_step(batch)
            elapsed = time.perf_counter() - start
            mine = np.array([dp.stats.last_ready])
            comm.wait(comm.comm.Iallgather(mine, ready), "the ready times")
            if round_ >= args.warmup:
                samples[overlap].append(elapsed)
                wait = dp.stats.last_wait_seconds
                waits[overlap].append(wait)
                exposed[overlap].append(max(0.0, wait - max(0.0, ready.max() - mine[0])))
        # the communication alone: the same buckets, every rank ready
        comm.wait(comm.comm.Ibarrier(), "the barrier")
        start = time.perf_counter()
        for request in [comm.iallreduce(b) for b in dp.bucket_buffers()]:
            comm.wait(request, "a bucket")
        if round_ >= args.warmup:
            alone.append(time.perf_counter() - start)
    dp.check_parameters("the parameters")
    buckets = dp.bucket_plan()
    learnable = sum(p.type.nbytes for p in prog.net.params.values() if p.learnable)
    med = {k: statistics.median(v) for k, v in samples.items()}
    wait = {k: statistics.median(v) for k, v in waits.items()}
    shown = {k: statistics.median(v) for k, v in exposed.items()}
    hidden = 1 - shown[True] / shown[False] if shown[False] > 0 else 0.0
    return {"net": bench_net.name, "scenario": scenario, "ranks": comm.size,
            "global_batch": int(len(next(iter(random_batch(prog.net).values())))),
            "buckets": len(buckets.buckets), "bytes_sent": buckets.nbytes,
            "bytes_learnable": learnable, "params_sent": len(buckets.params),
            "step_overlapped_s": med[True], "step_blocking_s": med[False],
            "step_overlapped_range_s": [min(samples[True]), max(samples[True])],
            "wait_overlapped_s": wait[True], "wait_blocking_s": wait[False],
            "exposed_overlapped_s": shown[True], "exposed_blocking_s": shown[False],
            "comm_alone_s": statistics.median(alone), "hidden_share": hidden}


def worker(args) -> int:
    from bench.nets import NETWORKS, SCENARIOS, available
    from bwplan.runtime.distributed import guarded, world

    comm = world()

    def run() -> int:
        rows = []
        nets = available(args.nets or [n for n in NETWORKS if n != "cifar10_quick"])
        for bench_net in nets:
            for scenario in args.scenarios or SCENARIOS:
                rows.append(measure(bench_net, scenario, comm, args))
                if comm.rank == 0:
                    print(_row(rows[-1]), flush=True)
        if comm.rank == 0:
            Path(args.out).parent.mkdir(parents=True, exist_ok=True)
            doc = {"load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M"),
                   "rows": rows}
            Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
            print(f"load average at the end: {os.getloadavg()}; wrote {args.out}")
        return 0

    return guarded(comm, run)


HEADER = ("| net | scenario | buckets | bytes/step (pruned) | all learnable (Caffe) | step "
          "overlapped ms (min-max) | step blocking ms | wait overlapped / blocking ms | "
          "exposed overlapped / blocking ms | comm alone ms | hidden |\n"
          + "| --- " * 11 + "|")


def _row(r: dict) -> str:
    from bwplan.explain.units import nbytes
    lo, hi = r["step_overlapped_range_s"]
    return (f"| {r['net']} | {r['scenario']} | {r['buckets']} | {nbytes(r['bytes_sent'])} | "
            f"{nbytes(r['bytes_learnable'])} | {r['step_overlapped_s'] * 1e3:.1f} "
            f"({lo * 1e3:.1f}-{hi * 1e3:.1f}) | {r['step_blocking_s'] * 1e3:.1f} | "
            f"{r['wait_overlapped_s'] * 1e3:.2f} / {r['wait_blocking_s'] * 1e3:.2f} | "
            f"{r['exposed_overlapped_s'] * 1e3:.2f} / {r['exposed_blocking_s'] * 1e3:.2f} | "
            f"{r['comm_alone_s'] * 1e3:.2f} | {100 * r['hidden_share']:.0f}% |")


def main(argv=None) -> int:
    args = parse(sys.argv[1:] if argv is None else argv)
    from bwplan.runtime.distributed import launched_size
    if launched_size() > 1:
        return worker(args)
    print(f"load average at the start: {os.getloadavg()}", flush=True)
    print(HEADER, flush=True)
    cmd = ["mpiexec", "-n", str(args.ranks), sys.executable, "-m", "bench.data_parallel",
           *(sys.argv[1:] if argv is None else argv)]
    return subprocess.call(cmd)


if __name__ == "__main__":
    sys.exit(main())
