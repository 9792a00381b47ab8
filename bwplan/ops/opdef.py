"""What bwplan knows about one op, in one record.

An `OpDef` holds the op's tensor inputs (ports) and which are differentiable, its attributes,
its parameter slots, its shape rule, its forward FLOPs, and one `GradRule` per input or
parameter. A GradRule says which forward values its backward reads (`needs`): the planner
keeps exactly those tensors for the backward that will run. Each rule also carries a plain
NumPy reference that receives *only* what it declared it needs, so a wrong `needs` fails the
op tests instead of silently under-counting memory.

Names used in `needs`: a port name (the input tensor), a parameter slot name, "out" (the
op's output), or the name of an aux buffer the forward saves for the backward (`AuxSpec`,
e.g. the argmax of a max pool or the mask of a dropout).

This module imports NumPy only for types; the planner never calls the references.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from bwplan.ir.types import MAX_EXTENT, TensorType

Attrs = Mapping[str, Any]


class _Required:
    def __repr__(self) -> str:
        return "REQUIRED"


REQUIRED: Any = _Required()

# Attribute kinds: what a value written in a .bw call may be.
ATTR_KINDS = ("int", "float", "bool", "ints", "floats", "choice")


@dataclass(frozen=True, slots=True)
class Port:
    """A tensor input of an op. A variadic port takes one or more tensors and comes last.
    `classes_of` names the port whose dimension 1 counts the classes this port's integer
    values index (a label); the data checker then demands each value be a class or the op's
    `ignore_label`."""

    name: str
    differentiable: bool = True
    variadic: bool = False
    classes_of: str | None = None


@dataclass(frozen=True, slots=True)
class AttrSpec:
    """An attribute and the values it admits. The bounds apply to every element of a list;
    `arity` lists the lengths a list may have (empty: any). Numbers are always finite and
    integers at most MAX_EXTENT in magnitude. The builder checks a written value against
    these before any shape rule or kernel sees it; defaults are trusted."""

    name: str
    kind: str
    default: Any = REQUIRED
    choices: tuple[str, ...] = ()
    doc: str = ""
    at_least: float | None = None
    above: float | None = None
    at_most: float | None = None
    below: float | None = None
    arity: tuple[int, ...] = ()

    def problem(self, value: Any) -> str | None:
        """Why `value` (already of the right kind) is not admitted, or None."""
        if self.kind in ("int", "float", "ints", "floats"):
            items = value if isinstance(value, tuple) else (value,)
            if isinstance(value, tuple) and self.arity and len(value) not in self.arity:
                lengths = " or ".join(map(str, self.arity))
                return f"'{self.name}' takes {lengths} value(s), {len(value)} given"
            for v in items:
                why = self._bound_problem(v)
                if why:
                    return why
        return None

    def _bound_problem(self, v: float) -> str | None:
        if v != v or v in (float("inf"), float("-inf")):
            return f"'{self.name}' must be a finite number, not {v}"
        if isinstance(v, int) and abs(v) > MAX_EXTENT:
            return f"'{self.name}' is {v}, beyond the limit of {MAX_EXTENT}"
        checks = ((self.at_least, lambda b: v >= b, "at least"),
                  (self.above, lambda b: v > b, "greater than"),
                  (self.at_most, lambda b: v <= b, "at most"),
                  (self.below, lambda b: v < b, "less than"))
        for bound, ok, words in checks:
            if bound is not None and not ok(bound):
                return f"'{self.name}' must be {words} {bound:g}, got {v:g}"
        return None


@dataclass(frozen=True, slots=True)
class OpCtx:
    """The static facts an op's rules are computed from."""

    attrs: Attrs
    inputs: tuple[TensorType, ...]
    out: TensorType | None = None

    @property
    def x(self) -> TensorType:
        return self.inputs[0]


def _always(attrs: Attrs) -> bool:
    return True


@dataclass(frozen=True, slots=True)
class ParamSlot:
    """A parameter the op owns. `learnable=False` marks state that never trains (running
    statistics). `enabled` switches an optional slot off (e.g. `bias=false`)."""

    name: str
    shape: Callable[[OpCtx], tuple[int, ...]]
    enabled: Callable[[Attrs], bool] = _always
    learnable: bool = True
    init: str = "xavier"


@dataclass(frozen=True, slots=True)
class AuxSpec:
    """A buffer the forward saves only for the backward (argmax indices, dropout mask).
    `dtype` "same" means the element type of the op's first input."""

    name: str
    shape: Callable[[OpCtx], tuple[int, ...]]
    dtype: str = "same"

    def type(self, ctx: OpCtx) -> TensorType:
        dtype = ctx.x.dtype if self.dtype == "same" else self.dtype
        return TensorType(dtype, tuple(self.shape(ctx)))

    def nbytes(self, ctx: OpCtx) -> int:
        return self.type(ctx).nbytes


# reference backward: (ctx, saved values, d(out), input index) -> gradient
GradReference = Callable[[OpCtx, Mapping[str, Any], Any, int], Any]
# reference forward: (ctx, inputs, params, training, rng) -> (out, aux)
ForwardReference = Callable[..., tuple[Any, dict[str, Any]]]


@dataclass(frozen=True, slots=True)
class GradRule:
    """How to compute the gradient with respect to one port or parameter slot."""

    wrt: str
    needs: frozenset[str] | Callable[[Attrs], frozenset[str]]
    flops: Callable[[OpCtx], int]
    reference: GradReference | None = None
    # the gradient of a parameter's leading-axis rows reads only the same channels
    # (dimension 1) of d(out), at that share of the FLOPs: a partly frozen parameter
    # computes its trainable rows only (linear and conv weight and bias)
    by_rows: bool = False
    # the gradient is d(out) summed over every axis but 1 (a bias): lowering pairs it with
    # the step that writes d(out), so a target can sum in that step's pass (Step.sum_of)
    channel_sum: bool = False

    def needs_for(self, attrs: Attrs) -> frozenset[str]:
        return self.needs(attrs) if callable(self.needs) else self.needs


@dataclass(frozen=True)  # no slots: cached_property needs an instance dict
class OpDef:
    name: str
    family: str
    doc: str
    ports: tuple[Port, ...]
    infer: Callable[[OpCtx], TensorType]
    flops: Callable[[OpCtx], int]
    attrs: tuple[AttrSpec, ...] = ()
    params: tuple[ParamSlot, ...] = ()
    grads: tuple[GradRule, ...] = ()
    aux: tuple[AuxSpec, ...] = ()
    # "layer": an ordinary op; "loss": its scalar output is a loss term (weight 1 unless
    # given); "metric": a non-differentiable output such as accuracy.
    role: str = "layer"
    # False when the output for a sample depends on anything but that sample and the
    # parameters (dropout's randomness, batch statistics): such a layer cannot be cached.
    deterministic: bool | Callable[[Attrs], bool] = True
    # How freezing a layer changes its attributes (batchnorm switches to stored statistics).
    on_freeze: Callable[[Attrs], Attrs] | None = None
    # The running mode the attributes resolve to (batchnorm's BatchNormMode), decided once:
    # the planner records it on the layer's plan, explain shows it, the kernels read it.
    mode: Callable[[Attrs], Any] | None = None
    forward_ref: ForwardReference | None = None
    # reference of the state a training forward updates in place (batchnorm's running
    # statistics): (ctx, inputs, params) -> None; compiled kernels do the same
    state_update_ref: Callable[..., None] | None = None
    # kernel names per component ("fwd", "dx:<port>", "dw:<slot>") for each target
    kernels: Mapping[str, Mapping[str, str]] = field(default_factory=dict)
    # True for an elementwise op of one input whose output type is its input's and whose
    # forward may write over its input (relu): where nothing else reads that input, lowering
    # has the producer write straight into this op's output and runs this op there in place
    # (Step.applied_by); a target whose kernel for the producer can apply this op in its own
    # output write does so, and runs nothing for this op
    epilogue: bool = False

    # ---- lookups -------------------------------------------------------------------
    @cached_property
    def port_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.ports)

    @cached_property
    def slot_names(self) -> frozenset[str]:
        return frozenset(p.name for p in self.params)

    def attr(self, name: str) -> AttrSpec | None:
        for spec in self.attrs:
            if spec.name == name:
                return spec
        return None

    def port_for(self, index: int) -> Port:
        """The port that the input at position `index` binds to."""
        if index < len(self.ports):
            return self.ports[index]
        last = self.ports[-1]
        if last.variadic:
            return last
        raise IndexError(index)

    def arity_ok(self, count: int) -> bool:
        if self.ports and self.ports[-1].variadic:
            return count >= len(self.ports)
        return count == len(self.ports)

    def grad_for(self, wrt: str) -> GradRule | None:
        for rule in self.grads:
            if rule.wrt == wrt:
                return rule
        return None

    def param_slots(self, attrs: Attrs) -> tuple[ParamSlot, ...]:
        return tuple(p for p in self.params if p.enabled(attrs))

    def slot(self, name: str) -> ParamSlot | None:
        for p in self.params:
            if p.name == name:
                return p
        return None

    def is_deterministic(self, attrs: Attrs) -> bool:
        d = self.deterministic
        return d(attrs) if callable(d) else d

    def aux_spec(self, name: str) -> AuxSpec | None:
        for a in self.aux:
            if a.name == name:
                return a
        return None


def on_every_target(names: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """The `kernels` of an op whose CPU and CUDA kernels carry the same names."""
    return {"cpu": dict(names), "cuda": dict(names)}


def zero_flops(ctx: OpCtx) -> int:
    return 0


def out_numel(ctx: OpCtx) -> int:
    assert ctx.out is not None
    return ctx.out.numel


def in_numel(ctx: OpCtx) -> int:
    return ctx.x.numel


def same_as_input(ctx: OpCtx) -> TensorType:
    return ctx.x
