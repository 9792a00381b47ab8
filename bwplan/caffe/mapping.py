"""How a Caffe layer becomes bwplan IR: the `Import` record a catalogue row carries
(`catalogue.py` holds the one row per Caffe type) and the attribute functions it names.

An import's `kind` is one of
  layer   one IR layer, named after the Caffe layer (`op` and `attrs` give the call)
  inputs  an input per top (data layers: the data comes from outside the net)
  alias   no IR layer: each top is another name for the bottom (Split)
  per_top one IR layer per top, named after the top blob (Slice)
`slots` names the bwplan param slot of each Caffe param blob, in Caffe's blob order; None
marks a Caffe blob that has no bwplan slot. `stats` says the blobs are statistics that
never train, so their lr_mult / decay_mult are not carried over.

Attribute functions return (key, value, span) triples and raise CaffeError for settings
bwplan cannot represent. A value equal to both Caffe's default and the op's is left out, so
that `bwplan convert` writes what the prototxt says and little else.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from bwplan.caffe.model import CaffeLayer
from bwplan.caffe.schema import Record
from bwplan.errors import CaffeError
from bwplan.source import Span

Attr = tuple[str, Any, Span]
AttrFn = Callable[[CaffeLayer, "MapCtx"], list[Attr]]


@dataclass(frozen=True, slots=True)
class MapCtx:
    """What a row may need besides the layer: the phase and the bottoms' Caffe shapes."""

    phase: str
    bottom_shapes: tuple[tuple[int, ...] | None, ...]
    top_shapes: tuple[tuple[int, ...] | None, ...]


def no_attrs(layer: CaffeLayer, ctx: MapCtx) -> list[Attr]:
    return []


@dataclass(frozen=True, slots=True)
class Import:
    kind: str
    op: str | Callable[[CaffeLayer], str] = ""
    attrs: AttrFn = no_attrs
    slots: tuple[str | None, ...] = ()
    stats: bool = False
    # inputs only: the error when a top's shape is not known (default: ask for it)
    unknown_shape: Callable[[CaffeLayer, tuple[str, ...]], CaffeError] | None = None
    # layer only: an IR layer computed first, named <layer>_norm, whose output the layer
    # reads instead of its bottom (the forks' BN: batchnorm, then scale); None for none
    before: Callable[[CaffeLayer, "MapCtx"], "Import | None"] | None = None
    # layer only: the IR layer computing the second top from the same bottoms, named after
    # that top (Pooling MAX's mask: `maxpool_mask`); None when the layer has no such top
    second_top: Callable[[CaffeLayer, "MapCtx"], "Import | None"] | None = None

    def op_for(self, layer: CaffeLayer) -> str:
        return self.op(layer) if callable(self.op) else self.op


def unsupported(layer: CaffeLayer, p: Record, field: str, why: str) -> CaffeError:
    return CaffeError(p.where(field), f"{layer.type} layer '{layer.name}': {why}",
                      "bwplan cannot import this setting; see docs/caffe.md")


def _pair(h: int, w: int) -> int | tuple[int, int]:
    return h if h == w else (h, w)


def _size(p: Record, name: str, full: str, default: int | None) -> int | tuple | None:
    """A 2-D size written as name_h / name_w or as `full` (one value, or one per axis)."""
    if p.has(f"{name}_h") or p.has(f"{name}_w"):
        return _pair(p.get(f"{name}_h", default), p.get(f"{name}_w", default))
    value = p.get(full, default)
    if isinstance(value, tuple):
        if not value:
            return default
        return _pair(value[0], value[-1]) if len(value) <= 2 else value
    return value


def _kernel(layer: CaffeLayer, p: Record, full: str) -> int | tuple:
    kernel = _size(p, "kernel", full, None)
    if kernel is None or (isinstance(kernel, tuple) and None in kernel):
        raise CaffeError(p.span, f"{layer.type} layer '{layer.name}' needs kernel_size (or "
                         "kernel_h and kernel_w)")
    if isinstance(kernel, tuple) and len(kernel) > 2:
        raise unsupported(layer, p, full, "only 2-D kernels are supported")
    return kernel


def _required(layer: CaffeLayer, p: Record, field: str) -> Any:
    if not p.has(field):
        raise CaffeError(p.span, f"{layer.type} layer '{layer.name}' needs {field}")
    return p.get(field)


def _opt(p: Record, field: str, key: str, default: Any, value: Any = None) -> list[Attr]:
    """(key, value) when the value differs from the default both sides share."""
    value = p.get(field) if value is None else value
    return [] if value == default else [(key, value, p.where(field))]


# ---- rows ---------------------------------------------------------------------------------
def conv(layer, ctx):
    p = layer.sub("convolution_param")
    if p.get("axis") != 1:
        raise unsupported(layer, p, "axis", "only axis 1 (NCHW) is supported")
    out = [("out", _required(layer, p, "num_output"), p.where("num_output")),
           ("kernel", _kernel(layer, p, "kernel_size"), p.where("kernel_size"))]
    out += _opt(p, "stride", "stride", 1, _size(p, "stride", "stride", 1))
    out += _opt(p, "pad", "pad", 0, _size(p, "pad", "pad", 0))
    if p.has("hole"):   # the DeepLab / PSPNet forks' name of the dilation
        if p.has("dilation"):
            raise unsupported(layer, p, "hole", "give the dilation once: dilation or hole")
        out += _opt(p, "hole", "dilation", 1)
    else:
        out += _opt(p, "dilation", "dilation", 1, _size(p, "dilation", "dilation", 1))
    out += _opt(p, "group", "groups", 1)
    return out + _opt(p, "bias_term", "bias", True)


def deconv(layer, ctx):
    """Deconvolution reads convolution_param, as Caffe's DeconvolutionLayer does."""
    return conv(layer, ctx)


def inner_product(layer, ctx):
    p = layer.sub("inner_product_param")
    if p.get("axis") != 1:
        raise unsupported(layer, p, "axis", "only axis 1 is supported (bwplan's linear "
                          "flattens from dimension 1)")
    if p.get("transpose"):
        raise unsupported(layer, p, "transpose", "transposed weights are not supported")
    return ([("out", _required(layer, p, "num_output"), p.where("num_output"))]
            + _opt(p, "bias_term", "bias", True))


def relu(layer, ctx):
    return _opt(layer.sub("relu_param"), "negative_slope", "negative_slope", 0.0)


def settings(param: str, *fields: tuple[str, str, Any]) -> AttrFn:
    """Attributes copied from `param`'s fields, each (field, key, the default both share)."""
    def attrs(layer, ctx):
        p = layer.sub(param)
        return [a for field, key, default in fields for a in _opt(p, field, key, default)]
    return attrs


def crop(layer, ctx):
    p = layer.sub("crop_param")
    out = _opt(p, "axis", "axis", 2)
    offsets = tuple(p.get("offset"))
    return out + ([("offset", offsets, p.where("offset", 0))] if offsets else [])


def permute(layer, ctx):
    """SSD's Permute as bwplan's transpose: the axes `order` names, then the others in
    their order (the whole permutation, from the bottom's rank)."""
    from bwplan.caffe.shapes import permute_order
    p = layer.sub("permute_param")
    perm = permute_order(layer, len(ctx.bottom_shapes[0]))
    return [("perm", perm, p.where("order", 0))]


def argmax(layer, ctx):
    p = layer.sub("argmax_param")
    out = _opt(p, "out_max_val", "out_max_val", False) + _opt(p, "top_k", "top_k", 1)
    return out + ([("axis", p.get("axis"), p.where("axis"))] if p.has("axis") else [])


def bias_op(layer: CaffeLayer) -> str:
    """Bias with one bottom learns its bias; with two, the second bottom is the bias."""
    return "bias" if len(layer.bottoms) == 1 else "bias_add"


def bias(layer, ctx):
    p = layer.sub("bias_param")
    out = _opt(p, "axis", "axis", 1)
    if len(layer.bottoms) == 1:
        return out + _opt(p, "num_axes", "num_axes", 1)
    if p.has("num_axes"):
        raise unsupported(layer, p, "num_axes", "num_axes with a second bottom: the bias "
                          "bottom's own shape gives the axes")
    return out


def tile(layer, ctx):
    p = layer.sub("tile_param")
    return _opt(p, "axis", "axis", 1) + [("tiles", _required(layer, p, "tiles"),
                                          p.where("tiles"))]


def fork_bn(layer, ctx):
    """The forks' BN layer as bwplan's scale: blob 0 the scale, blob 1 the shift."""
    return [("bias", True, layer.record.where("type"))]


def fork_bn_norm(layer, ctx) -> "Import | None":
    """What the forks' BN normalises with before it scales: the batch's statistics (SegNet's
    bn_mode LEARN), its stored ones (PSPNet's `frozen: true`, blobs 2 and 3), or nothing
    (SegNet's bn_mode INFERENCE, where BN is a per-channel scale and shift)."""
    p = layer.sub("bn_param")       # an open message: the fork's schema is not known
    if _word(p, "bn_mode", "LEARN") == "INFERENCE":
        return None
    eps = _word(p, "var_eps", 1e-9)    # the forks' fixed variance epsilon
    attrs = [("eps", float(eps), p.where("var_eps"))]
    if _word(p, "frozen", False) in (True, 1, "true", "True"):
        attrs.append(("global_stats", True, p.where("frozen")))
    if p.has("momentum"):
        attrs.append(("momentum", float(_word(p, "momentum", 0.999)), p.where("momentum")))
    return Import("layer", "batchnorm", lambda layer, ctx: attrs, (None, None, "mean", "var"),
                  stats=True)


def interp(layer, ctx):
    """PSPNet's Interp: the output size Caffe computes (zoom / shrink factors, or height and
    width) becomes the op's height and width."""
    p = layer.sub("interp_param")
    for field in ("pad_beg", "pad_end"):
        if _word(p, field, 0) != 0:
            raise unsupported(layer, p, field, "Interp with padding (pad_beg / pad_end) is "
                              "not supported")
    if len(layer.bottoms) != 1:
        raise CaffeError(layer.bottom_span(1), f"Interp layer '{layer.name}': a second bottom "
                         "giving the size is not supported", "give height and width in "
                         "interp_param instead")
    top = ctx.top_shapes[0]
    if top is None:
        raise CaffeError(p.span, f"Interp layer '{layer.name}' needs its output size: give "
                         "zoom_factor, shrink_factor, or height and width, and the shape "
                         "of its bottom")
    return [("height", top[2], p.span), ("width", top[3], p.span)]


def roi_pooling(layer, ctx):
    p = layer.sub("roi_pooling_param")     # Fast R-CNN's fork: an open message
    out = []
    for field, default in (("pooled_h", 0), ("pooled_w", 0)):
        value = _word(p, field, default)
        if not value:
            raise CaffeError(p.span, f"ROIPooling layer '{layer.name}' needs {field}")
        out.append((field, int(value), p.where(field)))
    scale = float(_word(p, "spatial_scale", 1.0))
    return out + ([("spatial_scale", scale, p.where("spatial_scale"))] if scale != 1 else [])


def normalize(layer, ctx):
    p = layer.sub("norm_param")            # SSD's fork: an open message
    out = []
    for field, default in (("across_spatial", True), ("channel_shared", True)):
        value = _word(p, field, default) in (True, 1, "true", "True")
        if value != default:
            out.append((field, value, p.where(field)))
    eps = float(_word(p, "eps", 1e-10))
    return out + ([("eps", eps, p.where("eps"))] if eps != 1e-10 else [])


def _normalization(layer: CaffeLayer, default: str) -> list[Attr]:
    """A loss's normalization: loss_param.normalization, or the legacy `normalize` (true:
    VALID, false: BATCH_SIZE), left out when it is the layer's default."""
    p = layer.sub("loss_param")
    if p.has("normalization"):
        value, where = p.get("normalization"), p.where("normalization")
    elif p.has("normalize"):
        value, where = ("VALID" if p.get("normalize") else "BATCH_SIZE"), p.where("normalize")
    else:
        return []
    return [] if value == default else [("normalization", value, where)]


def _ignore_label(layer: CaffeLayer) -> list[Attr]:
    p = layer.sub("loss_param")
    return [("ignore_label", p.get("ignore_label"), p.where("ignore_label"))] \
        if p.has("ignore_label") else []


def sigmoid_ce(layer, ctx):
    return _normalization(layer, "BATCH_SIZE") + _ignore_label(layer)


def hinge(layer, ctx):
    return _opt(layer.sub("hinge_loss_param"), "norm", "norm", "L1")


def infogain_op(layer: CaffeLayer) -> str:
    """Two bottoms: H from the `source` file (a parameter bwplan loads); three: H given."""
    return "infogain_loss" if len(layer.bottoms) == 2 else "infogain_loss_h"


def infogain(layer, ctx):
    return (_opt(layer.sub("infogain_loss_param"), "axis", "axis", 1)
            + _normalization(layer, "VALID") + _ignore_label(layer))


def smooth_l1_op(layer: CaffeLayer) -> str:
    # 3 bottoms: the original Fast R-CNN's loss weights; 4: py-faster-rcnn's inside and
    # outside weights
    ops = {2: "smooth_l1_loss", 3: "smooth_l1_loss_inside", 4: "smooth_l1_loss_weighted"}
    if len(layer.bottoms) not in ops:
        raise CaffeError(layer.span, f"SmoothL1Loss layer '{layer.name}' takes 2 bottoms, 3 "
                         "with loss weights, or 4 with inside and outside weights, not "
                         f"{len(layer.bottoms)}")
    return ops[len(layer.bottoms)]


def smooth_l1(layer, ctx):
    p = layer.sub("smooth_l1_loss_param")
    sigma = float(_word(p, "sigma", 1.0))
    return [("sigma", sigma, p.where("sigma"))] if sigma != 1.0 else []


def embed(layer, ctx):
    p = layer.sub("embed_param")
    return [("num_output", _required(layer, p, "num_output"), p.where("num_output")),
            ("input_dim", _required(layer, p, "input_dim"), p.where("input_dim"))] + \
        _opt(p, "bias_term", "bias_term", True)


def pool_op(layer: CaffeLayer) -> str:
    p = layer.sub("pooling_param")
    kind = {"MAX": "maxpool", "AVE": "avgpool"}.get(p.get("pool"))
    if kind is None:
        raise unsupported(layer, p, "pool", "STOCHASTIC pooling is not supported")
    return ("global_" + kind) if p.get("global_pooling") else kind


def pool(layer, ctx):
    p = layer.sub("pooling_param")
    if p.get("global_pooling"):
        return []
    # Caffe's stride defaults to 1, not to the kernel: always write it
    stride = _size(p, "stride", "stride", 1)
    out = [("kernel", _kernel(layer, p, "kernel_size"), p.where("kernel_size")),
           ("stride", stride, p.where("stride"))]
    out += _opt(p, "pad", "pad", 0, _size(p, "pad", "pad", 0))
    if p.get("round_mode") == "CEIL" and p.get("ceil_mode"):
        out.append(("ceil", True, p.where("round_mode")))
    return out


def pool_mask(layer, ctx) -> Import | None:
    """Pooling's second top, the max-pooling mask (SegNet): a `maxpool_mask` with the pool's
    window. Caffe writes it for MAX pooling only; None otherwise."""
    p = layer.sub("pooling_param")
    if p.get("pool") != "MAX" or p.get("global_pooling"):
        return None
    return Import("layer", "maxpool_mask", pool)


def upsample(layer, ctx):
    """SegNet's Upsample (bottoms: the values, the mask): the output size Caffe computes,
    as a scale when it is one, else written out."""
    top, bottom = ctx.top_shapes[0], ctx.bottom_shapes[0]
    if top is None or bottom is None:
        raise CaffeError(layer.span, f"Upsample layer '{layer.name}' needs the shape of its "
                         "bottom", "pass --input-shape for the data blobs")
    (h, w), (ho, wo) = bottom[2:], top[2:]
    where = layer.sub("upsample_param").span
    if ho % h == 0 and wo % w == 0:
        scale = _pair(ho // h, wo // w)
        return [] if scale == 2 else [("scale", scale, where)]
    return [("size", (ho, wo), where)]


def lrn_op(layer: CaffeLayer) -> str:
    within = layer.sub("lrn_param").get("norm_region") == "WITHIN_CHANNEL"
    return "lrn_within_channel" if within else "lrn"


def lrn(layer, ctx):
    p = layer.sub("lrn_param")
    # every value written: Caffe's default alpha (1) is not the usual 1e-4
    fields = (("size", "local_size"), ("alpha", "alpha"), ("beta", "beta"))
    if p.get("norm_region") == "ACROSS_CHANNELS":
        fields += (("k", "k"),)     # within a channel Caffe adds 1, whatever k says
    return [(key, p.get(field), p.where(field)) for key, field in fields]


def concat(layer, ctx):
    p = layer.sub("concat_param")
    axis = p.get("concat_dim") if p.has("concat_dim") else p.get("axis")
    return _opt(p, "axis", "axis", 1, axis)


def eltwise_op(layer: CaffeLayer) -> str:
    return {"SUM": "add", "PROD": "mul", "MAX": "maximum"}[
        layer.sub("eltwise_param").get("operation")]


def eltwise(layer, ctx):
    p = layer.sub("eltwise_param")
    op = p.get("operation")
    if op == "PROD" and len(layer.bottoms) != 2:
        raise unsupported(layer, p, "operation", "PROD of more than two bottoms is not "
                          "supported (bwplan's mul takes two)")
    coeff = p.get("coeff")
    if coeff and op != "SUM":
        raise unsupported(layer, p, "coeff", "coefficients apply only to SUM")
    return [("coeffs", tuple(coeff), p.where("coeff", 0))] if coeff else []


def dropout(layer, ctx):
    return _opt(layer.sub("dropout_param"), "dropout_ratio", "p", 0.5)


def batch_norm(layer, ctx):
    p = layer.sub("batch_norm_param")
    phase = layer.record.get("phase") or ctx.phase
    global_stats = p.get("use_global_stats") if p.has("use_global_stats") \
        else phase == "TEST"
    out = _opt(p, "eps", "eps", 1e-5)
    out += _opt(p, "moving_average_fraction", "momentum", 0.999)
    return out + _opt(p, "use_global_stats", "global_stats", False, global_stats)


def scale(layer, ctx):
    p = layer.sub("scale_param")
    if len(layer.bottoms) != 1:
        raise unsupported(layer, p, "axis", "a Scale layer with a second bottom (the scale "
                          "as an input) is not supported")
    if p.get("axis") != 1 or p.get("num_axes") != 1:
        raise unsupported(layer, p, "axis", "only the per-channel form (axis 1, num_axes 1) "
                          "is supported")
    return _opt(p, "bias_term", "bias", False)


def softmax(layer, ctx):
    return _opt(layer.sub("softmax_param"), "axis", "axis", 1)


def softmax_loss(layer, ctx):
    p = layer.sub("loss_param")
    out = [("ignore_label", p.get("ignore_label"), p.where("ignore_label"))] \
        if p.has("ignore_label") else []
    if p.get("weight_by_label_freqs"):
        # SegNet's fork: class_weighting holds one weight per class (Caffe CHECKs the
        # count); without weight_by_label_freqs it is not read
        weights = tuple(float(w) for w in p.get("class_weighting", ()))
        bottom = ctx.bottom_shapes[0] if ctx.bottom_shapes else None
        classes = bottom[1] if bottom is not None and len(bottom) > 1 else None
        if classes is not None and len(weights) != classes:
            raise CaffeError(p.where("weight_by_label_freqs"), f"SoftmaxWithLoss layer "
                             f"'{layer.name}': weight_by_label_freqs needs one "
                             f"class_weighting per class: {classes} classes, "
                             f"{len(weights)} given")
        out.append(("class_weights", weights, p.where("class_weighting")
                    if p.has("class_weighting") else p.where("weight_by_label_freqs")))
    return out


def contrastive(layer, ctx):
    p = layer.sub("contrastive_loss_param")
    return _opt(p, "margin", "margin", 1.0) + _opt(p, "legacy_version", "legacy", False)


def accuracy(layer, ctx):
    p = layer.sub("accuracy_param")
    if p.get("axis") != 1:
        raise unsupported(layer, p, "axis", "only axis 1 is supported")
    out = _opt(p, "top_k", "top_k", 1)
    return out + ([("ignore_label", p.get("ignore_label"), p.where("ignore_label"))]
                  if p.has("ignore_label") else [])


def accuracy_per_class(layer, ctx) -> Import:
    """Accuracy's second top, the accuracy of each class: an `accuracy_per_class` with
    the same settings, named after the top."""
    return Import("layer", "accuracy_per_class", accuracy)


def seg_accuracy(layer, ctx):
    """The DeepLab fork's SegAccuracy: its ignore labels (a repeated field); `reset:
    false`, which sums the confusion matrix over iterations, is state bwplan does not keep."""
    p = layer.sub("seg_accuracy_param")     # the fork's schema: an open message
    if _word(p, "reset", True) in (False, 0, "false", "False"):
        raise unsupported(layer, p, "reset", "reset: false sums the confusion matrix over "
                          "iterations; bwplan scores each batch on its own")
    metric = _word(p, "metric", "PixelAccuracy")
    if metric != "PixelAccuracy":
        raise unsupported(layer, p, "metric", f"metric {metric}: only the fork's "
                          "confusion-matrix scores (its default) are supported")
    ignored = tuple(int(v) for v in p.get("ignore_label", ()))
    return [("ignore_label", ignored, p.where("ignore_label", 0))] if ignored else []


# SSD's multibox_loss_param fields bwplan imports: (field, key, SSD's default)
_MULTIBOX = (("num_classes", "num_classes", None),
             ("overlap_threshold", "overlap_threshold", 0.5),
             ("background_label_id", "background_label_id", 0),
             ("use_difficult_gt", "use_difficult_gt", True),
             ("neg_pos_ratio", "neg_pos_ratio", 3.0), ("neg_overlap", "neg_overlap", 0.5),
             ("loc_weight", "loc_weight", 1.0), ("match_type", "match_type", "PER_PREDICTION"),
             ("mining_type", "mining_type", "MAX_NEGATIVE"))
# fields that must keep the one value bwplan implements
_MULTIBOX_FIXED = (("share_location", True), ("code_type", "CENTER_SIZE"),
                   ("variance_encoded_in_target", False), ("loc_loss_type", "SMOOTH_L1"),
                   ("conf_loss_type", "SOFTMAX"), ("use_prior_for_matching", True),
                   ("ignore_cross_boundary_bbox", False), ("encode_variance_in_target", False))


def _truth(value: Any) -> Any:
    return {"true": True, "True": True, "false": False, "False": False}.get(value, value)


def multibox(layer, ctx):
    """SSD's MultiBoxLoss: its settings; the ones bwplan does not implement are errors at
    their field. Caffe scores the loc and conf terms only where they propagate, so a
    `propagate_down: false` on either is refused rather than changing the loss."""
    p = layer.sub("multibox_loss_param")    # SSD's fork: an open message
    for field, value in _MULTIBOX_FIXED:
        written = _truth(_word(p, field, value))
        if written != value and not (isinstance(value, bool) and written == int(value)):
            shown = str(value).lower() if isinstance(value, bool) else value
            raise unsupported(layer, p, field, f"{field}: {written} is not supported "
                              f"(only {shown})")
    for i in (0, 1):
        if i < len(layer.propagate_down) and not layer.propagate_down[i]:
            raise CaffeError(layer.bottom_span(i), f"MultiBoxLoss layer '{layer.name}': "
                             f"propagate_down: false on bottom {i} drops its term from "
                             "Caffe's loss, which bwplan does not do")
    mining = _word(p, "mining_type", "MAX_NEGATIVE")
    if mining not in ("NONE", "MAX_NEGATIVE"):
        raise unsupported(layer, p, "mining_type", f"mining_type {mining} is not supported")
    if not p.has("num_classes"):
        raise CaffeError(p.span, f"MultiBoxLoss layer '{layer.name}' needs num_classes")
    out = []
    for field, key, default in _MULTIBOX:
        value = _truth(_word(p, field, default))
        if isinstance(default, float):
            value = float(value)
        elif isinstance(default, bool):
            value = bool(value)
        elif isinstance(default, int) or default is None:
            value = int(value)
        if value != default:
            out.append((key, value, p.where(field)))
    return out + _normalization(layer, "VALID")


def flatten(layer, ctx):
    p = layer.sub("flatten_param")
    return _opt(p, "axis", "axis", 1) + _opt(p, "end_axis", "end_axis", -1)


def reshape(layer, ctx):
    p = layer.sub("reshape_param")
    if not p.has("shape"):
        raise CaffeError(p.span, f"Reshape layer '{layer.name}' needs reshape_param.shape")
    dims = tuple(p.sub("shape").get("dim"))
    if p.get("axis") != 0 or p.get("num_axes") != -1:
        # bwplan's reshape rewrites the whole shape: use the shape Caffe computes
        if ctx.top_shapes[0] is None:
            raise unsupported(layer, p, "axis", "a partial reshape (axis / num_axes) needs "
                              "a known input shape")
        dims = tuple(ctx.top_shapes[0])
    return [("shape", dims, p.where("shape"))]




def _first(value: Any) -> Any:
    """An open message's field holds a tuple of the values written."""
    return value[0] if isinstance(value, tuple) and value else value


def _word(p: Record, field: str, default: Any) -> Any:
    """The first value of an open message's field, an identifier as its text."""
    value = _first(p.get(field, (default,)))
    return getattr(value, "name", value)


def python_layer(layer: CaffeLayer, missing: tuple[str, ...]) -> CaffeError:
    """A Python layer runs code bwplan cannot read: no guess at what it computes. Its tops
    can be given as shapes, and it is then planned as a non-differentiable layer."""
    p = layer.sub("python_param")
    module, name = (_first(p.get(field, ("?",))) for field in ("module", "layer"))
    flags = " ".join(f"--input-shape {top}=N,C,H,W" for top in missing)
    return CaffeError(layer.record.where("type"), f"Python layer '{layer.name}' runs Python "
                      f"code (module '{module}', layer '{name}') that bwplan cannot read",
                      f"to plan the net with it as a non-differentiable layer, give the "
                      f"shapes of its tops: {flags} (see docs/caffe.md, Python layers)")
