"""Text reports shared by `compile` and `train`: what a program emits and skips, and what
a step launched."""
from __future__ import annotations

from bwplan.explain.units import flops, nbytes
from bwplan.plan.decisions import ROUTINE


def program_lines(program) -> list[str]:
    """One line per layer with backward work skipped, naming each skipped component."""
    plan = program.plan
    lines = []
    for lp in plan.layers:
        layer = plan.net.layer(lp.name)
        skipped = [f"dX into {e.src} ({d.reason.code})" for e, d in zip(layer.inputs, lp.dx)
                   if not d.needed and d.reason.code not in ROUTINE]
        skipped += [f"dW {u.param} ({d.reason.code})" for u, d in zip(layer.params, lp.dw)
                    if not d.needed and d.reason.code not in ROUTINE]
        if skipped:
            lines.append(f"  {lp.name}: " + ", ".join(skipped))
    return lines


def profile_lines(prog, step: tuple | None = None, title: str = "last step:") -> list[str]:
    """What one step launched: the last one, or `step` = (stats, program, cached)."""
    st, program, cached = step or (prog.last_stats, prog.last_program, prog.last_cached)
    s = program.plan.summary
    lines = [title]
    for phase in ("fwd", "dx", "dw", "update"):
        n = st.launched[phase]
        lines.append(f"  {phase:6s} {n:4d} {'kernel ' if n == 1 else 'kernels'}  "
                     f"{flops(st.flops[phase])}")
    planned = s.planned_peak_bytes if program.pruned else s.full_peak_bytes
    if cached:
        lines.append(f"  peak live activations {nbytes(st.peak_bytes)} (the frozen prefix "
                     f"came from the cache; a whole step's estimate is {nbytes(planned)})")
    else:
        lines.append(f"  peak live activations {nbytes(st.peak_bytes)} (plan's estimate "
                     f"{nbytes(planned)})")
    return lines
