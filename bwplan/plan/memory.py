"""A static estimate of peak activation memory for one training step.

Counts inputs, activations, aux buffers kept for backward, and activation gradients;
parameters and their gradients are resident in any case and are not counted. The schedule
is the one the runtime follows: forward in topological order, freeing each tensor after its
last forward use unless the backward reads it; then backward in reverse order, where an
input gradient lives from the first dX that writes it until its producer's backward has
run, and a kept value is freed after its last backward reader.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping

from bwplan.ir.net import Net


def peak_bytes(net: Net, kept_bytes: Mapping[str, int], readers: Mapping[str, Iterable[str]],
               dx_edges: Iterable[tuple[str, str]], outputs: set[str]) -> int:
    """kept_bytes: value name -> bytes for every value kept for backward ("<layer>:<aux>"
    for aux buffers); readers: value -> layers whose backward reads it; dx_edges: (layer,
    src) for every dX that runs; outputs: tensors the step returns (losses, metrics)."""
    position = {l.name: p for p, l in enumerate(net.layers)}
    size = {i.name: i.type.nbytes for i in net.inputs}
    size.update({l.name: l.out.nbytes for l in net.layers})
    last_use: dict[str, int] = {}
    for pos, layer in enumerate(net.layers):
        for e in layer.inputs:
            last_use[e.src] = pos
    aux_at: dict[int, int] = {}
    for name, nbytes in kept_bytes.items():
        if name not in size:
            pos = position[name.rsplit(":", 1)[0]]
            aux_at[pos] = aux_at.get(pos, 0) + nbytes

    inputs = {i.name for i in net.inputs}  # the caller holds the batch for the whole step
    live = sum(size[i.name] for i in net.inputs)
    peak = live
    for pos, layer in enumerate(net.layers):
        live += size[layer.name] + aux_at.get(pos, 0)
        peak = max(peak, live)
        for src in {e.src for e in layer.inputs}:
            if last_use[src] == pos and src not in kept_bytes and src not in outputs \
                    and src not in inputs:
                live -= size[src]
        if layer.name not in last_use and layer.name not in kept_bytes \
                and layer.name not in outputs:
            live -= size[layer.name]

    freed_at: dict[int, int] = {}
    for value, layers in readers.items():
        pos = min(position[l] for l in layers)
        freed_at[pos] = freed_at.get(pos, 0) + kept_bytes[value]
    dx_into: dict[str, list[str]] = {}
    for layer_name, src in dx_edges:
        dx_into.setdefault(layer_name, []).append(src)
    grads: set[str] = set()
    for pos in range(len(net.layers) - 1, -1, -1):
        name = net.layers[pos].name
        for src in dx_into.get(name, ()):
            if src not in grads:
                grads.add(src)
                live += size[src]
        peak = max(peak, live)
        if name in grads:  # the producer's backward has consumed its output's gradient
            grads.discard(name)
            live -= size[name]
        live -= freed_at.get(pos, 0)
    return peak
