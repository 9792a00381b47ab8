"""Builds a `Net` from a flat AST Module: resolves names, checks ops and attributes, orders
layers topologically (source order breaks ties), infers shapes, creates parameters and
resolves sharing, and computes each use's lr and decay multipliers.

Errors are collected and raised together, sorted by position; a layer whose inputs failed
is skipped rather than reported again.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import networkx as nx

from bwplan import ops as registry
from bwplan.errors import (AttrError, BwError, CycleError, ParamError, Redefined, ShapeError,
                           UnknownName, raise_all)
from bwplan.frontend import ast
from bwplan.gc_pause import cyclic_gc_paused
from bwplan.ir import verify
from bwplan.ir.net import (CHOSEN_INITS, Edge, Input, Layer, Net, Param, ParamUse,
                           make_graph)
from bwplan.ir.rows import add_rows, parse_rows, rows_problem
from bwplan.ir.types import MAX_EXTENT, TensorType
from bwplan.ops.opdef import REQUIRED, AttrSpec, OpCtx, OpDef
from bwplan.source import Span

_LAYER_SETTINGS = ("frozen", "shares", "lr", "decay", "weight")
_SLOT_SETTINGS = ("lr", "decay")


@cyclic_gc_paused
def build(module: ast.Module, name: str | None = None) -> Net:
    net = _Builder(module).run(name or Path(module.path).stem)
    if verify.enabled():
        verify.verify_net(net, "builder")
    return net


@dataclass
class _Binding:
    """Which parameter each slot of a layer uses, before shapes are known."""

    params: dict[str, str]          # slot -> parameter name
    spans: dict[str, Span]


class _Builder:
    def __init__(self, module: ast.Module) -> None:
        self.module = module
        self.errors: list[BwError] = []
        self.inputs: dict[str, ast.InputDecl] = {}
        self.param_decls: dict[str, ast.ParamDecl] = {}
        self.stmts: dict[str, ast.LayerStmt] = {}
        self.order: dict[str, int] = {}
        self.chosen_inits: dict[str, tuple[str, Span]] = {}   # param -> init=, where

    # ---- 1. names ------------------------------------------------------------------
    def collect(self) -> None:
        first: dict[str, Span] = {}
        for i, stmt in enumerate(self.module.statements):
            name = stmt.name
            if name in first:
                what = {ast.InputDecl: "input", ast.ParamDecl: "param",
                        ast.LayerStmt: "layer"}.get(type(stmt), "name")
                span = stmt.name_span if isinstance(stmt, ast.LayerStmt) else stmt.span
                self.errors.append(Redefined(span, what, name, first[name]))
                continue
            first[name] = stmt.span
            if isinstance(stmt, ast.InputDecl):
                self.inputs[name] = stmt
            elif isinstance(stmt, ast.ParamDecl):
                self.param_decls[name] = stmt
            elif isinstance(stmt, ast.LayerStmt):
                self.stmts[name] = stmt
                self.order[name] = i

    def check_references(self) -> None:
        tensors = set(self.inputs) | set(self.stmts)
        for stmt in self.stmts.values():
            for arg in stmt.call.args:
                if arg.name not in tensors:
                    what = "param used as a tensor" if arg.name in self.param_decls else "layer"
                    self.errors.append(UnknownName(arg.span, what, arg.name, tensors))
            if registry.get(stmt.call.op) is None:
                self.errors.append(UnknownName(stmt.call.op_span, "op", stmt.call.op,
                                               registry.OPS))

    def check_param_settings(self) -> None:
        """`param` declarations take lr= and decay=, finite and not negative."""
        for decl in self.param_decls.values():
            for m in decl.modifiers:
                if m.key not in _SLOT_SETTINGS:
                    self.errors.append(UnknownName(m.span, "setting of a param", m.key,
                                                   _SLOT_SETTINGS))
                elif (not isinstance(m.value, (int, float)) or isinstance(m.value, bool)
                      or not math.isfinite(m.value) or m.value < 0):
                    self.errors.append(AttrError(m.span, f"'{m.key}' must be a finite, "
                                                 "non-negative number"))

    # ---- 2. order ------------------------------------------------------------------
    def topological(self) -> list[str]:
        """The layers in topological order of their dependency graph, source order
        breaking ties, so the order is deterministic and matches the text whenever the
        text is already in order."""
        order = self.order
        if all(order.get(a.name, -1) < order[name] for name, stmt in self.stmts.items()
               for a in stmt.call.args):
            # every layer reads only inputs and earlier layers: source order is the
            # lexicographical topological order (the smallest ready layer is always next)
            return list(self.stmts)
        deps = nx.DiGraph()
        deps.add_nodes_from(self.stmts)
        deps.add_edges_from((a.name, name) for name, stmt in self.stmts.items()
                            for a in stmt.call.args if a.name in self.stmts)
        try:
            return list(nx.lexicographical_topological_sort(deps, key=self.order.__getitem__))
        except nx.NetworkXUnfeasible:
            pass
        stuck = deps.copy()      # what Kahn's algorithm cannot order: cycles and below
        while True:
            free = [n for n, d in stuck.in_degree() if d == 0]
            if not free:
                break
            stuck.remove_nodes_from(free)
        cycle = [u for u, _ in nx.find_cycle(stuck)]
        start = min(cycle, key=lambda n: self.order[n])
        k = cycle.index(start)
        cycle = cycle[k:] + cycle[:k]
        raise CycleError(self.stmts[start].name_span,
                         "layers feed each other: " + " -> ".join(cycle + [start]))

    # ---- 3. layers -----------------------------------------------------------------
    def run(self, net_name: str) -> Net:
        self.collect()
        self.check_references()
        self.check_param_settings()
        raise_all(self.errors)
        order = self.topological()
        bindings = self.bind_params()
        raise_all(self.errors)

        for decl in (*self.inputs.values(), *self.param_decls.values()):
            bad = [d for d in decl.type.shape if not 1 <= d <= MAX_EXTENT]
            if bad:
                self.errors.append(ShapeError(decl.span, f"'{decl.name}' has dimension "
                                              f"{bad[0]}: dimensions are 1 to {MAX_EXTENT}"))
        raise_all(self.errors)
        inputs = tuple(Input(d.name, d.type, d.grad, d.span, d.batched)
                       for d in self.inputs.values())
        for d in self.inputs.values():
            if d.grad and not d.type.is_float:
                self.errors.append(ShapeError(d.span, f"input '{d.name}' is {d.type.dtype}: "
                                              "only floating-point inputs can take a gradient"))
        types: dict[str, TensorType] = {i.name: i.type for i in inputs}
        params: dict[str, Param] = {}
        first_use: dict[str, Span] = {}
        layers: list[Layer] = []
        for name in order:
            stmt = self.stmts[name]
            if any(a.name not in types for a in stmt.call.args):
                continue  # an input failed; its error is already reported
            try:
                layer = self.layer(stmt, types, bindings[name], params, first_use)
            except BwError as err:
                self.errors.append(err)
                continue
            types[name] = layer.out
            layers.append(layer)
        self.check_shared_decay(layers)
        for pname, decl in self.param_decls.items():
            if pname not in params:
                params[pname] = Param(pname, decl.type, True, decl.span)
        raise_all(self.errors)
        layers_t = tuple(layers)
        return Net(net_name, self.module.path, inputs, MappingProxyType(params), layers_t,
                   make_graph(inputs, layers_t))

    def check_shared_decay(self, layers: list[Layer]) -> None:
        """Weight decay applies to a parameter once per step, not once per use, so every
        use of a shared parameter must agree on its decay multiplier."""
        first: dict[str, tuple[float, ParamUse]] = {}
        for layer in layers:
            for use in layer.params:
                if use.param not in first:
                    first[use.param] = (use.decay_mult, use)
                elif first[use.param][0] != use.decay_mult:
                    other = first[use.param][1]
                    self.errors.append(ParamError(
                        use.span, f"shared param '{use.param}' has decay {use.decay_mult:g} "
                        f"here but {other.decay_mult:g} at {other.span}",
                        "weight decay applies to the parameter once, so its uses must agree; "
                        "set decay= on its `param` declaration"))

    def bind_params(self) -> dict[str, _Binding]:
        """Resolve `weight=NAME` bindings and `shares LAYER` (which may chain)."""
        bindings: dict[str, _Binding] = {}
        resolving: set[str] = set()

        def resolve(name: str) -> _Binding:
            if name in bindings:
                return bindings[name]
            stmt = self.stmts[name]
            op = registry.get(stmt.call.op)
            slots = [p.name for p in op.params] if op else []
            binding = _Binding({}, {})
            shares = [m for m in stmt.modifiers if m.key == "shares"]
            if shares:
                mod = shares[-1]
                other = mod.value.name if isinstance(mod.value, ast.NameRef) else str(mod.value)
                if other not in self.stmts:
                    self.errors.append(UnknownName(mod.value.span if isinstance(
                        mod.value, ast.NameRef) else mod.span, "layer", other, self.stmts))
                elif other in resolving:
                    self.errors.append(ParamError(mod.span, f"'{name}' and '{other}' share "
                                                  "parameters with each other in a circle"))
                elif self.stmts[other].call.op != stmt.call.op:
                    self.errors.append(ParamError(
                        mod.span, f"'{name}' ({stmt.call.op}) cannot share the parameters of "
                        f"'{other}' ({self.stmts[other].call.op})"))
                else:
                    resolving.add(name)
                    theirs = resolve(other)
                    resolving.discard(name)
                    binding.params.update(theirs.params)
                    binding.spans.update({k: mod.span for k in theirs.params})
            for kw in stmt.call.kwargs:
                if kw.key in slots and isinstance(kw.value, ast.NameRef):
                    if kw.value.name not in self.param_decls:
                        self.errors.append(UnknownName(kw.value.span, "param", kw.value.name,
                                                       self.param_decls))
                        continue
                    binding.params[kw.key] = kw.value.name
                    binding.spans[kw.key] = kw.span
            for slot in slots:
                binding.params.setdefault(slot, f"{name}.{slot}")
                binding.spans.setdefault(slot, stmt.span)
            bindings[name] = binding
            return binding

        for name in self.stmts:
            resolve(name)
        return bindings

    def layer(self, stmt: ast.LayerStmt, types: dict[str, TensorType], binding: _Binding,
              params: dict[str, Param], first_use: dict[str, Span]) -> Layer:
        op = registry.get(stmt.call.op)
        assert op is not None
        if not op.arity_ok(len(stmt.call.args)):
            want = (f"at least {len(op.ports)}" if op.ports and op.ports[-1].variadic
                    else str(len(op.ports)))
            names = ", ".join(p.name + ("..." if p.variadic else "") for p in op.ports)
            raise ShapeError(stmt.call.span, f"{op.name} takes {want} tensor input(s) "
                             f"({names}), {len(stmt.call.args)} given")
        attrs = self.attrs(op, stmt)
        in_types = tuple(types[a.name] for a in stmt.call.args)
        ctx = OpCtx(attrs, in_types)
        try:
            out = op.infer(ctx)
        except (ValueError, KeyError, IndexError, ZeroDivisionError) as err:
            detail = err.args[0] if err.args else type(err).__name__
            shapes = ", ".join(f"{a.name}: {t}" for a, t in zip(stmt.call.args, in_types))
            raise ShapeError(stmt.call.span, f"{op.name}: {detail}",
                             f"input shapes are {shapes}") from None
        ctx = OpCtx(attrs, in_types, out)
        settings = self.settings(op, stmt, attrs)
        frozen = settings.frozen is not None
        written_attrs = attrs
        if frozen and op.on_freeze is not None:
            attrs = MappingProxyType(dict(op.on_freeze(attrs)))
        uses = []
        for slot in op.param_slots(attrs):
            pname = binding.params[slot.name]
            ptype = TensorType(out.dtype if out.is_float else "f32", tuple(slot.shape(ctx)))
            span = binding.spans[slot.name]
            decl = self.param_decls.get(pname)
            if decl is not None and decl.type != ptype:
                raise ParamError(span, f"param '{pname}' is declared {decl.type} "
                                 f"(at {decl.span}) but {stmt.name}.{slot.name} needs {ptype}")
            if pname in params and params[pname].type != ptype:
                raise ParamError(span, f"shared param '{pname}' is {params[pname].type} "
                                 f"(first used at {first_use[pname]}) but "
                                 f"{stmt.name}.{slot.name} needs {ptype}")
            if pname not in params:
                params[pname] = Param(pname, ptype, slot.learnable,
                                      decl.span if decl else stmt.span, slot.init)
                first_use[pname] = span
            if slot.name in settings.inits:
                params[pname] = self.chosen_init(params[pname], *settings.inits[slot.name])
            if slot.name in settings.frozen_rows:
                text, where = settings.frozen_rows[slot.name]
                rows = parse_rows(where, f"{stmt.name}.{slot.name}.frozen_rows", text,
                                  ptype.shape[0])
                params[pname] = replace(params[pname], frozen_rows=add_rows(
                    where, f"{stmt.name}.{slot.name}.frozen_rows",
                    params[pname].frozen_rows, rows, ptype.shape[0]))
            uses.append(settings.use(pname, slot.name, slot.learnable, decl, span))
        loss_weight = settings.loss_weight
        if loss_weight is None:
            loss_weight = 1.0 if op.role == "loss" else 0.0
        elif op.role == "metric":
            raise AttrError(settings.weight_span, f"{op.name} is a metric and is not "
                            "differentiable: it cannot carry a loss weight")
        edges = tuple(Edge(a.name, stmt.name, i, a.stop_gradient, a.span)
                      for i, a in enumerate(stmt.call.args))
        frozen_by = f"frozen at {settings.frozen}" if frozen else ""
        return Layer(stmt.name, op.name, attrs, edges, tuple(uses), out, float(loss_weight),
                     frozen, stmt.span, frozen_by, written_attrs)

    def attrs(self, op: OpDef, stmt: ast.LayerStmt) -> MappingProxyType:
        values: dict[str, Any] = {}
        slots = {p.name for p in op.params}
        for kw in stmt.call.kwargs:
            if kw.key in slots and isinstance(kw.value, ast.NameRef):
                continue  # a parameter binding, handled by bind_params
            spec = op.attr(kw.key)
            if spec is None:
                raise UnknownName(kw.span, f"attribute of {op.name}", kw.key,
                                  [a.name for a in op.attrs] + sorted(slots))
            if kw.key in values:
                raise AttrError(kw.span, f"attribute '{kw.key}' given twice")
            values[kw.key] = _coerce(spec, kw)
            problem = spec.problem(values[kw.key])
            if problem:
                raise AttrError(kw.span, f"{op.name}: {problem}")
        for spec in op.attrs:
            if spec.name not in values:
                if spec.default is REQUIRED:
                    raise AttrError(stmt.call.span, f"{op.name} needs the attribute "
                                    f"'{spec.name}'" + (f" ({spec.doc})" if spec.doc else ""))
                values[spec.name] = spec.default
        return MappingProxyType(values)

    def chosen_init(self, param: Param, init: str, span: Span) -> Param:
        """`SLOT.init=` on a use: the parameter's initial value (one per parameter)."""
        shape = param.type.shape
        if init == "bilinear" and (len(shape) != 4 or shape[2] != shape[3]):
            raise AttrError(span, f"init=\"bilinear\" needs a square 4-D kernel; "
                            f"'{param.name}' is {param.type}")
        chosen = self.chosen_inits.setdefault(param.name, (init, span))
        if chosen[0] != init:
            raise AttrError(span, f"'{param.name}' is shared and starts as {chosen[0]} "
                            f"(init= at {chosen[1]}), not {init}")
        return replace(param, init=init)

    def settings(self, op: OpDef, stmt: ast.LayerStmt, attrs) -> "_Settings":
        s = _Settings(lr_scale=stmt.lr_scale, decay_scale=stmt.decay_scale)
        slots = {p.name for p in op.param_slots(attrs)}
        for m in stmt.modifiers:
            key = m.key
            if key == "frozen":
                s.frozen = m.span
                continue
            if key == "shares":
                continue
            if key.endswith(".init"):
                slot = key[:-len(".init")]
                if slot not in slots:
                    raise UnknownName(m.span, f"param slot of {op.name}", slot, slots)
                if m.value not in CHOSEN_INITS:
                    raise AttrError(m.span, f"'{key}' must be one of " +
                                    ", ".join(f'"{v}"' for v in CHOSEN_INITS))
                s.inits[slot] = (m.value, m.span)
                continue
            if key.endswith(".frozen_rows"):
                slot = key[:-len(".frozen_rows")]
                if slot not in slots:
                    raise UnknownName(m.span, f"param slot of {op.name}", slot, slots)
                if not isinstance(m.value, str):
                    raise AttrError(m.span, f"'{key}' needs a string of ranges, e.g. "
                                    f'{key}="0:1000"')
                problem = rows_problem(op.name, slot, attrs)
                if problem:
                    raise AttrError(m.span, problem)
                s.frozen_rows[slot] = (m.value, m.span)
                continue
            value = m.value
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise AttrError(m.span, f"'{key}' needs a number")
            if not math.isfinite(value):
                raise AttrError(m.span, f"'{key}' must be a finite number, not {value}")
            if key == "weight":
                s.loss_weight, s.weight_span = float(value), m.span
            elif key in ("lr", "decay"):
                setattr(s, key, (float(value), m.span))
            elif "." in key and key.rsplit(".", 1)[1] in _SLOT_SETTINGS:
                slot, field = key.rsplit(".", 1)
                if slot not in slots:
                    raise UnknownName(m.span, f"param slot of {op.name}", slot, slots)
                s.per_slot.setdefault(slot, {})[field] = (float(value), m.span)
            else:
                raise UnknownName(m.span, "setting", key,
                                  list(_LAYER_SETTINGS[:5]) + [f"{x}.lr" for x in slots])
            if key in ("lr", "decay") or key.endswith((".lr", ".decay")):
                if float(value) < 0:
                    raise AttrError(m.span, f"'{key}' must not be negative")
        return s


@dataclass
class _Settings:
    frozen: Span | None = None
    loss_weight: float | None = None
    weight_span: Span | None = None
    lr: tuple[float, Span] | None = None
    decay: tuple[float, Span] | None = None
    lr_scale: float = 1.0
    decay_scale: float = 1.0
    per_slot: dict = None  # slot -> {"lr"/"decay": (value, span)}
    frozen_rows: dict = None  # slot -> (ranges as written, span)
    inits: dict = None  # slot -> (initial value's name, span)

    def __post_init__(self) -> None:
        self.per_slot = {}
        self.frozen_rows = {}
        self.inits = {}

    def use(self, pname: str, slot: str, learnable: bool, decl: ast.ParamDecl | None,
            span: Span) -> ParamUse:
        if not learnable:
            return ParamUse(pname, slot, 0.0, 0.0, span, "statistics, never trained", 0.0)
        lr, decay, origin = 1.0, 1.0, "default"
        if decl is not None:
            for m in decl.modifiers:
                if m.key == "lr":
                    lr, origin = float(m.value), f"lr={m.value} on param at {m.span}"
                elif m.key == "decay":
                    decay = float(m.value)
        if self.lr is not None:
            lr, origin = self.lr[0], f"lr={_num(self.lr[0])} at {self.lr[1]}"
        if self.decay is not None:
            decay = self.decay[0]
        slot_set = self.per_slot.get(slot, {})
        if "lr" in slot_set:
            lr, origin = slot_set["lr"][0], f"{slot}.lr={_num(slot_set['lr'][0])} at " \
                                            f"{slot_set['lr'][1]}"
        if "decay" in slot_set:
            decay = slot_set["decay"][0]
        if self.lr_scale != 1.0:
            lr *= self.lr_scale
            origin += f", scaled by the block's lr={_num(self.lr_scale)}"
        decay *= self.decay_scale
        written, frozen_by = lr, ""
        if self.frozen is not None:
            frozen_by = f"at {self.frozen}"
            lr, origin = 0.0, f"frozen {frozen_by}"
        return ParamUse(pname, slot, lr, decay, span, origin, written, frozen_by)


def _num(x: float) -> str:
    return f"{x:g}"


def _coerce(spec: AttrSpec, kw: ast.KwArg) -> Any:
    v = kw.value
    kind = spec.kind
    isint = isinstance(v, int) and not isinstance(v, bool)
    if kind == "int" and isint:
        return v
    if kind == "float" and (isint or isinstance(v, float)):
        return float(v)
    if kind == "bool" and isinstance(v, bool):
        return v
    if kind == "ints":
        if isint:
            return v
        if isinstance(v, tuple) and v and all(isinstance(i, int) and not isinstance(i, bool)
                                              for i in v):
            return tuple(v)
    if kind == "floats":
        if isint or isinstance(v, float):
            return (float(v),)
        if isinstance(v, tuple) and all(isinstance(i, (int, float)) and not isinstance(i, bool)
                                        for i in v):
            return tuple(float(i) for i in v)
    if kind == "choice":
        name = v.name if isinstance(v, ast.NameRef) else v if isinstance(v, str) else \
            str(v).lower() if isinstance(v, bool) else None   # a choice of true/false/auto
        if name in spec.choices:
            return name
        raise AttrError(kw.span, f"'{spec.name}' must be one of {', '.join(spec.choices)}")
    if isinstance(v, ast.NameRef):
        raise UnknownName(v.span, "value", v.name, ())
    want = {"int": "an integer", "float": "a number", "bool": "true or false",
            "ints": "an integer or a list of integers",
            "floats": "a number or a list of numbers"}.get(kind, kind)
    raise AttrError(kw.span, f"'{spec.name}' must be {want}")
