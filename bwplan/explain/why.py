"""`bwplan explain --why NAME`: the chain of facts behind every decision about one layer,
input or parameter: which trainable parameter it leads to, which loss it reaches, and which
edge or freeze cuts it, with source positions. Lines longer than `width` (the CLI's 100
columns unless `--wide`) wrap as the table's do: between words, a chain of names between
its arrows, each continuation 4 columns deeper than its line."""
from __future__ import annotations

from collections import deque

from bwplan import ops as registry
from bwplan.errors import UnknownName
from bwplan.explain.table import _wrap
from bwplan.plan.grad_flow import path_down, path_up
from bwplan.plan.plan import Plan
from bwplan.source import Span

_LIMIT = 8


def render_why(plan: Plan, name: str, width: int | None = None) -> str:
    net = plan.net
    if net.has_layer(name):
        lines = _layer(plan, name)
    elif name in net.params:
        lines = _param(plan, name)
    elif net.input(name) is not None:
        lines = _input(plan, name)
    else:
        raise UnknownName(Span.synthetic("--why"), "layer, input or param", name,
                          net.tensor_names() + list(net.params))
    if width is not None:
        lines = [part for line in lines
                 for part in _wrap(line, width, len(line) - len(line.lstrip(" ")) + 4)]
    return "\n".join(lines) + "\n"


def _arrow(names) -> str:
    return " -> ".join(names)


def _gradient_facts(plan: Plan, tensor: str) -> list[str]:
    """Why `tensor` does or does not receive a gradient."""
    flow = plan.flow
    out = []
    if flow.down.get(tensor) is not None:
        out.append(f"  reaches a loss: {_arrow(path_down(flow, tensor))}")
    else:
        out.append("  reaches no loss along a differentiable path:")
        out.extend("    " + line for line in _why_no_loss(plan, tensor))
    if flow.up.get(tensor) is not None:
        out.append(f"  trainable upstream: {_arrow(path_up(flow, tensor))}")
    else:
        out.append("  nothing upstream trains:")
        out.extend("    " + line for line in _why_nothing_trains(plan, tensor))
    return out


def _dx_of(plan: Plan, edge):
    """The plan's decision about the dX along `edge`."""
    return plan.layer(edge.dst).dx[edge.index]


# dX skips that say the edge itself carries no gradient, whatever trains
_CUT = ("dx_stop_gradient", "dx_not_differentiable", "dx_integer")


def _why_no_loss(plan: Plan, tensor: str) -> list[str]:
    """Per consumer, the plan's reason its edge brings no gradient back to `tensor`."""
    net = plan.net
    consumers = net.consumers(tensor)
    if not consumers:
        return [f"{tensor} has no consumers and is not a loss"]
    lines = []
    for edge in consumers[:_LIMIT]:
        code = _dx_of(plan, edge).reason.code
        if code == "dx_stop_gradient":
            lines.append(f"{tensor} -> {edge.dst}: stop_gradient at {edge.span}")
        elif code == "dx_not_differentiable":
            port = registry.OPS[net.layer(edge.dst).op].port_for(edge.index)
            lines.append(f"{tensor} -> {edge.dst}: {net.layer(edge.dst).op} is not "
                         f"differentiable in '{port.name}'")
        elif plan.flow.down.get(edge.dst) is None:
            lines.append(f"{tensor} -> {edge.dst}: the output of {edge.dst} reaches no loss "
                         "either")
    if len(consumers) > _LIMIT:
        lines.append(f"... and {len(consumers) - _LIMIT} more consumers")
    return lines


def _why_nothing_trains(plan: Plan, tensor: str) -> list[str]:
    """Walk upstream along the edges the plan says could carry a gradient and report what
    ends each path: a frozen parameter, a data input, or a stopped edge."""
    net = plan.net
    seen = {tensor}
    queue = deque([tensor])
    facts: list[str] = []
    while queue and len(facts) < _LIMIT:
        t = queue.popleft()
        if net.input(t) is not None:
            facts.append(f"{t} is a data input")
            continue
        layer = net.layer(t)
        for use in layer.params:
            facts.append(f"{use.param} (in {t}): lr_mult {use.lr_mult:g}, {use.origin}")
        for edge in layer.inputs:
            code = _dx_of(plan, edge).reason.code
            if code == "dx_stop_gradient":
                facts.append(f"{edge.src} -> {t}: stop_gradient at {edge.span}")
            elif code not in _CUT and edge.src not in seen:
                seen.add(edge.src)
                queue.append(edge.src)
    if queue:
        facts.append("...")
    return facts or [f"{tensor} has no parameters and no inputs that carry a gradient"]


def _layer(plan: Plan, name: str) -> list[str]:
    net = plan.net
    layer = net.layer(name)
    lp = plan.layer(name)
    out = [f"{name} = {layer.op}(...) at {layer.span}"
           + (f", {layer.frozen_by}" if layer.frozen else "")]
    out.append(f"forward: {'needed' if lp.forward.needed else 'skipped'}: "
               f"{lp.forward.reason.text}")
    out.append(f"gradient at its output: "
               f"{'needed' if plan.flow.needs_grad(name) else 'not needed'}")
    out.extend(_gradient_facts(plan, name))
    for edge, d in zip(layer.inputs, lp.dx):
        out.append(f"dX into {edge.src} (input {edge.index}, {edge.span}): "
                   f"{'computed' if d.needed else 'skipped'}: {d.reason.text}")
        if d.reason.via:
            out.append(f"  via {_arrow(d.reason.via)}")
    for use, d in zip(layer.params, lp.dw):
        out.append(f"dW {use.param} (slot {use.slot}, lr_mult {use.lr_mult:g}, decay_mult "
                   f"{use.decay_mult:g}; {use.origin}): "
                   f"{'computed' if d.needed else 'skipped'}: {d.reason.text}")
        others = [l for l, _ in net.uses_of(use.param) if l != name]
        if others:
            out.append(f"  shared with {', '.join(others)}")
    out.append("keeps for its backward: " + (", ".join(lp.keeps) or "nothing"))
    return out


def _param(plan: Plan, name: str) -> list[str]:
    net = plan.net
    param = net.params[name]
    out = [f"param {name} : {param.type} (declared or first used at {param.span})"]
    for layer_name, use in net.uses_of(name):
        lp = plan.layer(layer_name)
        d = next(d for u, d in zip(net.layer(layer_name).params, lp.dw) if u is use)
        out.append(f"use in {layer_name} (slot {use.slot}, lr_mult {use.lr_mult:g}; "
                   f"{use.origin}): gradient {'computed' if d.needed else 'skipped'}: "
                   f"{d.reason.text}")
    if param.frozen_rows:
        trains = ", ".join(f"{a}:{b}" for a, b in param.trainable_rows()) or "none"
        frozen = ", ".join(f"{a}:{b}" for a, b in param.frozen_rows)
        out.append(f"split: rows {frozen} of {param.type.shape[0]} are frozen, rows {trains} "
                   "train: dW runs over the trainable rows' channels of d(out) only, the "
                   "update (momentum, decay) touches only them, and dX still reads the "
                   "whole weight")
    update = next((u for u in plan.updates if u.param == name), None)
    if update is not None:
        out.append(f"update: {update.kind}: {update.text}")
        travels = any(t.computed for t in update.terms)
        out.append("all-reduce: " + (f"{param.type.nbytes} bytes per step" if travels
                                     else "never (no gradient)"))
    else:
        out.append("update: never (running statistics are not trained by gradients)")
    return out


def _input(plan: Plan, name: str) -> list[str]:
    inp = plan.net.input(name)
    out = [f"input {name} : {inp.type} at {inp.span}"
           + (" (asks for its gradient)" if inp.requires_grad else "")]
    out.append(f"gradient: {'computed' if plan.flow.needs_grad(name) else 'not computed'}")
    out.extend(_gradient_facts(plan, name))
    return out
