"""The core of the planner: which tensors need a gradient.

A tensor needs a gradient exactly when it lies on a differentiable, non-stopped path from a
trainable parameter to a loss with non-zero weight. Two linear walks decide it:

* forward (topological order): `up[t]` is a witness that some trainable parameter (or an
  input that asks for its gradient) lies upstream of t along differentiable edges;
* backward (reverse order): `down[t]` is a witness that t reaches a loss along
  differentiable edges.

A witness is the next step of a proof (the edge or parameter it came from), so any decision
can be explained by following witnesses (`path_up`, `path_down`).

Example: `a = conv2d(x) frozen; b = relu(a); c = linear(b); loss = sce(c, y)`. Nothing above
`b` trains, so up[b] is None and no dX runs into b; `c` trains, so its dW runs, and its dX
into b is skipped ("nothing upstream of b trains").
"""
from __future__ import annotations

from collections.abc import Callable

from bwplan import ops as registry
from bwplan.ir.net import Edge, Net, ParamUse
from bwplan.records import record


# ---- witnesses: the next step of a proof ------------------------------------------------
@record
class TrainsHere:
    """up: the layer itself holds a trainable parameter use."""

    layer: str
    use: ParamUse


@record
class AsksForGrad:
    """up: a data input that asks for its gradient."""

    input: str


@record
class AlongEdge:
    """up: the edge's source has a trainable parameter upstream; down: the edge's
    destination reaches a loss."""

    edge: Edge


@record
class IsLoss:
    """down: the layer is a loss term (non-zero weight)."""

    layer: str


@record
class Feeds:
    """used: the layer's forward is needed because it is, or feeds, this loss or metric."""

    kind: str       # "loss" | "metric"
    target: str


UpWitness = TrainsHere | AsksForGrad | AlongEdge
DownWitness = IsLoss | AlongEdge


@record
class Flow:
    """Witness maps: name -> what proves it (None: nothing does)."""

    up: dict[str, UpWitness | None]       # tensor -> why a trainable parameter is upstream
    down: dict[str, DownWitness | None]   # tensor -> why it reaches a loss
    used: dict[str, Feeds | None]         # layer -> why its forward is needed
    source: dict        # tensor -> the parameter (or grad input) its `up` witness leads to
    loss: dict          # tensor -> the loss its `down` witness leads to

    def needs_grad(self, tensor: str) -> bool:
        return self.up.get(tensor) is not None and self.down.get(tensor) is not None


def edge_carries_gradient(net: Net, edge: Edge) -> bool:
    """Static facts about an edge: the port is differentiable, the edge is not stopped and
    the tensor is floating point. Trainability is decided by the walks."""
    if edge.stop_gradient:
        return False
    op = registry.OPS[net.layer(edge.dst).op]
    return op.port_for(edge.index).differentiable and net.tensor_type(edge.src).is_float


def edges_carrying_gradient(net: Net) -> dict[tuple[str, int], bool]:
    """`edge_carries_gradient` of every edge, keyed by (dst, index): cheaper to hash than
    the Edge itself."""
    return {(layer.name, edge.index): edge_carries_gradient(net, edge)
            for layer in net.layers for edge in layer.inputs}


def analyse(net: Net, trains: Callable[[ParamUse], bool],
            carries: dict[tuple[str, int], bool] | None = None) -> Flow:
    """The two walks; `carries` (from `edges_carrying_gradient`) when the caller has it."""
    if carries is None:
        carries = edges_carrying_gradient(net)

    up: dict = {}
    source: dict = {}
    for inp in net.inputs:
        up[inp.name] = AsksForGrad(inp.name) if inp.requires_grad else None
        source[inp.name] = inp.name if inp.requires_grad else None
    for layer in net.layers:
        witness = found = None
        for use in layer.params:
            if trains(use):
                witness, found = TrainsHere(layer.name, use), use.param
                break
        if witness is None:
            for edge in layer.inputs:
                if carries[edge.dst, edge.index] and up[edge.src] is not None:
                    witness, found = AlongEdge(edge), source[edge.src]
                    break
        up[layer.name] = witness
        source[layer.name] = found

    down: dict = {}
    loss: dict = {}
    used: dict = {}
    for layer in reversed(net.layers):
        role = registry.OPS[layer.op].role
        witness = IsLoss(layer.name) if layer.loss_weight != 0 else None
        found = layer.name if witness else None
        use = Feeds("loss", layer.name) if role == "loss" or layer.loss_weight != 0 else (
            Feeds("metric", layer.name) if role == "metric" else None)
        for edge in net.consumers(layer.name):
            if witness is None and carries[edge.dst, edge.index] \
                    and down[edge.dst] is not None:
                witness, found = AlongEdge(edge), loss[edge.dst]
            if use is None and used.get(edge.dst) is not None:
                use = used[edge.dst]
        down[layer.name] = witness
        loss[layer.name] = found
        used[layer.name] = use
    for inp in net.inputs:
        witness = found = None
        for edge in net.consumers(inp.name):
            if carries[edge.dst, edge.index] and down[edge.dst] is not None:
                witness, found = AlongEdge(edge), loss[edge.dst]
                break
        down[inp.name] = witness
        loss[inp.name] = found
    return Flow(up, down, used, source, loss)


def path_up(flow: Flow, tensor: str, limit: int = 64) -> tuple[str, ...]:
    """Names from a trainable parameter (or a grad input) down to `tensor`."""
    names: list[str] = []
    current = tensor
    for _ in range(limit):
        w = flow.up.get(current)
        if w is None:
            break
        if isinstance(w, TrainsHere):
            names.append(current)
            names.append(w.use.param)
            break
        if isinstance(w, AsksForGrad):
            names.append(current)
            break
        names.append(current)
        current = w.edge.src
    return tuple(reversed(names))


def path_down(flow: Flow, tensor: str, limit: int = 64) -> tuple[str, ...]:
    """Names from `tensor` to a loss."""
    names = [tensor]
    current = tensor
    for _ in range(limit):
        w = flow.down.get(current)
        if w is None or isinstance(w, IsLoss):
            break
        current = w.edge.dst
        names.append(current)
    return tuple(names)
