"""Caffe's further neuron layers on the CPU (bwplan/ops/activation.py): ELU, Power, AbsVal,
BNLL, Exp, Log, PReLU, Threshold; erf and SELU.

Each forward and dX is one fused Numba pass over the flat tensor, the transcendental
included: these ops are rare in the networks that matter for speed, so one pass that
reads each element once is preferred to chains of ufunc passes with temporaries. PReLU
sees its tensors as [N, C, S] and sums its slope gradient per channel in float64, as the
per-channel reductions in reduce.py do.
"""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from bwplan.kernels.cpu.views import flat, ncs


def _log_base(base: float) -> float:
    return 1.0 if base == -1 else math.log(base)


# ---- ELU -------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _elu(x, alpha, out):
    for i in range(x.size):
        v = x[i]
        out[i] = v if v > 0 else alpha * math.expm1(v)


@njit(cache=True, nogil=True)
def _elu_back(positive, y, dout, alpha, out):
    # `positive` is the output where alpha >= 0 (y > 0 exactly where x > 0), else x
    for i in range(y.size):
        d = dout[i]
        out[i] = d if positive[i] > 0 else d * (y[i] + alpha)


def elu_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    _elu(flat(inputs[0]), ctx.attrs["alpha"], flat(out))


def elu_dx(ctx, saved, dout, index, out) -> None:
    y = flat(saved["out"])
    positive = flat(saved["x"]) if "x" in saved else y
    _elu_back(positive, y, flat(dout), ctx.attrs["alpha"], flat(out))


# ---- Power -----------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _power(x, power, scale, shift, out):
    for i in range(x.size):
        out[i] = (shift + scale * x[i]) ** power


@njit(cache=True, nogil=True)
def _power_back(x, dout, power, scale, shift, out):
    slope = power * scale
    for i in range(x.size):
        out[i] = dout[i] * slope * (shift + scale * x[i]) ** (power - 1)


@njit(cache=True, nogil=True)
def _scaled(dout, a, out):
    for i in range(dout.size):
        out[i] = dout[i] * a


def power_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    a = ctx.attrs
    _power(flat(inputs[0]), a["power"], a["scale"], a["shift"], flat(out))


def power_dx(ctx, saved, dout, index, out) -> None:
    a = ctx.attrs
    if "x" not in saved:  # a line or a constant: the slope power * scale everywhere
        _scaled(flat(dout), a["power"] * a["scale"], flat(out))
        return
    _power_back(flat(saved["x"]), flat(dout), a["power"], a["scale"], a["shift"], flat(out))


# ---- AbsVal ----------------------------------------------------------------------------
def absval_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    np.abs(inputs[0], out=out)


@njit(cache=True, nogil=True)
def _absval_back(x, dout, out):
    for i in range(x.size):
        v = x[i]
        out[i] = dout[i] if v > 0 else (-dout[i] if v < 0 else 0.0)


def absval_dx(ctx, saved, dout, index, out) -> None:
    _absval_back(flat(saved["x"]), flat(dout), flat(out))


# ---- BNLL ------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _bnll(x, out):
    for i in range(x.size):
        v = x[i]
        out[i] = max(v, 0.0) + math.log1p(math.exp(-abs(v)))


@njit(cache=True, nogil=True)
def _bnll_back(y, dout, out):
    for i in range(y.size):
        out[i] = -dout[i] * math.expm1(-y[i])  # sigmoid(x) = 1 - exp(-y)


def bnll_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    _bnll(flat(inputs[0]), flat(out))


def bnll_dx(ctx, saved, dout, index, out) -> None:
    _bnll_back(flat(saved["out"]), flat(dout), flat(out))


# ---- Exp / Log -------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _exp(x, inner, shift, out):
    for i in range(x.size):
        out[i] = math.exp(inner * x[i] + shift)


def exp_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    a = ctx.attrs
    ln_base = _log_base(a["base"])
    _exp(flat(inputs[0]), ln_base * a["scale"], ln_base * a["shift"], flat(out))


@njit(cache=True, nogil=True)
def _mul_scaled(y, dout, a, out):
    for i in range(y.size):
        out[i] = dout[i] * y[i] * a


def exp_dx(ctx, saved, dout, index, out) -> None:
    a = ctx.attrs
    _mul_scaled(flat(saved["out"]), flat(dout), _log_base(a["base"]) * a["scale"], flat(out))


@njit(cache=True, nogil=True)
def _log(x, scale, shift, inv_ln_base, out):
    for i in range(x.size):
        v = shift + scale * x[i]
        # as C's log: NaN below 0, -inf at 0 (math.log raises instead)
        out[i] = (np.log(v) if v > 0 else (-np.inf if v == 0 else np.nan)) * inv_ln_base


@njit(cache=True, nogil=True)
def _log_back(x, dout, scale, shift, a, out):
    for i in range(x.size):
        out[i] = dout[i] * a / (shift + scale * x[i])


def log_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    a = ctx.attrs
    _log(flat(inputs[0]), a["scale"], a["shift"], 1.0 / _log_base(a["base"]), flat(out))


def log_dx(ctx, saved, dout, index, out) -> None:
    a = ctx.attrs
    _log_back(flat(saved["x"]), flat(dout), a["scale"], a["shift"],
              a["scale"] / _log_base(a["base"]), flat(out))


# ---- PReLU -----------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _prelu(x, slope, shared, out):
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            a = slope[0] if shared else slope[c]
            for s in range(x.shape[2]):
                v = x[n, c, s]
                out[n, c, s] = v if v > 0 else a * v


@njit(cache=True, nogil=True)
def _prelu_back(x, slope, shared, dout, out):
    for n in range(x.shape[0]):
        for c in range(x.shape[1]):
            a = slope[0] if shared else slope[c]
            for s in range(x.shape[2]):
                d = dout[n, c, s]
                out[n, c, s] = d if x[n, c, s] > 0 else a * d


@njit(cache=True, nogil=True)
def _prelu_slope_grad(x, dout, shared, out):
    """out[c] = sum over the channel of dout * x where x <= 0 (out[0] over everything when
    the slope is shared), accumulated in float64."""
    total = 0.0
    for c in range(x.shape[1]):
        acc = 0.0
        for n in range(x.shape[0]):
            for s in range(x.shape[2]):
                v = x[n, c, s]
                if v <= 0:
                    acc += dout[n, c, s] * v
        if shared:
            total += acc
        else:
            out[c] = acc
    if shared:
        out[0] = total


def prelu_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    _prelu(ncs(inputs[0]), params["weight"], ctx.attrs["channel_shared"], ncs(out))


def prelu_dx(ctx, saved, dout, index, out) -> None:
    _prelu_back(ncs(saved["x"]), saved["weight"], ctx.attrs["channel_shared"], ncs(dout),
                ncs(out))


def prelu_dw(ctx, saved, dout, out) -> None:
    _prelu_slope_grad(ncs(saved["x"]), ncs(dout), ctx.attrs["channel_shared"], out)


# ---- Threshold -------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _threshold(x, t, out):
    for i in range(x.size):
        out[i] = 1.0 if x[i] > t else 0.0


def threshold_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    _threshold(flat(inputs[0]), ctx.attrs["threshold"], flat(out))


# ---- erf -------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _erf(x, out):
    for i in range(x.size):
        out[i] = math.erf(x[i])


@njit(cache=True, nogil=True)
def _erf_back(x, dout, out):
    for i in range(x.size):
        v = x[i]
        out[i] = dout[i] * 1.1283791670955126 * math.exp(-v * v)   # 2 / sqrt(pi)


def erf_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    _erf(flat(inputs[0]), flat(out))


def erf_dx(ctx, saved, dout, index, out) -> None:
    _erf_back(flat(saved["x"]), flat(dout), flat(out))


# ---- SELU ------------------------------------------------------------------------------
@njit(cache=True, nogil=True)
def _selu(x, alpha, gamma, out):
    for i in range(x.size):
        v = x[i]
        out[i] = gamma * v if v > 0 else gamma * alpha * math.expm1(v)


@njit(cache=True, nogil=True)
def _selu_back(y, dout, alpha, gamma, out):
    # alpha >= 0, gamma > 0: y > 0 exactly where x > 0, and below it y' = y + gamma * alpha
    for i in range(y.size):
        d = dout[i]
        out[i] = gamma * d if y[i] > 0 else d * (y[i] + gamma * alpha)


def selu_fwd(ctx, inputs, params, out, aux, training, rng) -> None:
    _selu(flat(inputs[0]), ctx.attrs["alpha"], ctx.attrs["gamma"], flat(out))


def selu_dx(ctx, saved, dout, index, out) -> None:
    _selu_back(flat(saved["out"]), flat(dout), ctx.attrs["alpha"], ctx.attrs["gamma"], flat(out))
