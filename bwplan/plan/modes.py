"""Each layer's running mode, decided once for the plan: the op resolves its attributes
into a mode (batchnorm: `ops.norm.BatchNormMode`, which statistics normalise and whether
they update), and the planner adds whether the layer's scale/shift trains, because that
lives either in the layer (batchnorm `affine`) or in the per-channel layer that alone
reads it (Caffe's BatchNorm then Scale). The kernels read the same mode from the op."""
from __future__ import annotations

from dataclasses import replace
from typing import Any

from bwplan import ops as registry
from bwplan.ir.net import Layer, Net
from bwplan.records import record


@record
class LayerMode:
    mode: Any                # the op's mode object (ops.norm.BatchNormMode)
    scale_shift: str         # "trains" | "frozen" | "none"
    scale_shift_in: str      # the layer that holds the scale/shift ("" for none)

    def cell(self, layer: str) -> str:
        where = f" in {self.scale_shift_in}" if self.scale_shift_in not in ("", layer) else ""
        shift = "no scale/shift" if self.scale_shift == "none" else \
            f"scale/shift {self.scale_shift}{where}"
        return f"{self.mode.cell()}; {shift}"


def _learnable_uses(net: Net, layer: Layer) -> list[int]:
    return [i for i, u in enumerate(layer.params) if net.params[u.param].learnable]


def _per_channel_follower(net: Net, layer: Layer) -> Layer | None:
    """The sole reader of `layer` when all its learnable parameters are per-channel vectors
    of `layer`'s channels: the layer that scales and shifts what `layer` normalised."""
    readers = net.consumers(layer.name)
    if len(readers) != 1 or len(layer.out.shape) < 2:
        return None
    follower = net.layer(readers[0].dst)
    uses = _learnable_uses(net, follower)
    channels = (layer.out.shape[1],)
    if uses and all(net.params[follower.params[i].param].type.shape == channels
                    for i in uses):
        return follower
    return None


def attach_modes(net: Net, layer_plans: list) -> list:
    """layer_plans with `mode` set on the layers whose op has one."""
    by_name = {lp.name: lp for lp in layer_plans}
    out = []
    for lp in layer_plans:
        layer = net.layer(lp.name)
        op = registry.OPS[layer.op]
        if op.mode is None:
            out.append(lp)
            continue
        holder = layer if _learnable_uses(net, layer) else _per_channel_follower(net, layer)
        if holder is None:
            scale_shift, where = "none", ""
        else:
            dw = by_name[holder.name].dw
            trains = any(dw[i].needed for i in _learnable_uses(net, holder))
            scale_shift, where = ("trains" if trains else "frozen"), holder.name
        out.append(replace(lp, mode=LayerMode(op.mode(layer.attrs), scale_shift, where)))
    return out
