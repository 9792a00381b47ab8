"""Ops that draw a random mask per sample: drop_path (stochastic depth).

drop_path is dropout with one draw per sample instead of one per element: in training each
sample (index along axis 0) is kept with probability 1 - p and scaled by 1/(1-p), or
zeroed whole; at inference it is the identity. It is what torchvision's StochasticDepth
(mode "row", EfficientNet's and ConvNeXt's residual branches) computes. The mask is one byte
per sample; dX is dY * mask / (1 - p), which reads the mask only.
"""
from __future__ import annotations

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops.opdef import AttrSpec, AuxSpec, GradRule, on_every_target, OpCtx, OpDef, Port


def _drop_path_infer(ctx: OpCtx) -> TensorType:
    p = ctx.attrs["p"]
    if not 0.0 <= p < 1.0:
        raise ValueError(f"drop_path probability p={p} must be in [0, 1)")
    if not ctx.x.shape:
        raise ValueError("drop_path needs an input with a batch axis (axis 0)")
    return ctx.x


def _per_sample(mask: np.ndarray, ndim: int) -> np.ndarray:
    """The [N] mask shaped to broadcast over one sample's elements."""
    return mask.reshape(mask.shape + (1,) * (ndim - 1))


def _drop_path_fwd(ctx, inputs, params, training, rng):
    x = inputs[0]
    if not training:
        return x.copy(), {}
    if rng is None:
        raise ValueError("drop_path needs a random generator in training mode")
    p = ctx.attrs["p"]
    # one float64 uniform per sample, kept where >= p: the kernels draw the same ones
    mask = (rng.random(x.shape[0]) >= p).astype(np.uint8)
    return x * _per_sample(mask, x.ndim) * (1.0 / (1.0 - p)), {"mask": mask}


def _drop_path_dx(ctx, saved, dout, index):
    mask = saved["mask"]
    return dout * _per_sample(mask, dout.ndim) * (1.0 / (1.0 - ctx.attrs["p"]))


DROP_PATH = OpDef(
    name="drop_path",
    family="stochastic",
    doc="Stochastic depth (drop path): in training, zero each sample (axis 0) whole with "
        "probability `p` and scale the rest by 1/(1-p); the identity at inference.",
    ports=(Port("x"),),
    attrs=(AttrSpec("p", "float", 0.2, doc="probability of dropping a sample",
                     at_least=0, below=1),),
    infer=_drop_path_infer,
    flops=lambda ctx: 2 * ctx.x.numel,
    grads=(GradRule("x", frozenset({"mask"}), lambda ctx: 2 * ctx.x.numel, _drop_path_dx),),
    aux=(AuxSpec("mask", lambda ctx: ctx.x.shape[:1], "u8"),),
    deterministic=False,
    forward_ref=_drop_path_fwd,
    kernels=on_every_target({
        "fwd": "stochastic.drop_path_fwd",
        "dx:x": "stochastic.drop_path_dx"}),
)

OPS = (DROP_PATH,)
