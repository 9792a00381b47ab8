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
        mode = plan.layer(layer.name).mode
        if mode is None or not (mode.mode.batch and mode.mode.update_stats) or layer.frozen \
                or mode.scale_shift == "frozen":   # _frozen_scale_shift says it then
            continue
        if plan.flow.up.get(layer.name) is None and any(
                not net.params[u.param].learnable for u in layer.params):
            yield Finding("batchnorm_stats_in_frozen_region", "warning", layer.span,
                          f"{layer.name} normalises with batch statistics and keeps updating "
                          "its running statistics although nothing up to it trains",
                          "freeze it too, so that it uses its stored statistics",
                          subject=layer.name)


def _frozen_scale_shift(plan):
    """The usual trap: the scale/shift is frozen but the statistics keep coming from the
    batch and moving (PyTorch's requires_grad=False in train(), Caffe's lr_mult 0)."""
    for lp in plan.layers:
        m = lp.mode
        if m is None or m.scale_shift != "frozen" or not (m.mode.batch and m.mode.update_stats):
            continue
        layer = plan.net.layer(lp.name)
        yield Finding("batchnorm_frozen_scale_shift", "warning", layer.span,
                      f"the scale/shift of {lp.name} is frozen{_in(m, lp.name)}, but it "
                      "normalises with batch statistics and keeps updating its stored ones",
                      "write stats=stored to keep the layer exactly as trained, or "
                      "update_stats=false to normalise with the batch without moving them",
                      subject=lp.name)


def _in(m, name: str) -> str:
    return f" (in {m.scale_shift_in})" if m.scale_shift_in not in ("", name) else ""


TINY_BATCH = 4


def _tiny_batch_stats(plan):
    """Batch statistics from a handful of samples are noisy and differ from the stored
    ones the layer is evaluated with."""
    net = plan.net
    for lp in plan.layers:
        if lp.mode is None or not lp.mode.mode.batch or not lp.forward.needed:
            continue
        layer = net.layer(lp.name)
        n = net.tensor_type(layer.inputs[0].src).shape[0]
        if n <= TINY_BATCH:
            yield Finding("batchnorm_tiny_batch", "warning", layer.span,
                          f"{lp.name} normalises with the statistics of a batch of {n} "
                          "sample(s): noisy, and unlike the stored ones used at test time",
                          "use a larger batch, or stats=stored (with update_stats=false to "
                          "keep them fixed)", subject=lp.name)


CHECKS = (_decay_without_gradient, _per_use_lr, _useless_cut, _loss_unreached,
          _zero_weight_loss, _dead_outputs, _frozen_batchnorm, _batchnorm_in_frozen_region,
          _frozen_scale_shift, _tiny_batch_stats)


def find_pitfalls(plan) -> tuple[Finding, ...]:
    found = [f for check in CHECKS for f in check(plan)]
    return tuple(sorted(found, key=lambda f: (f.span.line, f.span.col, f.code)))
