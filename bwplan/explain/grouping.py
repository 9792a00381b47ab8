"""Findings and warnings as people read them: one block per finding, except that a kind
found many times (a deploy net's hundred BatchNorm layers) is shown once, with its count and
the first names it is about. The findings themselves are untouched (JSON lists them all).

    >>> from bwplan.source import Span
    >>> from collections import namedtuple
    >>> F = namedtuple("F", "code span text fix subject")
    >>> fs = [F("c", Span.synthetic(""), f"{n} is odd", "fix it", n)
    ...       for n in ("a", "b", "c", "d")]
    >>> print("\\n".join(render_findings(fs)))
    warning: a is odd
      4 like it (c): a, b, c, d
      fix: fix it
"""
from __future__ import annotations

from collections.abc import Sequence

GROUP_FROM = 3      # this many findings of one kind are shown as one block
NAMES_SHOWN = 5


def group(findings: Sequence) -> list[list]:
    """Findings in their order, those of a kind found GROUP_FROM times or more gathered at
    the place of the first."""
    by_code: dict[str, list] = {}
    for f in findings:
        by_code.setdefault(f.code, []).append(f)
    out, seen = [], set()
    for f in findings:
        if len(by_code[f.code]) < GROUP_FROM:
            out.append([f])
        elif f.code not in seen:
            seen.add(f.code)
            out.append(by_code[f.code])
    return out


def render_findings(findings: Sequence, prefix: str = "") -> list[str]:
    """Lines for `findings` (plan Findings, or Caffe import warnings, which are all
    warnings): the first of each group in full, then, for a group, how many there are and
    the first names, then the fix."""
    lines = []
    for g in group(findings):
        first = g[0]
        where = f"{first.span}: " if first.span.has_position else ""
        severity = getattr(first, "severity", "warning")
        lines.append(f"{prefix}{where}{severity}: {first.text}")
        if len(g) > 1:
            names = [f.subject or str(f.span) for f in g[:NAMES_SHOWN]]
            more = f" and {len(g) - NAMES_SHOWN} more" if len(g) > NAMES_SHOWN else ""
            lines.append(f"{prefix}  {len(g)} like it ({first.code}): "
                         f"{', '.join(names)}{more}")
        lines.append(f"{prefix}  fix: {first.fix}")
    return lines
