"""Turns errors into the text the CLI prints: `file:line:col: error: message`, the source
line, a caret under the span, and an optional hint. Pure formatting; nothing here raises."""
from __future__ import annotations

from bwplan import source as sources
from bwplan.errors import BwError, MultipleErrors


def format_error(err: BwError) -> str:
    if isinstance(err, MultipleErrors):
        return "\n".join(_format_one(e) for e in err.errors)
    return _format_one(err)


def _format_one(err: BwError) -> str:
    span = err.span
    where = f"{span}: " if span.has_position else (f"{span.path}: " if span.path else "")
    lines = [f"{where}{err.kind}: {err.message}"]
    src = sources.lookup(span.path) if span.has_position else None
    if src is not None:
        text = src.line_text(span.line)
        if text:
            shown = text.expandtabs(1)
            # a span over several lines is underlined to the end of its first line
            one_line = span.end_line == span.line
            width = (span.end_col - span.col) if one_line else len(text) - span.col + 1
            width = max(1, min(width, len(shown) - span.col + 2))
            lines.append(f"  {shown}")
            lines.append("  " + " " * (span.col - 1) + "^" * width)
    if err.hint:
        lines.append(f"  hint: {err.hint}")
    return "\n".join(lines)
