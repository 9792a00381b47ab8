"""Caffe's further neuron layers: ELU, Power, AbsVal, BNLL, Exp, Log, PReLU and Threshold;
the error function erf (ONNX's Erf, the core of an exact GELU); and ONNX's SELU.

Each follows its Caffe layer's formula and parameter names (caffe.proto's ELUParameter,
PowerParameter, ExpParameter, LogParameter, PReLUParameter, ThresholdParameter). Where the
gradient can be had from the output alone (ELU, BNLL, Exp), dX reads the output, as relu's
does, so a chain conv -> elu keeps one tensor. Threshold is a step function: Caffe has no
backward for it, so here its input is not differentiable and the planner stops the
gradient there ("threshold is not differentiable with respect to its input").
"""
from __future__ import annotations

import math

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops.opdef import (AttrSpec, GradRule, in_numel, on_every_target, OpCtx, OpDef,
                              ParamSlot, Port, same_as_input)


def _kernels(name: str, *grads: str) -> dict[str, dict[str, str]]:
    """fwd and the named gradient components, as activation.<name>_<component>."""
    names = {"fwd": f"activation.{name}_fwd"}
    for component in grads:
        names[component] = f"activation.{name}_{component.partition(':')[0]}"
    return on_every_target(names)


def _per_element(count: int):
    return lambda ctx: count * ctx.x.numel


# ---- ELU -------------------------------------------------------------------------------
def _elu_fwd(ctx, inputs, params, training, rng):
    x, alpha = inputs[0], ctx.attrs["alpha"]
    return np.where(x > 0, x, alpha * np.expm1(np.minimum(x, 0.0))), {}


def _elu_needs(attrs) -> frozenset[str]:
    # alpha >= 0: out > 0 exactly where x > 0, so the output decides the branch
    return frozenset({"out"}) if attrs["alpha"] >= 0 else frozenset({"x", "out"})


def _elu_dx(ctx, saved, dout, index):
    out, alpha = saved["out"], ctx.attrs["alpha"]
    positive = saved["x"] > 0 if alpha < 0 else out > 0
    return np.where(positive, dout, dout * (out + alpha))


ELU = OpDef(
    name="elu",
    family="activation",
    doc="x where x > 0, else alpha * (exp(x) - 1) (Caffe ELU).",
    ports=(Port("x"),),
    attrs=(AttrSpec("alpha", "float", 1.0, doc="the value approached for x -> -inf is "
                                                "-alpha"),),
    infer=same_as_input,
    flops=_per_element(3),
    grads=(GradRule("x", _elu_needs, _per_element(2), _elu_dx),),
    forward_ref=_elu_fwd,
    kernels=_kernels("elu", "dx:x"),
)


# ---- Power -----------------------------------------------------------------------------
def _power_fwd(ctx, inputs, params, training, rng):
    a = ctx.attrs
    with np.errstate(invalid="ignore", divide="ignore"):  # as Caffe's pow: NaN or inf
        return np.power(a["shift"] + a["scale"] * inputs[0], a["power"]), {}


def _power_constant_slope(attrs) -> bool:
    """power 1 (a line) or power * scale 0 (a constant): dX does not read x."""
    return attrs["power"] == 1 or attrs["power"] * attrs["scale"] == 0


def _power_dx(ctx, saved, dout, index):
    a = ctx.attrs
    slope = a["power"] * a["scale"]
    if _power_constant_slope(a):
        return dout * slope
    with np.errstate(invalid="ignore", divide="ignore"):
        return dout * slope * np.power(a["shift"] + a["scale"] * saved["x"], a["power"] - 1)


POWER = OpDef(
    name="power",
    family="activation",
    doc="(shift + scale * x) ^ power (Caffe Power).",
    ports=(Port("x"),),
    attrs=(AttrSpec("power", "float", 1.0), AttrSpec("scale", "float", 1.0),
           AttrSpec("shift", "float", 0.0)),
    infer=same_as_input,
    flops=_per_element(3),
    grads=(GradRule("x", lambda a: frozenset() if _power_constant_slope(a)
                    else frozenset({"x"}), _per_element(4), _power_dx),),
    forward_ref=_power_fwd,
    kernels=_kernels("power", "dx:x"),
)


# ---- AbsVal ----------------------------------------------------------------------------
ABSVAL = OpDef(
    name="absval",
    family="activation",
    doc="|x| (Caffe AbsVal); the gradient at 0 is 0, as Caffe's sign(0).",
    ports=(Port("x"),),
    infer=same_as_input,
    flops=in_numel,
    grads=(GradRule("x", frozenset({"x"}), in_numel,
                    lambda ctx, s, dout, i: dout * np.sign(s["x"])),),
    forward_ref=lambda ctx, inputs, params, training, rng: (np.abs(inputs[0]), {}),
    kernels=_kernels("absval", "dx:x"),
)


# ---- BNLL ------------------------------------------------------------------------------
def _bnll_fwd(ctx, inputs, params, training, rng):
    # log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)): no overflow for large |x|
    x = inputs[0]
    return np.maximum(x, 0.0) + np.log1p(np.exp(-np.abs(x))), {}


def _bnll_dx(ctx, saved, dout, index):
    # d/dx log(1 + e^x) = sigmoid(x) = 1 - exp(-out), written -expm1(-out) so that a tiny
    # output (very negative x) keeps its relative precision
    return dout * -np.expm1(-saved["out"])


BNLL = OpDef(
    name="bnll",
    family="activation",
    doc="log(1 + exp(x)), the softplus, computed without overflow (Caffe BNLL).",
    ports=(Port("x"),),
    infer=same_as_input,
    flops=_per_element(5),
    grads=(GradRule("x", frozenset({"out"}), _per_element(3), _bnll_dx),),
    forward_ref=_bnll_fwd,
    kernels=_kernels("bnll", "dx:x"),
)


# ---- Exp and Log -----------------------------------------------------------------------
def _log_base(attrs, op: str) -> float:
    """ln(base); Caffe's default base -1 means e."""
    base = attrs["base"]
    if base == -1:
        return 1.0
    if not base > 0 or base == 1:
        raise ValueError(f"{op} base={base} must be positive and not 1, or -1 for e")
    return math.log(base)


def _exp_infer(ctx: OpCtx) -> TensorType:
    _log_base(ctx.attrs, "exp")
    return ctx.x


def _exp_fwd(ctx, inputs, params, training, rng):
    a = ctx.attrs
    return np.exp(_log_base(a, "exp") * (a["shift"] + a["scale"] * inputs[0])), {}


EXP = OpDef(
    name="exp",
    family="activation",
    doc="base ^ (shift + scale * x); base -1 (the default) means e (Caffe Exp).",
    ports=(Port("x"),),
    attrs=(AttrSpec("base", "float", -1.0, doc="-1 for e"), AttrSpec("scale", "float", 1.0),
           AttrSpec("shift", "float", 0.0)),
    infer=_exp_infer,
    flops=_per_element(3),
    grads=(GradRule("x", frozenset({"out"}), _per_element(2),
                    lambda ctx, s, dout, i: dout * s["out"] * (
                        _log_base(ctx.attrs, "exp") * ctx.attrs["scale"])),),
    forward_ref=_exp_fwd,
    kernels=_kernels("exp", "dx:x"),
)


def _log_infer(ctx: OpCtx) -> TensorType:
    _log_base(ctx.attrs, "log")
    return ctx.x


def _log_fwd(ctx, inputs, params, training, rng):
    a = ctx.attrs
    with np.errstate(invalid="ignore", divide="ignore"):  # as Caffe's log: NaN or -inf
        return np.log(a["shift"] + a["scale"] * inputs[0]) / _log_base(a, "log"), {}


def _log_dx(ctx, saved, dout, index):
    a = ctx.attrs
    with np.errstate(divide="ignore"):
        return dout * (a["scale"] / _log_base(a, "log")) / (a["shift"] + a["scale"] * saved["x"])


LOG = OpDef(
    name="log",
    family="activation",
    doc="log_base(shift + scale * x); base -1 (the default) means e (Caffe Log).",
    ports=(Port("x"),),
    attrs=(AttrSpec("base", "float", -1.0, doc="-1 for e"), AttrSpec("scale", "float", 1.0),
           AttrSpec("shift", "float", 0.0)),
    infer=_log_infer,
    flops=_per_element(3),
    grads=(GradRule("x", frozenset({"x"}), _per_element(3), _log_dx),),
    forward_ref=_log_fwd,
    kernels=_kernels("log", "dx:x"),
)


# ---- PReLU -----------------------------------------------------------------------------
def _prelu_infer(ctx: OpCtx) -> TensorType:
    if len(ctx.x.shape) < 2:
        raise ValueError(f"prelu needs an input with channels in dimension 1, got {ctx.x}")
    return ctx.x


def _slopes(ctx: OpCtx) -> tuple[int, ...]:
    # Caffe's shared slope is a 0-d blob of one value; here a vector of one
    return (1,) if ctx.attrs["channel_shared"] else (ctx.x.shape[1],)


def _slope_view(ctx, slope: np.ndarray, ndim: int) -> np.ndarray:
    if ctx.attrs["channel_shared"]:
        return slope.reshape(())
    return slope.reshape((1, -1) + (1,) * (ndim - 2))


def _prelu_fwd(ctx, inputs, params, training, rng):
    x = inputs[0]
    return np.where(x > 0, x, x * _slope_view(ctx, params["weight"], x.ndim)), {}


def _prelu_dx(ctx, saved, dout, index):
    x = saved["x"]
    return np.where(x > 0, dout, dout * _slope_view(ctx, saved["weight"], x.ndim))


def _prelu_dw(ctx, saved, dout, index):
    x = saved["x"]
    g = np.where(x > 0, 0.0, dout * x)
    if ctx.attrs["channel_shared"]:
        return np.asarray(g.sum()).reshape(1)
    return g.sum(axis=(0,) + tuple(range(2, x.ndim)))


PRELU = OpDef(
    name="prelu",
    family="activation",
    doc="x where x > 0, else weight[c] * x, with a learned slope per channel (dimension 1) "
        "or one for all (`channel_shared`) (Caffe PReLU).",
    ports=(Port("x"),),
    attrs=(AttrSpec("channel_shared", "bool", False, doc="one slope for every channel"),),
    params=(ParamSlot("weight", _slopes, init="constant:0.25"),),
    infer=_prelu_infer,
    flops=_per_element(2),
    grads=(GradRule("x", frozenset({"x", "weight"}), _per_element(2), _prelu_dx),
           GradRule("weight", frozenset({"x"}), _per_element(2), _prelu_dw)),
    forward_ref=_prelu_fwd,
    kernels=_kernels("prelu", "dx:x", "dw:weight"),
)


# ---- Threshold -------------------------------------------------------------------------
THRESHOLD = OpDef(
    name="threshold",
    family="activation",
    doc="1 where x > threshold, else 0 (Caffe Threshold). A step function: Caffe defines no "
        "backward, so no gradient flows through it.",
    ports=(Port("x", differentiable=False),),
    attrs=(AttrSpec("threshold", "float", 0.0),),
    infer=same_as_input,
    flops=in_numel,
    forward_ref=lambda ctx, inputs, params, training, rng: (
        (inputs[0] > ctx.attrs["threshold"]).astype(inputs[0].dtype), {}),
    kernels=_kernels("threshold"),
)

# ---- erf -------------------------------------------------------------------------------
_TWO_OVER_SQRT_PI = 2.0 / math.sqrt(math.pi)


def _erf_fwd(ctx, inputs, params, training, rng):
    return np.vectorize(math.erf, otypes=[inputs[0].dtype])(inputs[0]), {}


ERF = OpDef(
    name="erf",
    family="activation",
    doc="The error function 2/sqrt(pi) * integral of exp(-t^2) from 0 to x (ONNX Erf); "
        "dX reads x: 2/sqrt(pi) * exp(-x^2) cannot be had from the output.",
    ports=(Port("x"),),
    infer=same_as_input,
    flops=_per_element(8),
    grads=(GradRule("x", frozenset({"x"}), _per_element(4),
                    lambda ctx, s, dout, i: dout * _TWO_OVER_SQRT_PI * np.exp(-s["x"] ** 2)),),
    forward_ref=_erf_fwd,
    kernels=_kernels("erf", "dx:x"),
)


# ---- SELU ------------------------------------------------------------------------------
# ONNX's defaults (float32 values of the self-normalising constants of Klambauer et al.)
_SELU_ALPHA = 1.67326319217681884765625
_SELU_GAMMA = 1.05070102214813232421875


def _selu_fwd(ctx, inputs, params, training, rng):
    x, a = inputs[0], ctx.attrs
    return a["gamma"] * np.where(x > 0, x, a["alpha"] * np.expm1(np.minimum(x, 0.0))), {}


def _selu_dx(ctx, saved, dout, index):
    # alpha >= 0 and gamma > 0: out > 0 exactly where x > 0, so the output decides the
    # branch, and gamma * alpha * exp(x) = out + gamma * alpha below it
    out, a = saved["out"], ctx.attrs
    return np.where(out > 0, a["gamma"] * dout, dout * (out + a["gamma"] * a["alpha"]))


SELU = OpDef(
    name="selu",
    family="activation",
    doc="gamma * x where x > 0, else gamma * alpha * (exp(x) - 1) (ONNX Selu); dX reads the "
        "output, as ELU's does.",
    ports=(Port("x"),),
    attrs=(AttrSpec("alpha", "float", _SELU_ALPHA, at_least=0.0,
                    doc="the value approached for x -> -inf is -gamma * alpha"),
           AttrSpec("gamma", "float", _SELU_GAMMA, above=0.0, doc="the slope for x > 0")),
    infer=same_as_input,
    flops=_per_element(4),
    grads=(GradRule("x", frozenset({"out"}), _per_element(3), _selu_dx),),
    forward_ref=_selu_fwd,
    kernels=_kernels("selu", "dx:x"),
)

OPS = (ELU, POWER, ABSVAL, BNLL, EXP, LOG, PRELU, THRESHOLD, ERF, SELU)
