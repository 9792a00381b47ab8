"""`lower(plan)`: the Program of one training step.

Pruned, the backward holds exactly the components the plan decided are needed; with
`prune=False` it holds every component the same net would run if all its parameters were
trainable (stop_gradient edges still cut), which is the baseline that shows what pruning
saves. Updates are masked by the lr multipliers either way, so both programs train alike.
"""
from __future__ import annotations

from dataclasses import replace

from bwplan import ops as registry
from bwplan.lower.program import Program, Seed, Step
from bwplan.plan.components import dx_rule, op_ctx, values_read
from bwplan.plan.plan import Plan


def lower(plan: Plan, prune: bool = True) -> Program:
    net = plan.net
    kept_table = plan.kept if prune else plan.full_kept
    kept = frozenset(kept_table)
    outputs = [net.layer(name) for name in plan.outputs]
    losses = tuple((l.name, l.loss_weight) for l in outputs if registry.OPS[l.op].role == "loss"
                   or l.loss_weight != 0)
    metrics = tuple(l.name for l in outputs if registry.OPS[l.op].role == "metric")
    keep_until_end = kept | {l.name for l in outputs}

    # ---- forward -----------------------------------------------------------------------
    run = [l for l in net.layers if plan.layer(l.name).forward.needed]
    forward = _forward_steps(plan, run, keep_until_end, kept)

    # ---- backward ----------------------------------------------------------------------
    backward: list[Step] = []
    written: set[str] = set()
    seeds = []
    for name, weight in losses:
        if weight != 0 and _grad_at(plan, name, prune):
            seeds.append(Seed(name, weight))
            written.add(f"d:{name}")
    params_written: set[str] = set()
    for layer in reversed(run):
        lp = plan.layer(layer.name)
        op = registry.OPS[layer.op]
        ctx = op_ctx(net, layer)
        for k, use in enumerate(layer.params):
            needed = lp.dw[k].needed if prune else lp.full_dw[k]
            if not needed:
                continue
            rule = op.grad_for(use.slot)
            reads = tuple(v.name for v in values_read(net, layer, rule, ctx))
            backward.append(Step("dw", layer.name, f"dw:{use.slot}", param=use.param,
                                 scale=use.lr_mult, target=use.param,
                                 accumulate=use.param in params_written,
                                 reads=reads + (f"d:{layer.name}",), flops=rule.flops(ctx)))
            params_written.add(use.param)
        for k, edge in enumerate(layer.inputs):
            needed = lp.dx[k].needed if prune else lp.full_dx[k]
            if not needed:
                continue
            rule = dx_rule(op, edge.index)
            target = f"d:{edge.src}"
            reads = tuple(v.name for v in values_read(net, layer, rule, ctx))
            backward.append(Step("dx", layer.name, f"dx:{op.port_for(edge.index).name}",
                                 index=edge.index, target=target,
                                 accumulate=target in written,
                                 reads=reads + (f"d:{layer.name}",), flops=rule.flops(ctx)))
            written.add(target)
    caller_owned = frozenset(i.name for i in net.inputs)  # the batch is the caller's
    backward = _with_backward_frees(backward, kept - caller_owned)
    mixed = frozenset(u.param for u in plan.updates
                      if len({t.lr_mult for t in u.terms if t.computed or not prune}) > 1)
    return Program(plan, prune, tuple(forward), tuple(backward), tuple(seeds), kept, losses,
                   metrics, mixed)


def _forward_steps(plan: Plan, run: list, keep: frozenset[str],
                   kept: frozenset[str]) -> list[Step]:
    """Forward steps for the layers in `run` (topological order). A tensor is freed after
    its last forward reader unless `keep` holds it (kept for backward, or an output); aux
    buffers are produced only when `kept` names them."""
    net = plan.net
    last_use: dict[str, int] = {}
    for pos, layer in enumerate(run):
        for e in layer.inputs:
            last_use[e.src] = pos
    steps = []
    for pos, layer in enumerate(run):
        op = registry.OPS[layer.op]
        aux = tuple(a.name for a in op.aux if f"{layer.name}:{a.name}" in kept)
        frees = [s for s in dict.fromkeys(e.src for e in layer.inputs)
                 if last_use[s] == pos and s not in keep and net.input(s) is None]
        if layer.name not in last_use and layer.name not in keep:
            frees.append(layer.name)
        steps.append(Step("fwd", layer.name, "fwd", target=layer.name, aux=aux,
                          reads=tuple(e.src for e in layer.inputs),
                          flops=plan.layer(layer.name).fwd_flops, frees=tuple(frees)))
    return steps


def _grad_at(plan: Plan, name: str, prune: bool) -> bool:
    """Whether any backward component reads d(name): the loss itself must feed a gradient."""
    layer = plan.layer(name)
    if prune:
        return layer.has_backward
    return any(layer.full_dx) or any(layer.full_dw)


def _with_backward_frees(steps: list[Step], kept: frozenset[str]) -> list[Step]:
    """Each kept value and each gradient dies after the last backward step that reads it."""
    last: dict[str, int] = {}
    for i, step in enumerate(steps):
        for name in step.reads:
            last[name] = i
    out = []
    for i, step in enumerate(steps):
        frees = tuple(n for n in dict.fromkeys(step.reads) if last[n] == i
                      and (n in kept or n.startswith("d:")))
        out.append(replace(step, frees=frees))
    return out


def lower_inference(plan: Plan, outputs: tuple[str, ...] | None = None) -> Program:
    """A forward-only Program computing `outputs` (default: every loss, metric and layer
    whose output nothing consumes) and whatever they depend on."""
    net = plan.net
    if outputs is None:
        outputs = tuple(l.name for l in net.layers if not net.consumers(l.name)
                        or registry.OPS[l.op].role != "layer")
    wanted = set(outputs)
    needed = set(outputs)
    for layer in reversed(net.layers):
        if layer.name in needed:
            needed.update(e.src for e in layer.inputs)
    run = [l for l in net.layers if l.name in needed]
    forward = _forward_steps(plan, run, frozenset(wanted), frozenset())
    losses = tuple((l.name, l.loss_weight) for l in run if l.name in wanted and (
        registry.OPS[l.op].role == "loss" or l.loss_weight != 0))
    metrics = tuple(l.name for l in run if l.name in wanted and registry.OPS[l.op].role ==
                    "metric")
    return Program(plan, True, tuple(forward), (), (), frozenset(), losses, metrics,
                   frozenset())
