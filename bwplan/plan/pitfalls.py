"""Checks for settings that do not do what their author likely meant. One function per
check, listed in one table; each returns Findings with the fix."""
from __future__ import annotations

from bwplan import ops as registry
from bwplan.plan.decisions import Finding


def _decay_without_gradient(plan):
    for u in plan.updates:
        if u.kind == "decay_only":
            param = plan.net.params[u.param]
            yield Finding("decay_without_gradient", "warning", param.span,
                          f"{u.param} receives no gradient, yet weight decay (decay_mult "
                          f"{u.decay_mult:g}) shrinks it every step: it is not frozen",
                          "freeze the layer (`frozen`, lr_mult: 0) or set its decay to 0",
                          subject=u.param)


def _per_use_lr(plan):
    for u in plan.updates:
        if len({t.lr_mult for t in u.terms}) > 1:
            param = plan.net.params[u.param]
            mults = ", ".join(f"{t.layer}: {t.lr_mult:g}" for t in u.terms)
            yield Finding("shared_per_use_lr", "note", param.span,
                          f"{u.param} is shared with different lr multipliers ({mults}): each "
                          "use's gradient is scaled by its multiplier before they are summed; "
                          "with momentum this is a gradient multiplier, not a per-use learning "
                          "rate", "to train two independent copies, give each layer its own "
                          "parameters and load the same pretrained weights into both",
                          subject=u.param)


def _useless_cut(plan):
    net = plan.net
    for layer in net.layers:
        op = registry.OPS[layer.op]
        for edge in layer.inputs:
            if not edge.stop_gradient:
                continue
            port = op.port_for(edge.index)
            if not port.differentiable or not net.tensor_type(edge.src).is_float:
                yield Finding("cut_not_differentiable", "warning", edge.span,
                              f"stop_gradient on {edge.src} -> {layer.name} has no effect: "
                              f"{op.name}'s '{port.name}' input never takes a gradient",
                              "remove the stop_gradient / propagate_down: false",
                              subject=layer.name)
            elif plan.flow.up.get(edge.src) is None:
                yield Finding("cut_nothing_trains", "note", edge.span,
                              f"stop_gradient on {edge.src} -> {layer.name} changes nothing "
                              f"today: nothing upstream of {edge.src} trains",
                              "keep it if layers above may be unfrozen later; else remove it",
                              subject=layer.name)


def _loss_unreached(plan):
    net = plan.net
    for layer in net.layers:
        if layer.loss_weight == 0:
            continue
        if plan.flow.up.get(layer.name) is None:
            yield Finding("loss_reaches_nothing", "warning", layer.span,
                          f"the loss {layer.name} reaches no trainable parameter: it adds "
                          "nothing to any update",
                          "unfreeze a layer below it, or remove the stop_gradient that cuts it",
                          subject=layer.name)


def _zero_weight_loss(plan):
    for layer in plan.net.layers:
        if registry.OPS[layer.op].role == "loss" and layer.loss_weight == 0:
            yield Finding("loss_weight_zero", "note", layer.span,
                          f"the loss {layer.name} has weight 0: it is computed and reported "
                          "but no gradient starts from it", "give it a non-zero weight to train",
                          subject=layer.name)


def _dead_outputs(plan):
    net = plan.net
    for layer in net.layers:
        if plan.flow.used[layer.name] is not None:
            continue
        if any(plan.flow.used[e.dst] is None for e in net.consumers(layer.name)):
            continue  # report the dead region once, at its end
        yield Finding("output_reaches_no_loss", "warning", layer.span,
                      f"the output of {layer.name} reaches no loss and no metric: "
                      f"a training step skips it and its parameters never train",
                      "connect it to a loss, or remove it", subject=layer.name)


def _frozen_batchnorm(plan):
    for layer in plan.net.layers:
        written = layer.written_attrs or layer.attrs
        if layer.frozen and written.get("global_stats") is False and layer.attrs.get(
                "global_stats") is True:
            yield Finding("frozen_batchnorm", "note", layer.span,
                          f"{layer.name} is frozen, so it normalises with its stored running "
                          "statistics instead of the batch's (Caffe use_global_stats: true, "
                          "PyTorch eval())", "unfreeze it to normalise with batch statistics",
                          subject=layer.name)


def _batchnorm_in_frozen_region(plan):
    net = plan.net
    for layer in net.layers:
        if layer.attrs.get("global_stats") is not False or layer.frozen:
            continue
        if plan.flow.up.get(layer.name) is None and any(
                not net.params[u.param].learnable for u in layer.params):
            yield Finding("batchnorm_stats_in_frozen_region", "warning", layer.span,
                          f"{layer.name} normalises with batch statistics and keeps updating "
                          "its running statistics although nothing up to it trains",
                          "freeze it too, so that it uses its stored statistics",
                          subject=layer.name)


CHECKS = (_decay_without_gradient, _per_use_lr, _useless_cut, _loss_unreached,
          _zero_weight_loss, _dead_outputs, _frozen_batchnorm, _batchnorm_in_frozen_region)


def find_pitfalls(plan) -> tuple[Finding, ...]:
    found = [f for check in CHECKS for f in check(plan)]
    return tuple(sorted(found, key=lambda f: (f.span.line, f.span.col, f.code)))
