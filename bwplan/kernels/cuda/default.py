"""The launch geometry a CUDA kernel gets when its family module has no row for it.

A kernel without a row is launched by the default of its component kind, with its
arguments bound *by the names of its C parameters*, read from its `extern "C"` signature
in cuda/<family>.cu. Binding by name instead of by position means a default launch cannot
pass arguments in the wrong order: a parameter whose name binds to nothing fails when the
kernel table is built (an InternalError naming the kernel and the parameter), not on the
device.

The defaults, by component kind:

    fwd   grid-stride over the output's elements (limits.grid_stride)
    dx    grid-stride over the elements of the input the gradient goes to
    dw    one block of THREADS per element of the parameter (limits.per_channel): each
          block reduces the batch for its own weight, e.g. a per-channel slope

and the names a parameter may carry:

    a port, parameter slot or aux buffer   that tensor (fwd: the forward's; dx, dw: the
                                           saved value, a null pointer when the rule's
                                           `needs` leave it out for these attributes)
    out                                    fwd: the output; dx, dw: the saved output
    dout                                   dx, dw: the incoming gradient
    dx, dw                                 dx, dw: the gradient written
    n                                      the element count the grid strides over (dw:
                                           the elements of the op's first input)
    channels, inner                        dimension 1 of the first input and the product
                                           of the dimensions after it (1 for a 1-D input)
    index                                  dx: the input position (variadic ports)
    accumulate                             dx, dw: add to the gradient instead of writing it
    an attribute                           its value: a float as float, an int or bool as
                                           int, long long for an int attribute
                                           (choice, ints and floats attributes need a row)

An op whose kernel needs anything else (several launches, a workspace, a dtype code, a
random stream) keeps a row in its family module's LAUNCH table.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from bwplan.errors import InternalError
from bwplan.kernels.cuda.limits import (Launch, f32, flag, grid_stride, i32, i64,
                                        per_channel, ptr)
from bwplan.ops.needs import Component
from bwplan.ops.opdef import OpDef
from bwplan.resources import resource_dir

_SIGNATURE = re.compile(r'extern\s+"C"\s+__global__\s+void\s+(?:__launch_bounds__\([^)]*\)\s*)?'
                        r'(\w+)\s*\(([^)]*)\)')


@dataclass(frozen=True, slots=True)
class CParam:
    name: str
    ctype: str          # "pointer", or the scalar type: "float", "int", "long long", ...


@lru_cache(maxsize=None)
def signatures(source: str) -> dict[str, tuple[CParam, ...]]:
    """kernel name -> its parameters, for every extern "C" kernel of cuda/<source>."""
    text = (resource_dir("cuda") / source).read_text(encoding="utf-8")
    text = re.sub(r"//[^\n]*", "", text)
    found = {}
    for m in _SIGNATURE.finditer(text):
        params = []
        for raw in m.group(2).split(","):
            words = raw.replace("*", " * ").split()
            if not words:
                continue
            name, kind = words[-1], " ".join(w for w in words[:-1] if w != "const")
            # a type no default passes (unsigned long long, ...) binds to nothing
            params.append(CParam(name, "pointer" if "*" in kind else kind))
        found[m.group(1)] = tuple(params)
    return found


def _ncs(ctx) -> tuple[int, int]:
    shape = ctx.x.shape
    return (shape[1] if len(shape) > 1 else 1), math.prod(shape[2:])


def _tensor_names(op: OpDef, kind: str) -> set[str]:
    names = {s.name for s in op.params} | {a.name for a in op.aux} | {"out"}
    return names | {p.name for p in op.ports if not p.variadic}


def _scalar(op: OpDef, param: CParam, value_of: Callable[[str], object]):
    """The binder of a scalar parameter: a count, a flag or an attribute."""
    spec = op.attr(param.name)
    if spec is not None:
        if spec.kind == "float" and param.ctype == "float":
            return lambda ctx, v: f32(ctx.attrs[spec.name])
        if spec.kind == "bool" and param.ctype == "int":
            return lambda ctx, v: flag(ctx.attrs[spec.name])
        if spec.kind == "int" and param.ctype in ("int", "long long"):
            cast = i32 if param.ctype == "int" else i64
            return lambda ctx, v: cast(ctx.attrs[spec.name])
        return None
    return value_of(param.name)


def _binder(op: OpDef, kind: str, param: CParam):
    """A function (ctx, values) -> the argument for `param`, or None if nothing binds.
    `values` maps the call's names (tensors, "n", "index", ...) to their values."""
    if param.ctype == "pointer":
        if param.name in _tensor_names(op, kind) or param.name in (
                {"dout", "dx"} if kind == "dx" else {"dout", "dw"} if kind == "dw" else ()):
            return lambda ctx, v: ptr(v.get(param.name))
        return None

    def counts(name: str):
        if name == "n" and param.ctype == "long long":
            return lambda ctx, v: i64(v["n"])
        if name == "channels" and param.ctype == "int":
            return lambda ctx, v: i32(_ncs(ctx)[0])
        if name == "inner" and param.ctype == "long long":
            return lambda ctx, v: i64(_ncs(ctx)[1])
        if name == "index" and kind == "dx" and param.ctype == "int":
            return lambda ctx, v: i32(v["index"])
        if name == "accumulate" and kind != "fwd" and param.ctype == "int":
            return lambda ctx, v: flag(v["accumulate"])
        return None
    return _scalar(op, param, counts)


def _bind_all(op: OpDef, kind: str, kernel: str, params: tuple[CParam, ...]):
    binders = []
    for p in params:
        b = _binder(op, kind, p)
        if b is None:
            raise InternalError(f"the cuda kernel {kernel} of {op.name} has no launch row, and "
                                f"its parameter {p.ctype} {p.name!r} binds to nothing a "
                                f"default {kind} launch knows (bwplan/kernels/cuda/default.py)")
        binders.append(b)
    return binders


def default_launch(op: OpDef, component: str, source: str,
                   kernel: str) -> Callable[..., list[Launch]]:
    """The launch function of `kernel` (in cuda/`source`) for `component` of `op`, with the
    calling convention of bwplan/kernels/cuda/__init__.py."""
    kind = Component.from_key(component).kind
    params = signatures(source).get(kernel)
    if params is None:
        raise InternalError(f"cuda/{source} has no extern \"C\" kernel {kernel} "
                            f"(named by {op.name} {component})")
    binders = _bind_all(op, kind, kernel, params)

    def args(ctx, values) -> tuple:
        return tuple(b(ctx, values) for b in binders)

    if kind == "fwd":
        def fwd(ctx, inputs, params_, out, aux, training, env) -> list[Launch]:
            values = {p.name: a for p, a in zip(op.ports, inputs) if not p.variadic}
            values.update(params_)
            values.update(aux)
            values.update(out=out, n=ctx.out.numel)
            return [grid_stride(kernel, ctx.out.numel, env, *args(ctx, values))]
        return fwd
    if kind == "dx":
        def dx(ctx, saved, dout, index, out, accumulate, env) -> list[Launch]:
            n = ctx.inputs[index].numel
            values = dict(saved, dout=dout, dx=out, n=n, index=index, accumulate=accumulate)
            return [grid_stride(kernel, n, env, *args(ctx, values))]
        return dx
    if kind == "dw":
        slot = op.slot(Component.from_key(component).wrt)

        def dw(ctx, saved, dout, out, accumulate, env) -> list[Launch]:
            count = math.prod(slot.shape(ctx))
            values = dict(saved, dout=dout, dw=out, n=ctx.x.numel, accumulate=accumulate)
            return [per_channel(kernel, count, *args(ctx, values))]
        return dw
    raise InternalError(f"{op.name}: unknown component {component!r}")
