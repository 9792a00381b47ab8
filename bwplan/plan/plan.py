"""`make_plan`: from a Net to a Plan, every decision with its reason.

Example (the printed table of `bwplan explain`):

    input x : f32[8, 16]
    input y : i64[8]
    a = linear(x, out=16) frozen
    b = relu(a)
    c = linear(b, out=4)
    loss = softmax_cross_entropy(c, y)

    layer  op                     fwd  dX                 dW                    keeps
    a      linear                 yes  x: -              weight: -, bias: -      -
    b      relu                   yes  a: -              -                       -
    c      linear                 yes  b: - (nothing..)  weight: yes, bias: yes  b
    loss   softmax_cross_entropy  yes  c: yes, y: -      -                       loss:prob, y

Nothing upstream of `b` trains, so no dX runs below `c`, and only `b` (read by c's dW) and
the loss's probabilities and labels are kept for the backward.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import cached_property
from types import MappingProxyType

from bwplan import ops as registry
from bwplan.gc_pause import cyclic_gc_paused
from bwplan.ir import verify
from bwplan.ir.net import Net
from bwplan.plan import grad_flow
from bwplan.plan.components import Value, dw_flops, dx_rule, op_ctx, values_read
from bwplan.plan.decisions import Decision, Finding, Reason, headline
from bwplan.plan.grad_flow import Flow
from bwplan.plan.memory import peak_bytes
from bwplan.plan.modes import LayerMode, attach_modes
from bwplan.plan.prefix import FrozenPrefix, frozen_prefix
from bwplan.plan.updates import ParamUpdate, param_updates
from bwplan.records import record


@record
class LayerPlan:
    name: str
    op: str
    forward: Decision
    dx: tuple[Decision, ...]        # one per input edge, in argument order
    dw: tuple[Decision, ...]        # one per parameter use, in slot order
    keeps: tuple[str, ...]          # forward values this layer's planned backward reads
    fwd_flops: int
    bwd_flops: int                  # planned backward FLOPs
    full_bwd_flops: int             # backward FLOPs with every parameter trainable
    # which components the unpruned backward (every parameter trainable) runs
    full_dx: tuple[bool, ...] = ()
    full_dw: tuple[bool, ...] = ()
    # the one reason shown for this layer (decisions.headline), chosen here once
    reason: Reason | None = None
    # the layer's running mode (plan/modes.py: batchnorm's statistics and scale/shift)
    mode: LayerMode | None = None

    @property
    def has_backward(self) -> bool:
        return any(d.needed for d in self.dx) or any(d.needed for d in self.dw)


@record
class KeptValue:
    name: str
    kind: str                       # "activation" | "input" | "aux"
    nbytes: int
    readers: tuple[str, ...]        # layers whose backward reads it


def _no_peak(prune: bool) -> int:
    return 0


@dataclass(frozen=True)  # no slots: the peak figures are cached properties
class Summary:
    fwd_flops: int
    full_bwd_flops: int
    planned_bwd_flops: int
    full_kept_bytes: int
    planned_kept_bytes: int
    full_dx: int
    planned_dx: int
    full_dw: int
    planned_dw: int
    allreduce_bytes: int
    # the peak of the lowered program, pruned or not: read from its buffers when first
    # asked for (re-planning for a new frozen set never asks, so it never lowers twice)
    peak_of: Callable[[bool], int] = field(default=_no_peak, repr=False, compare=False)

    @cached_property
    def full_peak_bytes(self) -> int:
        return self.peak_of(False)

    @cached_property
    def planned_peak_bytes(self) -> int:
        return self.peak_of(True)


@dataclass(frozen=True)
class Plan:
    net: Net
    layers: tuple[LayerPlan, ...]
    kept: Mapping[str, KeptValue]
    full_kept: Mapping[str, KeptValue]
    summary: Summary
    prefix: FrozenPrefix
    updates: tuple[ParamUpdate, ...]
    allreduce: tuple[tuple[str, int], ...]
    findings: tuple[Finding, ...]   # from plan/pitfalls.py, on the finished plan
    flow: Flow
    # what a training step returns and holds to its end: its losses and metrics, and every
    # weighted layer, in topological order
    outputs: tuple[str, ...] = ()
    _programs: dict = field(init=False, default_factory=dict, repr=False, compare=False)
    # lowering's memo of each backward component's buffer bindings, which the pruned and
    # the full program share (given to lower/schedule.py `lower`)
    _bindings: dict = field(init=False, default_factory=dict, repr=False, compare=False)

    def layer(self, name: str) -> LayerPlan:
        return self.layers[self.net.position(name)]

    def program(self, prune: bool = True):
        """The lowered Program of this plan (lower/schedule.py), lowered once and kept."""
        if prune not in self._programs:
            from bwplan.lower.schedule import lower  # lowering reads the plan it is given
            self._programs[prune] = lower(self, prune, self._bindings)
        return self._programs[prune]

    @cached_property
    def backward_graph(self):
        """The minimal backward subgraph (a frozen networkx.DiGraph; see
        plan/backward_graph.py for its attributes), built from the decisions on first use."""
        from bwplan.plan.backward_graph import backward_subgraph
        return backward_subgraph(self)


def _trains(use) -> bool:
    return use.lr_mult > 0


@cyclic_gc_paused
def make_plan(net: Net) -> Plan:
    carries = grad_flow.edges_carrying_gradient(net)   # the same for both walks
    flow = grad_flow.analyse(net, _trains, carries)
    full_flow = grad_flow.analyse(net, lambda u: net.params[u.param].learnable, carries)

    layer_plans = []
    kept: dict[str, tuple[Value, list[str]]] = {}
    full_kept: dict[str, tuple[Value, list[str]]] = {}
    dx_edges, full_dx_edges = [], []
    dw_needed: dict[tuple[str, str], bool] = {}
    fwd_flops: dict[str, int] = {}
    for layer in net.layers:
        op = registry.OPS[layer.op]
        ctx = op_ctx(net, layer)
        fwd_flops[layer.name] = op.flops(ctx)
        planned_cost = full_cost = 0
        keeps: list[str] = []

        reads: dict[int, tuple[Value, ...]] = {}   # by id(rule): for both tables

        def run(rule, table, who):
            values = reads.get(id(rule))
            if values is None:
                values = reads[id(rule)] = values_read(net, layer, rule, ctx)
            for value in values:
                entry = table.setdefault(value.name, (value, []))
                if who not in entry[1]:
                    entry[1].append(who)
                if table is kept and value.name not in keeps:
                    keeps.append(value.name)

        dx, full_dx, full_dw = [], [], []
        for edge in layer.inputs:
            decision = _dx_decision(net, flow, edge, op)
            dx.append(decision)
            rule = dx_rule(op, edge.index)
            if decision.needed:
                run(rule, kept, layer.name)
                planned_cost += rule.flops(ctx)
                dx_edges.append((layer.name, edge.src))
            full_dx.append(carries[layer.name, edge.index]
                           and full_flow.down[edge.dst] is not None
                           and full_flow.up[edge.src] is not None)
            if full_dx[-1]:
                run(rule, full_kept, layer.name)
                full_cost += rule.flops(ctx)
                full_dx_edges.append((layer.name, edge.src))
        dw = []
        for use in layer.params:
            decision = _dw_decision(net, flow, layer.name, use)
            dw.append(decision)
            dw_needed[(layer.name, use.slot)] = decision.needed
            rule = op.grad_for(use.slot)
            if decision.needed:
                run(rule, kept, layer.name)
                planned_cost += dw_flops(net, layer, use.slot, rule, ctx)
            full_dw.append(net.params[use.param].learnable
                           and full_flow.down[layer.name] is not None)
            if full_dw[-1]:
                run(rule, full_kept, layer.name)
                full_cost += rule.flops(ctx)
        forward = _fwd_decision(flow, layer.name)
        layer_plans.append(LayerPlan(layer.name, layer.op, forward, tuple(dx), tuple(dw),
                                     tuple(keeps), fwd_flops[layer.name], planned_cost,
                                     full_cost, tuple(full_dx), tuple(full_dw),
                                     headline(forward, dx, dw)))

    layer_plans = attach_modes(net, layer_plans)
    outputs = tuple(l.name for l in net.layers if flow.used[l.name] is not None and (
        l.loss_weight != 0 or registry.OPS[l.op].role != "layer"))
    kept_values = _freeze_kept(kept)
    full_values = _freeze_kept(full_kept)
    updates = param_updates(net, dw_needed)
    # a partly frozen parameter sends only its trainable rows
    allreduce = tuple((u.param, u.sent_bytes) for u in updates
                      if any(t.computed for t in u.terms))
    summary = Summary(
        fwd_flops=sum(fwd_flops.values()),
        full_bwd_flops=sum(p.full_bwd_flops for p in layer_plans),
        planned_bwd_flops=sum(p.bwd_flops for p in layer_plans),
        full_kept_bytes=sum(v.nbytes for v in full_values.values()),
        planned_kept_bytes=sum(v.nbytes for v in kept_values.values()),
        full_dx=len(full_dx_edges), planned_dx=len(dx_edges),
        full_dw=sum(sum(p.full_dw) for p in layer_plans),
        planned_dw=sum(dw_needed.values()),
        allreduce_bytes=sum(b for _, b in allreduce),
        peak_of=lambda prune: peak_bytes(final[0].program(prune)),
    )
    final: list[Plan] = []
    prefix = frozen_prefix(net, _trains, fwd_flops)
    plan = Plan(net, tuple(layer_plans), kept_values, full_values, summary, prefix, updates,
                allreduce, (), flow, outputs)
    from bwplan.plan.pitfalls import find_pitfalls  # the checks read the finished plan
    plan = replace(plan, findings=find_pitfalls(plan))
    final.append(plan)
    if verify.enabled():
        verify.verify_plan(plan)
    return plan


def _freeze_kept(table) -> Mapping[str, KeptValue]:
    return MappingProxyType({name: KeptValue(v.name, v.kind, v.nbytes, tuple(readers))
                             for name, (v, readers) in table.items()})


# ---- decisions ---------------------------------------------------------------------------
def _fwd_decision(flow: Flow, name: str) -> Decision:
    used = flow.used[name]
    if used is None:
        return Decision.no("fwd_unused", "its output reaches no loss and no metric: a "
                           "training step skips it (forward() still computes it)")
    kind, target = used.kind, used.target
    if kind == "loss":
        text = "it is a loss" if target == name else f"it feeds the loss {target}"
        return Decision.yes("fwd_loss", text)
    text = "it is a metric" if target == name else f"it feeds the metric {target}"
    return Decision.yes("fwd_metric", text)


def _dx_decision(net: Net, flow: Flow, edge, op) -> Decision:
    """The decision on the dX along `edge` into a layer of op `op`."""
    port = op.port_for(edge.index)
    src, dst = edge.src, edge.dst
    if not port.differentiable:
        return Decision.no("dx_not_differentiable",
                           f"{op.name} is not differentiable with respect to its "
                           f"'{port.name}' input")
    src_type = net.tensor_type(src)
    if not src_type.is_float:
        return Decision.no("dx_integer", f"{src} is {src_type.dtype}: integer tensors take "
                           "no gradient")
    if edge.stop_gradient:
        return Decision.no("dx_stop_gradient", f"the edge {src} -> {dst} has stop_gradient "
                           f"({edge.span})", (src, dst))
    if flow.down[dst] is None:
        return Decision.no("dx_no_gradient_above", f"the output of {dst} reaches no loss "
                           "along a differentiable path")
    if flow.up[src] is None:
        if net.input(src) is not None:
            return Decision.no("dx_data_input", f"{src} is a data input that does not ask "
                               "for its gradient")
        return Decision.no("dx_nothing_upstream_trains", f"nothing upstream of {src} trains")
    # `via` names the ends of the proof; `explain --why` prints the whole path
    trained, loss = flow.source[src], flow.loss[dst]
    # the witness is a parameter that trains, or a data input that asks for its gradient
    wants = f"{trained} asks for its gradient" if net.input(trained) is not None \
        else f"{trained} trains"
    return Decision.yes("dx_flows", f"{wants} upstream of {src}, and "
                        f"{_reaches(dst, loss)}", (trained, src, dst, loss))


def _dw_decision(net: Net, flow: Flow, layer_name: str, use) -> Decision:
    param = net.params[use.param]
    if not param.learnable:
        return Decision.no("dw_statistics", f"{use.param} holds running statistics, which "
                           "gradients never train")
    if use.lr_mult == 0:
        if use.frozen_by:
            return Decision.no("dw_frozen", f"{use.param} is {use.origin}")
        return Decision.no("dw_lr_zero", f"{use.param} has lr_mult 0 ({use.origin})")
    if flow.down[layer_name] is None:
        return Decision.no("dw_no_gradient_above", f"the output of {layer_name} reaches no "
                           "loss along a differentiable path")
    loss = flow.loss[layer_name]
    shared = len(net.uses_of(use.param)) > 1
    text = f"{use.param} trains (lr_mult {use.lr_mult:g}) and {_reaches(layer_name, loss)}"
    if shared:
        text += f"; shared: this use's gradient is scaled by {use.lr_mult:g}"
    return Decision.yes("dw_trains", text, (use.param, layer_name, loss))


def _reaches(name: str, loss: str) -> str:
    if name == loss:
        return f"{name} is a loss"
    # a loss layer named "loss" would read "reaches the loss loss"
    return f"{name} reaches the loss" if loss == "loss" else f"{name} reaches the loss {loss}"
