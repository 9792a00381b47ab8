"""The part of Caffe's caffe.proto that bwplan reads, as tables, and `decode`, which checks a
parsed protobuf `Message` against them and returns a `Record` of typed values.

Field kinds: int, uint, float, bool, string, enum (with its names in proto order), message
(with its schema name) and open (any content: fillers, blobs, parameters of layer types
bwplan does not map). Unknown fields and repeated singular fields are errors, as they are
for Caffe's own protobuf parser, with one deliberate exception: an unknown `*_param` field
of a layer is accepted, so that nets written for Caffe forks still load (their layer types
are then reported as unsupported by the importer, not as typos).
"""
from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any

from bwplan.caffe.prototxt import Field, Ident, Message
from bwplan.errors import CaffeError
from bwplan.source import Span


@dataclass(frozen=True, slots=True)
class FieldSpec:
    kind: str
    repeated: bool = False
    default: Any = None
    choices: tuple[str, ...] = ()
    message: str = ""


def _f(kind: str, default: Any = None, *, rep: bool = False, choices: tuple[str, ...] = (),
       msg: str = "") -> FieldSpec:
    return FieldSpec(kind, rep, default, choices, msg)


def _rep(kind: str, msg: str = "") -> FieldSpec:
    return FieldSpec(kind, True, (), (), msg)


_ENGINE = ("DEFAULT", "CAFFE", "CUDNN")
_OPEN = _f("open")

SCHEMAS: Mapping[str, Mapping[str, FieldSpec]] = {
    "NetParameter": {
        "name": _f("string", ""), "input": _rep("string"),
        "input_shape": _rep("message", "BlobShape"), "input_dim": _rep("int"),
        "force_backward": _f("bool", False), "state": _f("message", msg="NetState"),
        "debug_info": _f("bool", False), "layer": _rep("message", "LayerParameter"),
        "layers": _rep("open"),
    },
    "NetState": {
        "phase": _f("enum", "TEST", choices=("TRAIN", "TEST")), "level": _f("int", 0),
        "stage": _rep("string"),
    },
    "NetStateRule": {
        "phase": _f("enum", None, choices=("TRAIN", "TEST")), "min_level": _f("int"),
        "max_level": _f("int"), "stage": _rep("string"), "not_stage": _rep("string"),
    },
    "ParamSpec": {
        "name": _f("string", ""), "lr_mult": _f("float", 1.0), "decay_mult": _f("float", 1.0),
        "share_mode": _f("enum", "STRICT", choices=("STRICT", "PERMISSIVE")),
    },
    "BlobShape": {"dim": _rep("int")},
    "LayerParameter": {
        "name": _f("string", ""), "type": _f("string", ""), "bottom": _rep("string"),
        "top": _rep("string"), "phase": _f("enum", None, choices=("TRAIN", "TEST")),
        "loss_weight": _rep("float"), "param": _rep("message", "ParamSpec"),
        "blobs": _rep("open"), "propagate_down": _rep("bool"),
        "include": _rep("message", "NetStateRule"), "exclude": _rep("message", "NetStateRule"),
        "transform_param": _f("message", msg="TransformationParameter"),
        "loss_param": _f("message", msg="LossParameter"),
        "accuracy_param": _f("message", msg="AccuracyParameter"),
        "batch_norm_param": _f("message", msg="BatchNormParameter"),
        "concat_param": _f("message", msg="ConcatParameter"),
        "contrastive_loss_param": _f("message", msg="ContrastiveLossParameter"),
        "convolution_param": _f("message", msg="ConvolutionParameter"),
        "data_param": _f("message", msg="DataParameter"),
        "dropout_param": _f("message", msg="DropoutParameter"),
        "dummy_data_param": _f("message", msg="DummyDataParameter"),
        "eltwise_param": _f("message", msg="EltwiseParameter"),
        "embed_param": _f("message", msg="EmbedParameter"),
        "flatten_param": _f("message", msg="FlattenParameter"),
        "image_data_param": _f("message", msg="ImageDataParameter"),
        "inner_product_param": _f("message", msg="InnerProductParameter"),
        "input_param": _f("message", msg="InputParameter"),
        "lrn_param": _f("message", msg="LRNParameter"),
        "memory_data_param": _f("message", msg="MemoryDataParameter"),
        "pooling_param": _f("message", msg="PoolingParameter"),
        "relu_param": _f("message", msg="ReLUParameter"),
        "reshape_param": _f("message", msg="ReshapeParameter"),
        "scale_param": _f("message", msg="ScaleParameter"),
        "sigmoid_param": _f("message", msg="EngineParameter"),
        "slice_param": _f("message", msg="SliceParameter"),
        "softmax_param": _f("message", msg="SoftmaxParameter"),
        "tanh_param": _f("message", msg="EngineParameter"),
        "elu_param": _f("message", msg="ELUParameter"),
        "power_param": _f("message", msg="PowerParameter"),
        "exp_param": _f("message", msg="ExpParameter"),
        "log_param": _f("message", msg="LogParameter"),
        "prelu_param": _f("message", msg="PReLUParameter"),
        "threshold_param": _f("message", msg="ThresholdParameter"),
        "crop_param": _f("message", msg="CropParameter"),
        "permute_param": _f("message", msg="PermuteParameter"),     # SSD
        "reduction_param": _f("message", msg="ReductionParameter"),
        "argmax_param": _f("message", msg="ArgMaxParameter"),
        "bias_param": _f("message", msg="BiasParameter"),
        "tile_param": _f("message", msg="TileParameter"),
        "mvn_param": _f("message", msg="MVNParameter"),
        "hinge_loss_param": _f("message", msg="HingeLossParameter"),
        "infogain_loss_param": _f("message", msg="InfogainLossParameter"),
        "sigmoid_cross_entropy_loss_param": _f("open"),
        "smooth_l1_loss_param": _f("open"),          # Fast R-CNN
    },
    "TransformationParameter": {
        "scale": _f("float", 1.0), "mirror": _f("bool", False), "crop_size": _f("uint", 0),
        "mean_file": _f("string", ""), "mean_value": _rep("float"),
        "force_color": _f("bool", False), "force_gray": _f("bool", False),
        # SSD's augmentation settings: they change pixels, not shapes or gradients
        "resize_param": _rep("open"), "emit_constraint": _rep("open"),
        "distort_param": _f("open"), "expand_param": _f("open"), "noise_param": _f("open"),
    },
    "LossParameter": {
        "ignore_label": _f("int"), "normalize": _f("bool"),
        "normalization": _f("enum", "VALID", choices=("FULL", "VALID", "BATCH_SIZE", "NONE")),
        # SegNet's class-weighted SoftmaxWithLoss
        "weight_by_label_freqs": _f("bool", False), "class_weighting": _rep("float"),
    },
    "AccuracyParameter": {"top_k": _f("uint", 1), "axis": _f("int", 1),
                          "ignore_label": _f("int")},
    "BatchNormParameter": {"use_global_stats": _f("bool"),
                           "moving_average_fraction": _f("float", 0.999),
                           "eps": _f("float", 1e-5)},
    "ConcatParameter": {"axis": _f("int", 1), "concat_dim": _f("uint", 1)},
    "ContrastiveLossParameter": {"margin": _f("float", 1.0),
                                 "legacy_version": _f("bool", False)},
    "ConvolutionParameter": {
        "num_output": _f("uint"), "bias_term": _f("bool", True), "pad": _rep("uint"),
        "kernel_size": _rep("uint"), "stride": _rep("uint"), "dilation": _rep("uint"),
        "pad_h": _f("uint", 0), "pad_w": _f("uint", 0), "kernel_h": _f("uint"),
        "kernel_w": _f("uint"), "stride_h": _f("uint"), "stride_w": _f("uint"),
        "group": _f("uint", 1), "weight_filler": _OPEN, "bias_filler": _OPEN,
        "engine": _f("enum", "DEFAULT", choices=_ENGINE), "axis": _f("int", 1),
        "force_nd_im2col": _f("bool", False),
        "hole": _f("uint", 1),      # DeepLab's and PSPNet's forks: the dilation
    },
    "DataParameter": {
        "source": _f("string", ""), "batch_size": _f("uint"), "rand_skip": _f("uint", 0),
        "backend": _f("enum", "LEVELDB", choices=("LEVELDB", "LMDB")),
        "scale": _f("float", 1.0), "mean_file": _f("string", ""), "crop_size": _f("uint", 0),
        "mirror": _f("bool", False), "force_encoded_color": _f("bool", False),
        "prefetch": _f("uint", 4),
    },
    "DropoutParameter": {"dropout_ratio": _f("float", 0.5), "scale_train": _f("bool", True)},
    "DummyDataParameter": {
        "data_filler": _rep("open"), "shape": _rep("message", "BlobShape"),
        "num": _rep("uint"), "channels": _rep("uint"), "height": _rep("uint"),
        "width": _rep("uint"),
    },
    "EltwiseParameter": {
        "operation": _f("enum", "SUM", choices=("PROD", "SUM", "MAX")), "coeff": _rep("float"),
        "stable_prod_grad": _f("bool", True),
    },
    "EmbedParameter": {"num_output": _f("uint"), "input_dim": _f("uint"),
                       "bias_term": _f("bool", True), "weight_filler": _OPEN,
                       "bias_filler": _OPEN},
    "EngineParameter": {"engine": _f("enum", "DEFAULT", choices=_ENGINE)},
    "FlattenParameter": {"axis": _f("int", 1), "end_axis": _f("int", -1)},
    "ImageDataParameter": {
        "source": _f("string", ""), "batch_size": _f("uint", 1), "rand_skip": _f("uint", 0),
        "shuffle": _f("bool", False), "new_height": _f("uint", 0), "new_width": _f("uint", 0),
        "is_color": _f("bool", True), "scale": _f("float", 1.0), "mean_file": _f("string", ""),
        "crop_size": _f("uint", 0), "mirror": _f("bool", False),
        "root_folder": _f("string", ""),
    },
    "InnerProductParameter": {
        "num_output": _f("uint"), "bias_term": _f("bool", True), "weight_filler": _OPEN,
        "bias_filler": _OPEN, "axis": _f("int", 1), "transpose": _f("bool", False),
    },
    "InputParameter": {"shape": _rep("message", "BlobShape")},
    "LRNParameter": {
        "local_size": _f("uint", 5), "alpha": _f("float", 1.0), "beta": _f("float", 0.75),
        "norm_region": _f("enum", "ACROSS_CHANNELS",
                          choices=("ACROSS_CHANNELS", "WITHIN_CHANNEL")),
        "k": _f("float", 1.0), "engine": _f("enum", "DEFAULT", choices=_ENGINE),
    },
    "MemoryDataParameter": {"batch_size": _f("uint"), "channels": _f("uint"),
                            "height": _f("uint"), "width": _f("uint")},
    "PoolingParameter": {
        "pool": _f("enum", "MAX", choices=("MAX", "AVE", "STOCHASTIC")),
        "pad": _f("uint", 0), "pad_h": _f("uint", 0), "pad_w": _f("uint", 0),
        "kernel_size": _f("uint"), "kernel_h": _f("uint"), "kernel_w": _f("uint"),
        "stride": _f("uint", 1), "stride_h": _f("uint"), "stride_w": _f("uint"),
        "engine": _f("enum", "DEFAULT", choices=_ENGINE), "global_pooling": _f("bool", False),
        "round_mode": _f("enum", "CEIL", choices=("CEIL", "FLOOR")),
        # the forks' spelling of round_mode (DenseNet, ResNeXt, PSPNet prototxts)
        "ceil_mode": _f("bool", True),
    },
    "ReLUParameter": {"negative_slope": _f("float", 0.0),
                      "engine": _f("enum", "DEFAULT", choices=_ENGINE)},
    "ReshapeParameter": {"shape": _f("message", msg="BlobShape"), "axis": _f("int", 0),
                         "num_axes": _f("int", -1)},
    "ScaleParameter": {"axis": _f("int", 1), "num_axes": _f("int", 1), "filler": _OPEN,
                       "bias_term": _f("bool", False), "bias_filler": _OPEN},
    "SliceParameter": {"axis": _f("int", 1), "slice_point": _rep("uint"),
                       "slice_dim": _f("uint", 1)},
    "ELUParameter": {"alpha": _f("float", 1.0)},
    "PowerParameter": {"power": _f("float", 1.0), "scale": _f("float", 1.0),
                       "shift": _f("float", 0.0)},
    "ExpParameter": {"base": _f("float", -1.0), "scale": _f("float", 1.0),
                     "shift": _f("float", 0.0)},
    "LogParameter": {"base": _f("float", -1.0), "scale": _f("float", 1.0),
                     "shift": _f("float", 0.0)},
    "PReLUParameter": {"filler": _OPEN, "channel_shared": _f("bool", False)},
    "ThresholdParameter": {"threshold": _f("float", 0.0)},
    "CropParameter": {"axis": _f("int", 2), "offset": _rep("uint")},
    "PermuteParameter": {"order": _rep("uint")},
    "ReductionParameter": {
        "operation": _f("enum", "SUM", choices=("", "SUM", "ASUM", "SUMSQ", "MEAN")),
        "axis": _f("int", 0), "coeff": _f("float", 1.0)},
    "ArgMaxParameter": {"out_max_val": _f("bool", False), "top_k": _f("uint", 1),
                        "axis": _f("int")},
    "BiasParameter": {"axis": _f("int", 1), "num_axes": _f("int", 1), "filler": _OPEN},
    "TileParameter": {"axis": _f("int", 1), "tiles": _f("int")},
    "MVNParameter": {"normalize_variance": _f("bool", True),
                     "across_channels": _f("bool", False), "eps": _f("float", 1e-9)},
    "HingeLossParameter": {"norm": _f("enum", "L1", choices=("", "L1", "L2"))},
    "InfogainLossParameter": {"source": _f("string", ""), "axis": _f("int", 1)},
    "SoftmaxParameter": {"engine": _f("enum", "DEFAULT", choices=_ENGINE),
                         "axis": _f("int", 1)},
}


@dataclass(frozen=True)
class Record:
    """A decoded message: typed values by field name (a tuple for repeated fields), the span
    of each field as written, and defaults from the schema for fields not written."""

    kind: str
    values: Mapping[str, Any]
    spans: Mapping[str, Any]
    span: Span

    def has(self, name: str) -> bool:
        return name in self.values

    def get(self, name: str, default: Any = None) -> Any:
        if name in self.values:
            return self.values[name]
        spec = SCHEMAS.get(self.kind, {}).get(name)
        if spec is not None and spec.default is not None:
            return spec.default
        return () if spec is not None and spec.repeated else default

    def sub(self, name: str) -> "Record":
        """A message field, or an empty record of its kind (all defaults) when absent."""
        value = self.values.get(name)
        if isinstance(value, Record):
            return value
        spec = SCHEMAS.get(self.kind, {}).get(name)
        return Record(spec.message if spec else "", MappingProxyType({}),
                      MappingProxyType({}), self.span)

    def where(self, name: str, index: int | None = None) -> Span:
        """Where a field was written (its `index`-th value when repeated); the message
        itself when the field is absent."""
        spans = self.spans.get(name)
        if spans is None:
            return self.span
        if isinstance(spans, tuple):
            return spans[index if index is not None and index < len(spans) else -1]
        return spans


_BOOLS = {"true": True, "True": True, "t": True, "false": False, "False": False, "f": False}
_FLOAT_WORDS = {"inf": math.inf, "infinity": math.inf, "nan": math.nan}


def _what(spec: FieldSpec) -> str:
    return {"int": "an integer", "uint": "a non-negative integer", "float": "a number",
            "bool": "true or false", "string": "a quoted string",
            "enum": "one of " + ", ".join(spec.choices),
            "message": "a message in { }"}.get(spec.kind, "a value")


def _scalar(spec: FieldSpec, f: Field, kind: str) -> Any:
    v = f.value
    is_int = isinstance(v, int)
    if spec.kind in ("int", "uint") and is_int:
        if spec.kind == "uint" and v < 0:
            raise _bad(f, spec, kind)
        if not -2**63 <= v < 2**63:  # protobuf integers have at most 64 bits
            raise CaffeError(f.value_span, f"{kind}.{f.name} is {v}, out of the range of a "
                             "64-bit integer")
        return v
    if spec.kind == "float":
        if isinstance(v, (int, float)):
            return float(v)
        if isinstance(v, Ident):
            word = v.name.lstrip("-").lower()
            if word in _FLOAT_WORDS:
                return -_FLOAT_WORDS[word] if v.name.startswith("-") else _FLOAT_WORDS[word]
    if spec.kind == "bool":
        if isinstance(v, Ident) and v.name in _BOOLS:
            return _BOOLS[v.name]
        if is_int and v in (0, 1):
            return bool(v)
    if spec.kind == "string" and isinstance(v, str):
        return v
    if spec.kind == "enum":
        if isinstance(v, Ident) and v.name in spec.choices:
            return v.name
        if is_int and 0 <= v < len(spec.choices):
            return spec.choices[v]
    raise _bad(f, spec, kind)


def _bad(f: Field, spec: FieldSpec, kind: str) -> CaffeError:
    shown = f"'{f.value}'" if isinstance(f.value, (str, Ident)) else str(f.value)
    if isinstance(f.value, Message):
        shown = "a message"
    return CaffeError(f.value_span, f"{kind}.{f.name} must be {_what(spec)}, not {shown}")


def _open_value(f: Field, problems: list[CaffeError]) -> Any:
    return decode(f.value, "", problems) if isinstance(f.value, Message) else f.value


def decode(msg: Message, kind: str, problems: list[CaffeError] | None = None) -> Record:
    """Check `msg` against the schema `kind` ('' for an open message) and return its values.
    An unknown field, a value of the wrong type or a singular field written twice is a
    CaffeError located at the offending field. With `problems` given, every such error is
    appended to it and the field is left out, so that one run reports them all; without it,
    the first one is raised."""
    found: list[CaffeError] = [] if problems is None else problems
    start = len(found)
    record = _decode(msg, kind, found)
    if problems is None and len(found) > start:
        raise found[start]
    return record


def _decode(msg: Message, kind: str, problems: list[CaffeError]) -> Record:
    schema = SCHEMAS.get(kind)
    values: dict[str, Any] = {}
    spans: dict[str, Any] = {}
    for f in msg.fields:
        spec = schema.get(f.name) if schema is not None else None
        if schema is not None and spec is None:
            if kind == "LayerParameter" and f.name.endswith("_param"):
                spec = _OPEN
            else:
                close = difflib.get_close_matches(f.name, list(schema), n=1)
                problems.append(CaffeError(
                    f.name_span, f'message type "caffe.{kind}" has no field named '
                    f'"{f.name}"', f"did you mean '{close[0]}'?" if close else None))
                continue
        try:
            if spec is None or spec.kind == "open":
                value: Any = _open_value(f, problems)
            elif spec.kind == "message":
                if not isinstance(f.value, Message):
                    raise _bad(f, spec, kind)
                value = _decode(f.value, spec.message, problems)
            elif isinstance(f.value, Message):
                raise _bad(f, spec, kind)
            else:
                value = _scalar(spec, f, kind)
        except CaffeError as err:
            problems.append(err)
            continue
        repeated = spec.repeated if spec is not None and schema is not None else True
        if repeated:  # lists while decoding (appending to tuples is quadratic)
            values.setdefault(f.name, []).append(value)
            spans.setdefault(f.name, []).append(f.span)
        else:
            if f.name in values and spec.kind != "open":
                problems.append(CaffeError(f.name_span, f'non-repeated field "{f.name}" is '
                                           f"specified multiple times (first at "
                                           f"{spans[f.name]})"))
                continue
            values[f.name] = value
            spans[f.name] = f.span
    values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
    spans = {k: tuple(v) if isinstance(v, list) else v for k, v in spans.items()}
    return Record(kind, MappingProxyType(values), MappingProxyType(spans), msg.span)
