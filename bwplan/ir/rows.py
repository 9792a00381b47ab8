"""Frozen rows of a parameter's leading axis, as written: "0:1000" or "0:2, 5:7", in
`--freeze 'fc8.weight[0:1000]'` and in `.bw` as `weight.frozen_rows="0:1000"`. One parser
and one check for both, so the two spellings mean and refuse the same things."""
from __future__ import annotations

from bwplan import ops as registry
from bwplan.errors import BwError
from bwplan.source import Span


def parse_rows(where: Span, what: str, text: str, rows: int) -> tuple[tuple[int, int], ...]:
    """The [start, stop) ranges `text` names, each inside an axis of `rows` rows."""
    out = []
    for part in text.split(","):
        bounds = part.strip().split(":")
        try:
            if len(bounds) != 2:
                raise ValueError
            a = int(bounds[0]) if bounds[0].strip() else 0
            b = int(bounds[1]) if bounds[1].strip() else rows
        except ValueError:
            raise BwError(where, f"{what}: '{part.strip()}' is not a range start:stop",
                          "e.g. fc8.weight[0:1000]") from None
        if not 0 <= a < b <= rows:
            raise BwError(where, f"{what}: rows {a}:{b} are out of bounds: the leading "
                          f"axis has {rows} rows (0:{rows})")
        out.append((a, b))
    return tuple(sorted(out))


def add_rows(where: Span, what: str, frozen: tuple[tuple[int, int], ...],
             more: tuple[tuple[int, int], ...], rows: int) -> tuple[tuple[int, int], ...]:
    """`frozen` and `more` together, sorted; refused when they cover every row, since a
    parameter with no trainable row is a frozen parameter and is written as one (its
    update would otherwise be planned over the whole tensor)."""
    out = tuple(sorted(frozen + more))
    covered = 0
    for a, b in out:
        if a > covered:
            return out
        covered = max(covered, b)
    if covered >= rows:
        raise BwError(where, f"{what}: the frozen rows cover all {rows} rows of the leading "
                      "axis", "freeze its layer (--freeze LAYER), or in .bw set its lr to 0 "
                      "(weight.lr=0)")
    return out


def rows_problem(op_name: str, slot: str, attrs) -> str | None:
    """Why rows of this op's `slot` cannot be frozen, or None."""
    rule = registry.OPS[op_name].grad_for(slot)
    if rule is None or not rule.by_rows:
        return (f"rows of {op_name}'s {slot} cannot be frozen: its gradient does not split "
                "by output rows (rows can be frozen on linear and conv2d weights and biases)")
    if attrs.get("groups", 1) != 1:    # a grouped conv's rows do not line up with groups
        return f"rows of a grouped {op_name}'s {slot} cannot be frozen"
    return None
