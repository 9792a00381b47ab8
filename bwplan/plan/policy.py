"""Freezing schemes applied to a built Net without editing its file: `--freeze PATTERN`
and `--unfreeze PATTERN` (globs on layer names, applied in order). Cheap enough to run at
every stage of gradual unfreezing."""
from __future__ import annotations

import fnmatch
from dataclasses import replace
from types import MappingProxyType

from bwplan import ops as registry
from bwplan.errors import BwError
from bwplan.ir import verify
from bwplan.ir.net import Layer, Net
from bwplan.source import Span


def apply_policy(net: Net, rules: list[tuple[str, str]]) -> Net:
    """rules: ("freeze" | "unfreeze", glob) in order. Raises BwError for a glob that
    matches no layer, since that is almost always a typo."""
    if not rules:
        return net
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
    if verify.enabled():
        verify.verify_net(out, "freezing policy")
    return out


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
