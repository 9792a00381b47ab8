"""The backward components of a layer and the forward values each one reads.

A component is one separately skippable piece of backward work: the gradient into one
input edge (dX) or the gradient of one parameter use (dW). Its op's GradRule names the
forward values it reads; `values_read` maps those names to concrete tensors of this net.
"""
from __future__ import annotations


from bwplan import ops as registry
from bwplan.ir.net import Layer, Net
from bwplan.ops.needs import bind_needs
from bwplan.ops.opdef import GradRule, OpCtx, OpDef
from bwplan.records import record


@record
class Value:
    """A forward value that outlives the forward because a backward component reads it."""

    name: str        # tensor name, or "<layer>:<aux>" for an aux buffer
    kind: str        # "activation" | "input" | "aux"
    nbytes: int


def op_ctx(net: Net, layer: Layer) -> OpCtx:
    return OpCtx(layer.attrs, tuple(net.tensor_type(e.src) for e in layer.inputs), layer.out)


def dw_flops(net: Net, layer: Layer, slot: str, rule: GradRule, ctx: OpCtx) -> int:
    """FLOPs of one planned dW component: the gradient of a partly frozen parameter whose
    rule works by rows costs its trainable rows' share."""
    use = layer.param_use(slot)
    param = net.params[use.param] if use is not None else None
    if rule.by_rows and param is not None and param.frozen_rows:
        return round(rule.flops(ctx) * param.trainable_fraction())
    return rule.flops(ctx)


def dx_rule(op: OpDef, index: int) -> GradRule | None:
    return op.grad_for(op.port_for(index).name)


def values_read(net: Net, layer: Layer, rule: GradRule, ctx: OpCtx) -> tuple[Value, ...]:
    """The tensors of this net that `rule` reads (parameters stay resident: not listed)."""
    op = registry.OPS[layer.op]
    out: list[Value] = []
    for need in bind_needs(op, rule, layer.attrs, len(layer.inputs)):
        if need.kind == "out":
            out.append(Value(layer.name, "activation", layer.out.nbytes))
        elif need.kind == "port":
            for i in need.inputs:
                src = layer.inputs[i].src
                kind = "input" if net.input(src) is not None else "activation"
                out.append(Value(src, kind, net.tensor_type(src).nbytes))
        elif need.kind == "aux":
            out.append(Value(f"{layer.name}:{need.name}", "aux",
                             op.aux_spec(need.name).nbytes(ctx)))
    return tuple(out)
