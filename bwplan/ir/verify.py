"""Verifiers of the invariants each stage promises the next, run between passes when
BWPLAN_CHECKS=1 (the test suite sets it; see tests/conftest.py).

A failure is a bug in bwplan, not the user's mistake: it raises InternalError whose
context is the printed net around the layer where the invariant broke (ir/printer.py).

- `verify_net`: layers in topological order with unique names; the graph holds exactly
  the layers' edges; every edge names its layer and position; every op exists and takes
  that many inputs; every parameter use names a known parameter.
- `verify_plan`: one dX decision per edge and one dW per use; a needed dX or dW has a
  needed forward; every kept value has a reader.
- `verify_program`: every buffer a step reads is live at that step, and a step's target
  and scratch are buffers of the program; the pruned program keeps what the plan keeps.
"""
from __future__ import annotations

import os

from bwplan import ops as registry
from bwplan.errors import InternalError
from bwplan.ir.net import Net
from bwplan.ir.printer import print_net


def enabled() -> bool:
    return os.environ.get("BWPLAN_CHECKS", "") not in ("", "0")


def _fail(net: Net, stage: str, layer: str | None, what: str) -> InternalError:
    where = f" at '{layer}'" if layer else ""
    return InternalError(f"the {stage} broke an invariant{where}: {what}",
                         print_net(net, around=layer))


def verify_net(net: Net, stage: str = "net") -> Net:
    seen = {i.name for i in net.inputs}
    if len(seen) != len(net.inputs):
        raise _fail(net, stage, None, "two inputs share a name")
    edges = set()
    for pos, layer in enumerate(net.layers):
        name = layer.name
        if name in seen:
            raise _fail(net, stage, name, "a second tensor of this name")
        op = registry.OPS.get(layer.op)
        if op is None:
            raise _fail(net, stage, name, f"unknown op {layer.op!r}")
        if not op.arity_ok(len(layer.inputs)):
            raise _fail(net, stage, name, f"{layer.op} cannot take {len(layer.inputs)} inputs")
        for k, e in enumerate(layer.inputs):
            if e.dst != name or e.index != k:
                raise _fail(net, stage, name, f"input {k} is the edge {e.src}->{e.dst}"
                            f"[{e.index}]")
            if e.src not in seen:
                raise _fail(net, stage, name, f"reads {e.src!r}, which comes later or does "
                            "not exist: not in topological order")
            edges.add((e.src, name, k))
        for use in layer.params:
            if use.param not in net.params:
                raise _fail(net, stage, name, f"uses an unknown parameter {use.param!r}")
        if net.position(name) != pos:
            raise _fail(net, stage, name, "its position in the index is stale")
        seen.add(name)
    graph_edges = {(u, v, k) for u, v, k in net.graph.edges(keys=True)}
    if graph_edges != edges or set(net.graph) != seen:
        odd = sorted(graph_edges ^ edges)[:1]
        raise _fail(net, stage, odd[0][1] if odd else None,
                    f"the graph and the layers disagree (edge {odd[0] if odd else '-'}, "
                    f"{len(net.graph)} nodes for {len(seen)} tensors)")
    return net


def verify_plan(plan, stage: str = "plan") -> object:
    net = plan.net
    if len(plan.layers) != len(net.layers):
        raise _fail(net, stage, None, "not one LayerPlan per layer")
    for lp, layer in zip(plan.layers, net.layers):
        if lp.name != layer.name:
            raise _fail(net, stage, layer.name, f"its LayerPlan is for {lp.name!r}")
        if len(lp.dx) != len(layer.inputs) or len(lp.dw) != len(layer.params):
            raise _fail(net, stage, layer.name, "not one dX per edge and one dW per use")
        if lp.has_backward and not lp.forward.needed:
            raise _fail(net, stage, layer.name, "backward work planned without its forward")
    for value in plan.kept.values():
        if not value.readers:
            raise _fail(net, stage, None, f"{value.name} is kept with no reader")
    return plan


def verify_program(program, stage: str = "lowering") -> object:
    net = program.plan.net
    live: dict = {}
    for b in program.buffers:
        live[b.id] = b
    steps = program.forward + program.backward
    # position of each step: forward 1..F, seeds F+1, backward F+2...
    positions = list(range(1, len(program.forward) + 1)) + list(
        range(len(program.forward) + 2, len(program.forward) + 2 + len(program.backward)))
    for step, pos in zip(steps, positions):
        for b in step.reads + tuple(x for x in (step.target, step.scratch, step.dout) if x):
            buf = live.get(b)
            if buf is None:
                raise _fail(net, stage, step.layer, f"{step.phase} {step.component} uses "
                            f"{b}, which is no buffer of the program")
            if not buf.first <= pos <= buf.last:
                raise _fail(net, stage, step.layer, f"{step.phase} {step.component} uses "
                            f"{b} at position {pos}, live only {buf.first}..{buf.last}")
    if program.pruned and program.backward:
        kept = {str(b) for b in program.kept}
        if kept != set(program.plan.kept):
            extra = sorted(kept ^ set(program.plan.kept))
            raise _fail(net, stage, None, f"keeps {extra[:3]} unlike the plan")
    return program
