"""Ops of Caffe's structural layers and of its forks that work on spatial positions:
crop (Caffe Crop, FCN), deconv2d (Caffe Deconvolution) and interp (PSPNet's bilinear Interp; linear in x, so its dX reads nothing) and roi_pool (Fast
R-CNN's ROIPooling: its dX reads the rois and the argmax the forward saves), SSD's
normalize (an L2 norm with a learned scale; the forward saves the norms for the backward),
and pad (zeros around H and W: ONNX's Pad and the uneven padding of TensorFlow's SAME convs).

Crop moves data and computes nothing, like the shape family, and its backward reads no
forward value: crop's dX is dY written into zeros at the crop's offsets. (SSD's Permute is
the shape family's transpose.) Crop's second input only gives the output its size: it
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
from bwplan.ops.opdef import (AttrSpec, AuxSpec, GradRule, OpCtx, OpDef, ParamSlot, Port,
                              on_every_target, zero_flops)


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

# ---- interp ----------------------------------------------------------------------------
def interp_taps(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index: the lower input index, the upper one, and the upper one's weight.
    Corners align (Caffe's caffe_cpu_interp2): output i samples input i * (in-1)/(out-1)."""
    ratio = (size_in - 1) / (size_out - 1) if size_out > 1 else 0.0
    pos = np.arange(size_out) * ratio
    low = np.minimum(np.floor(pos).astype(np.int64), size_in - 1)
    high = np.minimum(low + 1, size_in - 1)
    return low, high, pos - low


def _interp_infer(ctx: OpCtx) -> TensorType:
    if len(ctx.x.shape) != 4:
        raise ValueError(f"interp expects an NCHW input, got {ctx.x}")
    h, w = ctx.attrs["height"], ctx.attrs["width"]
    if h <= 0 or w <= 0:
        raise ValueError(f"interp: the output size {h}x{w} must be positive")
    return ctx.x.with_shape(*ctx.x.shape[:2], h, w)


def _interp_matrices(ctx: OpCtx) -> tuple[np.ndarray, np.ndarray]:
    """[out_h, in_h] and [out_w, in_w]: the forward is Mh @ x @ Mw^T per plane."""
    mats = []
    for size_in, size_out in ((ctx.x.shape[2], ctx.attrs["height"]),
                              (ctx.x.shape[3], ctx.attrs["width"])):
        low, high, frac = interp_taps(size_in, size_out)
        m = np.zeros((size_out, size_in))
        np.add.at(m, (np.arange(size_out), low), 1 - frac)
        np.add.at(m, (np.arange(size_out), high), frac)
        mats.append(m)
    return mats[0], mats[1]


def _interp_fwd(ctx, inputs, params, training, rng):
    mh, mw = _interp_matrices(ctx)
    return np.einsum("ih,nchw,jw->ncij", mh, inputs[0], mw), {}


def _interp_dx(ctx, saved, dout, index):
    mh, mw = _interp_matrices(ctx)
    return np.einsum("ih,ncij,jw->nchw", mh, dout, mw)


INTERP = OpDef(
    name="interp",
    family="spatial",
    doc="Bilinear resize of NCHW input to height x width, corners aligned (PSPNet / DeepLab "
        "Interp).",
    ports=(Port("x"),),
    attrs=(AttrSpec("height", "int", doc="output height"),
           AttrSpec("width", "int", doc="output width")),
    infer=_interp_infer,
    flops=lambda ctx: 8 * ctx.out.numel,
    grads=(GradRule("x", frozenset(), lambda ctx: 8 * ctx.out.numel, _interp_dx),),
    forward_ref=_interp_fwd,
    kernels=on_every_target({"fwd": "spatial.interp_fwd", "dx:x": "spatial.interp_dx"}),
)

# ---- roi_pool --------------------------------------------------------------------------
def caffe_round(v: float) -> int:
    """C's round(): halves away from zero."""
    return int(np.sign(v) * np.floor(abs(v) + 0.5))


def roi_bins(ctx: OpCtx, roi) -> tuple[int, list[tuple[int, int]], list[tuple[int, int]]]:
    """(batch index, [hstart, hend) per bin row, [wstart, wend) per bin column) of one roi
    [batch, x1, y1, x2, y2], as Fast R-CNN's ROIPoolingLayer cuts it."""
    _, _, h, w = ctx.x.shape
    a = ctx.attrs
    scale, ph_n, pw_n = a["spatial_scale"], a["pooled_h"], a["pooled_w"]
    x1, y1, x2, y2 = (caffe_round(float(v) * scale) for v in roi[1:5])
    bin_h = max(y2 - y1 + 1, 1) / ph_n
    bin_w = max(x2 - x1 + 1, 1) / pw_n

    def cut(count, size, bin_size, start):
        return [(min(max(int(np.floor(i * bin_size)) + start, 0), size),
                 min(max(int(np.ceil((i + 1) * bin_size)) + start, 0), size))
                for i in range(count)]
    return int(roi[0]), cut(ph_n, h, bin_h, y1), cut(pw_n, w, bin_w, x1)


def _roi_infer(ctx: OpCtx) -> TensorType:
    x, rois = ctx.inputs
    # the older Fast R-CNN files give the rois as a 4-D blob [R, 5, 1, 1]: the same rows
    if len(x.shape) != 4 or rois.shape[1:] not in ((5,), (5, 1, 1)):
        raise ValueError(f"roi_pool takes NCHW features and rois [R, 5] or [R, 5, 1, 1] "
                         f"(batch, x1, y1, x2, y2), got {x} and {rois}")
    if ctx.attrs["pooled_h"] <= 0 or ctx.attrs["pooled_w"] <= 0:
        raise ValueError("roi_pool: pooled_h and pooled_w must be positive")
    return x.with_shape(rois.shape[0], x.shape[1], ctx.attrs["pooled_h"],
                        ctx.attrs["pooled_w"])


def _roi_fwd(ctx, inputs, params, training, rng):
    x, rois = inputs[0], inputs[1].reshape(-1, 5)
    r_n, c_n = rois.shape[0], x.shape[1]
    ph_n, pw_n = ctx.attrs["pooled_h"], ctx.attrs["pooled_w"]
    w = x.shape[3]
    out = np.zeros((r_n, c_n, ph_n, pw_n), dtype=x.dtype)
    argmax = np.full(out.shape, -1, dtype=np.int32)
    for r in range(r_n):
        b, rows, cols = roi_bins(ctx, rois[r])
        for i, (h0, h1) in enumerate(rows):
            for j, (w0, w1) in enumerate(cols):
                if h1 <= h0 or w1 <= w0:
                    continue      # an empty bin: 0, and no gradient
                window = x[b, :, h0:h1, w0:w1].reshape(c_n, -1)
                best = window.argmax(axis=1)
                out[r, :, i, j] = window[np.arange(c_n), best]
                argmax[r, :, i, j] = (h0 + best // (w1 - w0)) * w + w0 + best % (w1 - w0)
    return out, {"argmax": argmax}


def _roi_dx(ctx, saved, dout, index):
    rois, argmax = saved["rois"].reshape(-1, 5), saved["argmax"]
    dx = np.zeros(ctx.x.shape, dtype=dout.dtype)
    planes = dx.reshape(dx.shape[0], dx.shape[1], -1)
    for r in range(argmax.shape[0]):
        b = int(rois[r, 0])
        for c in range(argmax.shape[1]):
            for k, g in zip(argmax[r, c].ravel(), dout[r, c].ravel()):
                if k >= 0:
                    planes[b, c, k] += g
    return dx


ROI_POOL = OpDef(
    name="roi_pool",
    family="spatial",
    doc="Max pooling of each region of interest into pooled_h x pooled_w bins (Fast R-CNN "
        "ROIPooling): rois are [R, 5] rows (batch index, x1, y1, x2, y2; [R, 5, 1, 1] "
        "also) in input pixels, "
        "scaled by spatial_scale onto the features; an empty bin is 0. Differentiable with "
        "respect to the features, not the rois.",
    ports=(Port("x"), Port("rois", differentiable=False)),
    attrs=(AttrSpec("pooled_h", "int", doc="bin rows"),
           AttrSpec("pooled_w", "int", doc="bin columns"),
           AttrSpec("spatial_scale", "float", 1.0, doc="feature pixels per input pixel")),
    infer=_roi_infer,
    flops=lambda ctx: ctx.out.numel * max(1, ctx.x.shape[2] * ctx.x.shape[3]
                                          // (ctx.attrs["pooled_h"] * ctx.attrs["pooled_w"])),
    aux=(AuxSpec("argmax", lambda ctx: ctx.out.shape, "i32"),),
    grads=(GradRule("x", frozenset({"argmax", "rois"}), lambda ctx: ctx.out.numel, _roi_dx),),
    forward_ref=_roi_fwd,
    kernels=on_every_target({"fwd": "spatial.roi_pool_fwd", "dx:x": "spatial.roi_pool_dx"}),
)

# ---- normalize -------------------------------------------------------------------------
def _ncs(ctx: OpCtx) -> tuple[int, int, int]:
    shape = ctx.x.shape
    return shape[0], shape[1], int(np.prod(shape[2:], dtype=np.int64))


def _norm_shape(ctx: OpCtx) -> tuple[int, ...]:
    """One norm per sample (across_spatial) or per sample and position."""
    n, _, s = _ncs(ctx)
    return (n,) if ctx.attrs["across_spatial"] else (n, s)


def _norms(ctx, x3):
    eps = ctx.attrs["eps"]
    if ctx.attrs["across_spatial"]:
        return np.sqrt((x3 ** 2).sum(axis=(1, 2)) + eps)[:, None, None]
    return np.sqrt((x3 ** 2).sum(axis=1, keepdims=True) + eps)


def _scale3(ctx, weight):
    return np.asarray(weight).reshape(1, -1, 1)


def _normalize_fwd(ctx, inputs, params, training, rng):
    x3 = inputs[0].reshape(_ncs(ctx))
    norm = _norms(ctx, x3)
    out = x3 / norm * _scale3(ctx, params["weight"])
    return out.reshape(ctx.x.shape), {"norm": norm.reshape(_norm_shape(ctx))}


def _normalize_dx(ctx, saved, dout, index):
    x3, g = saved["x"].reshape(_ncs(ctx)), dout.reshape(_ncs(ctx))
    norm = saved["norm"].reshape((-1, 1, 1) if ctx.attrs["across_spatial"]
                                 else (x3.shape[0], 1, x3.shape[2]))
    g = g * _scale3(ctx, saved["weight"])
    axes = (1, 2) if ctx.attrs["across_spatial"] else (1,)
    dot = (g * x3).sum(axis=axes, keepdims=True)
    return (g / norm - x3 * dot / norm ** 3).reshape(ctx.x.shape)


def _normalize_dw(ctx, saved, dout, index):
    x3, g = saved["x"].reshape(_ncs(ctx)), dout.reshape(_ncs(ctx))
    norm = saved["norm"].reshape((-1, 1, 1) if ctx.attrs["across_spatial"]
                                 else (x3.shape[0], 1, x3.shape[2]))
    per_channel = (g * x3 / norm).sum(axis=(0, 2))
    return per_channel.sum(keepdims=True) if ctx.attrs["channel_shared"] else per_channel


def _normalize_infer(ctx: OpCtx) -> TensorType:
    if len(ctx.x.shape) < 2:
        raise ValueError(f"normalize expects [N, C, ...], got {ctx.x}")
    return ctx.x


NORMALIZE = OpDef(
    name="normalize",
    family="spatial",
    doc="x divided by its L2 norm, sqrt(sum x^2 + eps), over each sample (across_spatial) "
        "or over the channels at each position, times a learned scale per channel or one "
        "shared (SSD Normalize).",
    ports=(Port("x"),),
    attrs=(AttrSpec("across_spatial", "bool", True, doc="one norm per sample"),
           AttrSpec("channel_shared", "bool", True, doc="one scale for every channel"),
           AttrSpec("eps", "float", 1e-10)),
    params=(ParamSlot("weight", lambda ctx: (1,) if ctx.attrs["channel_shared"]
                      else (ctx.x.shape[1],), init="constant:1.0"),),
    infer=_normalize_infer,
    flops=lambda ctx: 4 * ctx.x.numel,
    aux=(AuxSpec("norm", _norm_shape),),
    grads=(GradRule("x", frozenset({"x", "norm", "weight"}), lambda ctx: 6 * ctx.x.numel,
                    _normalize_dx),
           GradRule("weight", frozenset({"x", "norm"}), lambda ctx: 3 * ctx.x.numel,
                    _normalize_dw)),
    forward_ref=_normalize_fwd,
    kernels=on_every_target({"fwd": "spatial.normalize_fwd", "dx:x": "spatial.normalize_dx",
                             "dw:weight": "spatial.normalize_dw"}),
)

OPS = (CROP, DECONV2D, INTERP, ROI_POOL, NORMALIZE, PAD)
