"""Launch geometry of cuda/elementwise.cu: grid-stride loops over the elements, 256
threads per block (limits.grid_stride). The n-ary ops run one launch per one or two
inputs, the later launches accumulating (elementwise.cu's header says why)."""
from __future__ import annotations

from bwplan.errors import InternalError
from bwplan.kernels.cuda.limits import Launch, f32, flag, grid_stride, i32, i64, ptr, u64


def _unary(kernel: str):
    def fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
        n = ctx.x.numel
        return [grid_stride(kernel, n, env, ptr(inputs[0]), ptr(out), i64(n))]
    return fwd


def _unary_dx(kernel: str):
    def dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
        n = ctx.x.numel
        return [grid_stride(kernel, n, env, ptr(saved["out"]), ptr(dout), ptr(out), i64(n),
                            flag(accumulate))]
    return dx


def relu_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n = ctx.x.numel
    return [grid_stride("relu_fwd", n, env, ptr(inputs[0]), ptr(out), i64(n),
                        f32(ctx.attrs["negative_slope"]))]


def relu_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n = ctx.x.numel
    return [grid_stride("relu_dx", n, env, ptr(saved["out"]), ptr(dout), ptr(out), i64(n),
                        f32(ctx.attrs["negative_slope"]), flag(accumulate))]


def clip_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n = ctx.x.numel
    return [grid_stride("clip_fwd", n, env, ptr(inputs[0]), ptr(out), i64(n),
                        f32(ctx.attrs["min"]), f32(ctx.attrs["max"]))]


def clip_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n = ctx.x.numel
    return [grid_stride("clip_dx", n, env, ptr(saved["out"]), ptr(dout), ptr(out), i64(n),
                        f32(ctx.attrs["min"]), f32(ctx.attrs["max"]), flag(accumulate))]


def dropout_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n = ctx.x.numel
    if training and not env.counter:
        raise InternalError("dropout in training needs the runtime's step counter")
    return [grid_stride("dropout_fwd", n, env, ptr(inputs[0]), ptr(out), ptr(aux.get("mask")),
                        i64(n), f32(ctx.attrs["p"]), ptr(env.counter), u64(env.stream),
                        flag(training))]


def dropout_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n = ctx.x.numel
    return [grid_stride("dropout_dx", n, env, ptr(saved["mask"]), ptr(dout), ptr(out), i64(n),
                        f32(ctx.attrs["p"]), flag(accumulate))]


def _coeffs(ctx) -> tuple[float, ...]:
    return tuple(ctx.attrs["coeffs"]) or (1.0,) * len(ctx.inputs)


def add_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n, coeffs = ctx.x.numel, _coeffs(ctx)
    launches = []
    for k in range(0, len(inputs), 2):
        b = inputs[k + 1] if k + 1 < len(inputs) else None
        cb = coeffs[k + 1] if b is not None else 0.0
        launches.append(grid_stride("add_fwd", n, env, ptr(inputs[k]), ptr(b), ptr(out),
                                    i64(n), f32(coeffs[k]), f32(cb), flag(k > 0)))
    return launches


def add_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n = ctx.x.numel
    return [grid_stride("scaled_copy", n, env, ptr(dout), ptr(out), i64(n),
                        f32(_coeffs(ctx)[index]), flag(accumulate))]


def mul_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n = ctx.x.numel
    return [grid_stride("mul_fwd", n, env, ptr(inputs[0]), ptr(inputs[1]), ptr(out), i64(n))]


def _mul_dx(other: str):
    def dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
        n = ctx.x.numel
        return [grid_stride("mul_dx", n, env, ptr(saved[other]), ptr(dout), ptr(out), i64(n),
                            flag(accumulate))]
    return dx


def maximum_fwd(ctx, inputs, params, out, aux, training, env) -> list[Launch]:
    n = ctx.x.numel
    return [grid_stride("maximum_fwd", n, env, ptr(x), ptr(out), ptr(aux.get("argmax")),
                        i64(n), i32(k)) for k, x in enumerate(inputs)]


def maximum_dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
    n = ctx.x.numel
    return [grid_stride("maximum_dx", n, env, ptr(saved["argmax"]), ptr(dout), ptr(out),
                        i64(n), i32(index), flag(accumulate))]


LAUNCH = {
    ("relu", "fwd"): relu_fwd, ("relu", "dx:x"): relu_dx,
    ("clip", "fwd"): clip_fwd, ("clip", "dx:x"): clip_dx,
    ("sigmoid", "fwd"): _unary("sigmoid_fwd"), ("sigmoid", "dx:x"): _unary_dx("sigmoid_dx"),
    ("tanh", "fwd"): _unary("tanh_fwd"), ("tanh", "dx:x"): _unary_dx("tanh_dx"),
    ("dropout", "fwd"): dropout_fwd, ("dropout", "dx:x"): dropout_dx,
    ("add", "fwd"): add_fwd, ("add", "dx:xs"): add_dx,
    ("mul", "fwd"): mul_fwd, ("mul", "dx:a"): _mul_dx("b"), ("mul", "dx:b"): _mul_dx("a"),
    ("maximum", "fwd"): maximum_fwd, ("maximum", "dx:xs"): maximum_dx,
}
