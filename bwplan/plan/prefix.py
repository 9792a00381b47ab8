"""The frozen prefix: the layers whose output depends on no trainable parameter (losses and
metrics aside, which are computed every step). Their
forward gives the same result every epoch for the same sample when every layer in it is
deterministic, so its boundary tensors can be computed once and cached."""
from __future__ import annotations


from bwplan import ops as registry
from bwplan.ir.net import Net
from bwplan.records import record


@record
class FrozenPrefix:
    layers: tuple[str, ...]
    boundary: tuple[str, ...]      # prefix tensors read by layers outside the prefix
    boundary_bytes: int            # per batch
    flops: int                     # forward FLOPs a cache saves per batch
    cacheable: bool
    blockers: tuple[str, ...]      # non-deterministic layers that forbid caching
    reason: str


def frozen_prefix(net: Net, trains, layer_flops: dict[str, int]) -> FrozenPrefix:
    depends: dict[str, bool] = {i.name: False for i in net.inputs}
    for layer in net.layers:
        # a loss or metric gives one value per batch, not one per sample, and is wanted every
        # step: it stays out of the prefix (with what reads it), its inputs are the boundary
        per_batch = registry.OPS[layer.op].role in ("loss", "metric")
        depends[layer.name] = per_batch or any(trains(u) for u in layer.params) or any(
            depends[e.src] for e in layer.inputs)
    prefix = [l for l in net.layers if not depends[l.name]]
    names = {l.name for l in prefix}
    boundary = []
    for layer in prefix:
        consumers = net.consumers(layer.name)
        if any(c.dst not in names for c in consumers) or not consumers:
            boundary.append(layer.name)
    blockers = tuple(l.name for l in prefix
                     if not registry.OPS[l.op].is_deterministic(l.attrs))
    flops = sum(layer_flops[l.name] for l in prefix)
    if not prefix:
        reason = "every layer depends on a trainable parameter"
        cacheable = False
    elif blockers:
        reason = ("not cacheable: " + ", ".join(blockers[:5]) +
                  " give a different output each step for the same sample")
        cacheable = False
    else:
        reason = (f"deterministic: the outputs of its {len(boundary)} boundary tensor(s) can "
                  "be computed once per sample and reused every epoch")
        cacheable = True
    return FrozenPrefix(tuple(l.name for l in prefix), tuple(boundary),
                        sum(net.tensor_type(b).nbytes for b in boundary), flops, cacheable,
                        blockers, reason)
