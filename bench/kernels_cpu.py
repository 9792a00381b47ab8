"""Micro-benchmark: the CPU conv2d kernels against PyTorch on one example's convolutions.

cnn_small (default; batch 64, 3x3 kernels, pad 1): 3->32 at 32x32, 32->64 at 16x16,
64->128 at 8x8. resnet_mini (batch 32): one convolution of each shape it has, the stem,
3x3 at 32, 64 and 128 channels, the stride-2 3x3 and 1x1 ones that open stages 2 and 3.
Float32. Forward against torch.nn.functional.conv2d; dX and dW (+ bias) against the same
aten backward op autograd calls, asked for one gradient at a time; the whole backward (dX,
dW, dB) against autograd's. Both sides run on the same number of threads; each figure is
the median of `--repeats` timed calls after a warm-up, the two sides interleaved so that a
noisy neighbour slows both alike. Ratios above 1 mean bwplan is slower.

PyTorch here shares the process, and so the passive OpenMP wait policy bwplan sets: that
slows it (1.1-1.2x on cnn_small's convolutions, measured on the 2-vCPU machine); `python -m
bench.alone` times whole steps with each side in a process of its own.

    python -m bench.kernels_cpu [--net cnn_small|resnet_mini] [--threads N] [--repeats 20]
                                [--batch N]
"""
from __future__ import annotations

import argparse
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
}
BATCH = {"cnn_small": 64, "resnet_mini": 32}


def _median_ms(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times)


def _interleaved(ours, theirs, repeats: int) -> tuple[float, float]:
    ours(), theirs()  # warm-up: compilation, first-touch of buffers
    a, b = [], []
    for _ in range(repeats):
        a.append(_median_ms(ours, 1))
        b.append(_median_ms(theirs, 1))
    return statistics.median(a), statistics.median(b)


def bench_layer(torch, c: int, o: int, hw: int, k: int, s: int, p: int, batch: int,
                repeats: int) -> dict:
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

    txg, twg, tbg = (t.clone().requires_grad_() for t in (tx, tw, tb))

    def torch_autograd():
        out = torch.nn.functional.conv2d(txg, twg, tbg, s, p)
        torch.autograd.grad(out, (txg, twg, tbg), tdy)

    def torch_forward_only():
        with torch.no_grad():
            torch.nn.functional.conv2d(txg, twg, tbg, s, p)

    def ours_backward():
        conv.conv2d_dx(ctx, {"weight": w}, dy, 0, dx)
        conv.conv2d_dw(ctx, {"x": x}, dy, dw)
        conv.conv2d_db(ctx, {}, dy, db)

    with torch.no_grad():
        rows = {
            "fwd": _interleaved(lambda: conv.conv2d_fwd(ctx, [x], params, y, {}, True, None),
                                lambda: torch.nn.functional.conv2d(tx, tw, tb, s, p), repeats),
            "dx": _interleaved(lambda: conv.conv2d_dx(ctx, {"weight": w}, dy, 0, dx),
                               torch_grads([True, False, False]), repeats),
            "dw+db": _interleaved(lambda: (conv.conv2d_dw(ctx, {"x": x}, dy, dw),
                                           conv.conv2d_db(ctx, {}, dy, db)),
                                  torch_grads([False, True, True]), repeats),
        }
    # autograd's backward: the forward with the graph, minus the forward alone
    ours, full = _interleaved(ours_backward, torch_autograd, repeats)
    rows["backward"] = (ours, full - _median_ms(torch_forward_only, repeats))
    return rows


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
    print(f"{args.net}; threads: bwplan {count}, torch {torch.get_num_threads()}; batch "
          f"{batch}; median of {args.repeats}; times in ms")
    print(f"{'layer':<7} {'part':<9} {'bwplan':>8} {'torch':>8} {'ratio':>6}")
    totals = [0.0, 0.0]
    for name, c, o, hw, k, s, p in LAYERS[args.net]:
        for part, (ours, theirs) in bench_layer(torch, c, o, hw, k, s, p, batch,
                                                args.repeats).items():
            print(f"{name:<7} {part:<9} {ours:8.2f} {theirs:8.2f} {ours / theirs:6.2f}")
            if part in ("fwd", "backward"):
                totals[0] += ours
                totals[1] += theirs
    print(f"{'all':<7} {'fwd+bwd':<9} {totals[0]:8.2f} {totals[1]:8.2f} "
          f"{totals[0] / totals[1]:6.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
