"""Ops that move data without arithmetic: flatten, reshape, concat, slice, transpose.

None of their backwards reads a forward value: the input shapes are static, so dX is a
reshape of dY, a piece of dY, or dY written into zeros. They cost no FLOPs.
"""
from __future__ import annotations

import math

import numpy as np

from bwplan.ir.types import TensorType
from bwplan.ops.opdef import AttrSpec, GradRule, OpCtx, OpDef, Port, zero_flops


def _axis(axis: int, rank: int, what: str = "axis") -> int:
    """A possibly negative axis as an index into a shape of `rank` dimensions."""
    if not -rank <= axis < rank:
        raise ValueError(f"{what} {axis} is out of range for a {rank}-D input")
    return axis % rank


def _as_input(ctx, saved, dout, index):
    return dout.reshape(ctx.inputs[index].shape)


# ---- flatten / reshape -----------------------------------------------------------------
def _flatten_infer(ctx: OpCtx) -> TensorType:
    shape = ctx.x.shape
    first = _axis(ctx.attrs["axis"], len(shape))
    last = _axis(ctx.attrs["end_axis"], len(shape), "end_axis")
    if last < first:
        raise ValueError(f"end_axis {ctx.attrs['end_axis']} comes before axis "
                         f"{ctx.attrs['axis']}")
    return ctx.x.with_shape(*shape[:first], math.prod(shape[first:last + 1]), *shape[last + 1:])


def _reshape_fwd(ctx, inputs, params, training, rng):
    return inputs[0].reshape(ctx.out.shape), {}


FLATTEN = OpDef(
    name="flatten",
    family="shape",
    doc="Merge dimensions axis..end_axis (inclusive) into one (Caffe Flatten).",
    ports=(Port("x"),),
    attrs=(AttrSpec("axis", "int", 1, doc="first dimension merged"),
           AttrSpec("end_axis", "int", -1, doc="last dimension merged")),
    infer=_flatten_infer,
    flops=zero_flops,
    grads=(GradRule("x", frozenset(), zero_flops, _as_input),),
    forward_ref=_reshape_fwd,
    kernels={"cpu": {"fwd": "shape.flatten_fwd", "dx:x": "shape.flatten_dx"},
             "cuda": {"fwd": "shape.tensor_copy", "dx:x": "shape.tensor_copy"}},
)


def _reshape_infer(ctx: OpCtx) -> TensorType:
    spec = ctx.attrs["shape"]
    spec = tuple(spec) if isinstance(spec, (tuple, list)) else (spec,)
    shape = ctx.x.shape
    dims = []
    for i, d in enumerate(spec):
        if d == 0:
            if i >= len(shape):
                raise ValueError(f"shape entry {i} is 0 (copy the input dimension) but the "
                                 f"input has only {len(shape)} dimensions")
            dims.append(shape[i])
        elif d == -1 or d > 0:
            dims.append(d)
        else:
            raise ValueError(f"shape entry {i} is {d}; entries are positive, 0 (copy) or -1")
    if dims.count(-1) > 1:
        raise ValueError(f"shape {list(spec)} has more than one -1 to infer")
    known = math.prod(d for d in dims if d != -1)
    if -1 in dims:
        if known == 0 or ctx.x.numel % known:
            raise ValueError(f"cannot infer the -1 in {list(spec)}: {ctx.x.numel} elements "
                             f"are not a multiple of {known}")
        dims[dims.index(-1)] = ctx.x.numel // known
    elif known != ctx.x.numel:
        raise ValueError(f"shape {list(spec)} holds {known} elements, the input "
                         f"{ctx.x.numel}")
    return ctx.x.with_shape(*dims)


RESHAPE = OpDef(
    name="reshape",
    family="shape",
    doc="Reinterpret the input with a new shape (Caffe Reshape): an entry 0 copies the input "
        "dimension at that position, one entry -1 is inferred from the element count.",
    ports=(Port("x"),),
    attrs=(AttrSpec("shape", "ints", doc="the new shape; 0 copies, -1 infers", at_least=-1),),
    infer=_reshape_infer,
    flops=zero_flops,
    grads=(GradRule("x", frozenset(), zero_flops, _as_input),),
    forward_ref=_reshape_fwd,
    kernels={"cpu": {"fwd": "shape.reshape_fwd", "dx:x": "shape.reshape_dx"},
             "cuda": {"fwd": "shape.tensor_copy", "dx:x": "shape.tensor_copy"}},
)


# ---- concat / slice --------------------------------------------------------------------
def _concat_infer(ctx: OpCtx) -> TensorType:
    first = ctx.x
    axis = _axis(ctx.attrs["axis"], len(first.shape))
    total = 0
    for i, t in enumerate(ctx.inputs):
        rest = t.shape[:axis] + t.shape[axis + 1:]
        if (t.dtype != first.dtype or len(t.shape) != len(first.shape)
                or rest != first.shape[:axis] + first.shape[axis + 1:]):
            raise ValueError(f"input {i} is {t} but input 0 is {first}; they may differ only "
                             f"in dimension {axis}")
        total += t.shape[axis]
    return first.with_shape(*first.shape[:axis], total, *first.shape[axis + 1:])


def _concat_fwd(ctx, inputs, params, training, rng):
    return np.concatenate(inputs, axis=ctx.attrs["axis"]), {}


def _concat_dx(ctx, saved, dout, index):
    axis = _axis(ctx.attrs["axis"], dout.ndim)
    begin = sum(t.shape[axis] for t in ctx.inputs[:index])
    end = begin + ctx.inputs[index].shape[axis]
    return np.take(dout, np.arange(begin, end), axis=axis)


CONCAT = OpDef(
    name="concat",
    family="shape",
    doc="Join inputs along `axis`; all other dimensions must agree (Caffe Concat).",
    ports=(Port("xs", variadic=True),),
    attrs=(AttrSpec("axis", "int", 1),),
    infer=_concat_infer,
    flops=zero_flops,
    grads=(GradRule("xs", frozenset(), zero_flops, _concat_dx),),
    forward_ref=_concat_fwd,
    kernels={"cpu": {"fwd": "shape.concat_fwd", "dx:xs": "shape.concat_dx"},
             "cuda": {"fwd": "shape.slab_put", "dx:xs": "shape.slab_take"}},
)


def _slice_infer(ctx: OpCtx) -> TensorType:
    shape = ctx.x.shape
    axis = _axis(ctx.attrs["axis"], len(shape))
    begin, end = ctx.attrs["begin"], ctx.attrs["end"]
    if not 0 <= begin < end <= shape[axis]:
        raise ValueError(f"slice [{begin}, {end}) is not a non-empty range inside dimension "
                         f"{axis} of size {shape[axis]}")
    return ctx.x.with_shape(*shape[:axis], end - begin, *shape[axis + 1:])


def _slice_fwd(ctx, inputs, params, training, rng):
    x = inputs[0]
    return np.take(x, np.arange(ctx.attrs["begin"], ctx.attrs["end"]),
                   axis=ctx.attrs["axis"]), {}


def _slice_dx(ctx, saved, dout, index):
    axis = _axis(ctx.attrs["axis"], dout.ndim)
    dx = np.zeros(ctx.x.shape, dtype=dout.dtype)
    where = [slice(None)] * dout.ndim
    where[axis] = slice(ctx.attrs["begin"], ctx.attrs["end"])
    dx[tuple(where)] = dout
    return dx


SLICE = OpDef(
    name="slice",
    family="shape",
    doc="The elements begin..end-1 along `axis`; Caffe's Slice layer becomes one of these "
        "per output.",
    ports=(Port("x"),),
    attrs=(AttrSpec("axis", "int", 1),
           AttrSpec("begin", "int", doc="first index kept"),
           AttrSpec("end", "int", doc="one past the last index kept")),
    infer=_slice_infer,
    flops=zero_flops,
    grads=(GradRule("x", frozenset(), zero_flops, _slice_dx),),
    forward_ref=_slice_fwd,
    kernels={"cpu": {"fwd": "shape.slice_fwd", "dx:x": "shape.slice_dx"},
             "cuda": {"fwd": "shape.slab_take", "dx:x": "shape.slice_dx"}},
)

# ---- transpose -------------------------------------------------------------------------
MAX_TRANSPOSE_RANK = 6   # the CUDA kernel's fixed-size shape record (shape.cu)


def _perm(ctx: OpCtx) -> tuple[int, ...]:
    perm = ctx.attrs["perm"]
    return tuple(perm) if isinstance(perm, (tuple, list)) else (perm,)


def _transpose_infer(ctx: OpCtx) -> TensorType:
    perm, shape = _perm(ctx), ctx.x.shape
    if sorted(perm) != list(range(len(shape))):
        raise ValueError(f"perm {list(perm)} is not a permutation of the {len(shape)} "
                         "dimensions")
    if len(shape) > MAX_TRANSPOSE_RANK:
        raise ValueError(f"a {len(shape)}-D transpose; at most {MAX_TRANSPOSE_RANK}-D")
    return ctx.x.with_shape(*(shape[p] for p in perm))


def _transpose_dx(ctx, saved, dout, index):
    return np.transpose(dout, np.argsort(_perm(ctx)))


TRANSPOSE = OpDef(
    name="transpose",
    family="shape",
    doc="Permute the dimensions: output dimension i is input dimension perm[i] (ONNX "
        "Transpose; ShuffleNet's channel shuffle is reshape, transpose, reshape).",
    ports=(Port("x"),),
    attrs=(AttrSpec("perm", "ints", doc="the input dimension each output dimension takes"),),
    infer=_transpose_infer,
    flops=zero_flops,
    grads=(GradRule("x", frozenset(), zero_flops, _transpose_dx),),
    forward_ref=lambda ctx, inputs, params, training, rng: (
        np.ascontiguousarray(np.transpose(inputs[0], _perm(ctx))), {}),
    kernels={"cpu": {"fwd": "shape.transpose_fwd", "dx:x": "shape.transpose_dx"},
             "cuda": {"fwd": "shape.permute", "dx:x": "shape.permute"}},
)

OPS = (FLATTEN, RESHAPE, CONCAT, SLICE, TRANSPOSE)
