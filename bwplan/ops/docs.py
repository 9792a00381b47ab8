"""Writes docs/ops.md from the registry, so the reference can never drift from the code:

    python -m bwplan.ops.docs > docs/ops.md
"""
from __future__ import annotations

from bwplan import ops as registry
from bwplan.ops.opdef import REQUIRED


def _names(needs) -> str:
    return ", ".join(sorted(needs)) or "nothing (only dY)"


def _needs(op, rule) -> str:
    """A rule whose reads depend on attributes is shown for the defaults and with each
    boolean attribute flipped."""
    if not callable(rule.needs):
        return _names(rule.needs)
    defaults = {a.name: a.default for a in op.attrs}
    shown = [f"{_names(rule.needs_for(defaults))} (default)"]
    for a in op.attrs:
        if a.kind == "bool":
            flipped = rule.needs_for({**defaults, a.name: not a.default})
            if flipped != rule.needs_for(defaults):
                shown.append(f"{_names(flipped)} (`{a.name}={str(not a.default).lower()}`)")
    return "; ".join(shown)


def render() -> str:
    lines = ["# Ops", "",
             "Generated from the op registry by `python -m bwplan.ops.docs`; do not edit.",
             "",
             "Each backward component can be skipped on its own; *reads* lists the forward "
             "values it needs, which are exactly the values the planner keeps for it "
             "(parameters are resident anyway). Inputs marked *no grad* never receive a "
             "gradient.", ""]
    for family in sorted({op.family for op in registry.OPS.values()}):
        lines += [f"## {family}", ""]
        for op in (o for o in registry.OPS.values() if o.family == family):
            ports = ", ".join(p.name + ("..." if p.variadic else "") +
                              ("" if p.differentiable else " (no grad)") for p in op.ports)
            lines += [f"### `{op.name}({ports})`", "", op.doc, ""]
            if op.role != "layer":
                lines += [f"Role: {op.role}.", ""]
            if op.attrs:
                lines += ["| attribute | kind | default | meaning |", "| --- | --- | --- | --- |"]
                for a in op.attrs:
                    default = "required" if a.default is REQUIRED else f"`{a.default}`"
                    lines.append(f"| `{a.name}` | {a.kind} | {default} | {a.doc} |")
                lines.append("")
            if op.params:
                slots = ", ".join(f"`{p.name}`" + ("" if p.learnable else " (statistics)")
                                  for p in op.params)
                lines += [f"Parameters: {slots}.", ""]
            if op.grads:
                lines += ["| gradient | reads |", "| --- | --- |"]
                for rule in op.grads:
                    kind = "dW" if op.slot(rule.wrt) else "dX"
                    lines.append(f"| {kind} `{rule.wrt}` | {_needs(op, rule)} |")
                lines.append("")
            if op.aux:
                lines += ["Saved for the backward: " + ", ".join(
                    f"`{a.name}`" for a in op.aux) + ".", ""]
            if not (op.is_deterministic({a.name: a.default for a in op.attrs})):
                lines += ["Not deterministic (a frozen prefix containing it cannot be "
                          "cached).", ""]
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
