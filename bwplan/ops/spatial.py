"""Ops of Caffe's structural layers and of its forks that work on spatial positions:
crop (Caffe Crop, FCN), permute (SSD's Permute), deconv2d (Caffe Deconvolution) and pad
(zeros around H and W, as ONNX's Pad and the asymmetric padding of TensorFlow's SAME convs).

Crop and permute move data and compute nothing, like the shape family, and neither
backward reads a forward value: crop's dX is dY written into zeros at the crop's offsets,
permute's dX is dY permuted back. Crop's second input only gives the output its size: it
is not differentiable, so no gradient flows into it (Caffe's CropLayer leaves it untouched
too).

deconv2d is the transpose of conv2d, exactly as Caffe defines Deconvolution: its forward
is conv2d's dX, its dX is conv2d's forward and its dW is conv2d's dW with the roles of
input and output gradient swapped, for the conv2d that maps the deconv's output back to
its input (`conv_view`). The weight is [in, out/groups, kh, kw], Caffe's layout.
"""
from __future__ import annotations

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops import conv
from bwplan.ops._shapes import pair
from bwplan.ops.opdef import AttrSpec, GradRule, OpCtx, OpDef, ParamSlot, Port, zero_flops


def _axis(axis: int, rank: int) -> int:
    if not -rank <= axis < rank:
        raise ValueError(f"axis {axis} is out of range for a {rank}-D input")
    return axis % rank


# ---- crop ------------------------------------------------------------------------------
def crop_offsets(ctx: OpCtx) -> tuple[int, ...]:
    """The offset on every axis of the input: 0 before `axis`; after it, Caffe's rule: one
    offset for every cropped axis, or one per cropped axis, or 0."""
    x, like = ctx.inputs[0].shape, ctx.inputs[1].shape
    if len(like) != len(x):
        raise ValueError(f"crop: the reference input has {len(like)} dimensions, the input "
                         f"{len(x)}")
    axis = _axis(ctx.attrs["axis"], len(x))
    given = tuple(ctx.attrs["offset"])
    n = len(x) - axis
    if len(given) not in (0, 1, n):
        raise ValueError(f"crop: {len(given)} offsets for {n} cropped axes; give one, one "
                         "per cropped axis, or none")
    offsets = (0,) * axis + tuple(given[0 if len(given) == 1 else i] if given else 0
                                  for i in range(n))
    for i in range(axis, len(x)):
        if offsets[i] < 0 or offsets[i] + like[i] > x[i]:
            raise ValueError(f"crop: dimension {i} of size {like[i]} at offset {offsets[i]} "
                             f"does not fit inside the input's {x[i]}")
    return offsets


def crop_window(ctx: OpCtx) -> tuple[slice, ...]:
    out = _crop_shape(ctx)
    return tuple(slice(o, o + d) for o, d in zip(crop_offsets(ctx), out))


def _crop_shape(ctx: OpCtx) -> tuple[int, ...]:
    x, like = ctx.inputs[0].shape, ctx.inputs[1].shape
    axis = _axis(ctx.attrs["axis"], len(x))
    return x[:axis] + like[axis:]


def _crop_infer(ctx: OpCtx) -> TensorType:
    crop_offsets(ctx)
    return ctx.x.with_shape(*_crop_shape(ctx))


def _crop_fwd(ctx, inputs, params, training, rng):
    return inputs[0][crop_window(ctx)].copy(), {}


def _crop_dx(ctx, saved, dout, index):
    dx = np.zeros(ctx.x.shape, dtype=dout.dtype)
    dx[crop_window(ctx)] = dout
    return dx


CROP = OpDef(
    name="crop",
    family="spatial",
    doc="The part of x the size of `like` from dimension `axis` on, starting at `offset` "
        "(Caffe Crop): one offset for every cropped dimension, one per cropped dimension, "
        "or none (0). `like` gives only the size and takes no gradient.",
    ports=(Port("x"), Port("like", differentiable=False)),
    attrs=(AttrSpec("axis", "int", 2, doc="first dimension cropped"),
           AttrSpec("offset", "ints", (), doc="where the crop starts in each cropped "
                                              "dimension")),
    infer=_crop_infer,
    flops=zero_flops,
    grads=(GradRule("x", frozenset(), zero_flops, _crop_dx),),
    forward_ref=_crop_fwd,
    kernels={"cpu": {"fwd": "spatial.crop_fwd", "dx:x": "spatial.crop_dx"},
             "cuda": {"fwd": "spatial.gather4", "dx:x": "spatial.crop_dx"}},
)


# ---- pad -------------------------------------------------------------------------------
# pad is crop's transpose: its forward writes x into zeros at the begin offsets (crop's dX)
# and its dX takes the window back out (crop's forward), so both targets run crop's kernels.
def pad_window(ctx: OpCtx) -> tuple[slice, ...]:
    """Where x sits inside the padded output."""
    (bh, bw), (_, _, h, w) = pair(ctx.attrs["begin"]), ctx.x.shape
    return (slice(None), slice(None), slice(bh, bh + h), slice(bw, bw + w))


def _pad_infer(ctx: OpCtx) -> TensorType:
    if len(ctx.x.shape) != 4:
        raise ValueError(f"pad expects an NCHW input, got {ctx.x}")
    (bh, bw), (eh, ew) = pair(ctx.attrs["begin"]), pair(ctx.attrs["end"])
    n, c, h, w = ctx.x.shape
    return ctx.x.with_shape(n, c, h + bh + eh, w + bw + ew)


def _pad_fwd(ctx, inputs, params, training, rng):
    (bh, bw), (eh, ew) = pair(ctx.attrs["begin"]), pair(ctx.attrs["end"])
    return np.pad(inputs[0], ((0, 0), (0, 0), (bh, eh), (bw, ew))), {}


def _pad_dx(ctx, saved, dout, index):
    return dout[pad_window(ctx)].copy()


PAD = OpDef(
    name="pad",
    family="spatial",
    doc="Zeros around the H and W of an NCHW input: `begin` rows/columns before (top, "
        "left), `end` after (bottom, right), so the two sides may differ.",
    ports=(Port("x"),),
    attrs=(AttrSpec("begin", "ints", 0, doc="zeros before, p or [top, left]", at_least=0,
                    arity=(1, 2)),
           AttrSpec("end", "ints", 0, doc="zeros after, p or [bottom, right]", at_least=0,
                    arity=(1, 2))),
    infer=_pad_infer,
    flops=zero_flops,
    grads=(GradRule("x", frozenset(), zero_flops, _pad_dx),),
    forward_ref=_pad_fwd,
    kernels={"cpu": {"fwd": "spatial.pad_fwd", "dx:x": "spatial.pad_dx"},
             "cuda": {"fwd": "spatial.crop_dx", "dx:x": "spatial.gather4"}},
)


# ---- permute ---------------------------------------------------------------------------
def permute_order(ctx: OpCtx) -> tuple[int, ...]:
    """SSD's order: the axes given, then the rest in their order."""
    rank = len(ctx.x.shape)
    given = [_axis(a, rank) for a in ctx.attrs["order"]]
    if len(set(given)) != len(given):
        raise ValueError(f"permute: order {list(ctx.attrs['order'])} repeats an axis")
    return tuple(given + [a for a in range(rank) if a not in given])


def _permute_infer(ctx: OpCtx) -> TensorType:
    return ctx.x.with_shape(*(ctx.x.shape[a] for a in permute_order(ctx)))


def _permute_fwd(ctx, inputs, params, training, rng):
    return np.ascontiguousarray(np.transpose(inputs[0], permute_order(ctx))), {}


def _permute_dx(ctx, saved, dout, index):
    return np.ascontiguousarray(np.transpose(dout, np.argsort(permute_order(ctx))))


PERMUTE = OpDef(
    name="permute",
    family="spatial",
    doc="The input's dimensions reordered: output dimension i is input dimension order[i]; "
        "dimensions not named follow in their order (SSD Permute).",
    ports=(Port("x"),),
    attrs=(AttrSpec("order", "ints", (), doc="the input dimension of each output "
                                             "dimension"),),
    infer=_permute_infer,
    flops=zero_flops,
    grads=(GradRule("x", frozenset(), zero_flops, _permute_dx),),
    forward_ref=_permute_fwd,
    kernels={"cpu": {"fwd": "spatial.permute_fwd", "dx:x": "spatial.permute_dx"},
             "cuda": {"fwd": "spatial.gather4", "dx:x": "spatial.gather4"}},
)

# ---- deconv2d --------------------------------------------------------------------------
def _deconv_out(ctx: OpCtx) -> tuple[int, int]:
    _, _, h, w = ctx.x.shape
    (kh, kw), (sh, sw) = pair(ctx.attrs["kernel"]), pair(ctx.attrs["stride"])
    (ph, pw), (dh, dw) = pair(ctx.attrs["pad"]), pair(ctx.attrs["dilation"])
    return sh * (h - 1) + dh * (kh - 1) + 1 - 2 * ph, sw * (w - 1) + dw * (kw - 1) + 1 - 2 * pw


def _deconv_infer(ctx: OpCtx) -> TensorType:
    if len(ctx.x.shape) != 4:
        raise ValueError(f"deconv2d expects an NCHW input, got {ctx.x}")
    n, c, h, w = ctx.x.shape
    groups, out = ctx.attrs["groups"], ctx.attrs["out"]
    if c % groups or out % groups:
        raise ValueError(f"groups={groups} must divide input channels {c} and out={out}")
    ho, wo = _deconv_out(ctx)
    if ho <= 0 or wo <= 0:
        raise ValueError(f"the padding leaves no output of a {h}x{w} input")
    return ctx.x.with_shape(n, out, ho, wo)


def conv_view(ctx: OpCtx) -> OpCtx:
    """The conv2d whose dX is this deconv2d's forward: from the deconv's output shape back
    to its input, with the same weight tensor and no bias."""
    n, c, _, _ = ctx.x.shape
    ho, wo = _deconv_out(ctx)
    wide = ctx.x.with_shape(n, ctx.attrs["out"], ho, wo)
    return OpCtx({**ctx.attrs, "out": c, "bias": False}, (wide,), ctx.x)


def _deconv_weight(ctx: OpCtx) -> tuple[int, ...]:
    kh, kw = pair(ctx.attrs["kernel"])
    return (ctx.x.shape[1], ctx.attrs["out"] // ctx.attrs["groups"], kh, kw)


def _deconv_macs(ctx: OpCtx) -> int:
    n, c, h, w = ctx.x.shape
    kh, kw = pair(ctx.attrs["kernel"])
    return n * c * h * w * (ctx.attrs["out"] // ctx.attrs["groups"]) * kh * kw


def _deconv_fwd(ctx, inputs, params, training, rng):
    out = conv.CONV2D.grad_for("x").reference(conv_view(ctx), {"weight": params["weight"]},
                                               inputs[0], 0)
    if "bias" in params:
        out = out + params["bias"][None, :, None, None]
    return out, {}


def _deconv_dx(ctx, saved, dout, index):
    out, _ = conv.CONV2D.forward_ref(conv_view(ctx), [dout], {"weight": saved["weight"]},
                                     False, None)
    return out


def _deconv_dw(ctx, saved, dout, index):
    # conv2d's dW of (its input, its output gradient) = (our dY, our input)
    return conv.CONV2D.grad_for("weight").reference(conv_view(ctx), {"x": dout},
                                                    saved["x"], 0)


def _deconv_db(ctx, saved, dout, index):
    return dout.sum(axis=(0, 2, 3))


DECONV2D = OpDef(
    name="deconv2d",
    family="spatial",
    doc="Transposed 2-D convolution over NCHW input (Caffe Deconvolution): output size "
        "stride*(H-1) + dilation*(kernel-1) + 1 - 2*pad; weight [in, out/groups, kh, kw].",
    ports=(Port("x"),),
    attrs=(
        AttrSpec("out", "int", doc="output channels"),
        AttrSpec("kernel", "ints", doc="kernel size, k or [kh, kw]"),
        AttrSpec("stride", "ints", 1),
        AttrSpec("pad", "ints", 0),
        AttrSpec("dilation", "ints", 1),
        AttrSpec("groups", "int", 1),
        AttrSpec("bias", "bool", True, doc="add a learned bias per output channel"),
    ),
    params=(
        ParamSlot("weight", _deconv_weight),
        ParamSlot("bias", lambda ctx: (ctx.attrs["out"],), enabled=lambda a: a["bias"],
                  init="zeros"),
    ),
    infer=_deconv_infer,
    flops=lambda ctx: 2 * _deconv_macs(ctx) + (ctx.out.numel if ctx.attrs["bias"] else 0),
    grads=(
        GradRule("x", frozenset({"weight"}), lambda ctx: 2 * _deconv_macs(ctx), _deconv_dx),
        GradRule("weight", frozenset({"x"}), lambda ctx: 2 * _deconv_macs(ctx), _deconv_dw),
        GradRule("bias", frozenset(), lambda ctx: ctx.out.numel, _deconv_db),
    ),
    forward_ref=_deconv_fwd,
    kernels={"cpu": {"fwd": "spatial.deconv2d_fwd", "dx:x": "spatial.deconv2d_dx",
                     "dw:weight": "spatial.deconv2d_dw", "dw:bias": "spatial.deconv2d_db"},
             "cuda": {"fwd": "spatial.deconv2d_fwd", "dx:x": "spatial.deconv2d_dx",
                      "dw:weight": "spatial.deconv2d_dw", "dw:bias": "spatial.deconv2d_db"}},
)

OPS = (CROP, PERMUTE, DECONV2D, PAD)
