"""Backward components and what their gradient rules read, resolved once per op.

A component is one separately skippable piece of an op's work: its forward, the gradient
into one port (dX) or of one parameter slot (dW). `Component` is its typed form; the
strings an op module writes as `kernels` keys ("fwd", "dx:x", "dw:weight") are its
`key`, the authoring format, and nothing downstream splits them again.

`bind_needs` turns a rule's `needs` names into `Need`s bound to the op's inputs (which
input positions a port name means, or that a name is the output, a parameter slot or an
aux buffer). The planner (what stays alive), lowering (which buffers a step reads) and the
NumPy references (what a reference receives) all read this one answer.
"""
from __future__ import annotations

from dataclasses import dataclass

from bwplan.ops.opdef import Attrs, GradRule, OpDef


@dataclass(frozen=True, slots=True, order=True)
class Component:
    kind: str          # "fwd" | "dx" | "dw"
    wrt: str = ""      # dX: the port; dW: the parameter slot

    @property
    def key(self) -> str:
        """The name an op module's `kernels` table uses for this component."""
        return "fwd" if self.kind == "fwd" else f"{self.kind}:{self.wrt}"

    def __str__(self) -> str:
        return self.key

    @staticmethod
    def from_key(key: str) -> Component:
        """The typed form of a `kernels` key; read once, where the registry is built."""
        if key == "fwd":
            return FWD
        kind, sep, wrt = key.partition(":")
        if kind not in ("dx", "dw") or not sep or not wrt:
            raise ValueError(f"not a component: {key!r} (fwd, dx:<port> or dw:<slot>)")
        return Component(kind, wrt)


FWD = Component("fwd")


@dataclass(frozen=True, slots=True)
class Need:
    """One forward value a gradient rule reads."""

    name: str                    # the name in the rule's `needs`
    kind: str                    # "out" | "port" | "param" | "aux"
    inputs: tuple[int, ...] = ()  # "port": the input positions bound to the port
    variadic: bool = False       # "port": the rule receives a list, one per input


# (id(op), id(rule), needs, n_inputs) -> (op, rule, bound): the entry holds op and rule, so
# their ids cannot be reused while it lives. A large net binds the same few rules thousands
# of times, in the planner and in lowering.
_BOUND: dict[tuple, tuple] = {}


def bind_needs(op: OpDef, rule: GradRule, attrs: Attrs, n_inputs: int) -> tuple[Need, ...]:
    """The rule's needs for a layer of `op` with `n_inputs` inputs, in name order."""
    needs = frozenset(rule.needs_for(attrs))
    key = (id(op), id(rule), needs, n_inputs)
    found = _BOUND.get(key)
    if found is None:
        found = _BOUND[key] = (op, rule, _bind(op, rule, needs, n_inputs))
    return found[2]


def _bind(op: OpDef, rule: GradRule, needs, n_inputs: int) -> tuple[Need, ...]:
    ports = {p.name: p for p in op.ports}
    out = []
    for name in sorted(needs):
        if name == "out":
            out.append(Need(name, "out"))
        elif name in ports:
            bound = tuple(i for i in range(n_inputs) if op.port_for(i).name == name)
            out.append(Need(name, "port", bound, ports[name].variadic))
        elif op.slot(name) is not None:
            out.append(Need(name, "param"))
        elif op.aux_spec(name) is not None:
            out.append(Need(name, "aux"))
        else:
            raise KeyError(f"{op.name}: the rule for {rule.wrt} needs unknown {name!r}")
    return tuple(out)
