"""Freezing schemes applied to a built Net without editing its file: `--freeze PATTERN`
and `--unfreeze PATTERN` (globs on layer names, applied in order). Cheap enough to run at
every stage of gradual unfreezing."""
from __future__ import annotations

import fnmatch
import re
from dataclasses import replace
from types import MappingProxyType

from bwplan import ops as registry
from bwplan.errors import BwError
from bwplan.gc_pause import cyclic_gc_paused
from bwplan.ir import verify
from bwplan.ir.net import Layer, Net
from bwplan.ir.rows import add_rows, parse_rows, rows_problem
from bwplan.source import Span


@cyclic_gc_paused
def apply_policy(net: Net, rules: list[tuple[str, str]]) -> Net:
    """rules: ("freeze" | "unfreeze", glob) in order. Raises BwError for a glob that
    matches no layer, since that is almost always a typo."""
    if not rules:
        return net
    rows = [(a, p) for a, p in rules if _ROWS.match(p)]
    rules = [(a, p) for a, p in rules if not _ROWS.match(p)]
    layers = list(net.layers)
    names = [l.name for l in layers]
    for action, pattern in rules:
        hits = [i for i, n in enumerate(names) if fnmatch.fnmatchcase(n, pattern)]
        if not hits:
            raise BwError(Span.synthetic(f"--{action}"), f"'{pattern}' matches no layer",
                          "patterns are globs on layer names, e.g. 'conv*' or 'tower/*'")
        for i in hits:
            layers[i] = freeze(net, layers[i], f"--freeze '{pattern}'") \
                if action == "freeze" else unfreeze(net, layers[i])
    out = net.replace_layers(tuple(layers))
    if rows:
        out = _freeze_rows(out, rows)
    if verify.enabled():
        verify.verify_net(out, "freezing policy")
    return out


# PARAM[a:b] or PARAM[a:b, c:d]: ranges of a parameter's leading axis
_ROWS = re.compile(r"^(?P<param>[^\[\]]+)\[(?P<ranges>[^\]]*)\]$")


def _freeze_rows(net: Net, rules: list[tuple[str, str]]) -> Net:
    """Record frozen leading-axis ranges on the parameters the rules name."""
    params = dict(net.params)
    for action, pattern in rules:
        where = Span.synthetic(f"--{action}")
        m = _ROWS.match(pattern)
        name = m.group("param")
        if action != "freeze":
            raise BwError(where, f"'{pattern}': --unfreeze takes layer patterns, not rows",
                          "freeze the complement instead, e.g. --freeze 'fc.weight[10:1000]'")
        param = params.get(name)
        if param is None:
            raise BwError(where, f"'{pattern}': no parameter '{name}'",
                          "rows are given on a parameter: LAYER.SLOT[start:stop]")
        if not param.learnable or not param.type.shape:
            raise BwError(where, f"'{pattern}': {name} does not train, so it has no rows "
                          "to freeze")
        for layer, use in net.uses_of(name):
            problem = rows_problem(net.layer(layer).op, use.slot, net.layer(layer).attrs)
            if problem:
                raise BwError(where, f"'{pattern}': {problem}")
        ranges = parse_rows(where, f"'{pattern}'", m.group("ranges"), param.type.shape[0])
        params[name] = replace(param, frozen_rows=add_rows(
            where, f"'{pattern}'", param.frozen_rows, ranges, param.type.shape[0]))
    return Net(net.name, net.path, net.inputs, MappingProxyType(params), net.layers,
               net.graph)


def freeze(net: Net, layer: Layer, why: str) -> Layer:
    op = registry.OPS[layer.op]
    written = layer.written_attrs or layer.attrs
    attrs = MappingProxyType(dict(op.on_freeze(written))) if op.on_freeze else written
    uses = tuple(replace(u, lr_mult=0.0, origin=f"frozen by {why}", frozen_by=why)
                 if net.params[u.param].learnable else u for u in layer.params)
    return replace(layer, attrs=attrs, params=uses, frozen=True, frozen_by=why,
                   written_attrs=written)


def unfreeze(net: Net, layer: Layer) -> Layer:
    written = layer.written_attrs or layer.attrs
    uses = []
    for u in layer.params:
        if not net.params[u.param].learnable:
            uses.append(u)
        else:
            lr = u.written_lr if u.written_lr > 0 else 1.0
            uses.append(replace(u, lr_mult=lr, origin="unfrozen by --unfreeze"
                                if u.lr_mult == 0 else u.origin, frozen_by=""))
    return replace(layer, attrs=written, params=tuple(uses), frozen=False, frozen_by="")
