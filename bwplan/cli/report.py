"""Text reports shared by the commands: the plan's findings with the importer's warnings
(`explain`, `compile`, `train`), what a program emits and skips, and what a step launched
(`compile`, `train`)."""
from __future__ import annotations

from collections.abc import Iterable

from bwplan.explain.grouping import render_findings
from bwplan.explain.units import flops, nbytes
from bwplan.frontend.import_warning import ImportWarning
from bwplan.plan.decisions import ROUTINE, Finding


def with_import_warnings(findings: Iterable[Finding],
                         warnings: Iterable[ImportWarning]) -> tuple[Finding, ...]:
    """The plan's findings, then the importer's warnings (where a Caffe net trains
    differently in Caffe; an ONNX model's notes: the loss it assumed, batch normalisation)
    as findings: what `explain` reports, in its table and its JSON."""
    return tuple(findings) + tuple(Finding(w.code, w.severity, w.span, w.text, w.fix,
                                           w.subject) for w in warnings)


def warning_lines(findings: Iterable[Finding],
                  warnings: Iterable[ImportWarning]) -> list[str]:
    """The lines `compile` and `train` print to stderr for those findings and warnings,
    a kind found many times grouped into one block as `explain` shows it."""
    return render_findings(with_import_warnings(findings, warnings))


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


def in_place_lines(program, shown: int = 6) -> list[str]:
    """The epilogue layers lowering runs in place on their producer's output
    (Step.applied_by), the first `shown` of them named: `compile` prints it."""
    pairs = [(s.layer, program.forward[s.applied_by].layer) for s in program.forward
             if s.applied_by >= 0]
    if not pairs:
        return []
    named = ", ".join(f"{e} on {p}" for e, p in pairs[:shown])
    more = f", and {len(pairs) - shown} more" if len(pairs) > shown else ""
    return [f"in place: {len(pairs)} layer(s) on their producer's output, which is no "
            f"buffer: {named}{more}"]


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
    if st.fused:   # counted above: computed, in the pass of another step's kernel
        lines.append(f"  {len(st.fused)} of them inside another kernel's pass: " +
                     ", ".join(f"{layer} {component}" for layer, component in st.fused[:6]) +
                     (", ..." if len(st.fused) > 6 else ""))
    return lines
