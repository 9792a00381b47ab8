"""Whole training steps with conv2d's Winograd path on and off, interleaved in one process.

The two programs are the same pruned program of the same net, compiled twice from one
seed; only the convolution algorithm of the stride-1 3x3 layers differs
(conv.WINOGRAD_MIN_CHANNELS is switched around each one's steps; everything else, the
im2col path included, is the same code). Each round runs both steps once, the start
alternating; the paired ratios are "Winograd / im2col" of each round's wall and CPU time
(bench/measure.py). The first steps' losses of the two paths are printed too: they differ
in the last bits only.

    python -m bench.conv_paths [--nets ...] [--scenarios ...] [--threads N] [--repeats 15]
"""
from __future__ import annotations

import argparse
import os

import bwplan
from bench.measure import Ratio, interleaved
from bench.nets import available, scenario_rules
from bench.suite import compiled, random_batch
from bwplan.kernels.cpu import conv, threads

WINOGRAD_OFF = 1 << 30
PATHS = ("im2col", "winograd")


def with_threshold(channels: int, run):
    """`run` with conv2d's Winograd threshold at `channels`."""
    def call():
        saved, conv.WINOGRAD_MIN_CHANNELS = conv.WINOGRAD_MIN_CHANNELS, channels
        try:
            return run()
        finally:
            conv.WINOGRAD_MIN_CHANNELS = saved
    return call


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nets", nargs="*", default=["cnn_small", "resnet_mini"])
    parser.add_argument("--scenarios", nargs="*", default=["full", "head"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args(argv)
    count = threads.configure(args.threads)
    on = conv.WINOGRAD_MIN_CHANNELS
    print(f"threads {count}; {args.repeats} rounds after 2 warm-up; load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print("| net | scenario | step ms im2col | step ms Winograd | Winograd / im2col: wall "
          "(p10-p90) | cpu (p10-p90) | first loss im2col / Winograd |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for bench_net in available(args.nets):
        for scenario in args.scenarios:
            base = bwplan.compile(str(bench_net.path), target="reference")
            rules = scenario_rules(base.net, scenario)
            # two programs from the same seed: the same initial parameters, one per path
            progs = {path: compiled(bench_net, rules, True, "cpu") for path in PATHS}
            threads.configure(count)   # compile configures the default; keep the chosen
            batch = random_batch(progs["im2col"].net)
            runs = {path: with_threshold(channels, lambda p=progs[path]: p.run_step(batch))
                    for path, channels in (("im2col", WINOGRAD_OFF), ("winograd", on))}
            losses = {path: run().loss for path, run in runs.items()}   # the first steps
            t = interleaved(runs, warmup=2, repeats=args.repeats)
            wall = Ratio.of(t["winograd"].samples, t["im2col"].samples)
            cpu = Ratio.of(t["winograd"].cpu, t["im2col"].cpu)
            print(f"| {bench_net.name} | {scenario} | {t['im2col'].ms()} | "
                  f"{t['winograd'].ms()} | {wall.text()} | {cpu.text()} | "
                  f"{losses['im2col']:.7g} / {losses['winograd']:.7g} |", flush=True)
    print(f"load average at the end {', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
