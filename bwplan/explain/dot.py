"""`bwplan explain --format dot`: the net as a Graphviz graph, drawn over the plan's
minimal backward subgraph (`plan.backward_graph`). Edges along which the gradient flows
are solid; edges whose dX is skipped are grey and dashed; stop_gradient edges are marked.
Layers outside the backward subgraph (no backward work at all) are greyed out."""
from __future__ import annotations

from bwplan.plan.plan import Plan


def _q(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_dot(plan: Plan) -> str:
    net = plan.net
    bwd = plan.backward_graph
    lines = [f"digraph {_q(net.name)} {{", "  rankdir=TB;",
             '  node [shape=box, fontname="Helvetica", fontsize=10];',
             '  edge [fontname="Helvetica", fontsize=9];']
    for inp in net.inputs:
        label = _q(inp.name + "\n" + str(inp.type))
        lines.append(f"  {_q(inp.name)} [shape=ellipse, label={label}];")
    for lp in plan.layers:
        layer = net.layer(lp.name)
        dws = [f"d{u.slot}: {'yes' if d.needed else 'skip'}" for u, d in zip(layer.params, lp.dw)]
        label = "\n".join([lp.name, lp.op] + dws)
        runs = lp.name in bwd and bwd.nodes[lp.name]["backward"]
        style = ('style=filled, fillcolor="#eeeeee", color="#999999", fontcolor="#777777"'
                 if not runs else 'style=filled, fillcolor="#dff0ff"')
        if not lp.forward.needed:
            style += ", peripheries=2"
        lines.append(f"  {_q(lp.name)} [label={_q(label)}, {style}];")
    for lp in plan.layers:
        layer = net.layer(lp.name)
        for edge in layer.inputs:
            flows = bwd.has_edge(edge.src, lp.name) and \
                edge.index in bwd.edges[edge.src, lp.name]["dx_indices"]
            attrs = [] if flows else ['color="#aaaaaa"', "style=dashed"]
            if edge.stop_gradient:
                attrs.append('label="stop_gradient"')
            attr_text = f" [{', '.join(attrs)}]" if attrs else ""
            lines.append(f"  {_q(edge.src)} -> {_q(lp.name)}{attr_text};")
    lines.append("}")
    return "\n".join(lines) + "\n"
