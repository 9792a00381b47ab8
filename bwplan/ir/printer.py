"""The IR in its printed form: one line per input and layer, in topological order.

    input x : f32[8, 16]
    a = linear(x) out=16 : f32[8, 16]  [weight: a.weight lr 0 (frozen at t.bw:3:20)]
    b = relu(a) : f32[8, 16]

`print_net(net, around=name)` prints only the lines near one layer, marking it with `>>`:
what an internal error shows so the failure can be read against the net.
"""
from __future__ import annotations

from bwplan.ir.net import Layer, Net


def layer_line(layer: Layer) -> str:
    args = ", ".join(("stop_gradient " if e.stop_gradient else "") + e.src
                     for e in layer.inputs)
    attrs = " ".join(f"{k}={v}" for k, v in layer.attrs.items())
    uses = ", ".join(f"{u.slot}: {u.param} lr {u.lr_mult:g}"
                     + (f" (frozen {u.frozen_by})" if u.frozen_by else "")
                     for u in layer.params)
    text = f"{layer.name} = {layer.op}({args})" + (f" {attrs}" if attrs else "")
    text += f" : {layer.out}"
    if uses:
        text += f"  [{uses}]"
    if layer.loss_weight:
        text += f"  weight {layer.loss_weight:g}"
    return text


def print_net(net: Net, around: str | None = None, context: int = 3) -> str:
    lines = [f"input {i.name} : {i.type}" + (" grad" if i.requires_grad else "")
             for i in net.inputs]
    names = [None] * len(lines) + [l.name for l in net.layers]
    lines += [layer_line(l) for l in net.layers]
    if around is None or around not in names:
        return "\n".join(lines) + "\n"
    at = names.index(around)
    lo, hi = max(0, at - context), min(len(lines), at + context + 1)
    shown = [(">> " if k == at else "   ") + lines[k] for k in range(lo, hi)]
    if lo > 0:
        shown.insert(0, f"   ... {lo} lines above")
    if hi < len(lines):
        shown.append(f"   ... {len(lines) - hi} lines below")
    return "\n".join(shown) + "\n"
