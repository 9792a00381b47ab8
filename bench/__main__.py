"""The benchmark suite: `python -m bench [--quick]` (or `bwplan bench`).

For each network and freezing scenario: the FLOP model's forward / full / planned
backward, kernels launched, median step time (min-max) of bwplan pruned, bwplan unpruned
and PyTorch (default NCHW eager, channels_last eager, torch.compile), bwplan pruned against
PyTorch at its best (the fastest of the three, named) and against default eager as the
median (p10-p90) of paired per-round ratios of wall and of process CPU time, the load
average when each case starts and ends, peak activation memory, efficiency = measured
saving / FLOP-model saving, the forward time share and a backward-only efficiency; the
frozen-prefix cache's epoch times; gradual unfreezing. Results: JSON, a Markdown table, a
PNG chart, under --out.

glibc's allocator returns large blocks to the kernel after each step, so a program that
frees and re-allocates its activations page-faults thousands of times per step; PyTorch's
CPU allocator does this. To measure the peer at its best, the suite re-executes itself with
MALLOC_MMAP_THRESHOLD_ and MALLOC_TRIM_THRESHOLD_ set (the same for all contestants) unless
--no-malloc-tuning is given. It also sets OMP_WAIT_POLICY=PASSIVE, since bwplan's kernels
and PyTorch share one OpenMP runtime in the process; the "alone" processes run with it too.

Rounds: 20 timed after 3 warm-up (each PyTorch variant also runs warm-up + 1 steps of its
own first, which is where torch.compile compiles); --quick: 10 timed after 1, enough for a
ratio's 10th-90th percentiles.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from pathlib import Path

# OMP_WAIT_POLICY: bwplan's kernels and torch share one OpenMP runtime, read at start-up;
# left spinning, one side's idle workers slow the other's parallel regions
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 30), "MALLOC_TRIM_THRESHOLD_": str(1 << 31),
              "OMP_WAIT_POLICY": "PASSIVE"}


def parse(argv):
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few repeats, two scenarios (< 2 min)")
    p.add_argument("--nets", nargs="*", default=None)
    p.add_argument("--scenarios", nargs="*", default=None)
    p.add_argument("--target", default="cpu", choices=("cpu", "reference"))
    p.add_argument("--repeats", type=int, default=None)
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--batch-mult", type=int, default=1)
    p.add_argument("--threads", type=int, default=None, help="default: all cores")
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--no-malloc-tuning", action="store_true")
    p.add_argument("--out", default="bench/out")
    return p.parse_args(argv)


def environment(threads: int) -> dict:
    import numba
    import numpy
    env = {"date": datetime.date.today().isoformat(), "python": platform.python_version(),
           "numpy": numpy.__version__, "numba": numba.__version__, "threads": threads,
           "machine": platform.machine(), "cpu": _cpu_name(), "cores": os.cpu_count(),
           "malloc_tuning": all(os.environ.get(k) == v for k, v in MALLOC_ENV.items())}
    try:
        import torch
        env["torch"] = torch.__version__
    except ImportError:
        env["torch"] = None
    return env


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _load(avg) -> str:
    return ", ".join(f"{x:.1f}" for x in avg)


def main(argv=None) -> int:
    args = parse(argv if argv is not None else sys.argv[1:])
    if not args.no_malloc_tuning and any(os.environ.get(k) != v for k, v in MALLOC_ENV.items()):
        # glibc reads these when the process starts: run again with them set
        os.environ.update(MALLOC_ENV)
        root = str(Path(__file__).resolve().parents[1])
        os.environ["PYTHONPATH"] = os.pathsep.join(
            [root] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])
        os.execv(sys.executable, [sys.executable, "-m", "bench"] +
                 (sys.argv[1:] if argv is None else list(argv)))
    threads = args.threads or os.cpu_count()
    os.environ["BENCH_THREADS"] = str(threads)
    from bench import report, suite
    from bench.nets import NETWORKS, SCENARIOS, available
    from bwplan.kernels.cpu.threads import configure
    configure(threads)
    with_torch = not args.no_torch
    if with_torch:
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            with_torch = False
    quick = args.quick
    nets = available(args.nets or (["cnn_small", "siamese_mlp"] if quick else list(NETWORKS)))
    scenarios = args.scenarios or (["full", "head"] if quick else list(SCENARIOS))
    warmup = args.warmup if args.warmup is not None else (1 if quick else 3)
    repeats = args.repeats or (10 if quick else 20)
    env = environment(threads)
    env["load_average_start"] = list(os.getloadavg())
    env["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
    print(f"bench: {env['cpu']}, {threads} threads, numpy {env['numpy']}, numba "
          f"{env['numba']}, torch {env['torch']}, {'quick' if quick else 'full'} mode, "
          f"{repeats} rounds, load average {_load(env['load_average_start'])}", file=sys.stderr)
    rows = []
    out = Path(args.out)
    for bn in nets:
        for sc in scenarios:
            print(f"  {bn.name} / {sc} ...", file=sys.stderr, flush=True)
            rows.append(suite.run_case(bn, sc, args.target, warmup, repeats, with_torch,
                                       args.batch_mult))
            # what is measured so far survives an interrupted run
            report.write_json(out / "partial.json", {"environment": env, "rows": rows})
    extras = {"cache": [], "gradual": [], "caffe_time": []}
    if not quick:
        for bn in nets:
            c = suite.cache_case(bn, args.target)
            if c:
                extras["cache"].append(c)
        extras["gradual"].append(suite.gradual_case(nets[0], args.target))
    for bn in nets:
        if bn.caffe_time_log and bn.caffe_time_log.exists():
            extras["caffe_time"].append(suite.caffe_time(bn))
    env["load_average_end"] = list(os.getloadavg())
    table = (f"Load average (1, 5, 15 min) at start {_load(env['load_average_start'])}, at end "
             f"{_load(env['load_average_end'])}; OMP_WAIT_POLICY={env['omp_wait_policy']}; "
             f"{threads} threads; {repeats} timed rounds after {warmup} warm-up.\n\n"
             + report.markdown(rows) + report.targets(rows))
    report.write_json(out / "results.json", {"environment": env, "rows": rows, **extras})
    from bwplan.fsutil import write_atomic
    write_atomic(out / "results.md", table + report.extras_markdown(extras))
    drew = report.chart(rows, out / "results.png")
    print(table + report.extras_markdown(extras))
    print(f"wrote {out}/results.json, results.md" + (", results.png" if drew else ""),
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
