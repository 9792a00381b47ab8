"""`bwplan explain --caffe`: Caffe's own decision lines, exactly as Caffe logs them, followed
by the places where bwplan's own plan computes less than Caffe, and why.

The decision lines come first and unchanged so that `diff` against a Caffe log works; every
line after them starts with '#'.
"""
from __future__ import annotations

from bwplan.caffe.log import backward_lines
from bwplan.explain.grouping import render_findings
from bwplan.plan.decisions import why_no_backward
from bwplan.plan.plan import Plan


def differences(imported, plan: Plan) -> list[str]:
    """Where Caffe runs backward work that bwplan's plan skips: whole layers, bottom
    gradients and parameter gradients, each with bwplan's reason."""
    net = plan.net
    out = []
    for layer, ir_names in zip(imported.caffe.layers, imported.built_as):
        if not ir_names or not layer.need_backward:
            continue
        plans = [plan.layer(n) for n in ir_names if net.has_layer(n)]
        if not plans:
            continue
        if not any(p.has_backward for p in plans):
            reason = why_no_backward(plans).text
            out.append(f"# {layer.name}: Caffe runs its backward; bwplan runs none ({reason})")
            continue
        if len(plans) == 1:
            lp = plans[0]
            ir_layer = net.layer(lp.name)
            for i, bottom in enumerate(layer.bottoms):
                if bottom.propagate and i < len(lp.dx) and not lp.dx[i].needed:
                    out.append(f"# {layer.name}: Caffe computes the gradient into "
                               f"{ir_layer.inputs[i].src}; bwplan skips it "
                               f"({lp.dx[i].reason.text})")
            for i, param in enumerate(layer.params):
                if param.propagate and i < len(lp.dw) and not lp.dw[i].needed:
                    out.append(f"# {layer.name}: Caffe computes the gradient of "
                               f"{ir_layer.params[i].param}; bwplan skips it "
                               f"({lp.dw[i].reason.text})")
                elif param.propagate and i >= len(lp.dw):
                    out.append(f"# {layer.name}: Caffe computes the gradient of its param "
                               f"{param.display_name}, which bwplan does not model as a "
                               "trained parameter")
    return out


def render_caffe_view(imported, plan: Plan) -> str:
    lines = backward_lines(imported.caffe)
    diffs = differences(imported, plan)
    if diffs:
        lines.append("# bwplan's own plan computes less than Caffe here:")
        lines.extend(diffs)
    lines.extend(render_findings(imported.warnings, "# "))
    return "\n".join(lines) + "\n"


def render_caffe_only(state, problems) -> str:
    """Caffe's decision lines for a net bwplan cannot plan, then why it cannot, one '#'
    line per problem, so that the lines still diff against a Caffe log."""
    lines = backward_lines(state)
    lines.append(f"# bwplan cannot plan this net ({len(problems)} problem"
                 f"{'s' if len(problems) != 1 else ''}); the lines above are Caffe's "
                 "decisions as emulated:")
    for err in problems:
        where = f"{err.span}: " if err.span.has_position else ""
        lines.append(f"# {where}{err.message}")
    return "\n".join(lines) + "\n"
