"""Caffe's UpgradeV1Net on the parsed text: a net written with V1 `layers { }` blocks
(`type: CONVOLUTION`, `blobs_lr`, `weight_decay`, `param: "name"`) becomes the same net of
`layer { }` blocks, as Caffe rewrites it while reading the file.

Per V1 layer (Caffe's UpgradeV1LayerParameter): the type enum becomes the type's name
(CONVOLUTION -> "Convolution"); the i-th `param` name, `blobs_lr`, `weight_decay` and
`blob_share_mode` become the i-th `param { name lr_mult decay_mult share_mode }`; every
other field is kept as written, so a field that no LayerParameter has is still reported at
its place by the schema. Before that, the V1 data layers' transformation fields (`scale`,
`mean_file`, `crop_size`, `mirror` in `data_param`, `image_data_param`,
`window_data_param`) move to `transform_param` (Caffe's UpgradeNetDataTransformation).

A type name outside BVLC's V1 enum and the fork enums below is kept as written
(`MAT_WRITE`): the importer then reports it as an unsupported type, unless the phase rules
leave the layer out. Every new field keeps the span of the text it came from.
"""
from __future__ import annotations

from bwplan.caffe.prototxt import Field, Ident, Message
from bwplan.errors import CaffeError

# caffe.proto's V1LayerParameter.LayerType -> the type's registered name
# (UpgradeV1LayerType), and the enums of the forks whose V1 files are still read
V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DECONVOLUTION": "Deconvolution", "DATA": "Data", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU",
    "SIGMOID": "Sigmoid", "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss",
    "SILENCE": "Silence", "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss",
    "SPLIT": "Split", "SLICE": "Slice", "TANH": "TanH", "WINDOW_DATA": "WindowData",
    "THRESHOLD": "Threshold",
    # Fast R-CNN's fork
    "ROI_POOLING": "ROIPooling", "SMOOTH_L1_LOSS": "SmoothL1Loss",
    # DeepLab's fork
    "IMAGE_SEG_DATA": "ImageSegData", "INTERP": "Interp", "SEG_ACCURACY": "SegAccuracy",
}

# V1 per-blob lists -> the ParamSpec field each becomes
_PARAM_LISTS = {"param": "name", "blobs_lr": "lr_mult", "weight_decay": "decay_mult",
                "blob_share_mode": "share_mode"}
_DATA_TYPES = frozenset({"DATA", "IMAGE_DATA", "WINDOW_DATA"})
_DATA_PARAMS = ("data_param", "image_data_param", "window_data_param")
_TRANSFORM_FIELDS = frozenset({"scale", "mean_file", "crop_size", "mirror"})


def is_v1(msg: Message) -> bool:
    return msg.first("layers") is not None


def upgrade_v1(msg: Message) -> Message:
    """The NetParameter message with its V1 `layers` as `layer` fields (see the module)."""
    v2 = msg.first("layer")
    if v2 is not None:
        raise CaffeError(v2.name_span, "Refusing to upgrade inconsistent NetParameter input; "
                         "the definition includes both 'layer' and 'layers' fields.",
                         "write every layer as 'layer { }' (or every one as 'layers { }')")
    fields = []
    for f in msg.fields:
        if f.name == "layers" and isinstance(f.value, Message):
            fields.append(Field("layer", _upgrade_layer(f.value), f.span, f.name_span,
                                f.value_span))
        else:
            fields.append(f)
    return Message(tuple(fields), msg.span)


def _upgrade_layer(layer: Message) -> Message:
    if layer.first("layer") is not None:
        f = layer.first("layer")
        raise CaffeError(f.name_span, "this net uses the V0 'layers { layer { } }' syntax, "
                         "which bwplan does not read",
                         "upgrade it with Caffe's tool: upgrade_net_proto_text OLD NEW")
    kept: list[Field] = []
    lists: dict[str, list[Field]] = {k: [] for k in _PARAM_LISTS}
    for f in layer.fields:
        if f.name in lists:
            lists[f.name].append(f)
        elif f.name == "type" and isinstance(f.value, Ident):
            kept.append(Field("type", V1_TYPES.get(f.value.name, f.value.name), f.span,
                              f.name_span, f.value_span))
        else:
            kept.append(f)
    type_field = layer.first("type")
    if type_field is not None and isinstance(type_field.value, Ident) \
            and type_field.value.name in _DATA_TYPES:
        kept = _move_transform_fields(kept)
    n_params = max(len(v) for v in lists.values())
    params = []
    for i in range(n_params):
        given = [(lists[k][i], spec_field) for k, spec_field in _PARAM_LISTS.items()
                 if i < len(lists[k])]
        where = given[0][0]
        params.append(Field("param", Message(tuple(
            Field(name, f.value, f.span, f.name_span, f.value_span) for f, name in given),
            where.span), where.span, where.name_span, where.value_span))
    return Message(tuple(kept + params), layer.span)


def _move_transform_fields(fields: list[Field]) -> list[Field]:
    """UpgradeNetDataTransformation: a V1 data layer's scale / mean_file / crop_size /
    mirror, written in its data parameters, belong to its transform_param."""
    moved: list[Field] = []
    out: list[Field] = []
    for f in fields:
        if f.name in _DATA_PARAMS and isinstance(f.value, Message):
            stay = tuple(g for g in f.value.fields if g.name not in _TRANSFORM_FIELDS)
            moved += [g for g in f.value.fields if g.name in _TRANSFORM_FIELDS]
            out.append(Field(f.name, Message(stay, f.value.span), f.span, f.name_span,
                             f.value_span))
        else:
            out.append(f)
    if not moved:
        return out
    for i, f in enumerate(out):
        if f.name == "transform_param" and isinstance(f.value, Message):
            out[i] = Field(f.name, Message(f.value.fields + tuple(moved), f.value.span),
                           f.span, f.name_span, f.value_span)
            return out
    first = moved[0]
    return out + [Field("transform_param", Message(tuple(moved), first.span), first.span,
                        first.name_span, first.value_span)]
