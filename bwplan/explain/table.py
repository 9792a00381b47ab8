"""The readable report of `bwplan explain`: one row per layer, the summary figures, the
parameter updates and the warnings."""
from __future__ import annotations

from bwplan import ops as registry
from bwplan.explain.grouping import render_findings
from bwplan.explain.units import flops, nbytes, saving
from bwplan.gc_pause import cyclic_gc_paused
from bwplan.plan.components import dw_flops, op_ctx
from bwplan.plan.plan import LayerPlan, Plan

MARK = {True: "yes", False: "-"}


def _row(plan: Plan, lp: LayerPlan) -> list[list[str]]:
    """The cells of a layer's row, each as its items (joined on one line, or stacked one
    per line when the table must fit a width)."""
    layer = plan.net.layer(lp.name)
    dx = [f"{e.src}:{MARK[d.needed]}" for e, d in zip(layer.inputs, lp.dx)] or ["-"]
    dw = [f"{u.slot}:{MARK[d.needed]}" for u, d in zip(layer.params, lp.dw)] or ["-"]
    keeps = [k + "," for k in lp.keeps[:-1]] + list(lp.keeps[-1:]) or ["-"]
    return [[lp.name], [lp.op], [MARK[lp.forward.needed]], dx, dw, keeps]


WIDTH = 100   # columns of the default table; render_table(plan, None) never wraps
_HEADER = ["layer", "op", "fwd", "dX", "dW", "keeps"]
_JOIN = ["", "", "", "  ", "  ", " "]


@cyclic_gc_paused
def render_table(plan: Plan, width: int | None = WIDTH) -> str:
    """The plan as a table. With a width, a row too wide stacks its longest lists one item
    per line, the reasons move below the table, and long summary lines wrap."""
    rows = [[[h] for h in _HEADER]] + [_row(plan, lp) for lp in plan.layers]
    whys = ["why"] + [lp.reason.text for lp in plan.layers]
    lines = [f"net {plan.net.name} ({plan.net.path}): {len(plan.layers)} layers, "
             f"{len(plan.net.params)} parameters"]
    if width is not None:
        lines = _wrap(lines[0], width, 4)
    extents = _extents(rows)
    # the widest line of the one-line-per-layer table: every row pads its cells to the
    # column widths and ends with its reason (the header's "why" at least)
    inline_width = _total(extents, set()) + 2 + max(len(w.rstrip()) for w in whys)
    if width is None or inline_width <= width:
        lines += _layout(rows, extents, set(), whys)
        lines.extend(render_modes(plan))
        lines.extend(render_row_freezing(plan))
        lines.append("")
        lines.extend(render_summary(plan))
        return "\n".join(lines) + "\n"
    # the reasons go below the table; if that is not enough, what each layer keeps too
    keeps_below = False
    stacked = _stacked(rows, extents, width)
    if _total(extents, stacked) > width:
        keeps_below = True
        rows, extents = [r[:-1] for r in rows], extents[:-1]
        stacked = _stacked(rows, extents, width)
    lines += _layout(rows, extents, stacked, None)
    names = [lp.name for lp in plan.layers]
    indent = max(map(len, names)) + 4
    lines += ["", "why" + (" (and what each layer keeps for the backward)" if keeps_below
                           else "")]
    for lp, why in zip(plan.layers, whys[1:]):
        kept = f"keeps {', '.join(lp.keeps)}. " if keeps_below and lp.keeps else ""
        lines += _wrap(f"  {lp.name.ljust(indent - 4)}  {kept}{why}", width, indent)
    for line in render_modes(plan) + render_row_freezing(plan):
        lines += _wrap(line, width, 4)
    lines.append("")
    for line in render_summary(plan):
        lines += _wrap(line, width, _hanging_indent(line))
    return "\n".join(lines) + "\n"


def _total(extents, stacked: set[int]) -> int:
    widths = _widths(extents, stacked)
    return sum(widths) + 2 * (len(widths) - 1)


def _cell(items: list[str], column: int, stacked: set[int]) -> list[str]:
    return items if column in stacked else [_JOIN[column].join(items)]


def _extents(rows) -> list[tuple[int, int]]:
    """Each column's width on one line and stacked one item per line, measured once (a
    10,000-layer table is laid out several times while the columns to stack are chosen)."""
    return [(max(len(_JOIN[c].join(r[c])) for r in rows),
             max(len(t) for r in rows for t in r[c])) for c in range(len(rows[0]))]


def _widths(extents, stacked: set[int]) -> list[int]:
    return [one_per_line if c in stacked else joined
            for c, (joined, one_per_line) in enumerate(extents)]


def _stacked(rows, extents, width: int) -> set[int]:
    """Columns to stack, widest first, until a row fits the width (or nothing is left to
    stack)."""
    stacked: set[int] = set()
    while True:
        widths = _widths(extents, stacked)
        if _total(extents, stacked) <= width:
            return stacked
        candidates = [c for c in range(len(rows[0])) if c not in stacked
                      and any(len(r[c]) > 1 for r in rows)]
        if not candidates:
            return stacked
        stacked.add(max(candidates, key=lambda c: widths[c]))


def _layout(rows, extents, stacked: set[int], whys: list[str] | None) -> list[str]:
    widths = _widths(extents, stacked)
    out = []
    for i, row in enumerate(rows):
        cells = [_cell(items, c, stacked) for c, items in enumerate(row)]
        for k in range(max(map(len, cells))):
            parts = [(cell[k] if k < len(cell) else "").ljust(w)
                     for cell, w in zip(cells, widths)]
            if whys is not None:
                parts.append(whys[i] if k == 0 else "")
            out.append("  ".join(parts).rstrip())
    return out


def _hanging_indent(line: str) -> int:
    """Where a wrapped summary line continues: under the figures (after the 19-column
    label), the update's text, or a finding's text."""
    if line.startswith("  fix: "):
        return 7
    if line.startswith("  "):            # an update: "  name  kind  text"
        return 4
    if line[:19].rstrip() and line[19:20] != " " and "  " in line[:19]:
        return 19
    return 4


def _wrap(line: str, width: int, indent: int) -> list[str]:
    if len(line) <= width:
        return [line]
    import textwrap
    lead = len(line) - len(line.lstrip(" "))
    return textwrap.wrap(line, width, initial_indent="", subsequent_indent=" " * indent,
                         break_long_words=False, break_on_hyphens=False,
                         drop_whitespace=True) if lead == 0 else \
        [" " * lead + w for w in textwrap.wrap(line[lead:], width - lead,
                                               subsequent_indent=" " * (indent - lead),
                                               break_long_words=False,
                                               break_on_hyphens=False)]


def _cut_note(plan: Plan) -> str:
    """The full backward honours the net's own stop_gradient edges, so what they save is in
    neither figure: say so where there are some."""
    cuts = sum(1 for l in plan.net.layers for e in l.inputs if e.stop_gradient)
    return f"; what {cuts} stop_gradient edge(s) cut is left out of both" if cuts else ""


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
        f"{flops(s.planned_bwd_flops)} ({saving(s.full_bwd_flops, s.planned_bwd_flops)}"
        f"{_cut_note(plan)})",
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
