"""The backward components of a layer and the forward values each one reads.

A component is one separately skippable piece of backward work: the gradient into one
input edge (dX) or the gradient of one parameter use (dW). Its op's GradRule names the
forward values it reads; `values_read` maps those names to concrete tensors of this net.
"""
from __future__ import annotations

from dataclasses import dataclass

from bwplan import ops as registry
from bwplan.ir.net import Layer, Net
from bwplan.ops.opdef import GradRule, OpCtx, OpDef


@dataclass(frozen=True, slots=True)
class Value:
    """A forward value that outlives the forward because a backward component reads it."""

    name: str        # tensor name, or "<layer>:<aux>" for an aux buffer
    kind: str        # "activation" | "input" | "aux"
    nbytes: int


def op_ctx(net: Net, layer: Layer) -> OpCtx:
    return OpCtx(layer.attrs, tuple(net.tensor_type(e.src) for e in layer.inputs), layer.out)


def port_edges(op: OpDef, layer: Layer, port: str) -> list[int]:
    return [e.index for e in layer.inputs if op.port_for(e.index).name == port]


def dx_rule(op: OpDef, index: int) -> GradRule | None:
    return op.grad_for(op.port_for(index).name)


def values_read(net: Net, layer: Layer, rule: GradRule, ctx: OpCtx) -> tuple[Value, ...]:
    op = registry.OPS[layer.op]
    slots, ports = op.slot_names, op.port_names
    out: list[Value] = []
    for need in sorted(rule.needs_for(layer.attrs)):
        if need == "out":
            out.append(Value(layer.name, "activation", layer.out.nbytes))
        elif need in ports:
            for i in port_edges(op, layer, need):
                src = layer.inputs[i].src
                kind = "input" if net.input(src) is not None else "activation"
                out.append(Value(src, kind, net.tensor_type(src).nbytes))
        elif need in slots:
            continue  # parameters stay resident; they are not activations
        else:
            aux = op.aux_spec(need)
            if aux is None:
                raise KeyError(f"{op.name}: grad rule for {rule.wrt} needs unknown {need!r}")
            out.append(Value(f"{layer.name}:{need}", "aux", aux.nbytes(ctx)))
    return tuple(out)
