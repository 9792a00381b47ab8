"""The network IR: inputs, parameters and layers in a deterministic topological order,
with the NetworkX graph built once and frozen.

The graph (`Net.graph`, a frozen MultiDiGraph) is the IR's structure: a node per input
and layer, an edge per (source, layer, input position) carrying its `Edge`. The layers'
order is its topological sort (ir/build.py) and the consumer lists the planner's walks
follow are read from its out-edges once, here; the walks then run over those arrays,
which is what keeps planning 10,000 layers fast.

Every tensor is named by what produced it: an input's name or a layer's name. A layer has
one output. Parameters are shared objects; each layer refers to them through `ParamUse`s,
one per use, so a parameter used by two layers keeps a learning-rate multiplier per use.
"""
from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import networkx as nx

from bwplan.ir.types import TensorType
from bwplan.records import record
from bwplan.source import Span


@record
class Edge:
    """Tensor `src` feeds input `index` of layer `dst`."""

    src: str
    dst: str
    index: int
    stop_gradient: bool
    span: Span


@record
class ParamUse:
    """One use of a parameter by a layer. `origin` says where the lr multiplier was set."""

    param: str
    slot: str
    lr_mult: float
    decay_mult: float
    span: Span
    origin: str = "default"
    # the lr multiplier as written, before any freezing (what unfreezing restores)
    written_lr: float = 1.0
    # who froze this use ("" when it is not frozen): the source position of `frozen`, or
    # the --freeze pattern; decisions read this, never the display text in `origin`
    frozen_by: str = ""


# initial values a `.bw` may choose with `SLOT.init="..."` (runtime/init.py computes them);
# "bilinear" is Caffe's BilinearFiller, the fixed upsampling kernel of a deconvolution
CHOSEN_INITS = ("xavier", "zeros", "ones", "bilinear")


@record
class Param:
    name: str
    type: TensorType
    learnable: bool
    span: Span
    init: str = "xavier"
    # [start, stop) ranges of the leading axis kept exactly (--freeze 'fc.weight[0:1000]')
    frozen_rows: tuple[tuple[int, int], ...] = ()

    def trainable_rows(self) -> tuple[tuple[int, int], ...]:
        """The [start, stop) ranges of the leading axis that train; () when all do."""
        if not self.frozen_rows:
            return ()
        out, at = [], 0
        for a, b in sorted(self.frozen_rows):
            if a > at:
                out.append((at, a))
            at = max(at, b)
        if at < self.type.shape[0]:
            out.append((at, self.type.shape[0]))
        return tuple(out)

    def row_blocks(self) -> tuple[tuple[int, int], ...]:
        """Every row of the leading axis, cut into [start, stop) blocks at the edges between
        frozen and trainable rows; () when no row is frozen."""
        if not self.frozen_rows:
            return ()
        edges = {0, self.type.shape[0]}
        for a, b in self.frozen_rows:
            edges |= {a, b}
        cuts = sorted(edges)
        return tuple(zip(cuts, cuts[1:]))

    def trainable_fraction(self) -> float:
        rows = self.trainable_rows()
        return 1.0 if not self.frozen_rows else sum(b - a for a, b in rows) / self.type.shape[0]


@record
class Input:
    name: str
    type: TensorType
    requires_grad: bool
    span: Span
    # True: dimension 0 is the batch, which --input-shape, --batch and data sharding change;
    # False: the whole array goes with every batch at its declared shape (SSD's priors, and
    # its ground truth, whose rows name their image)
    batched: bool = True


@record
class Layer:
    name: str
    op: str
    attrs: Mapping[str, Any]
    inputs: tuple[Edge, ...]
    params: tuple[ParamUse, ...]
    out: TensorType
    loss_weight: float
    frozen: bool
    span: Span
    # where `frozen` came from, for explanations ("frozen at net.bw:3:40", "--freeze conv*")
    frozen_by: str = ""
    # the attributes as written, before freezing changed them (batchnorm's global_stats)
    written_attrs: Mapping[str, Any] | None = None

    def param_use(self, slot: str) -> ParamUse | None:
        for use in self.params:
            if use.slot == slot:
                return use
        return None


@dataclass(frozen=True)
class Net:
    name: str
    path: str
    inputs: tuple[Input, ...]
    params: Mapping[str, Param]
    layers: tuple[Layer, ...]
    graph: nx.MultiDiGraph = field(repr=False, compare=False)
    _layer_index: Mapping[str, int] = field(init=False, repr=False, compare=False)
    _input_index: Mapping[str, Input] = field(init=False, repr=False, compare=False)
    _consumers: Mapping[str, tuple[Edge, ...]] = field(init=False, repr=False, compare=False)
    _param_uses: Mapping[str, tuple[tuple[str, ParamUse], ...]] = field(
        init=False, repr=False, compare=False)
    # every tensor's type (inputs and layer outputs): the planner and lowering ask for
    # tens of thousands of them per plan
    _types: Mapping[str, TensorType] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        consumers = _consumers_of(self.graph)
        uses: dict[str, list[tuple[str, ParamUse]]] = {p: [] for p in self.params}
        for layer in self.layers:
            for use in layer.params:
                uses.setdefault(use.param, []).append((layer.name, use))
        object.__setattr__(self, "_layer_index",
                           MappingProxyType({l.name: i for i, l in enumerate(self.layers)}))
        object.__setattr__(self, "_input_index",
                           MappingProxyType({i.name: i for i in self.inputs}))
        object.__setattr__(self, "_consumers", consumers)
        object.__setattr__(self, "_param_uses",
                           MappingProxyType({k: tuple(v) for k, v in uses.items()}))
        types = {l.name: l.out for l in self.layers}
        types.update((i.name, i.type) for i in self.inputs)   # an input's name wins
        object.__setattr__(self, "_types", types)

    # ---- lookups -------------------------------------------------------------------
    def layer(self, name: str) -> Layer:
        return self.layers[self._layer_index[name]]

    def has_layer(self, name: str) -> bool:
        return name in self._layer_index

    def input(self, name: str) -> Input | None:
        return self._input_index.get(name)

    def position(self, name: str) -> int:
        """Topological position of a layer (inputs come before every layer)."""
        return self._layer_index.get(name, -1)

    def tensor_type(self, name: str) -> TensorType:
        found = self._types.get(name)
        return found if found is not None else self.layer(name).out   # KeyError: unknown

    def consumers(self, name: str) -> tuple[Edge, ...]:
        return self._consumers.get(name, ())

    def uses_of(self, param: str) -> tuple[tuple[str, ParamUse], ...]:
        """(layer name, use) for every use of a parameter, in topological order."""
        return self._param_uses.get(param, ())

    def tensor_names(self) -> list[str]:
        return [i.name for i in self.inputs] + [l.name for l in self.layers]

    def replace_layers(self, layers: tuple[Layer, ...]) -> "Net":
        """A new Net with the same structure and edited layers (same names, same order)."""
        return Net(self.name, self.path, self.inputs, self.params, layers, self.graph)


# frozen graph -> its consumer lists: every Net that a freezing policy derives from another
# shares its graph, and re-planning after a change of the frozen set builds one such Net
_CONSUMERS: "weakref.WeakKeyDictionary[nx.MultiDiGraph, Mapping]" = weakref.WeakKeyDictionary()


def _consumers_of(graph: nx.MultiDiGraph) -> Mapping[str, tuple[Edge, ...]]:
    """Each node's outgoing edges, in the graph's order. Only a frozen graph's are kept:
    an unfrozen one could change under them."""
    found = _CONSUMERS.get(graph)
    if found is None:
        succ = graph.succ
        found = MappingProxyType({n: tuple(data["edge"] for keyed in succ[n].values()
                                           for data in keyed.values()) for n in graph})
        if nx.is_frozen(graph):
            _CONSUMERS[graph] = found
    return found


def make_graph(inputs, layers) -> nx.MultiDiGraph:
    """The IR's graph: nodes `kind` "input" | "layer" (with `op`), one edge per input of a
    layer keyed by its position, with `stop_gradient` and the `Edge` itself."""
    g = nx.MultiDiGraph()
    for inp in inputs:
        g.add_node(inp.name, kind="input")
    for layer in layers:
        g.add_node(layer.name, kind="layer", op=layer.op)
    for layer in layers:
        for edge in layer.inputs:
            g.add_edge(edge.src, layer.name, key=edge.index, stop_gradient=edge.stop_gradient,
                       edge=edge)
    return nx.freeze(g)
