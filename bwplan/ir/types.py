"""Tensor types: an element type and a static shape."""
from __future__ import annotations

import math
from dataclasses import field

from bwplan.records import record

# The largest extent of a dimension, and magnitude of an integer attribute: kernels index
# with 64-bit integers, and products of a few such extents must not overflow them.
MAX_EXTENT = 2**31 - 1

DTYPE_BYTES = {"f16": 2, "bf16": 2, "f32": 4, "f64": 8, "i32": 4, "i64": 8, "u8": 1, "bool": 1}
FLOAT_DTYPES = frozenset({"f16", "bf16", "f32", "f64"})


@record
class TensorType:
    dtype: str
    shape: tuple[int, ...]
    # computed once: the planner asks for sizes many times per layer
    numel: int = field(init=False, repr=False, compare=False)
    nbytes: int = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        numel = math.prod(self.shape)
        object.__setattr__(self, "numel", numel)
        object.__setattr__(self, "nbytes", numel * DTYPE_BYTES[self.dtype])

    @property
    def is_float(self) -> bool:
        return self.dtype in FLOAT_DTYPES

    def with_shape(self, *shape: int) -> "TensorType":
        return TensorType(self.dtype, tuple(int(d) for d in shape))

    def __str__(self) -> str:
        return f"{self.dtype}[{', '.join(str(d) for d in self.shape)}]"
