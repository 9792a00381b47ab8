"""Caffe's upgrade of V1 nets (`layers { type: CONVOLUTION }`), on the parsed message tree.

Nets written before Caffe's 2015 layer redesign are still what many public model pages
ship; Caffe reads them by upgrading while it reads (UpgradeNetAsNeeded in
upgrade_proto.cpp), and so does bwplan, in the same two steps:

- UpgradeNetDataTransformation: `scale`, `mean_file`, `crop_size` and `mirror` written in
  the `data_param` / `image_data_param` / `window_data_param` of a V1 data layer move to
  its `transform_param`;
- UpgradeV1Net: each `layers { }` becomes a `layer { }`: its enum `type` becomes the type's
  name (`SOFTMAX_LOSS` -> `SoftmaxWithLoss`), and its `param: "w"`, `blob_share_mode`,
  `blobs_lr` and `weight_decay` lists become one `param { name share_mode lr_mult
  decay_mult }` block per blob, each field from the one it replaces.

The rewritten fields keep the spans of what the file wrote, so that every later error
points at the V1 text. A net that mixes `layer` and `layers`, a V0 `layer` inside
`layers`, and a type name that is not a V1 enum are errors, as they are for Caffe.
"""
from __future__ import annotations

import difflib

from bwplan.caffe.prototxt import Field, Ident, Message
from bwplan.errors import CaffeError
from bwplan.source import Span

# V1LayerParameter.LayerType -> the registered type name (UpgradeV1LayerType)
V1_TYPES = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax",
    "BNLL": "BNLL", "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss",
    "CONVOLUTION": "Convolution", "DECONVOLUTION": "Deconvolution", "DATA": "Data",
    "DROPOUT": "Dropout", "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss",
    "ELTWISE": "Eltwise", "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data",
    "HDF5_OUTPUT": "HDF5Output", "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col",
    "IMAGE_DATA": "ImageData", "INFOGAIN_LOSS": "InfogainLoss",
    "INNER_PRODUCT": "InnerProduct", "LRN": "LRN", "MEMORY_DATA": "MemoryData",
    "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss", "MVN": "MVN",
    "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split",
    "SLICE": "Slice", "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
    # the enums of the forks whose V1 files are still read: Fast R-CNN's, DeepLab's
    "ROI_POOLING": "ROIPooling", "SMOOTH_L1_LOSS": "SmoothL1Loss",
    "IMAGE_SEG_DATA": "ImageSegData", "INTERP": "Interp", "SEG_ACCURACY": "SegAccuracy",
}
# the enum's numbers, for a type written as an integer
_V1_NUMBERS = {
    0: "NONE", 35: "ABSVAL", 1: "ACCURACY", 30: "ARGMAX", 2: "BNLL", 3: "CONCAT",
    37: "CONTRASTIVE_LOSS", 4: "CONVOLUTION", 39: "DECONVOLUTION", 5: "DATA", 6: "DROPOUT",
    32: "DUMMY_DATA", 7: "EUCLIDEAN_LOSS", 25: "ELTWISE", 38: "EXP", 8: "FLATTEN",
    9: "HDF5_DATA", 10: "HDF5_OUTPUT", 28: "HINGE_LOSS", 11: "IM2COL", 12: "IMAGE_DATA",
    13: "INFOGAIN_LOSS", 14: "INNER_PRODUCT", 15: "LRN", 29: "MEMORY_DATA",
    16: "MULTINOMIAL_LOGISTIC_LOSS", 34: "MVN", 17: "POOLING", 26: "POWER", 18: "RELU",
    19: "SIGMOID", 27: "SIGMOID_CROSS_ENTROPY_LOSS", 36: "SILENCE", 20: "SOFTMAX",
    21: "SOFTMAX_LOSS", 22: "SPLIT", 33: "SLICE", 23: "TANH", 24: "WINDOW_DATA",
    31: "THRESHOLD",
}
# V1 data layers whose own parameter message held the transformation fields
_DATA_PARAMS = {"DATA": "data_param", "IMAGE_DATA": "image_data_param",
                "WINDOW_DATA": "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")
# V1 fields that become one ParamSpec field per blob
_PER_BLOB = {"param": "name", "blob_share_mode": "share_mode", "blobs_lr": "lr_mult",
             "weight_decay": "decay_mult"}


def is_v1(msg: Message) -> bool:
    return msg.first("layers") is not None


def upgrade_v1_net(msg: Message, problems: list[CaffeError]) -> Message:
    """The NetParameter `msg` with its V1 `layers` rewritten as `layer`s; errors are
    appended to `problems` (the layer they are found in is left out)."""
    mixed = msg.first("layer")
    if mixed is not None:
        problems.append(CaffeError(
            mixed.name_span, "Refusing to upgrade inconsistent NetParameter input; the "
            "definition includes both 'layer' and 'layers' fields",
            "write every layer as 'layer { }' (the V1 'layers' syntax is the old one)"))
        return msg
    fields: list[Field] = []
    for f in msg.fields:
        if f.name != "layers":
            fields.append(f)
        elif not isinstance(f.value, Message):
            problems.append(CaffeError(f.value_span, "NetParameter.layers must be a message "
                                       "in { }"))
        else:
            layer = _upgrade_layer(f.value, problems)
            if layer is not None:
                fields.append(Field("layer", layer, f.span, f.name_span, f.value_span))
    return Message(tuple(fields), msg.span)


def _v1_type(f: Field) -> str | None:
    v = f.value
    if isinstance(v, int) and not isinstance(v, bool):
        return _V1_NUMBERS.get(v)
    if isinstance(v, Ident) and v.name in V1_TYPES:
        return v.name
    return None


def _unknown_enum(value) -> bool:
    """An enum name that is no V1 type and is not a misspelling of one."""
    return isinstance(value, Ident) and value.name not in V1_TYPES \
        and not difflib.get_close_matches(value.name, list(V1_TYPES), n=1)


def _upgrade_layer(v1: Message, problems: list[CaffeError]) -> Message | None:
    type_field = v1.first("type")
    enum = "NONE"
    if type_field is not None:
        found = _v1_type(type_field)
        if found is None and _unknown_enum(type_field.value):
            # another fork's enum (DeepLab's MAT_WRITE): kept as written, so the importer
            # reports an unsupported type, unless the phase rules leave the layer out
            found = type_field.value.name
        if found is None:
            shown = type_field.value if not isinstance(type_field.value, Message) else "{ }"
            close = difflib.get_close_matches(str(shown), list(V1_TYPES), n=1)
            problems.append(CaffeError(
                type_field.value_span, f"V1LayerParameter.type must be a V1 layer type "
                f"such as CONVOLUTION, not '{shown}'",
                f"did you mean {close[0]}?" if close else
                "a V1 'layers { }' names its type by enum; write 'layer { type: \"...\" }' "
                "for the other types"))
            return None
        enum = found
    v0 = v1.first("layer")
    if v0 is not None:
        problems.append(CaffeError(v0.name_span, "this layer holds a V0 'layer { }' "
                                   "definition, which bwplan does not read",
                                   "upgrade it with Caffe's tool: upgrade_net_proto_text "
                                   "OLD NEW"))
        return None
    per_blob: dict[int, list[Field]] = {}
    seen = dict.fromkeys(_PER_BLOB, 0)
    fields: list[Field] = []
    moved = _moved_transform_fields(v1, enum)
    for f in v1.fields:
        if f.name in _PER_BLOB:
            i, seen[f.name] = seen[f.name], seen[f.name] + 1
            per_blob.setdefault(i, []).append(
                Field(_PER_BLOB[f.name], f.value, f.span, f.name_span, f.value_span))
        elif f is type_field:
            fields.append(Field("type", V1_TYPES.get(enum, enum), f.span, f.name_span,
                                f.value_span))
        elif f.name == _DATA_PARAMS.get(enum) and isinstance(f.value, Message):
            kept = tuple(g for g in f.value.fields if g.name not in _TRANSFORM_FIELDS)
            fields.append(Field(f.name, Message(kept, f.value.span), f.span, f.name_span,
                                f.value_span))
        elif f.name == "transform_param" and isinstance(f.value, Message) and moved:
            fields.append(Field(f.name, Message(f.value.fields + moved, f.value.span),
                                f.span, f.name_span, f.value_span))
            moved = ()
        else:
            fields.append(f)
    if moved:
        span = moved[0].span
        fields.append(Field("transform_param", Message(moved, span), span, span, span))
    for i in sorted(per_blob):
        blob = per_blob[i]
        fields.append(Field("param", Message(tuple(blob), _join(blob)), blob[0].span,
                            blob[0].name_span, _join(blob)))
    return Message(tuple(fields), v1.span)


def _moved_transform_fields(v1: Message, enum: str) -> tuple[Field, ...]:
    name = _DATA_PARAMS.get(enum)
    own = v1.first(name) if name else None
    if own is None or not isinstance(own.value, Message):
        return ()
    return tuple(g for g in own.value.fields if g.name in _TRANSFORM_FIELDS)


def _join(fields: list[Field]) -> Span:
    """The span of the first field: where the blob's settings start being written."""
    return fields[0].span
