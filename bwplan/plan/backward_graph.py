"""The minimal backward subgraph of a plan, as a NetworkX DiGraph users can query.

Nodes are tensors (inputs and layers). A node is in the subgraph when its layer runs
backward work, when a dX writes its gradient, or when a backward reads its forward value;
an edge `src -> dst` (forward direction) is in it when the dX along it runs or dst's
backward reads src. Attributes:

- node: `kind` ("input" | "layer"), `op` (layers), `backward` (the layer runs a dX or
  dW), `dx` (the inputs it computes a gradient into), `dw` (the parameters whose
  gradient it computes), `grad` (some dX writes this tensor's gradient), `kept` (its
  forward value is kept for the backward), `keeps` (the values its backward reads);
- edge: `dx` (the gradient flows along it), `indices` (the input positions it binds, the
  ones whose dX runs in `dx_indices`), `kept` (dst's backward reads src's value).

    >>> import networkx as nx
    >>> nx.ancestors(plan.backward_graph, "fc1")      # what fc1's gradient flows into

Built from the plan's decisions on first use (`Plan.backward_graph`); nothing is decided
here.
"""
from __future__ import annotations

import networkx as nx


def backward_subgraph(plan) -> nx.DiGraph:
    net = plan.net
    g = nx.DiGraph(name=net.name)

    def node(name: str) -> None:
        if name not in g:
            inp = net.input(name)
            kind = "input" if inp is not None else "layer"
            extra = {} if inp is not None else {"op": net.layer(name).op}
            g.add_node(name, kind=kind, **extra, backward=False, dx=(), dw=(), grad=False,
                       kept=name in plan.kept, keeps=())

    for lp in plan.layers:
        layer = net.layer(lp.name)
        reads = set(lp.keeps)
        dx = tuple(e.src for e, d in zip(layer.inputs, lp.dx) if d.needed)
        dw = tuple(u.param for u, d in zip(layer.params, lp.dw) if d.needed)
        if not (dx or dw):
            continue
        node(lp.name)
        g.nodes[lp.name].update(backward=True, dx=dx, dw=dw, keeps=lp.keeps)
        for e, d in zip(layer.inputs, lp.dx):
            if not (d.needed or e.src in reads):
                continue
            node(e.src)
            if d.needed:
                g.nodes[e.src]["grad"] = True
            if g.has_edge(e.src, lp.name):
                data = g.edges[e.src, lp.name]
                data["indices"] += (e.index,)
                data["dx_indices"] += (e.index,) if d.needed else ()
                data["dx"] = data["dx"] or d.needed
            else:
                g.add_edge(e.src, lp.name, dx=d.needed, indices=(e.index,),
                           dx_indices=(e.index,) if d.needed else (), kept=e.src in reads)
    return nx.freeze(g)
