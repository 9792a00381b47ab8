"""`lower(plan)`: the Program of one training step.

Pruned, the backward holds exactly the components the plan decided are needed; with
`prune=False` it holds every component the same net would run if all its parameters were
trainable (stop_gradient edges still cut), which is the baseline that shows what pruning
saves. Updates are masked by the lr multipliers either way, so both programs train alike.

This is the one place that binds a gradient rule's needs to buffers (`Step.saved`) and
gives every buffer its lifetime (`Program.buffers`); runtimes and the peak figure read it.

It also decides where an epilogue op (OpDef.epilogue: relu) runs in place on its
producer's output (`Step.applied_by`): the producer writes the epilogue's buffer, and its
own output, which nothing else reads, is never a buffer. `BWPLAN_FUSE=0` in the
environment (or `fuse=False`) lowers without it, the baseline the fused programs are
checked and timed against.
"""
from __future__ import annotations

import os
from dataclasses import replace

import networkx as nx

from bwplan import ops as registry
from bwplan.gc_pause import cyclic_gc_paused
from bwplan.ir import verify
from bwplan.ir.net import Layer, Net
from bwplan.lower.program import Buffer, BufferId, Program, Saved, Seed, Step, aux, grad, value
from bwplan.ops.needs import FWD, Component, bind_needs
from bwplan.plan.components import dw_flops, dx_rule, op_ctx
from bwplan.plan.plan import Plan


def fusing() -> bool:
    """Whether lowering runs epilogue ops in place (Step.applied_by) unless told: yes, but
    where BWPLAN_FUSE=0."""
    return os.environ.get("BWPLAN_FUSE", "1").strip() != "0"


@cyclic_gc_paused
def lower(plan: Plan, prune: bool = True, bindings: dict | None = None,
          fuse: bool | None = None) -> Program:
    """`bindings`: a memo of each backward component's buffer bindings, which the pruned
    and the full program of one plan share (Plan.program passes the plan's own); None, a
    fresh one. `fuse`: whether epilogue ops run in place on their producer's output (None:
    `fusing()`)."""
    net = plan.net
    outputs = [net.layer(name) for name in plan.outputs]
    losses = tuple((l.name, l.loss_weight) for l in outputs if registry.OPS[l.op].role == "loss"
                   or l.loss_weight != 0)
    metrics = tuple(l.name for l in outputs if registry.OPS[l.op].role == "metric")
    run = [(l, lp) for l, lp in zip(net.layers, plan.layers) if lp.forward.needed]

    # ---- backward (first: the forward keeps exactly what it reads) ---------------------
    # each step as its Step fields but `frees`, which need the whole list
    specs: list[tuple] = []
    written: set[BufferId] = set()
    seeds = []
    for name, weight in losses:
        if weight != 0 and _grad_at(plan, name, prune):
            seeds.append(Seed(name, weight))
            written.add(grad(name))
    params_written: set[str] = set()
    memo = {} if bindings is None else bindings
    for layer, lp in reversed(run):
        dout = grad(layer.name)
        for k, use in enumerate(layer.params):
            if not (lp.dw[k].needed if prune else lp.full_dw[k]):
                continue
            component, saved, reads, flops, whole = _binding(memo, net, layer, "dw", k)
            if not prune:   # the baseline computes every row (Program.dw_rows)
                flops = whole
            # Step's fields in order, `frees` left out
            specs.append(("dw", layer.name, component, -1, use.param, use.lr_mult, None,
                          use.param in params_written, (), reads + (dout,), saved, dout, None,
                          flops))
            params_written.add(use.param)
        for k, edge in enumerate(layer.inputs):
            if not (lp.dx[k].needed if prune else lp.full_dx[k]):
                continue
            component, saved, reads, flops, _ = _binding(memo, net, layer, "dx", k)
            target = grad(edge.src)
            accumulate = target in written
            scratch = BufferId("scratch", edge.src, f"{layer.name}.{edge.index}") \
                if accumulate else None
            specs.append(("dx", layer.name, component, edge.index, "", 1.0, target,
                          accumulate, (), reads + (dout,), saved, dout, scratch, flops))
            written.add(target)
    kept = frozenset(b for s in specs for b in s[_READS] if b.kind != "grad")

    # ---- forward -----------------------------------------------------------------------
    keep_until_end = kept | {value(l.name) for l in outputs}
    forward = _forward_steps(net, plan, [l for l, _ in run], keep_until_end, kept,
                             fusing() if fuse is None else fuse)

    caller_owned = frozenset(value(i.name) for i in net.inputs)  # the batch is the caller's
    mixed = frozenset(u.param for u in plan.updates
                      if len({t.lr_mult for t in u.terms if t.computed or not prune}) > 1)
    backward = _channel_sums(net, _backward_steps(specs, kept - caller_owned), mixed)
    buffers, positions = _lifetimes(net, forward, seeds, backward)
    return _checked(Program(plan, prune, tuple(forward), tuple(backward), tuple(seeds), kept,
                            losses, metrics, mixed, buffers, positions))


def _binding(memo: dict, net: Net, layer: Layer, kind: str, k: int):
    """(component, saved, forward values read, FLOPs, FLOPs of the whole gradient) of one
    backward component: the dW of parameter use k (of a partly frozen parameter: its
    trainable rows' FLOPs first) or the dX into input k."""
    key = (layer.name, kind, k)
    found = memo.get(key)
    if found is None:
        op = registry.OPS[layer.op]
        if kind == "dw":
            slot = layer.params[k].slot
            rule, component = op.grad_for(slot), Component("dw", slot)
        else:
            index = layer.inputs[k].index
            rule, component = dx_rule(op, index), Component("dx", op.port_for(index).name)
        ctx = memo.get(layer.name)
        if ctx is None:
            ctx = memo[layer.name] = op_ctx(net, layer)
        saved = _saved(net, layer, rule)
        flops = dw_flops(net, layer, slot, rule, ctx) if kind == "dw" else rule.flops(ctx)
        whole = rule.flops(ctx) if kind == "dw" else flops
        found = memo[key] = (component, saved, _values(saved), flops, whole)
    return found


def _checked(program: Program) -> Program:
    if verify.enabled():
        verify.verify_program(program)
    return program


def _saved(net: Net, layer: Layer, rule) -> tuple[Saved, ...]:
    """The buffers (or parameters) behind each value the rule reads."""
    op = registry.OPS[layer.op]
    out = []
    for need in bind_needs(op, rule, layer.attrs, len(layer.inputs)):
        if need.kind == "out":
            out.append(Saved(need.name, (value(layer.name),)))
        elif need.kind == "port":
            out.append(Saved(need.name, tuple(value(layer.inputs[i].src) for i in need.inputs),
                             variadic=need.variadic))
        elif need.kind == "param":
            out.append(Saved(need.name, param=layer.param_use(need.name).param))
        else:
            out.append(Saved(need.name, (aux(layer.name, need.name),)))
    return tuple(out)


def _values(saved: tuple[Saved, ...]) -> tuple[BufferId, ...]:
    """The distinct forward values the bindings read, in order."""
    return tuple(dict.fromkeys(b for s in saved for b in s.buffers))


def _forward_steps(net: Net, plan: Plan, run: list, keep: frozenset[BufferId],
                   kept: frozenset[BufferId], fuse: bool = True) -> list[Step]:
    """Forward steps for the layers in `run` (topological order). A tensor is freed after
    its last forward reader unless `keep` holds it (kept for backward, or an output); aux
    buffers are produced only when `kept` names them. With `fuse`, an epilogue op runs in
    place on its producer's output where `_epilogues` allows it."""
    last_use: dict[str, int] = {}
    for pos, layer in enumerate(run):
        for e in layer.inputs:
            last_use[e.src] = pos
    callers = {value(i.name) for i in net.inputs}   # the batch is never freed
    # producer -> its epilogue layer, and epilogue layer -> the producer's position
    epilogue_of = _epilogues(net, run, keep, callers) if fuse else {}
    applied_by = {e: p for p, e in epilogue_of.items()}
    position = {layer.name: pos for pos, layer in enumerate(run)} if epilogue_of else {}
    steps = []
    for pos, layer in enumerate(run):
        name = layer.name
        op_aux = registry.OPS[layer.op].aux
        produced = tuple(a.name for a in op_aux if aux(name, a.name) in kept) if op_aux else ()
        target = value(name)
        producer = -1
        if name in applied_by:   # in place: its input is its own buffer, never one of its own
            producer = position[applied_by[name]]
            reads = (target,)
            frees = []
        else:
            reads = tuple(value(e.src) for e in layer.inputs)
            # the distinct inputs this layer is the last forward reader of (positional
            # fields: this runs once per layer of a 10,000-layer net, twice per explain)
            frees = [b for b in dict.fromkeys(reads) if last_use[b.tensor] == pos
                     and b not in keep and b not in callers]
        if name not in last_use and target not in keep:
            frees.append(target)
        if name in epilogue_of:   # writes its epilogue's buffer
            target = value(epilogue_of[name])
        steps.append(Step("fwd", name, FWD, -1, "", 1.0, target, False, produced, reads, (),
                          None, None, plan.layer(name).fwd_flops, tuple(frees),
                          applied_by=producer))
    return steps


def _epilogues(net: Net, run: list, keep: frozenset[BufferId],
               callers: set[BufferId]) -> dict[str, str]:
    """producer -> epilogue layer, for each epilogue op (OpDef.epilogue) whose one input is
    the output of a layer that runs, is no input of the net and nothing else reads (no
    other forward reader, not kept for the backward, not an output), and of its type; a
    producer that is itself an epilogue run in place keeps its own step."""
    readers: dict[str, int] = {}
    for layer in run:
        for e in layer.inputs:
            readers[e.src] = readers.get(e.src, 0) + 1
    running = {layer.name: layer for layer in run}
    found: dict[str, str] = {}
    for layer in run:
        if not registry.OPS[layer.op].epilogue or len(layer.inputs) != 1:
            continue
        src = layer.inputs[0].src
        producer = running.get(src)
        if producer is None or readers[src] != 1 or value(src) in keep \
                or value(src) in callers or producer.out != layer.out \
                or src in found.values():
            continue
        found[src] = layer.name
    return found


def _grad_at(plan: Plan, name: str, prune: bool) -> bool:
    """Whether any backward component reads d(name): the loss itself must feed a gradient."""
    layer = plan.layer(name)
    if prune:
        return layer.has_backward
    return any(layer.full_dx) or any(layer.full_dw)


_READS = 9   # the position of `reads` among Step's fields


def _backward_steps(specs: list[tuple], kept: frozenset[BufferId]) -> list[Step]:
    """The steps, where each kept value and each gradient dies after the last backward
    step that reads it."""
    last: dict[BufferId, int] = {}
    for i, spec in enumerate(specs):
        for b in spec[_READS]:
            last[b] = i
    # a step's reads are distinct: its forward values (deduplicated by _values) and dout
    return [Step(*spec, frees=tuple(b for b in spec[_READS] if last[b] == i
                                    and (b in kept or b.kind == "grad")))
            for i, spec in enumerate(specs)]


def _channel_sums(net: Net, steps: list[Step], mixed: frozenset[str]) -> list[Step]:
    """The steps, each bias gradient (GradRule.channel_sum) paired with the one step that
    writes its layer's d(out) (`Step.sum_of`): only where that gradient is written whole
    (its parameter's first use, one lr multiplier, no frozen rows) and d(out) has a single
    writer that nothing adds to, so that summing the writer's output is the gradient."""
    writers: dict[BufferId, list[int]] = {}
    for i, step in enumerate(steps):
        if step.phase == "dx":
            writers.setdefault(step.target, []).append(i)
    for j, step in enumerate(steps):
        if step.phase != "dw" or step.accumulate or step.param in mixed \
                or net.params[step.param].frozen_rows:
            continue
        if not registry.OPS[net.layer(step.layer).op].grad_for(step.component.wrt).channel_sum:
            continue
        found = writers.get(step.dout, [])
        if len(found) == 1 and not steps[found[0]].accumulate:
            steps[j] = replace(step, sum_of=found[0])
    return steps


def _lifetimes(net: Net, forward, seeds, backward) -> tuple[tuple[Buffer, ...], int]:
    """Every buffer of the step with the positions where it is live."""
    born: dict[BufferId, tuple[int, object, bool]] = {}
    died: dict[BufferId, int] = {}
    for inp in net.inputs:
        born[value(inp.name)] = (0, inp.type, True)
    callers = set(born)     # the batch: live for the whole step, never freed

    def free(ids, pos):
        for b in ids:
            if b in born and b not in died and b not in callers:
                died[b] = pos

    pos = 0
    for step in forward:
        pos += 1
        layer = net.layer(step.layer)
        if step.applied_by < 0:   # an epilogue in place writes its producer's buffer
            born[step.target] = (pos, layer.out, False)
        if step.aux:
            ctx = op_ctx(net, layer)
            op = registry.OPS[layer.op]
            for a in step.aux:
                born[aux(layer.name, a)] = (pos, op.aux_spec(a).type(ctx), False)
        free(step.frees, pos)
    pos += 1
    for seed in seeds:
        born[grad(seed.layer)] = (pos, net.layer(seed.layer).out, False)
    tensor_type = net.tensor_type
    for step in backward:
        pos += 1
        if step.phase == "dx":
            src_type = tensor_type(step.target.tensor)
            if step.accumulate:
                born[step.scratch] = (pos, src_type, False)
                died[step.scratch] = pos
            else:
                born[step.target] = (pos, src_type, False)
        free(step.frees, pos)
    end = pos
    buffers = tuple(Buffer(b, t, first, end if caller else died.get(b, end), caller,
                           b.kind == "scratch")
                    for b, (first, t, caller) in born.items())
    return buffers, end + 1


def lower_inference(plan: Plan, outputs: tuple[str, ...] | None = None) -> Program:
    """A forward-only Program computing `outputs` (default: every loss, metric and layer
    whose output nothing consumes) and whatever they depend on."""
    net = plan.net
    if outputs is None:
        outputs = tuple(l.name for l in net.layers if not net.consumers(l.name)
                        or registry.OPS[l.op].role != "layer")
    wanted = set(outputs)
    needed = set(outputs).union(*(nx.ancestors(net.graph, n) for n in outputs))
    run = [l for l in net.layers if l.name in needed]
    forward = _forward_steps(net, plan, run, frozenset(value(n) for n in wanted), frozenset(),
                             fusing())
    losses = tuple((l.name, l.loss_weight) for l in run if l.name in wanted and (
        registry.OPS[l.op].role == "loss" or l.loss_weight != 0))
    metrics = tuple(l.name for l in run if l.name in wanted and registry.OPS[l.op].role ==
                    "metric")
    buffers, positions = _lifetimes(net, forward, (), ())
    return _checked(Program(plan, True, tuple(forward), (), (), frozenset(), losses, metrics,
                            frozenset(), buffers, positions))
