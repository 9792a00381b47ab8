"""Elementwise ops on the CPU: activations, dropout, add, mul, maximum.

Every loop here is bound by memory bandwidth, so the choice between a Numba loop and a
NumPy ufunc with `out=` is about passes over memory, not arithmetic: one pass is one pass
either way (measured equal for relu against np.maximum), and a Numba loop wins only when
it fuses what would be several ufunc passes. Transcendentals go the other way: NumPy's
SIMD exp and tanh are several times faster than the scalar libm calls a Numba loop makes,
so sigmoid and tanh use ufuncs.

The loops are serial and `nogil`; relu and add, which see the largest tensors, run theirs
in blocks on the kernel workers (threads.py) once a tensor reaches PARALLEL_ELEMENTS: on
the 2-vCPU machine two blocks took 0.65x the time of one pass over 2M float32 elements, but
twice the time of one pass over 256K, where the hand-off costs more than it saves.

Arrays are seen flat (rank 1), so each loop compiles once per dtype.
"""
from __future__ import annotations

import numpy as np
from numba import njit

from bwplan.kernels.cpu import scratch, threads
from bwplan.kernels.cpu.views import flat, ncs

PARALLEL_ELEMENTS = 1 << 20


def _blocked(loop, *args) -> None:
    """loop(*args), where the arrays among args are flat and of one size: in one call, or,
    from PARALLEL_ELEMENTS on, in one block per worker (each at least half that size).
    Elementwise, so the result does not depend on the blocks."""
    size = next(a.size for a in args if isinstance(a, np.ndarray))
    count = min(threads.width(), size // (PARALLEL_ELEMENTS // 2))
    if count <= 1:
        loop(*args)
        return
    edges = [size * i // count for i in range(count + 1)]

    def block(t: int) -> None:
        lo, hi = edges[t], edges[t + 1]
        loop(*(a[lo:hi] if isinstance(a, np.ndarray) else a for a in args))

    threads.for_each(count, block)


# ---- relu ----------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _relu(x, slope, out):
    for i in range(x.size):
        v = x[i]
        out[i] = v if v > 0 else v * slope


@njit(cache=True, nogil=True)
def _relu_back(y, dout, slope, out):
    # y > 0 exactly where x > 0 (slope >= 0), so the output decides the branch
    for i in range(y.size):
        d = dout[i]
        out[i] = d if y[i] > 0 else d * slope


@njit(cache=True, nogil=True)
def _relu_in_place(y, slope):
    # one array: _relu on x is out vectorises only after a run-time overlap check, which
    # then fails, and ran 2.5x slower (0.38 ms against 0.15 ms on 1M float32 elements)
    for i in range(y.size):
        v = y[i]
        y[i] = v if v > 0 else v * slope


def relu_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    if inputs[0] is out:   # in place on its producer's output (Step.applied_by)
        _blocked(_relu_in_place, flat(out), ctx.attrs["negative_slope"])
        return
    _blocked(_relu, flat(inputs[0]), ctx.attrs["negative_slope"], flat(out))


def relu_dx(ctx, saved, dout, index, out) -> None:
    _blocked(_relu_back, flat(saved["out"]), flat(dout), ctx.attrs["negative_slope"],
             flat(out))


@njit(cache=True, nogil=True, fastmath={"reassoc"})
def _relu_back_sum(y, dout, slope, out, sums):
    """_relu_back on [N, C, S] views, and sums[c] = the sum of out[:, c, :] in float64, in
    the same pass. Serial, so the sum does not depend on the thread count; `reassoc` lets
    LLVM add in float64 SIMD lanes (as reduce.channel_sum does), never the mask itself."""
    sums[:] = 0.0
    if y.shape[2] == 1:   # [N, C] (after linear): along the rows, SIMD over channels
        for n in range(y.shape[0]):
            for c in range(y.shape[1]):
                d = dout[n, c, 0]
                v = d if y[n, c, 0] > 0 else d * slope
                out[n, c, 0] = v
                sums[c] += v
        return
    for n in range(y.shape[0]):
        for c in range(y.shape[1]):
            acc = 0.0
            for s in range(y.shape[2]):
                d = dout[n, c, s]
                v = d if y[n, c, s] > 0 else d * slope
                out[n, c, s] = v
                acc += v
            sums[c] += acc


def relu_dx_channel_sum(ctx, saved, dout, index, out, channel_sum) -> None:
    """relu_dx, and `channel_sum`[c] = the sum of the result over every axis but 1: the
    bias gradient of the layer before, in the pass that writes its d(out) (Step.sum_of)."""
    sums = scratch.buffer("relu.sums", (out.shape[1],), np.float64)
    _relu_back_sum(ncs(saved["out"]), ncs(dout), ctx.attrs["negative_slope"], ncs(out), sums)
    channel_sum[...] = sums


# ---- clip ----------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _clip(x, lo, hi, out):
    for i in range(x.size):
        out[i] = min(max(x[i], lo), hi)


@njit(cache=True, nogil=True)
def _clip_back(y, dout, lo, hi, out):
    # lo < y < hi exactly where lo < x < hi: the output decides, as in the reference
    for i in range(y.size):
        v = y[i]
        out[i] = dout[i] if lo < v < hi else 0.0


def clip_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    _blocked(_clip, flat(inputs[0]), ctx.attrs["min"], ctx.attrs["max"], flat(out))


def clip_dx(ctx, saved, dout, index, out) -> None:
    _blocked(_clip_back, flat(saved["out"]), flat(dout), ctx.attrs["min"], ctx.attrs["max"],
             flat(out))


# ---- sigmoid / tanh ------------------------------------------------------------------------
@njit(cache=True)
def _sigmoid_back(y, dout, out):
    for i in range(y.size):
        v = y[i]
        out[i] = dout[i] * v * (1 - v)


@njit(cache=True)
def _tanh_back(y, dout, out):
    for i in range(y.size):
        v = y[i]
        out[i] = dout[i] * (1 - v * v)


def sigmoid_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    # 1 / (1 + exp(-x)) as four in-place ufunc passes: still faster than one Numba pass
    # with scalar exp calls (2.4 ms against 6 ms for 2M float32 elements)
    np.negative(inputs[0], out=out)
    np.exp(out, out=out)
    np.add(out, 1, out=out)
    np.reciprocal(out, out=out)


def sigmoid_dx(ctx, saved, dout, index, out) -> None:
    _sigmoid_back(flat(saved["out"]), flat(dout), flat(out))


def tanh_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    np.tanh(inputs[0], out=out)


def tanh_dx(ctx, saved, dout, index, out) -> None:
    _tanh_back(flat(saved["out"]), flat(dout), flat(out))


# ---- dropout -------------------------------------------------------------------------------
@njit(cache=True)
def _dropout(x, u, p, scale, out):
    for i in range(x.size):
        out[i] = x[i] * scale if u[i] >= p else 0


@njit(cache=True)
def _dropout_keep(x, u, p, scale, out, mask):
    for i in range(x.size):
        keep = u[i] >= p
        mask[i] = keep
        out[i] = x[i] * scale if keep else 0


@njit(cache=True)
def _dropout_back(dout, mask, scale, out):
    for i in range(dout.size):
        out[i] = dout[i] * scale if mask[i] else 0


def dropout_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    """In training, the mask is drawn as the reference draws it (float64 uniforms, kept
    where >= p), so one generator state gives one mask whether or not `aux` keeps it, and
    the same mask as the reference. At inference the output is a copy of the input and a
    mask buffer, if given, is left untouched: no backward is defined there."""
    x = inputs[0]
    if not training:
        np.copyto(out, x)
        return
    if rng is None:
        raise ValueError("dropout needs a random generator in training mode")
    p = ctx.attrs["p"]
    u = scratch.buffer("dropout.uniform", (x.size,), np.float64)
    rng.random(out=u)
    scale = 1.0 / (1.0 - p)
    if "mask" in aux:
        _dropout_keep(flat(x), u, p, scale, flat(out), flat(aux["mask"]))
    else:
        _dropout(flat(x), u, p, scale, flat(out))


def dropout_dx(ctx, saved, dout, index, out) -> None:
    _dropout_back(flat(dout), flat(saved["mask"]), 1.0 / (1.0 - ctx.attrs["p"]), flat(out))


# ---- add / mul -----------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _axpy(a, x, y):
    """y += a * x."""
    for i in range(x.size):
        y[i] += a * x[i]


@njit(cache=True, nogil=True)
def _axpby(a, x, b, y, out):
    """out = a * x + b * y: the first two inputs of an add in one pass."""
    for i in range(x.size):
        out[i] = a * x[i] + b * y[i]


@njit(cache=True, nogil=True)
def _scale(a, x, out):
    """out = a * x."""
    for i in range(x.size):
        out[i] = a * x[i]


def _coeffs(ctx) -> tuple[float, ...]:
    return tuple(ctx.attrs["coeffs"]) or (1.0,) * len(ctx.inputs)


def add_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    coeffs, y = _coeffs(ctx), flat(out)
    if len(inputs) == 1:
        _blocked(_scale, coeffs[0], flat(inputs[0]), y)
        return
    _blocked(_axpby, coeffs[0], flat(inputs[0]), coeffs[1], flat(inputs[1]), y)
    for c, x in zip(coeffs[2:], inputs[2:]):
        _blocked(_axpy, c, flat(x), y)  # one pass per input, no temporary c * x


def add_dx(ctx, saved, dout, index, out) -> None:
    _blocked(_scale, _coeffs(ctx)[index], flat(dout), flat(out))


# mul: one ufunc pass each, nothing to fuse
def mul_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    np.multiply(inputs[0], inputs[1], out=out)


def mul_dx_a(ctx, saved, dout, index, out) -> None:
    np.multiply(dout, saved["b"], out=out)


def mul_dx_b(ctx, saved, dout, index, out) -> None:
    np.multiply(dout, saved["a"], out=out)


# ---- maximum -------------------------------------------------------------------------------
@njit(cache=True)
def _max_track(x, index, out, arg):
    """out = max(out, x), arg = index where x wins; strictly greater, so a tie stays with
    the earlier input, as the reference's argmax."""
    for i in range(x.size):
        if x[i] > out[i]:
            out[i] = x[i]
            arg[i] = index


@njit(cache=True)
def _select(arg, index, dout, out):
    for i in range(dout.size):
        out[i] = dout[i] if arg[i] == index else 0


def maximum_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    np.copyto(out, inputs[0])
    if "argmax" not in aux:
        for x in inputs[1:]:
            np.maximum(out, x, out=out)
        return
    arg = aux["argmax"]
    arg.fill(0)
    for i, x in enumerate(inputs[1:], start=1):
        _max_track(flat(x), i, flat(out), flat(arg))


def maximum_dx(ctx, saved, dout, index, out) -> None:
    _select(flat(saved["argmax"]), index, flat(dout), flat(out))
