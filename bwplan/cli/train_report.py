"""What `bwplan train` says besides the epochs: which of the plan's findings hold for the
run (cli/report.py prints them with the importer's warnings, as `explain` shows them), the
warnings only a training run can give (a frozen part left at its random initial values, a
--cache-frozen with nothing to cache), the header with the backward it runs, and each stage
of gradual unfreezing."""
from __future__ import annotations


def shown_findings(plan, weight_decay: float) -> list:
    """The plan's findings that hold for this run: with no weight decay at all, a
    parameter without gradient does not shrink, and that warning would be wrong."""
    return [f for f in plan.findings
            if not (f.code == "decay_without_gradient" and weight_decay == 0)]


def _frozen_params(net) -> list[str]:
    return [name for name, p in net.params.items()
            if p.learnable and all(u.lr_mult == 0 for _, u in net.uses_of(name))]


def run_warnings(prog, loaded: set[str], cache_frozen: bool) -> list[str]:
    """loaded: the parameters that came from --weights (empty without it)."""
    lines = []
    random = [p for p in _frozen_params(prog.net) if p not in loaded]
    trains = any(u.kind == "sgd" for u in prog.plan.updates)
    if random and trains:
        shown = ", ".join(random[:4]) + (f" and {len(random) - 4} more" if len(random) > 4
                                          else "")
        cause = "no --weights given" if not loaded else "not in --weights (or skipped)"
        lines.append(f"warning: {len(random)} frozen parameter(s) keep their random initial "
                     f"values ({cause}): {shown}; the layers that train learn on a random "
                     "frozen part")
        lines.append("  fix: load pretrained weights with --weights FILE.npz, or unfreeze "
                     "those layers")
    prefix = prog.plan.prefix
    if cache_frozen and not (prefix.cacheable and prefix.layers):
        reason = prefix.reason if prefix.layers else "no layer is frozen below the trained ones"
        lines.append(f"warning: --cache-frozen has nothing to cache: {reason}")
        lines.append("  fix: leave out --cache-frozen; every step runs the whole forward")
    return lines


def backward_counts(prog, pruned: bool) -> str:
    s = prog.plan.summary
    if pruned:
        return f"backward {s.planned_dx} dX + {s.planned_dw} dW of {s.full_dx} + {s.full_dw}"
    return (f"backward {s.full_dx} dX + {s.full_dw} dW, unpruned (the plan needs "
            f"{s.planned_dx} + {s.planned_dw})")


def header(prog, samples: int, pruned: bool) -> str:
    return (f"{prog.net.name}: {len(prog.net.layers)} layers, {samples} samples; "
            + backward_counts(prog, pruned))


def trained_layers(prog) -> list[str]:
    """The layers whose parameters get a gradient, in the net's order."""
    return [lp.name for lp in prog.plan.layers if any(d.needed for d in lp.dw)]


def stage_line(prog, epoch: int, new_rules, before: list[str], pruned: bool) -> str:
    """One line for a change of the freezing rules at the start of an epoch: the rules,
    what unfroze (or froze) by them, and the backward from now on."""
    now = trained_layers(prog)
    thawed = [n for n in now if n not in before]
    frozen = [n for n in before if n not in now]
    what = "; ".join(part for part in (
        "unfroze " + ", ".join(thawed) if thawed else "",
        "froze " + ", ".join(frozen) if frozen else "") if part) or "no layer changed"
    rules = ", ".join(f"{verb} {pattern}" for verb, pattern in new_rules)
    return f"epoch {epoch}: {rules}: {what}; " + backward_counts(prog, pruned)


def first_step_line(wall: float | None, cpu: float, compiling: float, kernels: int) -> str:
    """When the first step ended, counted from the process's start (the cold start: on a
    first run most of it is Numba compiling kernels into its disk cache)."""
    since = f"{wall:.2f} s after the process started, " if wall is not None else ""
    return (f"first step: ended {since}{cpu:.2f} s of CPU time (user + system); "
            f"{compiling:.2f} s of it compiling {kernels} kernel specialisations")
