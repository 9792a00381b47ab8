"""What Caffe's layer classes declare about themselves, one row per layer type: how many
param blobs they create, how many bottoms and tops they take, whether they are loss layers,
and which bottoms refuse force_backward (`Layer::AllowForceBackward`).

Types not in the table are treated generically: their param blob count is the number of
`param { }` blocks written, and they accept any number of bottoms and tops.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import MappingProxyType

from bwplan.caffe.model import CaffeLayer

ParamCount = Callable[[CaffeLayer], int]


def _n(k: int) -> ParamCount:
    return lambda layer: k


def _bias(param: str) -> ParamCount:
    """A weight, plus a bias unless bias_term is false."""
    return lambda layer: 1 + int(bool(layer.sub(param).get("bias_term")))


def _scale(layer: CaffeLayer) -> int:
    # a second bottom supplies the scale; bias_term adds a learned bias either way
    return int(len(layer.bottoms) == 1) + int(bool(layer.sub("scale_param").get("bias_term")))


@dataclass(frozen=True, slots=True)
class CaffeType:
    name: str
    param_blobs: ParamCount = _n(0)
    # (exact, min, max) counts; -1 means no constraint, as in Caffe's layer headers
    bottoms: tuple[int, int, int] = (-1, -1, -1)
    tops: tuple[int, int, int] = (-1, -1, -1)
    equal_bottoms_tops: bool = False
    # a LossLayer: loss weight 1 on top 0 by default, and a top is added when none is named
    loss: bool = False
    # bottoms for which AllowForceBackward is false
    no_force: frozenset[int] = frozenset()
    # bottoms that take labels: never differentiated, integer valued
    labels: frozenset[int] = frozenset()


_ONE = (1, -1, -1)
_NONE = (0, -1, -1)
_LOSS = dict(bottoms=(2, -1, -1), tops=(1, -1, -1), loss=True, no_force=frozenset({1}))

_ROWS = (
    CaffeType("Input", bottoms=_NONE, tops=(-1, 1, -1)),
    CaffeType("Data", bottoms=_NONE, tops=(-1, 1, 2)),
    CaffeType("ImageData", bottoms=_NONE, tops=(2, -1, -1)),
    CaffeType("MemoryData", bottoms=_NONE, tops=(2, -1, -1)),
    CaffeType("WindowData", bottoms=_NONE, tops=(2, -1, -1)),
    CaffeType("DummyData", bottoms=_NONE, tops=(-1, 1, -1)),
    CaffeType("HDF5Data", bottoms=_NONE, tops=(-1, 1, -1)),
    CaffeType("Convolution", _bias("convolution_param"), (-1, 1, -1), (-1, 1, -1), True),
    CaffeType("Deconvolution", _bias("convolution_param"), (-1, 1, -1), (-1, 1, -1), True),
    CaffeType("InnerProduct", _bias("inner_product_param"), _ONE, _ONE),
    CaffeType("Embed", _bias("embed_param"), _ONE, _ONE),
    CaffeType("Pooling", bottoms=_ONE, tops=(-1, 1, 2)),
    CaffeType("LRN", bottoms=_ONE, tops=_ONE),
    CaffeType("ReLU", bottoms=_ONE, tops=_ONE),
    CaffeType("Sigmoid", bottoms=_ONE, tops=_ONE),
    CaffeType("TanH", bottoms=_ONE, tops=_ONE),
    CaffeType("Dropout", bottoms=_ONE, tops=_ONE),
    CaffeType("PReLU", _n(1), _ONE, _ONE),
    CaffeType("BatchNorm", _n(3), _ONE, _ONE),
    CaffeType("Scale", _scale, (-1, 1, 2), _ONE),
    CaffeType("Bias", lambda layer: int(len(layer.bottoms) == 1), (-1, 1, 2), _ONE),
    CaffeType("Parameter", _n(1), _NONE, _ONE),
    CaffeType("LSTM", _n(3), (-1, 2, 3), _ONE),
    CaffeType("RNN", _n(5), (-1, 2, 3), _ONE),
    CaffeType("Concat", bottoms=(-1, 1, -1), tops=_ONE),
    CaffeType("Eltwise", bottoms=(-1, 2, -1), tops=_ONE),
    CaffeType("Softmax", bottoms=_ONE, tops=_ONE),
    CaffeType("Flatten", bottoms=_ONE, tops=_ONE),
    CaffeType("Reshape", bottoms=_ONE, tops=_ONE),
    CaffeType("Slice", bottoms=_ONE, tops=(-1, 1, -1)),
    CaffeType("Split", bottoms=_ONE, tops=(-1, 1, -1)),
    CaffeType("Accuracy", bottoms=(2, -1, -1), tops=(-1, 1, 2), no_force=frozenset({0, 1}),
              labels=frozenset({1})),
    CaffeType("SoftmaxWithLoss", **{**_LOSS, "tops": (-1, 1, 2)}, labels=frozenset({1})),
    CaffeType("EuclideanLoss", **{**_LOSS, "no_force": frozenset()}),
    CaffeType("ContrastiveLoss", **{**_LOSS, "bottoms": (3, -1, -1),
                                    "no_force": frozenset({2})}, labels=frozenset({2})),
    CaffeType("SigmoidCrossEntropyLoss", **_LOSS),
    CaffeType("MultinomialLogisticLoss", **_LOSS, labels=frozenset({1})),
    CaffeType("InfogainLoss", **{**_LOSS, "bottoms": (-1, 2, 3)}, labels=frozenset({1})),
    CaffeType("HingeLoss", **_LOSS, labels=frozenset({1})),
)

TYPES: Mapping[str, CaffeType] = MappingProxyType({row.name: row for row in _ROWS})


def caffe_type(name: str) -> CaffeType:
    """The row for a layer type; a generic row for types not in the table."""
    row = TYPES.get(name)
    if row is not None:
        return row
    return CaffeType(name, lambda layer: len(layer.params), loss=name.endswith("Loss"),
                     no_force=frozenset({1}) if name.endswith("Loss") else frozenset())
