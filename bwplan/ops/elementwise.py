"""Elementwise ops: activations (relu, clip, sigmoid, tanh), dropout, and the n-ary ops of
Caffe's Eltwise layer (add with coefficients, mul, maximum).

The activations' dX reads the output, not the input, so a chain conv -> relu keeps one
tensor, not two. Shapes never broadcast: every input of an n-ary op has the same type.
"""
from __future__ import annotations

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops.opdef import (AttrSpec, AuxSpec, GradRule, in_numel, on_every_target, OpCtx, OpDef,
                              out_numel, Port, same_as_input)


def _same_types(ctx: OpCtx, least: int = 1) -> TensorType:
    if len(ctx.inputs) < least:
        raise ValueError(f"needs at least {least} inputs, got {len(ctx.inputs)}")
    first = ctx.inputs[0]
    for i, t in enumerate(ctx.inputs[1:], start=1):
        if t != first:
            raise ValueError(f"input {i} is {t} but input 0 is {first}; shapes must match "
                             "exactly (no broadcasting)")
    return first


# ---- activations -----------------------------------------------------------------------
def _relu_fwd(ctx, inputs, params, training, rng):
    x = inputs[0]
    slope = ctx.attrs["negative_slope"]
    return np.where(x > 0, x, x * slope), {}


def _relu_dx(ctx, saved, dout, index):
    # out > 0 exactly where x > 0, for any slope >= 0: the output is enough.
    return np.where(saved["out"] > 0, dout, dout * ctx.attrs["negative_slope"])


RELU = OpDef(
    name="relu",
    family="elementwise",
    doc="max(x, 0), or leaky with `negative_slope`.",
    ports=(Port("x"),),
    attrs=(AttrSpec("negative_slope", "float", 0.0),),
    infer=same_as_input,
    flops=in_numel,
    grads=(GradRule("x", frozenset({"out"}), in_numel, _relu_dx),),
    forward_ref=_relu_fwd,
    kernels=on_every_target({
        "fwd": "elementwise.relu_fwd",
        "dx:x": "elementwise.relu_dx"}),
    epilogue=True,
)


def _clip_infer(ctx: OpCtx) -> TensorType:
    if not ctx.attrs["min"] < ctx.attrs["max"]:
        raise ValueError(f"clip needs min < max, got min={ctx.attrs['min']} "
                         f"max={ctx.attrs['max']}")
    return ctx.x


def _clip_fwd(ctx, inputs, params, training, rng):
    return np.clip(inputs[0], ctx.attrs["min"], ctx.attrs["max"]), {}


def _clip_dx(ctx, saved, dout, index):
    # min < out < max exactly where min < x < max, so the output is enough; at the bounds
    # themselves the gradient is 0, as torch's hardtanh and relu6 define it.
    out = saved["out"]
    inside = (out > ctx.attrs["min"]) & (out < ctx.attrs["max"])
    return np.where(inside, dout, 0.0).astype(dout.dtype)


CLIP = OpDef(
    name="clip",
    family="elementwise",
    doc="min(max(x, min), max): ReLU6 with the defaults (ONNX Clip, PyTorch ReLU6 and "
        "Hardtanh); the gradient passes where min < x < max.",
    ports=(Port("x"),),
    attrs=(AttrSpec("min", "float", 0.0, doc="lower bound"),
           AttrSpec("max", "float", 6.0, doc="upper bound")),
    infer=_clip_infer,
    flops=lambda ctx: 2 * ctx.x.numel,
    grads=(GradRule("x", frozenset({"out"}), lambda ctx: 2 * ctx.x.numel, _clip_dx),),
    forward_ref=_clip_fwd,
    kernels=on_every_target({
        "fwd": "elementwise.clip_fwd",
        "dx:x": "elementwise.clip_dx"}),
)


def _sigmoid_fwd(ctx, inputs, params, training, rng):
    return 1.0 / (1.0 + np.exp(-inputs[0])), {}


def _sigmoid_dx(ctx, saved, dout, index):
    out = saved["out"]
    return dout * out * (1.0 - out)


# Transcendentals count as one FLOP each: exp, add, divide (sigmoid) and tanh's
# exp-based formula are both costed at 4 per element, the backward at 3.
SIGMOID = OpDef(
    name="sigmoid",
    family="elementwise",
    doc="1 / (1 + exp(-x)).",
    ports=(Port("x"),),
    infer=same_as_input,
    flops=lambda ctx: 4 * ctx.x.numel,
    grads=(GradRule("x", frozenset({"out"}), lambda ctx: 3 * ctx.x.numel, _sigmoid_dx),),
    forward_ref=_sigmoid_fwd,
    kernels=on_every_target({
        "fwd": "elementwise.sigmoid_fwd",
        "dx:x": "elementwise.sigmoid_dx"}),
)


def _tanh_fwd(ctx, inputs, params, training, rng):
    return np.tanh(inputs[0]), {}


def _tanh_dx(ctx, saved, dout, index):
    return dout * (1.0 - saved["out"] ** 2)


TANH = OpDef(
    name="tanh",
    family="elementwise",
    doc="Hyperbolic tangent.",
    ports=(Port("x"),),
    infer=same_as_input,
    flops=lambda ctx: 4 * ctx.x.numel,
    grads=(GradRule("x", frozenset({"out"}), lambda ctx: 3 * ctx.x.numel, _tanh_dx),),
    forward_ref=_tanh_fwd,
    kernels=on_every_target({
        "fwd": "elementwise.tanh_fwd",
        "dx:x": "elementwise.tanh_dx"}),
)


# ---- dropout ---------------------------------------------------------------------------
def _dropout_infer(ctx: OpCtx) -> TensorType:
    p = ctx.attrs["p"]
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability p={p} must be in [0, 1)")
    return ctx.x


def _dropout_fwd(ctx, inputs, params, training, rng):
    x = inputs[0]
    if not training:
        # No mask: a backward through an inference-mode dropout is not defined here, and
        # a missing buffer fails loudly where a wrong scale would not.
        return x.copy(), {}
    if rng is None:
        raise ValueError("dropout needs a random generator in training mode")
    p = ctx.attrs["p"]
    mask = (rng.random(x.shape) >= p).astype(np.uint8)
    return x * mask * (1.0 / (1.0 - p)), {"mask": mask}


def _dropout_dx(ctx, saved, dout, index):
    return dout * saved["mask"] * (1.0 / (1.0 - ctx.attrs["p"]))


DROPOUT = OpDef(
    name="dropout",
    family="elementwise",
    doc="Inverted dropout: in training, zero each element with probability `p` and scale "
        "the rest by 1/(1-p); the identity at inference.",
    ports=(Port("x"),),
    attrs=(AttrSpec("p", "float", 0.5, doc="probability of dropping an element",
                     at_least=0, below=1),),
    infer=_dropout_infer,
    flops=lambda ctx: 2 * ctx.x.numel,
    grads=(GradRule("x", frozenset({"mask"}), lambda ctx: 2 * ctx.x.numel, _dropout_dx),),
    aux=(AuxSpec("mask", lambda ctx: ctx.x.shape, "u8"),),
    deterministic=False,
    forward_ref=_dropout_fwd,
    kernels=on_every_target({
        "fwd": "elementwise.dropout_fwd",
        "dx:x": "elementwise.dropout_dx"}),
)


# ---- n-ary (Caffe Eltwise) -------------------------------------------------------------
def _coeffs(ctx: OpCtx) -> tuple[float, ...]:
    return tuple(ctx.attrs["coeffs"]) or (1.0,) * len(ctx.inputs)


def _add_infer(ctx: OpCtx) -> TensorType:
    out = _same_types(ctx)
    given = len(ctx.attrs["coeffs"])
    if given and given != len(ctx.inputs):
        raise ValueError(f"{given} coeffs given for {len(ctx.inputs)} inputs; give one per "
                         "input or none")
    return out


def _add_fwd(ctx, inputs, params, training, rng):
    out = sum(c * x for c, x in zip(_coeffs(ctx), inputs))
    return np.asarray(out, dtype=inputs[0].dtype), {}


def _add_dx(ctx, saved, dout, index):
    return _coeffs(ctx)[index] * dout


def _add_flops(ctx: OpCtx) -> int:
    scaled = len(ctx.inputs) if ctx.attrs["coeffs"] else 0
    return (len(ctx.inputs) - 1 + scaled) * ctx.x.numel


ADD = OpDef(
    name="add",
    family="elementwise",
    doc="Weighted sum of same-shaped inputs, sum_i coeffs[i] * xs[i] (Caffe Eltwise SUM).",
    ports=(Port("xs", variadic=True),),
    attrs=(AttrSpec("coeffs", "floats", (), doc="one weight per input; empty means all 1"),),
    infer=_add_infer,
    flops=_add_flops,
    grads=(GradRule("xs", frozenset(),
                    lambda ctx: ctx.x.numel if ctx.attrs["coeffs"] else 0, _add_dx),),
    forward_ref=_add_fwd,
    kernels={"cpu": {"fwd": "elementwise.add_fwd", "dx:xs": "elementwise.add_dx"},
             "cuda": {"fwd": "elementwise.add_fwd", "dx:xs": "elementwise.scaled_copy"}},
)


def _mul_fwd(ctx, inputs, params, training, rng):
    return inputs[0] * inputs[1], {}


MUL = OpDef(
    name="mul",
    family="elementwise",
    doc="Elementwise product of two same-shaped inputs (Caffe Eltwise PROD).",
    ports=(Port("a"), Port("b")),
    infer=_same_types,
    flops=in_numel,
    grads=(
        GradRule("a", frozenset({"b"}), in_numel, lambda ctx, s, dout, i: dout * s["b"]),
        GradRule("b", frozenset({"a"}), in_numel, lambda ctx, s, dout, i: dout * s["a"]),
    ),
    forward_ref=_mul_fwd,
    kernels={"cpu": {
        "fwd": "elementwise.mul_fwd", "dx:a": "elementwise.mul_dx_a",
        "dx:b": "elementwise.mul_dx_b"},
        "cuda": {
        "fwd": "elementwise.mul_fwd", "dx:a": "elementwise.mul_dx",
        "dx:b": "elementwise.mul_dx"}},
)


def _maximum_fwd(ctx, inputs, params, training, rng):
    stack = np.stack(inputs)
    # np.argmax picks the first maximal input, so a tie goes to the earliest input (Caffe
    # gives a tie between inputs 0 and 1 to input 1); only the gradient can tell.
    return stack.max(axis=0), {"argmax": stack.argmax(axis=0).astype(np.int32)}


def _maximum_dx(ctx, saved, dout, index):
    return np.where(saved["argmax"] == index, dout, 0.0).astype(dout.dtype)


MAXIMUM = OpDef(
    name="maximum",
    family="elementwise",
    doc="Elementwise maximum of two or more same-shaped inputs (Caffe Eltwise MAX); the "
        "gradient goes to the input that won.",
    ports=(Port("xs", variadic=True),),
    infer=lambda ctx: _same_types(ctx, least=2),
    flops=lambda ctx: (len(ctx.inputs) - 1) * ctx.x.numel,
    grads=(GradRule("xs", frozenset({"argmax"}), out_numel, _maximum_dx),),
    aux=(AuxSpec("argmax", lambda ctx: ctx.x.shape, "i32"),),
    forward_ref=_maximum_fwd,
    kernels=on_every_target({
        "fwd": "elementwise.maximum_fwd",
        "dx:xs": "elementwise.maximum_dx"}),
)

OPS = (RELU, SIGMOID, TANH, DROPOUT, ADD, MUL, MAXIMUM, CLIP)
