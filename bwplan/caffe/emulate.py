"""An emulation of Caffe's `Net::Init` (BVLC/caffe master): which layers, bottoms and params
Caffe decides need backward computation, with its quirks, and the errors it raises.

The steps follow Caffe's own order:

1. FilterNet and 2. InsertSplits rewrite the layer list (`prepare`).
3. The forward walk: bottoms and tops are connected (in place when a top names the bottom
   at the same index), `blob_need_backward` flows forward, a param needs backward when the
   NET's copy of its ParamSpec has lr_mult != 0 (default 1), and named params are shared
   (AppendParam reads the LAYER's copy, which BatchNorm has extended with lr_mult 0).
4. The backward walk in reverse layer order prunes layers that do not reach a loss or whose
   tops all skip backpropagation (by blob NAME); this is where Caffe logs its
   "needs backward computation" lines.
5. force_backward, applied after those lines were logged.

    >>> from bwplan.caffe.model import read_net
    >>> net = read_net('''
    ...   layer { name: "in" type: "Input" top: "x" top: "y"
    ...           input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
    ...   layer { name: "fc" type: "InnerProduct" bottom: "x" top: "fc"
    ...           param { lr_mult: 0 } param { lr_mult: 0 } inner_product_param { num_output: 4 } }
    ...   layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "y" top: "loss" }''')
    >>> [(l.name, l.need_backward) for l in emulate(net).layers]   # nothing trains
    [('in', False), ('fc', False), ('loss', False)]

Nothing here knows bwplan's IR; `importer` maps the Caffe net to it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType

from bwplan.caffe import shapes as caffe_shapes
from bwplan.caffe.catalogue import caffe_type
from bwplan.caffe.model import PHASES, CaffeLayer, CaffeNet, ParamSpec
from bwplan.caffe.prepare import filter_net, insert_splits
from bwplan.caffe.shapes import Shape, shape_string
from bwplan.caffe.state import (BottomState, CaffeState, LayerState, ParamState, TopState,
                                WaivedCheck)
from bwplan.errors import CaffeError
from bwplan.source import Span


def _num(x: float) -> str:
    """A number as C++'s ostream prints a float."""
    return f"{x:g}"


def _check(expr: str, a, b, message: str) -> str:
    """The text of a failed glog CHECK_xx."""
    return f"Check failed: {expr} ({_num(a) if isinstance(a, float) else a} vs. " \
           f"{_num(b) if isinstance(b, float) else b}) {message}"


# ---- the forward walk ---------------------------------------------------------------
_DEFAULT_SPEC = ParamSpec("", 1.0, 1.0, False, False, "STRICT", Span.synthetic("default"))


@dataclass
class _Learnable:
    """Net::params_lr_ / params_weight_decay_ and their has_ flags, for one owner."""

    lr: float
    decay: float
    has_lr: bool
    has_decay: bool


class _Init:
    def __init__(self, strict: bool, input_shapes: Mapping[str, Shape]) -> None:
        self.strict = strict
        self.input_shapes = input_shapes
        self.batch_changes: dict[int, int] = {}
        self.waived: list[WaivedCheck] = []
        self.blob_names: list[str] = []
        self.blob_need: list[bool] = []
        self.blob_shape: list[Shape | None] = []
        self.name_to_idx: dict[str, int] = {}
        self.available: set[str] = set()
        self.inputs: list[str] = []
        # per layer
        self.bottom_ids: list[list[int]] = []
        self.bottom_need: list[list[bool]] = []
        self.bottom_shapes: list[list[Shape | None]] = []
        self.top_ids: list[list[int]] = []
        self.top_shapes: list[list[Shape | None]] = []
        self.loss: list[list[float]] = []
        self.layer_need: list[bool] = []
        self.param_propagate: list[list[bool]] = []
        self.own_specs: list[tuple[ParamSpec, ...]] = []
        self.param_shapes: list[list[Shape | None]] = []
        # per net param
        self.param_layer: list[tuple[int, int]] = []
        self.param_owner: list[int] = []
        self.param_learnable: list[int] = []
        self.param_names: dict[str, int] = {}
        self.learnable: list[_Learnable] = []

    def find_batch_changes(self, layers: Sequence[CaffeLayer]) -> None:
        """Where --input-shape gives a data blob another batch size than the file does, the
        data blobs the file gives that same batch size (the label beside the image) follow
        it: otherwise the label keeps the old batch and the error lands on the loss."""
        changes: dict[int, int | None] = {}
        for layer in layers:
            ctype = caffe_type(layer.type)
            if layer.bottoms or not any(t in self.input_shapes for t in layer.tops):
                continue
            n_blobs = max(ctype.param_blobs(layer), 0)
            tshapes, _ = caffe_shapes.infer(ctype.shape, layer, [], n_blobs)
            # a top the file gives no shape (an LMDB image without crop_size) has the
            # batch its layer's other tops have (the label's batch_size)
            batches = {shape[0] for j, shape in enumerate(tshapes)
                       if shape and j not in ctype.unbatched_tops}
            for j, (top, shape) in enumerate(zip(layer.tops, tshapes)):
                if j in ctype.unbatched_tops:
                    continue
                given = self.input_shapes.get(top)
                old = shape[0] if shape else min(batches) if len(batches) == 1 else None
                if given and old is not None and given[0] != old:
                    # two blobs of one batch given different batches: follow neither
                    changes[old] = given[0] if changes.get(old, given[0]) == given[0] else None
        self.batch_changes = {old: new for old, new in changes.items() if new is not None}

    def follow_batch(self, shape: Shape | None) -> Shape | None:
        if shape and shape[0] in self.batch_changes:
            return (self.batch_changes[shape[0]],) + tuple(shape[1:])
        return shape

    def fail(self, span: Span, message: str, hint: str | None = None) -> None:
        raise CaffeError(span, message, hint)

    def new_blob(self, name: str, shape: Shape | None) -> int:
        self.blob_names.append(name)
        self.blob_need.append(False)
        self.blob_shape.append(shape)
        return len(self.blob_names) - 1

    def layer(self, layers: Sequence[CaffeLayer], lid: int) -> None:
        layer = layers[lid]
        ctype = caffe_type(layer.type)
        if layer.propagate_down and len(layer.propagate_down) != len(layer.bottoms):
            self.fail(layer.record.where("propagate_down", 0), _check(
                "layer_param.propagate_down_size() == layer_param.bottom_size()",
                len(layer.propagate_down), len(layer.bottoms),
                "propagate_down param must be specified either 0 or bottom_size times "),
                f"write propagate_down once for each of the {len(layer.bottoms)} bottoms, "
                "or not at all")
        need = False
        ids, needs, bshapes = [], [], []
        for j, blob in enumerate(layer.bottoms):
            if blob not in self.available:
                self.fail(layer.bottom_span(j), f"Unknown bottom blob '{blob}' (layer "
                          f"'{layer.name}', bottom index {j})")
            bid = self.name_to_idx[blob]
            self.available.discard(blob)
            ids.append(bid)
            needs.append(layer.propagate_down[j] if layer.propagate_down
                         else self.blob_need[bid])
            bshapes.append(self.blob_shape[bid])
            need |= self.blob_need[bid]
        self.bottom_ids.append(ids)
        self.bottom_need.append(needs)
        self.bottom_shapes.append(bshapes)

        tids = []
        for j, blob in enumerate(layer.tops):
            if j < len(layer.bottoms) and blob == layer.bottoms[j]:
                tids.append(self.name_to_idx[blob])          # in place
            elif blob in self.name_to_idx:
                hint = None
                if any(l.type == "Split" and l.bottoms == (blob,) and l.loss_weight
                       for l in layers[:lid]):
                    hint = ("a loss_weight on a top that a later layer computes in place "
                            "makes Caffe insert a Split, which breaks the in-place chain")
                self.fail(layer.top_span(j), f"Top blob '{blob}' produced by multiple "
                          "sources.", hint)
            else:
                tids.append(self.new_blob(blob, None))
                self.name_to_idx[blob] = tids[-1]
            self.available.add(blob)
            if layer.type == "Input":
                self.inputs.append(blob)
        n_top = len(layer.tops)
        if ctype.loss and n_top < 1:
            tids.append(self.new_blob("(automatic)", None))   # LossLayer::AutoTopBlobs
            n_top = 1
        self.top_ids.append(tids)

        own_specs = self.set_up(layer, ctype, len(layer.bottoms), n_top)
        n_blobs = max(ctype.param_blobs(layer), 0)
        tshapes, pshapes = caffe_shapes.infer(ctype.shape, layer, bshapes, n_blobs)
        tshapes = (tshapes + [None] * n_top)[:n_top]
        if not layer.bottoms or getattr(ctype.imports, "kind", "") == "inputs":
            tshapes = [tuple(self.input_shapes[b]) if b in self.input_shapes
                       else s if j in ctype.unbatched_tops else self.follow_batch(s)
                       for j, (b, s) in enumerate(zip(layer.tops, tshapes))
                       ] + tshapes[len(layer.tops):]
            image = tshapes[0] if tshapes else None
            if image is not None and len(image) == 4:
                tshapes = [(image[0], 1) + tuple(image[2:])
                           if s is None and j in ctype.label_map_tops else s
                           for j, s in enumerate(tshapes)]
        for tid, shape in zip(tids, tshapes):
            self.blob_shape[tid] = shape
        self.top_shapes.append(tshapes)
        self.param_shapes.append(pshapes)

        if len(layer.params) > n_blobs:
            self.fail(layer.params[n_blobs].span, _check(
                "param_size <= num_param_blobs", len(layer.params), n_blobs,
                f"Too many params specified for layer {layer.name}"))
        propagate = []
        for pid in range(n_blobs):
            spec = layer.params[pid] if pid < len(layer.params) else _DEFAULT_SPEC
            propagate.append(spec.lr_mult != 0)
            need |= spec.lr_mult != 0
        self.param_propagate.append(propagate)
        self.own_specs.append(own_specs)
        for pid in range(n_blobs):
            self.append_param(layers, lid, pid)
        self.layer_need.append(need)
        if need:
            for tid in tids:
                self.blob_need[tid] = True

    def set_up(self, layer: CaffeLayer, ctype, n_bottom: int, n_top: int
               ) -> tuple[ParamSpec, ...]:
        """Layer::SetUp: blob counts, the layer's own LayerSetUp, its loss weights. Returns
        the layer's own copy of its ParamSpecs."""
        exact, low, high = ctype.bottoms
        t = ctype.name
        checks = [
            (exact >= 0 and exact != n_bottom, "ExactNumBottomBlobs() == bottom.size()",
             exact, n_bottom, f"{t} Layer takes {exact} bottom blob(s) as input."),
            (low >= 0 and low > n_bottom, "MinBottomBlobs() <= bottom.size()", low, n_bottom,
             f"{t} Layer takes at least {low} bottom blob(s) as input."),
            (high >= 0 and high < n_bottom, "MaxBottomBlobs() >= bottom.size()", high,
             n_bottom, f"{t} Layer takes at most {high} bottom blob(s) as input."),
        ]
        exact, low, high = ctype.tops
        checks += [
            (exact >= 0 and exact != n_top, "ExactNumTopBlobs() == top.size()", exact, n_top,
             f"{t} Layer produces {exact} top blob(s) as output."),
            (low >= 0 and low > n_top, "MinTopBlobs() <= top.size()", low, n_top,
             f"{t} Layer produces at least {low} top blob(s) as output."),
            (high >= 0 and high < n_top, "MaxTopBlobs() >= top.size()", high, n_top,
             f"{t} Layer produces at most {high} top blob(s) as output."),
            (ctype.equal_bottoms_tops and n_bottom != n_top, "bottom.size() == top.size()",
             n_bottom, n_top, f"{t} Layer produces one top blob as output for each bottom "
             "blob input."),
        ]
        for failed, expr, a, b, message in checks:
            if failed:
                self.fail(layer.span, _check(expr, a, b, message))
        specs = layer.params
        if layer.type == "BatchNorm":
            specs = self.batch_norm_specs(layer)
        weights = layer.loss_weight
        if ctype.loss and not weights:
            weights = (1.0,)        # LossLayer::LayerSetUp
        if weights and len(weights) != n_top:
            self.fail(layer.record.where("loss_weight", 0), _check(
                "top.size() == num_loss_weights", n_top, len(weights),
                "loss_weight must be unspecified or specified once per top blob."))
        self.loss.append([float(w) for w in weights] if weights else [0.0] * n_top)
        return specs

    def batch_norm_specs(self, layer: CaffeLayer) -> tuple[ParamSpec, ...]:
        """BatchNorm::LayerSetUp masks its statistics with lr_mult 0 in its OWN copy."""
        specs = list(layer.params)
        for i in range(3):
            if i == len(specs):
                specs.append(dataclasses.replace(_DEFAULT_SPEC, lr_mult=0.0, lr_given=True,
                                                 span=layer.span))
            elif specs[i].lr_mult != 0:
                self.fail(specs[i].span, _check(
                    "this->layer_param_.param(i).lr_mult() == 0.f", specs[i].lr_mult, 0.0,
                    "Cannot configure batch normalization statistics as layer parameters."),
                    "BatchNorm's three blobs are statistics: give them lr_mult: 0 or no "
                    "param { } at all")
        return tuple(specs)

    def append_param(self, layers: Sequence[CaffeLayer], lid: int, pid: int) -> None:
        layer = layers[lid]
        specs = self.own_specs[lid]
        spec = specs[pid] if pid < len(specs) else _DEFAULT_SPEC
        name = spec.name if pid < len(specs) else ""
        net_id = len(self.param_layer)
        self.param_layer.append((lid, pid))
        if not name or name not in self.param_names:
            self.param_owner.append(-1)
            if name:
                self.param_names[name] = net_id
            self.param_learnable.append(len(self.learnable))
            self.learnable.append(_Learnable(spec.lr_mult, spec.decay_mult, spec.lr_given,
                                             spec.decay_given))
            return
        owner_id = self.param_names[name]
        self.param_owner.append(owner_id)
        olid, opid = self.param_layer[owner_id]
        owner_name = layers[olid].name
        mine, theirs = self.param_shapes[lid][pid], self.param_shapes[olid][opid]
        if mine is not None and theirs is not None:
            if spec.share_mode == "PERMISSIVE":
                a, b = _count(mine), _count(theirs)
                if a != b:
                    self.fail(spec.span, _check(
                        "this_blob->count() == owner_blob->count()", a, b,
                        f"Cannot share param '{name}' owned by layer '{owner_name}' with "
                        f"layer '{layer.name}'; count mismatch.  Owner layer param shape is "
                        f"{shape_string(theirs)}; sharing layer shape is "
                        f"{shape_string(mine)}"))
            elif tuple(mine) != tuple(theirs):
                self.fail(spec.span, "Check failed: this_blob->shape() == owner_blob->shape() "
                          f"Cannot share param '{name}' owned by layer '{owner_name}' with "
                          f"layer '{layer.name}'; shape mismatch.  Owner layer param shape "
                          f"is {shape_string(theirs)}; sharing layer expects shape "
                          f"{shape_string(mine)}")
        learnable_id = self.param_learnable[owner_id]
        self.param_learnable.append(learnable_id)
        owner = self.learnable[learnable_id]
        if spec.lr_given:
            if not owner.has_lr:
                owner.has_lr, owner.lr = True, spec.lr_mult
            elif spec.lr_mult != owner.lr:
                text = _check("param_spec->lr_mult() == params_lr_[learnable_param_id]",
                              spec.lr_mult, owner.lr,
                              f"Shared param '{name}' has mismatched lr_mult.")
                if self.strict:
                    self.fail(spec.span, text)
                self.waived.append(WaivedCheck("shared-lr-mismatch", text, spec.span))
        if spec.decay_given:
            if not owner.has_decay:
                owner.has_decay, owner.decay = True, spec.decay_mult
            elif spec.decay_mult != owner.decay:
                self.fail(spec.span, _check(
                    "param_spec->decay_mult() == params_weight_decay_[learnable_param_id]",
                    spec.decay_mult, owner.decay,
                    f"Shared param '{name}' has mismatched decay_mult."),
                    "a shared parameter decays once per step, so its uses must agree on "
                    "decay_mult")


def _count(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


# ---- the backward walk ----------------------------------------------------------------
def _prune(init: _Init, n_layers: int) -> list[bool]:
    """Net::Init's reverse pass. Edits layer_need / bottom_need; returns the values that
    Caffe logs, layer by layer."""
    under_loss: set[str] = set()
    skip_backp: set[str] = set()
    names = init.blob_names
    logged = [False] * n_layers
    for lid in range(n_layers - 1, -1, -1):
        contributes, skip = False, True
        for j, tid in enumerate(init.top_ids[lid]):
            blob = names[tid]
            if init.loss[lid][j] or blob in under_loss:
                contributes = True
            if blob not in skip_backp:
                skip = False
            if contributes and not skip:
                break
        if init.layer_need[lid] and skip:
            init.layer_need[lid] = False
            init.bottom_need[lid] = [False] * len(init.bottom_need[lid])
        if not contributes:
            init.layer_need[lid] = False
        logged[lid] = init.layer_need[lid]
        for j, bid in enumerate(init.bottom_ids[lid]):
            if contributes:
                under_loss.add(names[bid])
            else:
                init.bottom_need[lid][j] = False
            if not init.bottom_need[lid][j]:
                skip_backp.add(names[bid])
    return logged


# ---- force_backward -------------------------------------------------------------------
def _force_backward(init: _Init, layers: Sequence[CaffeLayer]) -> None:
    for lid, layer in enumerate(layers):
        init.layer_need[lid] = True
        no_force = caffe_type(layer.type).no_force
        for j, bid in enumerate(init.bottom_ids[lid]):
            init.bottom_need[lid][j] = init.bottom_need[lid][j] or j not in no_force
            init.blob_need[bid] = init.blob_need[bid] or init.bottom_need[lid][j]
        init.param_propagate[lid] = [True] * len(init.param_propagate[lid])


def emulate(net: CaffeNet, phase: str = "TRAIN",
            input_shapes: Mapping[str, Sequence[int]] | None = None,
            strict: bool = True) -> CaffeState:
    """Caffe's decisions for `net` in `phase`. Raises CaffeError with Caffe's own message for
    a net Caffe rejects. With strict=False, shared params whose explicit lr_mult differ are
    let through (Caffe rejects them) and listed in `waived`."""
    if phase not in PHASES:
        raise CaffeError(Span.synthetic("--phase"), f"unknown phase '{phase}'",
                         "use TRAIN or TEST")
    filter_log: list[str] = []
    kept = filter_net(net.layers, phase, filter_log)
    split = insert_splits(kept)
    layers = [layer for layer, _ in split]
    init = _Init(strict, {k: tuple(v) for k, v in (input_shapes or {}).items()})
    init.find_batch_changes(layers)
    for lid in range(len(layers)):
        init.layer(layers, lid)
    blob_need_forward = dict(zip(init.blob_names, init.blob_need))
    logged = _prune(init, len(layers))
    if net.force_backward:
        _force_backward(init, layers)
        blob_need_forward = dict(zip(init.blob_names, init.blob_need))
    states = tuple(_layer_state(init, layers, lid, split[lid][1], logged[lid])
                   for lid in range(len(layers)))
    loss_weight = {}
    for lid in range(len(layers)):
        for j, tid in enumerate(init.top_ids[lid]):
            if init.loss[lid][j]:
                loss_weight[init.blob_names[tid]] = init.loss[lid][j]
    return CaffeState(phase, states, MappingProxyType(blob_need_forward),
                      MappingProxyType(loss_weight), tuple(init.inputs),
                      tuple(sorted(init.available)), net.force_backward, tuple(filter_log),
                      tuple(init.waived))


def _layer_state(init: _Init, layers: Sequence[CaffeLayer], lid: int, is_split: bool,
                 logged: bool) -> LayerState:
    layer = layers[lid]
    names = init.blob_names
    bottoms = tuple(BottomState(names[bid], init.bottom_need[lid][j],
                                init.bottom_shapes[lid][j])
                    for j, bid in enumerate(init.bottom_ids[lid]))
    tops = tuple(TopState(names[tid], init.loss[lid][j], init.top_shapes[lid][j])
                 for j, tid in enumerate(init.top_ids[lid]))
    params = []
    first = sum(len(p) for p in init.param_propagate[:lid])
    specs = init.own_specs[lid]
    for pid, propagate in enumerate(init.param_propagate[lid]):
        net_id = first + pid
        spec = specs[pid] if pid < len(specs) else _DEFAULT_SPEC
        owner = init.param_owner[net_id]
        shared = None
        if owner >= 0:
            olid, opid = init.param_layer[owner]
            shared = (layers[olid].name, opid)
        eff = init.learnable[init.param_learnable[net_id]]
        params.append(ParamState(
            pid, spec.name, spec.name or str(pid), spec.lr_mult, spec.decay_mult,
            spec.lr_given, spec.decay_given, propagate, shared, eff.lr, eff.decay, eff.has_lr,
            eff.has_decay, init.param_shapes[lid][pid],
            spec.span if pid < len(layer.params) else layer.span))
    return LayerState(layer.name, layer.type, init.layer_need[lid], logged, bottoms, tops,
                      tuple(params), None if is_split else layer.name, layer.span)
