"""Micro-benchmark: the CPU conv2d kernels against PyTorch on one example's convolutions.

cnn_small (default; batch 64, 3x3 kernels, pad 1): 3->32 at 32x32, 32->64 at 16x16,
64->128 at 8x8. resnet_mini (batch 32): one convolution of each shape it has, the stem,
3x3 at 32, 64 and 128 channels, the stride-2 3x3 and 1x1 ones that open stages 2 and 3.
Float32. Forward against torch.nn.functional.conv2d; dX, dW and dW + bias against the
same aten backward op autograd calls, asked for those gradients only. Both sides run on
the same number of threads; each figure is the median of `--repeats` rounds after a
warm-up round, every kernel once per round in rotated order so that a noisy neighbour slows
all alike. Ratios above 1 mean bwplan is slower.

Each kernel's GFLOP/s is also set against the single-thread GEMM peak, np.matmul of two
square float32 matrices (PEAK_N), measured in the same rounds: the GFLOP/s come from the
process's CPU time, so a thread descheduled by a neighbour does not count, and "% peak" is
the median over rounds of the kernel's rate over the peak's in that round. With more than
one thread the CPU time adds up every thread's, so the percentage is per core busy. Layers
that conv2d runs as Winograd F(2x2, 3x3) or F(2x2, 5x5) are marked "W" ("Wf": the forward
and dX only, dW on im2col): their GFLOP/s count the direct convolution's FLOPs (the work
done for the user), so they can pass the GEMM peak. cifar10_quick (batch 100): its 5x5
layers, 3->32 at 32x32, 32->32 at 16x16, 32->64 at 8x8, pad 2.

PyTorch here shares the process, and so the passive OpenMP wait policy bwplan sets: that
slows it (1.1-1.2x on cnn_small's convolutions, measured on the 2-vCPU machine); `python -m
bench.alone` times whole steps with each side in a process of its own.

    python -m bench.kernels_cpu [--net cnn_small|resnet_mini|cifar10_quick] [--threads N]
                                [--repeats 20] [--batch N]
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np

from bwplan import ops as registry
from bwplan.kernels.cpu import conv, threads
from bwplan.ops.reference import make_ctx

# (name, in channels, out channels, image size, kernel, stride, pad)
LAYERS = {
    "cnn_small": (("conv1", 3, 32, 32, 3, 1, 1), ("conv2", 32, 64, 16, 3, 1, 1),
                  ("conv3", 64, 128, 8, 3, 1, 1)),
    "resnet_mini": (("stem", 3, 32, 32, 3, 1, 1), ("s1", 32, 32, 32, 3, 1, 1),
                    ("s2down", 32, 64, 32, 3, 2, 1), ("s2proj", 32, 64, 32, 1, 2, 0),
                    ("s2", 64, 64, 16, 3, 1, 1), ("s3down", 64, 128, 16, 3, 2, 1),
                    ("s3proj", 64, 128, 16, 1, 2, 0), ("s3", 128, 128, 8, 3, 1, 1)),
    "cifar10_quick": (("conv1", 3, 32, 32, 5, 1, 2), ("conv2", 32, 32, 16, 5, 1, 2),
                      ("conv3", 32, 64, 8, 5, 1, 2)),
}
BATCH = {"cnn_small": 64, "resnet_mini": 32, "cifar10_quick": 100}


# the single-thread GEMM peak: np.matmul of square float32 matrices this large
PEAK_N = 768


def _rounds(fns: dict, repeats: int) -> dict[str, tuple[list[float], list[float]]]:
    """name -> (wall seconds, process CPU seconds) of each timed call: every callable once
    per round, the start rotating by one per round, after one warm-up round."""
    names = list(fns)
    out = {k: ([], []) for k in names}
    for round_ in range(repeats + 1):
        shift = round_ % len(names)
        for name in names[shift:] + names[:shift]:
            c0, t0 = time.process_time(), time.perf_counter()
            fns[name]()
            wall, cpu = time.perf_counter() - t0, time.process_time() - c0
            if round_:
                out[name][0].append(wall)
                out[name][1].append(cpu)
    return out


def conv_flops(c: int, o: int, hw: int, k: int, s: int, p: int, batch: int) -> int:
    """Multiply-adds x 2 of one conv2d forward (dX and dW do as many)."""
    ho = (hw + 2 * p - k) // s + 1
    return 2 * batch * o * c * k * k * ho * ho


def bench_layer(torch, c: int, o: int, hw: int, k: int, s: int, p: int, batch: int,
                repeats: int, peak) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((o, c, k, k)) * 0.1).astype(np.float32)
    b = np.zeros(o, np.float32)
    attrs = dict(out=o, kernel=k, stride=s, pad=p)
    ctx = make_ctx(registry.OPS["conv2d"], attrs, [x])
    y = np.empty(ctx.out.shape, np.float32)
    dy = rng.standard_normal(ctx.out.shape).astype(np.float32)
    dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(b)
    params = {"weight": w, "bias": b}

    tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
    conv_bw = torch.ops.aten.convolution_backward

    def torch_grads(mask):
        return lambda: conv_bw(tdy, tx, tw, [o], [s, s], [p, p], [1, 1], False, [0, 0], 1,
                               mask)

    def torch_forward():
        with torch.no_grad():
            torch.nn.functional.conv2d(tx, tw, tb, s, p)

    fns = {
        "peak": peak,
        "fwd": lambda: conv.conv2d_fwd(ctx, [x], params, y, {}, True, None),
        "torch fwd": torch_forward,
        "dx": lambda: conv.conv2d_dx(ctx, {"weight": w}, dy, 0, dx),
        "torch dx": torch_grads([True, False, False]),
        "dw": lambda: conv.conv2d_dw(ctx, {"x": x}, dy, dw),
        "torch dw": torch_grads([False, True, False]),
        "dw+db": lambda: (conv.conv2d_dw(ctx, {"x": x}, dy, dw),
                          conv.conv2d_db(ctx, {}, dy, db)),
        "torch dw+db": torch_grads([False, True, True]),
    }
    return _rounds(fns, repeats)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--net", choices=sorted(LAYERS), default="cnn_small")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=None, help="default: the example's")
    args = parser.parse_args(argv)
    batch = args.batch or BATCH[args.net]
    count = threads.configure(args.threads)
    import torch

    torch.set_num_threads(count)
    rng = np.random.default_rng(1)
    a, bm = (rng.standard_normal((PEAK_N, PEAK_N)).astype(np.float32) for _ in range(2))
    cm = np.empty_like(a)
    peak_flops = 2 * PEAK_N ** 3

    def peak():  # BLAS runs single-threaded under threads.configure (threadpoolctl)
        np.matmul(a, bm, out=cm)

    print(f"{args.net}; threads: bwplan {count}, torch {torch.get_num_threads()}; batch "
          f"{batch}; median of {args.repeats} rounds, rotated; load average "
          f"{', '.join(f'{v:.1f}' for v in os.getloadavg())}")
    print("GFLOP/s from process CPU time (wall in brackets); peak = np.matmul "
          f"{PEAK_N}x{PEAK_N} float32, measured in every round; % = paired ratio to it")
    print("ms: median wall; ratio: bwplan / torch, median of paired per-round ratios of "
          "CPU time (of wall in brackets)")
    print(f"{'layer':<9} {'part':<6} {'ms bwplan':>10} {'ms torch':>9} {'ratio':>13} "
          f"{'GFLOP/s':>15} {'peak':>6} {'% peak':>7}")
    totals = [0.0, 0.0]
    for name, c, o, hw, k, s, p in LAYERS[args.net]:
        rows = bench_layer(torch, c, o, hw, k, s, p, batch, args.repeats, peak)
        ctx = make_ctx(registry.OPS["conv2d"], dict(out=o, kernel=k, stride=s, pad=p),
                       [np.empty((batch, c, hw, hw), np.float32)])
        g = conv.geometry(ctx)
        name = f"{name} W" if g.tiled_dw is not None else \
            f"{name} Wf" if g.tiled is not None else name
        flops = conv_flops(c, o, hw, k, s, p, batch)
        peak_wall, peak_cpu = rows["peak"]
        for part in ("fwd", "dx", "dw", "dw+db"):
            wall, cpu = rows[part]
            twall, tcpu = rows[f"torch {part}"]
            ours, theirs = statistics.median(wall), statistics.median(twall)
            ratio = statistics.median(a / b for a, b in zip(cpu, tcpu))
            ratio_wall = statistics.median(a / b for a, b in zip(wall, twall))
            gf = flops / statistics.median(cpu) / 1e9
            gf_wall = flops / ours / 1e9
            pk = peak_flops / statistics.median(peak_cpu) / 1e9
            # per round: this kernel's GFLOP/s over the peak GEMM's, both from CPU time
            share = statistics.median(pc / kc for pc, kc in zip(peak_cpu, cpu)) * \
                flops / peak_flops
            print(f"{name:<9} {part:<6} {ours * 1e3:10.2f} {theirs * 1e3:9.2f} "
                  f"{ratio:6.2f} ({ratio_wall:4.2f}) {gf:7.1f} ({gf_wall:5.1f}) {pk:6.1f} "
                  f"{100 * share:6.0f}%")
            if part in ("fwd", "dx", "dw+db"):
                totals[0] += ours
                totals[1] += theirs
    print(f"{'all':<9} {'f+b':<6} {totals[0] * 1e3:10.2f} {totals[1] * 1e3:9.2f} "
          f"{totals[0] / totals[1]:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
