"""The Caffe layer catalogue: one row per Caffe layer type holding everything bwplan knows
about it — what the layer is (its nature), what Caffe's layer class declares about itself
(param blob count, bottom and top counts, `AllowForceBackward`, label bottoms), the rule by
which Caffe shapes its tops, and how it becomes bwplan IR.

Natures:
  data       makes blobs from outside the net (Input, Data, ...): no bottoms, no backward
  layer      differentiable: gradients flow from its tops into its bottoms and params
  loss       a LossLayer: loss weight 1 on top 0 by default, a top added when none is named
  stop       not differentiable: Caffe never propagates through it (Accuracy, ArgMax);
             a stop point of the plan
  structure  moves blobs around without computing (Split, Silence)

A row without `imports` is a type that Caffe's emulation knows (so `explain --caffe` works
on it) but that bwplan cannot plan; importing a net that uses one is an error naming it.
Types not in the table are treated generically: their param blob count is the number of
`param { }` blocks written, and they accept any number of bottoms and tops.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from bwplan.caffe import mapping as m
from bwplan.caffe import shapes as s
from bwplan.caffe.mapping import Import
from bwplan.caffe.model import CaffeLayer
from bwplan.caffe.shapes import Rule

ParamCount = Callable[[CaffeLayer], int]
NATURES = ("data", "layer", "loss", "stop", "structure")


def _n(k: int) -> ParamCount:
    return lambda layer: k


def _bias(param: str) -> ParamCount:
    """A weight, plus a bias unless bias_term is false."""
    return lambda layer: 1 + int(bool(layer.sub(param).get("bias_term")))


def _scale_blobs(layer: CaffeLayer) -> int:
    # a second bottom supplies the scale; bias_term adds a learned bias either way
    return int(len(layer.bottoms) == 1) + int(bool(layer.sub("scale_param").get("bias_term")))


@dataclass(frozen=True, slots=True)
class CaffeType:
    name: str
    nature: str = "layer"
    param_blobs: ParamCount = _n(0)
    # (exact, min, max) counts; -1 means no constraint, as in Caffe's layer headers
    bottoms: tuple[int, int, int] = (-1, -1, -1)
    tops: tuple[int, int, int] = (-1, -1, -1)
    equal_bottoms_tops: bool = False
    # bottoms for which AllowForceBackward is false
    no_force: frozenset[int] = frozenset()
    # bottoms that take labels: never differentiated, integer valued
    labels: frozenset[int] = frozenset()
    shape: Rule | None = None           # Caffe's Reshape for this type; None: unknown shapes
    imports: Import | None = None       # what it becomes in bwplan; None: not importable
    # tops without a batch axis (imported as unbatched inputs: a batch change leaves them)
    unbatched_tops: frozenset[int] = frozenset()
    # a data layer's label-map tops: [N, 1, H, W] of its image (top 0), which a shape
    # given for the image alone therefore also gives (SegNet's and DeepLab's label maps)
    label_map_tops: frozenset[int] = frozenset()

    def __post_init__(self) -> None:
        assert self.nature in NATURES, self.nature

    @property
    def loss(self) -> bool:
        return self.nature == "loss"


_ONE = (1, -1, -1)
_NONE = (0, -1, -1)
_DATA = Import("inputs")
_STOP = Import("inputs")    # a non-differentiable layer whose tops' shapes are known
_LOSS = dict(nature="loss", bottoms=(2, -1, -1), tops=(1, -1, -1), no_force=frozenset({1}),
             shape=s.scalar)


def _data(name: str, tops: tuple[int, int, int], shape: Rule | None = None,
          unbatched_tops: frozenset[int] = frozenset(),
          label_map_tops: frozenset[int] = frozenset()) -> CaffeType:
    return CaffeType(name, "data", bottoms=_NONE, tops=tops, shape=shape, imports=_DATA,
                     unbatched_tops=unbatched_tops, label_map_tops=label_map_tops)


def _unary(name: str, op: str, attrs=m.no_attrs) -> CaffeType:
    """A one-bottom, one-top layer that keeps its bottom's shape."""
    return CaffeType(name, bottoms=_ONE, tops=_ONE, shape=s.same,
                     imports=Import("layer", op, attrs))


_ROWS = (
    # ---- data ------------------------------------------------------------------------
    _data("Input", (-1, 1, -1), s.inputs),
    _data("Data", (-1, 1, 2), s.data),
    _data("ImageData", (2, -1, -1), s.image_data),
    _data("MemoryData", (2, -1, -1), s.memory_data),
    _data("WindowData", (2, -1, -1)),
    _data("DummyData", (-1, 1, -1), s.dummy_data),
    _data("HDF5Data", (-1, 1, -1)),
    _data("DenseImageData", (2, -1, -1), s.dense_image_data,       # SegNet
          label_map_tops=frozenset({1})),
    _data("ImageSegData", (-1, 2, 3), s.image_seg_data,            # DeepLab
          label_map_tops=frozenset({1})),
    # SSD; its label [1, 1, boxes, 8] holds every image's boxes, each row naming its image
    _data("AnnotatedData", (-1, 1, 2), s.annotated_data, frozenset({1})),
    # ---- layers with parameters ------------------------------------------------------
    CaffeType("Convolution", param_blobs=_bias("convolution_param"), bottoms=(-1, 1, -1),
              tops=(-1, 1, -1), equal_bottoms_tops=True, shape=s.conv,
              imports=Import("layer", "conv2d", m.conv, ("weight", "bias"))),
    # the DeepLab / PSPNet forks' convolution whose `hole` is the dilation
    CaffeType("HoleConvolution", param_blobs=_bias("convolution_param"), bottoms=(-1, 1, -1),
              tops=(-1, 1, -1), equal_bottoms_tops=True, shape=s.conv,
              imports=Import("layer", "conv2d", m.conv, ("weight", "bias"))),
    CaffeType("Deconvolution", param_blobs=_bias("convolution_param"), bottoms=(-1, 1, -1),
              tops=(-1, 1, -1), equal_bottoms_tops=True, shape=s.deconv,
              imports=Import("layer", "deconv2d", m.deconv, ("weight", "bias"))),
    CaffeType("InnerProduct", param_blobs=_bias("inner_product_param"), bottoms=_ONE,
              tops=_ONE, shape=s.inner_product,
              imports=Import("layer", "linear", m.inner_product, ("weight", "bias"))),
    CaffeType("Embed", param_blobs=_bias("embed_param"), bottoms=_ONE, tops=_ONE,
              labels=frozenset({0}), shape=s.embed,
              imports=Import("layer", "embed", m.embed, ("weight", "bias"))),
    CaffeType("PReLU", param_blobs=_n(1), bottoms=_ONE, tops=_ONE, shape=s.prelu,
              imports=Import("layer", "prelu", m.settings(
                  "prelu_param", ("channel_shared", "channel_shared", False)), ("weight",))),
    # the SegNet / ENet fork's BN: a learned scale and shift (blobs 0, 1); tops 1 and 2,
    # when written, are the batch mean and variance
    CaffeType("BN", param_blobs=lambda layer: max(2, len(layer.params)), bottoms=_ONE,
              tops=(-1, 1, 3), shape=s.fork_bn,
              imports=Import("layer", "scale", m.fork_bn, ("weight", "bias", None, None),
                             before=m.fork_bn_norm)),
    CaffeType("Normalize", param_blobs=_n(1), bottoms=_ONE, tops=_ONE,       # SSD
              shape=s.normalize, imports=Import("layer", "normalize", m.normalize,
                                                ("weight",))),
    CaffeType("BatchNorm", param_blobs=_n(3), bottoms=_ONE, tops=_ONE, shape=s.batch_norm,
              imports=Import("layer", "batchnorm", m.batch_norm, ("mean", "var", None),
                             stats=True)),
    CaffeType("Scale", param_blobs=_scale_blobs, bottoms=(-1, 1, 2), tops=_ONE,
              shape=s.scale, imports=Import("layer", "scale", m.scale, ("weight", "bias"))),
    CaffeType("Bias", param_blobs=lambda layer: int(len(layer.bottoms) == 1),
              bottoms=(-1, 1, 2), tops=_ONE, shape=s.bias,
              imports=Import("layer", m.bias_op, m.bias, ("bias",))),
    CaffeType("Parameter", param_blobs=_n(1), bottoms=_NONE, tops=_ONE),
    CaffeType("LSTM", param_blobs=_n(3), bottoms=(-1, 2, 3), tops=_ONE),
    CaffeType("RNN", param_blobs=_n(5), bottoms=(-1, 2, 3), tops=_ONE),
    # ---- layers without parameters ---------------------------------------------------
    CaffeType("Pooling", bottoms=_ONE, tops=(-1, 1, 2), shape=s.pooling,
              imports=Import("layer", m.pool_op, m.pool, second_top=m.pool_mask)),
    CaffeType("LRN", bottoms=_ONE, tops=_ONE, shape=s.same,
              imports=Import("layer", m.lrn_op, m.lrn)),
    _unary("ReLU", "relu", m.relu),
    _unary("Sigmoid", "sigmoid"),
    _unary("TanH", "tanh"),
    _unary("Dropout", "dropout", m.dropout),
    _unary("Softmax", "softmax", m.softmax),
    CaffeType("Concat", bottoms=(-1, 1, -1), tops=_ONE, shape=s.concat,
              imports=Import("layer", "concat", m.concat)),
    CaffeType("Eltwise", bottoms=(-1, 2, -1), tops=_ONE, shape=s.same,
              imports=Import("layer", m.eltwise_op, m.eltwise)),
    CaffeType("Flatten", bottoms=_ONE, tops=_ONE, shape=s.flatten,
              imports=Import("layer", "flatten", m.flatten)),
    CaffeType("Reshape", bottoms=_ONE, tops=_ONE, shape=s.reshape,
              imports=Import("layer", "reshape", m.reshape)),
    CaffeType("Slice", bottoms=_ONE, tops=(-1, 1, -1), shape=s.slices,
              imports=Import("per_top", "slice")),
    CaffeType("Split", "structure", bottoms=_ONE, tops=(-1, 1, -1), shape=s.same,
              imports=Import("alias")),
    CaffeType("Silence", "structure", bottoms=(-1, 1, -1), tops=(0, -1, -1),
              imports=Import("layer", "silence")),
    CaffeType("Crop", bottoms=(2, -1, -1), tops=_ONE, shape=s.crop,
              imports=Import("layer", "crop", m.crop)),
    CaffeType("Upsample", bottoms=(2, -1, -1), tops=_ONE, shape=s.upsample,    # SegNet
              imports=Import("layer", "max_unpool", m.upsample)),
    CaffeType("Interp", bottoms=(-1, 1, 2), tops=_ONE, shape=s.interp,         # PSPNet
              imports=Import("layer", "interp", m.interp)),
    CaffeType("Permute", bottoms=_ONE, tops=_ONE, shape=s.permute,             # SSD
              imports=Import("layer", "transpose", m.permute)),
    CaffeType("ROIPooling", bottoms=(2, -1, -1), tops=_ONE, shape=s.roi_pooling,
              imports=Import("layer", "roi_pool", m.roi_pooling)),
    CaffeType("Tile", bottoms=_ONE, tops=_ONE, shape=s.tile,
              imports=Import("layer", "tile", m.tile)),
    CaffeType("Reduction", bottoms=_ONE, tops=_ONE, shape=s.reduction,
              imports=Import("layer", "reduction", m.settings(
                  "reduction_param", ("operation", "operation", "SUM"), ("axis", "axis", 0),
                  ("coeff", "coeff", 1.0)))),
    _unary("ELU", "elu", m.settings("elu_param", ("alpha", "alpha", 1.0))),
    _unary("Power", "power", m.settings("power_param", ("power", "power", 1.0),
                                        ("scale", "scale", 1.0), ("shift", "shift", 0.0))),
    _unary("AbsVal", "absval"),
    _unary("BNLL", "bnll"),
    _unary("Exp", "exp", m.settings("exp_param", ("base", "base", -1.0),
                                    ("scale", "scale", 1.0), ("shift", "shift", 0.0))),
    _unary("Log", "log", m.settings("log_param", ("base", "base", -1.0),
                                    ("scale", "scale", 1.0), ("shift", "shift", 0.0))),
    _unary("MVN", "mvn", m.settings("mvn_param",
                                    ("normalize_variance", "normalize_variance", True),
                                    ("across_channels", "across_channels", False),
                                    ("eps", "eps", 1e-9))),
    # ---- not differentiable ----------------------------------------------------------
    CaffeType("Accuracy", "stop", bottoms=(2, -1, -1), tops=(-1, 1, 2),
              no_force=frozenset({0, 1}), labels=frozenset({1}), shape=s.accuracy,
              imports=Import("layer", "accuracy", m.accuracy,
                             second_top=m.accuracy_per_class)),
    # the DeepLab fork's: [pixel accuracy, mean class accuracy, mean IoU] of the batch; its
    # header declares no AllowForceBackward, so Layer's default (true) stands
    CaffeType("SegAccuracy", "stop", bottoms=(2, -1, -1), tops=_ONE,
              labels=frozenset({1}), shape=s.seg_accuracy,
              imports=Import("layer", "seg_accuracy", m.seg_accuracy)),
    # a Python layer's tops are inputs of the shapes the user gives; nothing flows back
    CaffeType("Python", "stop", param_blobs=lambda layer: len(layer.params),
              imports=Import("inputs", unknown_shape=m.python_layer)),
    # stop points: their tops are inputs of the shapes Caffe gives them, nothing flows back
    CaffeType("ArgMax", "stop", bottoms=_ONE, tops=_ONE, shape=s.argmax,
              imports=Import("layer", "argmax", m.argmax)),
    CaffeType("Threshold", "stop", bottoms=_ONE, tops=_ONE, shape=s.same,
              imports=Import("layer", "threshold", m.settings(
                  "threshold_param", ("threshold", "threshold", 0.0)))),
    # the priors [1, 2, P * 4] and the detections [1, 1, D, 7] serve the whole batch
    CaffeType("PriorBox", "stop", bottoms=(2, -1, -1), tops=_ONE, shape=s.prior_box,
              imports=_STOP, unbatched_tops=frozenset({0})),
    CaffeType("DetectionOutput", "stop", bottoms=(-1, 3, 4), tops=_ONE,
              shape=s.detection_output, imports=_STOP, unbatched_tops=frozenset({0})),
    # ---- losses ----------------------------------------------------------------------
    CaffeType("SoftmaxWithLoss", **{**_LOSS, "tops": (-1, 1, 2)}, labels=frozenset({1}),
              imports=Import("layer", "softmax_cross_entropy", m.softmax_loss)),
    CaffeType("EuclideanLoss", **{**_LOSS, "no_force": frozenset()},
              imports=Import("layer", "euclidean_loss")),
    CaffeType("ContrastiveLoss", **{**_LOSS, "bottoms": (3, -1, -1),
                                    "no_force": frozenset({2})}, labels=frozenset({2}),
              imports=Import("layer", "contrastive_loss", m.contrastive)),
    CaffeType("SigmoidCrossEntropyLoss", **_LOSS,
              imports=Import("layer", "sigmoid_cross_entropy_loss", m.sigmoid_ce)),
    CaffeType("MultinomialLogisticLoss", **_LOSS, labels=frozenset({1})),
    CaffeType("InfogainLoss", **{**_LOSS, "bottoms": (-1, 2, 3)}, labels=frozenset({1}),
              imports=Import("layer", m.infogain_op, m.infogain)),
    CaffeType("HingeLoss", **_LOSS, labels=frozenset({1}),
              imports=Import("layer", "hinge_loss", m.hinge)),
    # py-faster-rcnn's SmoothL1Loss takes inside / outside weights and lets force_backward
    # reach every bottom
    CaffeType("SmoothL1Loss", **{**_LOSS, "bottoms": (-1, 2, 4), "no_force": frozenset()},
              imports=Import("layer", m.smooth_l1_op, m.smooth_l1)),
    # SSD: loc, conf, priors, ground truth; the ground truth holds boxes (floats), and
    # LossLayer's AllowForceBackward (not bottom 1) stands
    CaffeType("MultiBoxLoss", **{**_LOSS, "bottoms": (4, -1, -1)},
              imports=Import("layer", "multibox_loss", m.multibox)),
)

TYPES: Mapping[str, CaffeType] = MappingProxyType({row.name: row for row in _ROWS})


def caffe_type(name: str) -> CaffeType:
    """The row for a layer type; a generic row for types not in the table."""
    row = TYPES.get(name)
    if row is not None:
        return row
    loss = name.endswith("Loss")
    return CaffeType(name, "loss" if loss else "layer", lambda layer: len(layer.params),
                     no_force=frozenset({1}) if loss else frozenset())


def importable() -> list[str]:
    """The Caffe types bwplan imports, sorted."""
    return sorted(name for name, row in TYPES.items() if row.imports is not None)
