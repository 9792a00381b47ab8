"""Turns a Caffe net, with the state `emulate` computed for it, into bwplan's flat AST.

Blobs become tensor names: a layer's output is named after the layer, so a later bottom that
names a blob refers to the blob's latest producer (in-place layers included). Data layers
become inputs named after their tops; Split layers disappear (their tops alias the bottom).
Training settings carry over per use:

    propagate_down: false on bottom i    -> stop_gradient(x) on that argument
    param { lr_mult decay_mult }         -> weight.lr= / weight.decay= (slot by blob index)
    param { name: "w" } used by several  -> `param w: f32[...]` and weight=w in each use; a
                                            use with no lr_mult takes the param's effective
                                            lr_mult, as Caffe updates it
    loss_weight                          -> weight= (the loss weight)
    force_backward: true                 -> every float input is marked `grad`

Names that collide (a layer and a data blob both called "data", a Slice top named like a
layer) are made unique by a numeric suffix; a Caffe layer keeps its own name when it can.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from bwplan.caffe.prepare import built_layers
from bwplan.caffe.state import CaffeState, LayerState
from bwplan.caffe.catalogue import caffe_type, importable
from bwplan.caffe.mapping import Import, MapCtx
from bwplan.caffe.model import CaffeLayer, CaffeNet
from bwplan.caffe.shapes import slice_bounds
from bwplan.errors import CaffeError, raise_all
from bwplan.frontend import ast
from bwplan.ir.types import TensorType
from bwplan.source import Span


def _number(x: float) -> int | float:
    """1.0 -> 1, so that written settings read as the prototxt does."""
    return int(x) if float(x).is_integer() and abs(x) < 2 ** 53 else float(x)


class _Names:
    """Unique names in source order. Caffe layer names come first: a name derived from a blob
    (a data input, a Slice top, a shared param) yields to a layer of that name, and a suffix
    never takes a name another statement wants."""

    def __init__(self, layers: list[str], others: list[str]) -> None:
        self.layers, self.others = set(layers), set(others)
        self.taken: set[str] = set()

    def take(self, want: str, layer: bool = False) -> str:
        name, k = want, 2
        while (name in self.taken or (name in self.layers and not (layer and name == want))
               or (name != want and name in self.others)):
            name, k = f"{want}_{k}", k + 1
        self.taken.add(name)
        return name


@dataclass
class _Input:
    name: str
    shape: tuple[int, ...]
    span: Span
    uses: list[tuple[str, int]] = field(default_factory=list)   # (Caffe type, bottom index)
    batched: bool = True


@dataclass(frozen=True, slots=True)
class FlatImport:
    module: ast.Module
    layer_map: Mapping[str, tuple[str, ...]]
    # per layer of the state, in order: the bwplan layers it became. Caffe layer names need
    # not be unique (BVLC's mnist_autoencoder has two layers named "loss"), and layer_map
    # merges the layers of one name
    built_as: tuple[tuple[str, ...], ...] = ()


def _filler(layer: CaffeLayer) -> list[ast.Modifier]:
    """`weight.init="bilinear"` where the weight's filler is Caffe's bilinear one: the
    fixed upsampling kernel of FCN-style deconvolutions (lr_mult 0), which a random start
    would silently replace. Other fillers only set where training starts; bwplan's own
    initialisation (or loaded weights) stands in for them."""
    for name in ("convolution_param", "inner_product_param"):
        filler = layer.sub(name).get("weight_filler") if layer.sub(name) else None
        filler = filler[0] if isinstance(filler, tuple) else filler
        kind = filler.get("type") if filler is not None else None
        if (kind[0] if isinstance(kind, tuple) else kind) == "bilinear":
            return [ast.Modifier("weight.init", "bilinear", filler.span)]
    return []


def _row(layer: CaffeLayer) -> Import:
    row = caffe_type(layer.type).imports
    if row is None:
        raise _not_imported(layer, True)
    return row


def _not_imported(layer: CaffeLayer, with_list: bool) -> CaffeError:
    supported = ", ".join(importable())
    return CaffeError(layer.record.where("type"), f"layer '{layer.name}' has type "
                      f"'{layer.type}', which bwplan does not import",
                      f"supported types: {supported}" if with_list else None)


def _wanted(pairs, params: Mapping[str, int]) -> tuple[list[str], list[str]]:
    """(Caffe layer names that become bwplan layers, names derived from blobs and params)."""
    layers: list[str] = []
    others: list[str] = []
    for built, original in pairs:
        if original is None:
            continue
        row = caffe_type(original.type).imports
        kind = row.kind if row is not None else ""
        if kind in ("inputs", "per_top"):
            others.extend(original.tops)
        elif kind == "layer" and row.second_top is not None:
            layers.append(original.name)
            others.extend(original.tops[1:2])
        elif kind == "layer":
            layers.append(original.name)
    return layers, others + [p for p, n in params.items() if n > 1]


class _Converter:
    def __init__(self, net: CaffeNet, state: CaffeState,
                 input_shapes: Mapping[str, object]) -> None:
        self.net, self.state, self.input_shapes = net, state, input_shapes
        self.pairs = built_layers(net, state.phase)
        self.param_uses: dict[str, int] = {}
        for ls in state.layers:
            for p in ls.params:
                if p.name:
                    self.param_uses[p.name] = self.param_uses.get(p.name, 0) + 1
        self.names = _Names(*_wanted(self.pairs, self.param_uses))
        self.current: dict[str, str] = {}           # Caffe blob -> bwplan tensor
        self.inputs: dict[str, _Input] = {}
        self.params: dict[str, ast.ParamDecl] = {}  # Caffe param name -> its declaration
        self.layers: list[ast.LayerStmt] = []
        self.layer_map: dict[str, tuple[str, ...]] = {}
        self.built_as: list[tuple[str, ...]] = []

    def run(self) -> FlatImport:
        self.check_input_shapes()
        self.check_layers()
        for (built, original), ls in zip(self.pairs, self.state.layers):
            before = len(self.layers)
            if original is None:
                self.layer_map[built.name] = ()
                self.alias(built, built)
                self.built_as.append(())
                continue
            row = _row(original)
            self.layer_map.setdefault(original.name, ())
            kinds = {"inputs": self.data, "layer": self.layer, "per_top": self.per_top,
                     "alias": self.alias}
            kinds[row.kind](original, built, ls, row)
            self.built_as.append(tuple(s.name for s in self.layers[before:]))
        inputs = tuple(self.input_decl(i) for i in self.inputs.values())
        module = ast.Module(self.net.path, inputs + tuple(self.params.values())
                            + tuple(self.layers))
        return FlatImport(module, MappingProxyType(dict(self.layer_map)),
                          tuple(self.built_as))

    # ---- kinds ------------------------------------------------------------------------
    def alias(self, layer: CaffeLayer, built: CaffeLayer, *_) -> None:
        for top in built.tops:
            self.current[top] = self.current[built.bottoms[0]]

    def data(self, layer: CaffeLayer, built: CaffeLayer, ls: LayerState, row: Import) -> None:
        for j, top in enumerate(layer.tops):
            name = self.names.take(top)     # check_data made sure the shape is known
            self.inputs[name] = _Input(name, tuple(ls.tops[j].shape), layer.top_span(j),
                                       batched=j not in caffe_type(layer.type).unbatched_tops)
            self.current[top] = name

    def layer(self, layer: CaffeLayer, built: CaffeLayer, ls: LayerState, row: Import) -> None:
        pre = row.before(layer, self.ctx(ls)) if row.before is not None else None
        args = self.args(layer, built, (0, len(layer.bottoms)))
        if pre is not None:
            first = self.statement(layer, ls, pre, self.names.take(f"{layer.name}_norm"),
                                   args, [])
            args = (ast.Arg(first, False, layer.bottom_span(0)),)
        name = self.statement(layer, ls, row, self.names.take(layer.name, layer=True), args,
                              self.loss_weight(layer, 0))
        if layer.tops:  # a loss layer may leave its top unnamed
            self.current[layer.tops[0]] = name
        second = row.second_top(layer, self.ctx(ls)) if row.second_top is not None else None
        if second is not None and len(layer.tops) > 1:
            top = layer.tops[1]
            self.current[top] = self.statement(layer, ls, second, self.names.take(top),
                                               args, self.loss_weight(layer, 1))

    def statement(self, layer: CaffeLayer, ls: LayerState, row: Import, name: str,
                  args: tuple[ast.Arg, ...], modifiers: list[ast.Modifier]) -> str:
        """One IR layer of `layer` with the Caffe param blobs `row.slots` names."""
        op = row.op_for(layer)
        kwargs = [ast.KwArg(k, v, span) for k, v, span in row.attrs(layer, self.ctx(ls))]
        modifiers = list(modifiers)
        for pid, ps in enumerate(ls.params):
            slot = row.slots[pid] if pid < len(row.slots) else None
            if slot is not None:
                self.param_use(layer, pid, ps, slot, row.stats, kwargs, modifiers)
        if "weight" in row.slots[:1]:
            modifiers += _filler(layer)
        call = ast.Call(op, args, tuple(kwargs), layer.span, layer.record.where("type"))
        self.layers.append(ast.LayerStmt(name, call, tuple(modifiers), layer.span,
                                         layer.record.where("name")))
        self.layer_map[layer.name] += (name,)
        return name

    def per_top(self, layer: CaffeLayer, built: CaffeLayer, ls: LayerState, row: Import) -> None:
        shape = ls.bottoms[0].shape if ls.bottoms else None
        if shape is None:
            raise CaffeError(layer.span, f"{layer.type} layer '{layer.name}' needs the shape "
                             "of its bottom, which is not known",
                             "pass --input-shape for the data blobs")
        try:
            axis, bounds = slice_bounds(layer, tuple(shape))
        except (ValueError, IndexError) as err:
            raise CaffeError(layer.sub("slice_param").span, f"{layer.type} layer "
                             f"'{layer.name}': {err}") from None
        args = self.args(layer, built, (0, 1))
        p = layer.sub("slice_param")
        for j, top in enumerate(layer.tops):
            begin, end = bounds[j]
            kwargs = (ast.KwArg("axis", axis, p.span), ast.KwArg("begin", begin, p.span),
                      ast.KwArg("end", end, p.span))
            name = self.names.take(top)
            call = ast.Call(row.op_for(layer), args, kwargs, layer.span,
                            layer.record.where("type"))
            self.layers.append(ast.LayerStmt(name, call, tuple(self.loss_weight(layer, j)),
                                             layer.span, layer.top_span(j)))
            self.layer_map[layer.name] += (name,)
            self.current[top] = name

    # ---- pieces -----------------------------------------------------------------------
    def args(self, layer: CaffeLayer, built: CaffeLayer, which: tuple[int, int]
             ) -> tuple[ast.Arg, ...]:
        out = []
        for j in range(*which):
            tensor = self.current[built.bottoms[j]]
            cut = bool(layer.propagate_down) and not layer.propagate_down[j]
            out.append(ast.Arg(tensor, cut, layer.bottom_span(j)))
            if tensor in self.inputs:
                self.inputs[tensor].uses.append((layer.type, j))
        return tuple(out)

    def loss_weight(self, layer: CaffeLayer, top: int) -> list[ast.Modifier]:
        if top >= len(layer.loss_weight):
            return []
        w = layer.loss_weight[top]
        if not w and not caffe_type(layer.type).loss:
            return []
        return [ast.Modifier("weight", _number(w), layer.record.where("loss_weight", top))]

    def param_use(self, layer: CaffeLayer, pid: int, ps, slot: str, stats: bool,
                  kwargs: list[ast.KwArg], modifiers: list[ast.Modifier]) -> None:
        shared = bool(ps.name) and self.param_uses.get(ps.name, 0) > 1
        if shared:
            decl = self.params.get(ps.name)
            if decl is None:
                if ps.shape is None:
                    raise CaffeError(ps.span, f"cannot tell the shape of the shared param "
                                     f"'{ps.name}'", "pass --input-shape for the data blobs")
                decl = ast.ParamDecl(self.names.take(ps.name), TensorType("f32", ps.shape),
                                     (), ps.span)
                self.params[ps.name] = decl
            kwargs.append(ast.KwArg(slot, ast.NameRef(decl.name, ps.span), ps.span))
        if stats:
            return  # statistics never train: their multipliers mean nothing to bwplan
        for key, given, own, effective in (("lr", ps.lr_mult_given, ps.lr_mult,
                                            ps.effective_lr_mult),
                                           ("decay", ps.decay_mult_given, ps.decay_mult,
                                            ps.effective_decay_mult)):
            if given:
                value = own
            elif shared and effective != 1.0:
                value = effective   # Caffe updates every use with the owner's multiplier
            else:
                continue
            modifiers.append(ast.Modifier(f"{slot}.{key}", _number(value), ps.span))

    def check_layers(self) -> None:
        """Every layer bwplan cannot import, and every setting it cannot represent, in one
        error: a net from a Caffe fork then needs one round of fixes, not one per layer."""
        errors: list[CaffeError] = []
        listed = False
        for (built, original), ls in zip(self.pairs, self.state.layers):
            if original is None:
                continue
            row = caffe_type(original.type).imports
            if row is None:
                errors.append(_not_imported(original, not listed))
                listed = True
                continue
            try:
                if row.kind == "layer":
                    self.check_layer(original, ls, row)
                elif row.kind == "inputs":
                    self.check_data(original, ls, row)
            except CaffeError as err:
                errors.append(err)
        raise_all(errors)

    def check_layer(self, layer: CaffeLayer, ls: LayerState, row: Import) -> None:
        second = row.second_top(layer, self.ctx(ls)) if row.second_top is not None else None
        if len(layer.tops) > 1 + (second is not None):
            raise CaffeError(layer.top_span(1), f"{layer.type} layer '{layer.name}' has "
                             f"{len(layer.tops)} tops; bwplan imports this type with one top")
        row.op_for(layer)
        row.attrs(layer, self.ctx(ls))
        pre = row.before(layer, self.ctx(ls)) if row.before is not None else None
        if pre is not None:
            pre.attrs(layer, self.ctx(ls))

    def check_data(self, layer: CaffeLayer, ls: LayerState, row: Import) -> None:
        missing = [j for j, t in enumerate(ls.tops) if t.shape is None]
        if not missing:
            return
        if row.unknown_shape is not None:
            raise row.unknown_shape(layer, tuple(layer.tops[j] for j in missing))
        j, top = missing[0], layer.tops[missing[0]]
        raise CaffeError(layer.top_span(j), f"cannot tell the shape of '{top}' from "
                         f"the {layer.type} layer '{layer.name}'",
                         f"pass --input-shape {top}=N,C,H,W (its real shape)")

    def ctx(self, ls: LayerState) -> MapCtx:
        return MapCtx(self.state.phase, tuple(b.shape for b in ls.bottoms),
                      tuple(t.shape for t in ls.tops))

    def check_input_shapes(self) -> None:
        """A shape given for a blob no data layer produces is most likely a typo."""
        data = [top for built, original in self.pairs if original is not None
                and getattr(caffe_type(original.type).imports, "kind", "") == "inputs"
                for top in original.tops]
        for blob in self.input_shapes:
            if blob not in data:
                raise CaffeError(Span.synthetic("--input-shape"), f"--input-shape names "
                                 f"'{blob}', which no data layer produces",
                                 "data blobs: " + (", ".join(data) or "none"))

    def input_decl(self, inp: _Input) -> ast.InputDecl:
        labels_only = bool(inp.uses) and all(j in caffe_type(t).labels for t, j in inp.uses)
        dtype = "i64" if labels_only else "f32"
        grad = self.net.force_backward and dtype == "f32"
        return ast.InputDecl(inp.name, TensorType(dtype, inp.shape), grad, inp.span,
                             inp.batched)


def to_flat_ast(net: CaffeNet, state: CaffeState,
                input_shapes: Mapping[str, object] | None = None) -> FlatImport:
    """The flat AST of `net` as Caffe builds it in `state.phase`, and which bwplan layers
    each layer of `state` became (Splits, inserted or explicit, and data layers map to none).
    """
    return _Converter(net, state, input_shapes or {}).run()
