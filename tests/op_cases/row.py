"""What a test needs to know about one op, in one row: the Hypothesis strategy its NumPy
references and kernels are tested on, the PyTorch translation that every torch comparison
(the forward check, the training oracle, the benchmark's peer) runs, and the lines that put
it in a generated training net.

A row says nothing bwplan's `OpDef` already says (ports, attributes, defaults, gradient
rules): tests read those from the registry.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from hypothesis.strategies import SearchStrategy


@dataclass
class Case:
    """One drawn example: attributes as written (the registry fills in defaults), the input
    arrays, and the parameter arrays by slot."""
    attrs: dict
    inputs: list
    params: dict = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class NetUse:
    """How the op sits in a generated training net (op_cases/nets.py).

    `layers` are .bw lines that read the stem's tensors (nets.STEM: `x`, `f`, `e`, `g`, `y`,
    `t`) and their own; the last line is the op's layer, named as the op. `inputs` declares
    the further net inputs the lines read, the batch size written N. With `head`, the last
    layer's output reaches the loss through a linear layer of its own (a random gradient
    for every element of it); without, the lines put it in the objective themselves (a
    loss, a weighted layer) or it takes no gradient (a metric, a non-differentiable op).
    With `batch`, the op's inputs fix the batch size (written as that number in `inputs`,
    not N): the op trains in a net of its own at that batch.
    """
    layers: str
    inputs: str = ""
    head: bool = True
    batch: int = 0


# The op's torch translation: (attrs with defaults, input tensors, parameter tensors by slot,
# training) -> output tensor; a row with `deciding` also takes `hints`, bwplan's own values
# of the inputs, to settle the decisions at kinks that float32 leaves open (torch_support).
TorchFn = Callable[..., object]


@dataclass(frozen=True, slots=True)
class OpRow:
    cases: SearchStrategy
    net: NetUse
    torch: TorchFn | None
    no_torch: str = ""              # why there is no torch translation, when torch is None
    deciding: bool = False
    # the forward check against torch, by label ("" the op itself), where its cases must
    # differ from `cases` (a comment at the row says why); by default `cases`, once
    torch_cases: Mapping[str, SearchStrategy] | None = None
    # the benchmarks' translation (attrs, inputs, params) -> output, where a PyTorch user
    # after speed would write the op otherwise (torch's native kernel); checked against
    # bwplan's forward on `cases` like the torch translation
    peer: Callable[..., object] | None = None
    # why the cuda target refuses the op (it has no CUDA kernels), when it does; the CUDA
    # tests leave such an op out and check that it really has none
    no_cuda: str = ""

    def forward_checks(self) -> Mapping[str, SearchStrategy]:
        return self.torch_cases or ({"": self.cases} if self.torch is not None else {})

    def peer_translation(self) -> Callable[..., object] | None:
        """What the benchmarks' PyTorch peers run: `peer`, or the torch translation in
        training mode."""
        if self.peer is not None:
            return self.peer
        torch_fn = self.torch
        if torch_fn is None:
            return None
        return lambda attrs, inputs, params: torch_fn(attrs, inputs, params, True)
