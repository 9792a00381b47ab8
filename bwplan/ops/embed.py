"""Caffe's Embed: a lookup of one learned row per integer index (a one-hot input times a
weight, without the one-hot). The indices are data: they take no gradient. The weight's
gradient adds each output row's gradient into the row its index picked (a scatter-add),
so it reads the indices and nothing else.
"""
from __future__ import annotations

import numpy as np

from bwplan.errors import DataError
from bwplan.source import Span

from bwplan.ir.types import TensorType
from bwplan.ops.opdef import (REQUIRED, AttrSpec, GradRule, on_every_target, OpCtx, OpDef,
                              ParamSlot, Port, out_numel)


def _embed_infer(ctx: OpCtx) -> TensorType:
    a = ctx.attrs
    for name in ("num_output", "input_dim"):
        if a[name] < 1:
            raise ValueError(f"embed {name}={a[name]} must be at least 1")
    dtype = ctx.x.dtype if ctx.x.is_float else "f32"
    return TensorType(dtype, ctx.x.shape + (a["num_output"],))


def indices(x: np.ndarray, input_dim: int) -> np.ndarray:
    """The row of every index, truncated towards zero as Caffe casts a float to int;
    a DataError (the batch's fault) for one outside [0, input_dim)."""
    idx = np.asarray(x).reshape(-1).astype(np.int64)
    bad = np.flatnonzero((idx < 0) | (idx >= input_dim))
    if bad.size:
        raise DataError(Span.synthetic("batch"), f"embed index {idx[bad[0]]} at position "
                        f"{bad[0]} is outside [0, {input_dim})")
    return idx


def _embed_fwd(ctx, inputs, params, training, rng):
    a = ctx.attrs
    out = params["weight"][indices(inputs[0], a["input_dim"])]
    if a["bias_term"]:
        out = out + params["bias"]
    return out.reshape(ctx.out.shape), {}


def _embed_dw(ctx, saved, dout, index):
    a = ctx.attrs
    grad = np.zeros((a["input_dim"], a["num_output"]), dout.dtype)
    np.add.at(grad, indices(saved["x"], a["input_dim"]), dout.reshape(-1, a["num_output"]))
    return grad


EMBED = OpDef(
    name="embed",
    family="embed",
    doc="Row x[i] of a learned [input_dim, num_output] weight for every index in x (plus "
        "a learned bias with `bias_term`); the output has x's shape and num_output more "
        "(Caffe Embed).",
    ports=(Port("x", differentiable=False),),
    attrs=(AttrSpec("num_output", "int", REQUIRED), AttrSpec("input_dim", "int", REQUIRED),
           AttrSpec("bias_term", "bool", True)),
    params=(ParamSlot("weight", lambda ctx: (ctx.attrs["input_dim"], ctx.attrs["num_output"])),
            ParamSlot("bias", lambda ctx: (ctx.attrs["num_output"],),
                      enabled=lambda a: a["bias_term"], init="zeros")),
    infer=_embed_infer,
    flops=lambda ctx: ctx.out.numel if ctx.attrs["bias_term"] else 0,
    grads=(GradRule("weight", frozenset({"x"}), out_numel, _embed_dw),
           GradRule("bias", frozenset(), out_numel,
                    lambda ctx, s, dout, i: dout.reshape(-1, ctx.attrs["num_output"]).sum(0))),
    forward_ref=_embed_fwd,
    kernels=on_every_target({"fwd": "embed.embed_fwd", "dw:weight": "embed.embed_dw",
                             "dw:bias": "embed.embed_db"}),
)

OPS = (EMBED,)
