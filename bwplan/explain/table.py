"""The readable report of `bwplan explain`: one row per layer, the summary figures, the
parameter updates and the warnings."""
from __future__ import annotations

from bwplan import ops as registry
from bwplan.explain.grouping import render_findings
from bwplan.explain.units import flops, nbytes, saving
from bwplan.plan.components import dw_flops, op_ctx
from bwplan.plan.plan import LayerPlan, Plan

MARK = {True: "yes", False: "-"}


def _row(plan: Plan, lp: LayerPlan) -> list[str]:
    layer = plan.net.layer(lp.name)
    dx = "  ".join(f"{e.src}:{MARK[d.needed]}" for e, d in zip(layer.inputs, lp.dx)) or "-"
    dw = "  ".join(f"{u.slot}:{MARK[d.needed]}" for u, d in zip(layer.params, lp.dw)) or "-"
    keeps = ", ".join(lp.keeps) or "-"
    return [lp.name, lp.op, MARK[lp.forward.needed], dx, dw, keeps, lp.reason.text]


def render_table(plan: Plan) -> str:
    header = ["layer", "op", "fwd", "dX", "dW", "keeps", "why"]
    rows = [header] + [_row(plan, lp) for lp in plan.layers]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header) - 1)]
    lines = [f"net {plan.net.name} ({plan.net.path}): {len(plan.layers)} layers, "
             f"{len(plan.net.params)} parameters"]
    for r in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1])
    lines.extend(render_modes(plan))
    lines.extend(render_row_freezing(plan))
    lines.append("")
    lines.extend(render_summary(plan))
    return "\n".join(lines) + "\n"


def render_modes(plan: Plan) -> list[str]:
    """One line per layer that runs in a mode (batchnorm), under the table; nothing for a
    net without such layers."""
    moded = [lp for lp in plan.layers if lp.mode is not None]
    if not moded:
        return []
    width = max(len(lp.name) for lp in moded)
    return ["", "modes"] + [f"  {lp.name.ljust(width)}  {lp.mode.cell(lp.name)}"
                            for lp in moded]


def render_row_freezing(plan: Plan) -> list[str]:
    """One line per partly frozen parameter, under the table: its trainable rows and the
    dW FLOPs the frozen ones save per step; nothing when no parameter is partly frozen."""
    net = plan.net
    parts = [p for p in net.params.values() if p.frozen_rows]
    if not parts:
        return []
    out = ["", "frozen rows"]
    for p in parts:
        saved = 0
        for layer_name, use in net.uses_of(p.name):
            layer = net.layer(layer_name)
            rule = registry.OPS[layer.op].grad_for(use.slot)
            if plan.layer(layer_name).dw[layer.params.index(use)].needed:
                ctx = op_ctx(net, layer)
                saved += rule.flops(ctx) - dw_flops(net, layer, use.slot, rule, ctx)
        rows = p.type.shape[0]
        trains = ", ".join(f"{a}:{b}" for a, b in p.trainable_rows()) or "none"
        frozen = ", ".join(f"{a}:{b}" for a, b in p.frozen_rows)
        share = 1 - p.trainable_fraction()
        out.append(f"  {p.name}  trains rows {trains} of {rows}, keeps {frozen} exactly; "
                   f"dW {flops(saved)} saved per step ({share:.0%} of its rows), "
                   f"update {nbytes(round(p.type.nbytes * share))} untouched")
    return out


def render_summary(plan: Plan) -> list[str]:
    s = plan.summary
    p = plan.prefix
    out = [
        f"forward            {flops(s.fwd_flops)}",
        f"backward           full {flops(s.full_bwd_flops)}, planned "
        f"{flops(s.planned_bwd_flops)} ({saving(s.full_bwd_flops, s.planned_bwd_flops)})",
        f"components         dX full {s.full_dx}, planned {s.planned_dx}; "
        f"dW full {s.full_dw}, planned {s.planned_dw}",
        f"kept for backward  full {nbytes(s.full_kept_bytes)}, planned "
        f"{nbytes(s.planned_kept_bytes)}",
        f"peak activations   full {nbytes(s.full_peak_bytes)}, planned "
        f"{nbytes(s.planned_peak_bytes)} (static estimate for one step)",
    ]
    if p.layers:
        out.append(f"frozen prefix      {len(p.layers)} layers, {flops(p.flops)} per batch, "
                   f"boundary {', '.join(p.boundary[:4])}{' ...' if len(p.boundary) > 4 else ''}"
                   f" ({nbytes(p.boundary_bytes)}); {p.reason}")
    else:
        out.append("frozen prefix      none: every layer depends on a trainable parameter")
    if plan.allreduce:
        names = ", ".join(n for n, _ in plan.allreduce[:6])
        more = f" and {len(plan.allreduce) - 6} more" if len(plan.allreduce) > 6 else ""
        out.append(f"all-reduce         {len(plan.allreduce)} gradients, "
                   f"{nbytes(plan.summary.allreduce_bytes)} per step: {names}{more}")
    else:
        out.append("all-reduce         nothing: no parameter gets a gradient")
    out.append("")
    out.append("updates")
    width = max((len(u.param) for u in plan.updates), default=0)
    for u in plan.updates:
        out.append(f"  {u.param.ljust(width)}  {u.kind.ljust(10)}  {u.text}")
    if plan.findings:
        out.append("")
        out.extend(render_findings(plan.findings))
    return out
