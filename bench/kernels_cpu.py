"""Micro-benchmark: the CPU conv2d kernels against PyTorch on cnn_small's convolutions.

Batch 64, 3x3 kernels, pad 1: 3->32 at 32x32, 32->64 at 16x16, 64->128 at 8x8, float32.
Forward against torch.nn.functional.conv2d; dX and dW (+ bias) against the same aten
backward op autograd calls, asked for one gradient at a time; the whole backward (dX, dW,
dB) against autograd's. Both sides run on the same number of threads; each figure is the
median of `--repeats` timed calls after a warm-up, the two sides interleaved so that a
noisy neighbour slows both alike. Ratios above 1 mean bwplan is slower.

    python -m bench.kernels_cpu [--threads N] [--repeats 20] [--batch 64]
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from bwplan import ops as registry
from bwplan.kernels.cpu import conv, threads
from bwplan.ops.reference import make_ctx

LAYERS = (("conv1", 3, 32, 32), ("conv2", 32, 64, 16), ("conv3", 64, 128, 8))
ATTRS = dict(kernel=3, pad=1)


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


def bench_layer(torch, c: int, o: int, hw: int, batch: int, repeats: int) -> dict:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, c, hw, hw)).astype(np.float32)
    w = (rng.standard_normal((o, c, 3, 3)) * 0.1).astype(np.float32)
    b = np.zeros(o, np.float32)
    attrs = dict(ATTRS, out=o)
    ctx = make_ctx(registry.OPS["conv2d"], attrs, [x])
    y = np.empty(ctx.out.shape, np.float32)
    dy = rng.standard_normal(ctx.out.shape).astype(np.float32)
    dx, dw, db = np.empty_like(x), np.empty_like(w), np.empty_like(b)
    params = {"weight": w, "bias": b}

    tx, tw, tb, tdy = (torch.from_numpy(a) for a in (x, w, b, dy))
    conv_bw = torch.ops.aten.convolution_backward

    def torch_grads(mask):
        return lambda: conv_bw(tdy, tx, tw, [o], [1, 1], [1, 1], [1, 1], False, [0, 0], 1,
                               mask)

    txg, twg, tbg = (t.clone().requires_grad_() for t in (tx, tw, tb))

    def torch_autograd():
        out = torch.nn.functional.conv2d(txg, twg, tbg, 1, 1)
        torch.autograd.grad(out, (txg, twg, tbg), tdy)

    def torch_forward_only():
        with torch.no_grad():
            torch.nn.functional.conv2d(txg, twg, tbg, 1, 1)

    def ours_backward():
        conv.conv2d_dx(ctx, {"weight": w}, dy, 0, dx)
        conv.conv2d_dw(ctx, {"x": x}, dy, dw)
        conv.conv2d_db(ctx, {}, dy, db)

    with torch.no_grad():
        rows = {
            "fwd": _interleaved(lambda: conv.conv2d_fwd(ctx, [x], params, y, {}, True, None),
                                lambda: torch.nn.functional.conv2d(tx, tw, tb, 1, 1), repeats),
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
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args(argv)
    count = threads.configure(args.threads)
    import torch

    torch.set_num_threads(count)
    print(f"threads: bwplan {count}, torch {torch.get_num_threads()}; batch {args.batch}; "
          f"median of {args.repeats}; times in ms")
    print(f"{'layer':<7} {'part':<9} {'bwplan':>8} {'torch':>8} {'ratio':>6}")
    totals = [0.0, 0.0]
    for name, c, o, hw in LAYERS:
        for part, (ours, theirs) in bench_layer(torch, c, o, hw, args.batch,
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
