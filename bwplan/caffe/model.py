"""Caffe's net description as records: a NetParameter read into `CaffeNet` and its
`CaffeLayer`s, with the ParamSpecs, NetStateRules, propagate_down and loss_weight lists each
layer carries, and the Span of everything.

It also performs the rewrites Caffe applies while reading a file (UpgradeNetAsNeeded):
the legacy net-level `input:` / `input_shape` / `input_dim` fields become an Input layer
named "input" placed first (UpgradeNetInput), and a BatchNorm layer with exactly three
`param { }` blocks gets lr_mult 0 and decay_mult 0 in all three (UpgradeNetBatchNorm, for
nets written before BatchNorm masked its statistics itself). V1 `layers { }` nets are
upgraded first, as Caffe's UpgradeV1Net does (`upgrade_v1`).

This module does not decide anything about backward computation; see `emulate`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from types import MappingProxyType

from bwplan.caffe.prototxt import Message, parse_prototxt
from bwplan.caffe.schema import Record, decode
from bwplan.caffe.upgrade_v1 import is_v1, upgrade_v1
from bwplan.errors import CaffeError, raise_all
from bwplan.source import Span

PHASES = ("TRAIN", "TEST")


@dataclass(frozen=True, slots=True)
class ParamSpec:
    """One `param { }` block: how the layer's param blob at that index trains."""

    name: str
    lr_mult: float
    decay_mult: float
    lr_given: bool
    decay_given: bool
    share_mode: str
    span: Span


@dataclass(frozen=True, slots=True)
class StateRule:
    """An include / exclude rule (Caffe's NetStateRule)."""

    phase: str | None
    min_level: int | None
    max_level: int | None
    stages: tuple[str, ...]
    not_stages: tuple[str, ...]
    span: Span


@dataclass(frozen=True, slots=True)
class CaffeLayer:
    name: str
    type: str
    bottoms: tuple[str, ...]
    tops: tuple[str, ...]
    params: tuple[ParamSpec, ...]
    propagate_down: tuple[bool, ...]
    loss_weight: tuple[float, ...]
    include: tuple[StateRule, ...]
    exclude: tuple[StateRule, ...]
    record: Record          # every field, for the per-type parameters
    span: Span

    def sub(self, name: str) -> Record:
        """A per-type parameter message such as `convolution_param` (defaults when absent)."""
        return self.record.sub(name)

    def bottom_span(self, i: int) -> Span:
        return self.record.where("bottom", i)

    def top_span(self, i: int) -> Span:
        return self.record.where("top", i)


@dataclass(frozen=True, slots=True)
class CaffeNet:
    name: str
    path: str
    layers: tuple[CaffeLayer, ...]
    force_backward: bool
    record: Record          # the NetParameter's own fields, for their spans
    span: Span
    # fields that did not fit the schema, left out of the records (read_net(collect=True))
    problems: tuple[CaffeError, ...] = ()


def read_net(text: str, path: str = "<input>", collect: bool = False) -> CaffeNet:
    """Parse and read a NetParameter prototxt. A field that does not fit the schema is an
    error; with `collect`, every such field is left out and listed in `problems` instead,
    so that the importer can report them together with the layer types it cannot import."""
    return net_from_message(parse_prototxt(text, path), path, collect)


def net_from_message(msg: Message, path: str, collect: bool = False) -> CaffeNet:
    if is_v1(msg):
        msg = upgrade_v1(msg)
    problems: list[CaffeError] = []
    net = decode(msg, "NetParameter", problems)
    if problems and not collect:
        raise_all(problems)
    layers = tuple(_upgrade_batch_norm(_layer(r)) for r in net.get("layer"))
    legacy = _legacy_input(net)
    if legacy is not None:
        layers = (legacy,) + layers
    return CaffeNet(net.get("name"), path, layers, net.get("force_backward"), net, net.span,
                    tuple(problems))


def _param(r: Record) -> ParamSpec:
    return ParamSpec(r.get("name"), r.get("lr_mult"), r.get("decay_mult"), r.has("lr_mult"),
                     r.has("decay_mult"), r.get("share_mode"), r.span)


def _rule(r: Record) -> StateRule:
    return StateRule(r.get("phase"), r.get("min_level"), r.get("max_level"),
                     tuple(r.get("stage")), tuple(r.get("not_stage")), r.span)


def _layer(r: Record) -> CaffeLayer:
    return CaffeLayer(r.get("name"), r.get("type"), tuple(r.get("bottom")),
                      tuple(r.get("top")), tuple(_param(p) for p in r.get("param")),
                      tuple(r.get("propagate_down")), tuple(r.get("loss_weight")),
                      tuple(_rule(x) for x in r.get("include")),
                      tuple(_rule(x) for x in r.get("exclude")), r, r.span)


def _upgrade_batch_norm(layer: CaffeLayer) -> CaffeLayer:
    if layer.type != "BatchNorm" or len(layer.params) != 3:
        return layer
    fixed = tuple(dataclasses.replace(p, lr_mult=0.0, decay_mult=0.0, lr_given=True,
                                      decay_given=True) for p in layer.params)
    return dataclasses.replace(layer, params=fixed)


def _legacy_input(net: Record) -> CaffeLayer | None:
    """Caffe's UpgradeNetInput: net-level inputs become an Input layer named "input"."""
    names = net.get("input")
    shapes, dims = net.get("input_shape"), net.get("input_dim")
    if not names and not shapes and not dims:
        return None
    where = net.where("input", 0)
    if shapes and dims:
        raise CaffeError(where, "Must specify either input_shape OR deprecated input_dim, "
                         "not both.")
    if shapes and len(shapes) != len(names):
        raise CaffeError(net.where("input_shape", 0), "Exactly one input_shape must be "
                         "specified per input.")
    if dims and len(dims) != 4 * len(names):
        raise CaffeError(net.where("input_dim", 0), "Incorrect input blob dimension "
                         "specifications.")
    if shapes:
        shape_records = tuple(shapes)
    elif dims:
        shape_records = tuple(
            Record("BlobShape", MappingProxyType({"dim": tuple(dims[4 * i:4 * i + 4])}),
                   MappingProxyType({}), net.where("input_dim", 4 * i))
            for i in range(len(names)))
    else:
        # Caffe strips shapeless inputs (a legacy weights file); keep the blobs so that
        # their shapes can be given with --input-shape.
        shape_records = ()
    input_param = Record("InputParameter", MappingProxyType({"shape": shape_records}),
                         MappingProxyType({}), where)
    spans = MappingProxyType({"top": tuple(net.where("input", i) for i in range(len(names)))})
    record = Record("LayerParameter", MappingProxyType({
        "name": "input", "type": "Input", "top": tuple(names), "input_param": input_param}),
        spans, where)
    return _layer(record)
