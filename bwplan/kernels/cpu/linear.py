"""linear on the CPU: every component is BLAS on 2-D views, so there is no Numba loop here
except the bias gradient's column sum.

    forward  Y[N, O] = X[N, K] @ W^T + b
    dX       dX[N, K] = dY @ W
    dW       dW[O, K] = dY^T @ X

BLAS runs single-threaded (threads.py), so a large GEMM is cut into blocks that run as
tasks on the kernel workers: blocks of the columns of the larger operand (and of the
output), so that the smaller one is the one every block reads again (BLAS packs both
operands, and cutting W^T [2048, 256] by rows of X [64, 2048] made each block pack all of
it: slower than one block). Each block is one GEMM with the whole inner dimension, so the
blocks add nothing up between them; how a GEMM is cut depends on its shape only, never on
the thread count, so neither does its result.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from bwplan.kernels.cpu import threads
from bwplan.kernels.cpu.views import view

# A GEMM is cut into one block per this many FLOPs (2*rows*inner*cols), into at most
# MAX_BLOCKS blocks of at least MIN_WIDTH rows or columns. A block of 32 MFLOP runs for
# about 0.3 ms on one core; measured on cnn_small's fc1 (67 MFLOP), two blocks ran 1.4x
# faster than one and four no faster than two.
FLOPS_PER_BLOCK = 32 << 20
MAX_BLOCKS = 8
MIN_WIDTH = 16


def _rows(a: np.ndarray) -> np.ndarray:
    """[N, ...] as [N, K]."""
    return view(a, (a.shape[0], a.size // max(a.shape[0], 1)))


def _blocks(size: int, flops: int) -> list[slice]:
    """The blocks a dimension of `size` is cut into."""
    count = max(1, min(MAX_BLOCKS, flops // FLOPS_PER_BLOCK, size // MIN_WIDTH))
    edges = [size * i // count for i in range(count + 1)]
    return [slice(lo, hi) for lo, hi in zip(edges[:-1], edges[1:])]


def _gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> None:
    """out = a @ b, in blocks of the columns of b or of the rows of a, whichever is larger.
    np.matmul, unlike np.dot, writes into a strided block of `out`."""
    flops = 2 * a.shape[0] * a.shape[1] * b.shape[1]
    by_columns = a.size <= b.size
    blocks = _blocks(out.shape[1] if by_columns else out.shape[0], flops)

    def block(t: int) -> None:
        s = blocks[t]
        if by_columns:
            np.matmul(a, b[:, s], out=out[:, s])
        else:
            np.matmul(a[s], b, out=out[s])

    threads.for_each(len(blocks), block)


@njit(cache=True)
def _sum_rows(dout, out):
    """out[o] = sum of dout[:, o], accumulated in float64 row by row (contiguous reads).
    Serial: [N, O] is small next to the GEMMs, a thread start would cost more."""
    acc = np.zeros(dout.shape[1])
    for n in range(dout.shape[0]):
        for o in range(dout.shape[1]):
            acc[o] += dout[n, o]
    # element by element: an array assignment (out[:] = acc) checks the shapes, and the
    # code that formats that check's error message took 1.9 s of a cold start to compile
    for o in range(out.shape[0]):
        out[o] = acc[o]


@njit(cache=True, nogil=True)
def _bias_leaky(out, bias, has_bias, slope):
    """out[n, o] (+ bias[o]), then v if v > 0 else v * slope: the bias add and a relu's
    forward (the float ops of both kernels) in one pass over the GEMM's output."""
    for n in range(out.shape[0]):
        for o in range(out.shape[1]):
            v = out[n, o] + bias[o] if has_bias else out[n, o]
            out[n, o] = v if v > 0 else v * slope


def linear_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    _gemm(_rows(inputs[0]), params["weight"].T, out)
    if ctx.attrs["bias"]:
        out += params["bias"]  # a broadcast add in place: a ufunc is as fast as a loop


def linear_fwd_relu(ctx, inputs, params, out, aux, training, rng, epilogue) -> None:
    """linear_fwd with the relu of context `epilogue` (its negative_slope) applied in the
    pass that adds the bias (kernels/cpu `with_epilogue`)."""
    _gemm(_rows(inputs[0]), params["weight"].T, out)
    has_bias = bool(ctx.attrs["bias"])
    bias = params["bias"] if has_bias else np.zeros(out.shape[1], out.dtype)  # not read
    _bias_leaky(out, bias, has_bias, float(epilogue.attrs["negative_slope"]))


def linear_dx(ctx, saved, dout, index, out) -> None:
    _gemm(dout, saved["weight"], _rows(out))


def linear_dw(ctx, saved, dout, out) -> None:
    _gemm(dout.T, _rows(saved["x"]), out)


def linear_db(ctx, saved, dout, out) -> None:
    _sum_rows(dout, out)
