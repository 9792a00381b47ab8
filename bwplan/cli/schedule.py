"""`train --schedule FILE`: lines 'EPOCH freeze|unfreeze PATTERN', read and checked as a
whole before the first step, so a typo on the line for epoch 9 is reported before epoch 1
trains, at its line."""
from __future__ import annotations

from bwplan.errors import BwError
from bwplan.frontend.load import read_text
from bwplan.plan.policy import apply_policy
from bwplan.source import SourceFile, Span, register

# epoch -> [(action, pattern, span of the line)]
Schedule = dict[int, list[tuple[str, str, Span]]]


def read_schedule(path: str) -> Schedule:
    text = read_text(path)
    register(SourceFile(path, text))
    schedule: Schedule = {}
    for n, line in enumerate(text.splitlines(), 1):
        body = line.split("#", 1)[0]
        parts = body.split()
        if not parts:
            continue
        col = len(line) - len(line.lstrip()) + 1
        span = Span(path, n, col, n, len(body.rstrip()) + 1)
        if len(parts) != 3 or not parts[0].isdigit() or parts[1] not in ("freeze", "unfreeze"):
            raise BwError(span, "expected 'EPOCH freeze|unfreeze PATTERN'",
                          "e.g. '3 unfreeze conv3*'")
        if len(parts[0]) > 9 or int(parts[0]) < 1:
            raise BwError(span, f"epoch {parts[0]} is not an epoch: epochs count from 1")
        schedule.setdefault(int(parts[0]), []).append((parts[1], parts[2], span))
    return schedule


def check_schedule(schedule: Schedule, net, rules: list[tuple[str, str]],
                   epochs: int) -> dict[int, list[tuple[str, str]]]:
    """Apply every stage in order to the net now, so each mistake surfaces before training;
    returns the schedule in the form the training loop takes."""
    current = list(rules)
    for epoch in sorted(schedule):
        for action, pattern, span in schedule[epoch]:
            if epoch > epochs:
                raise BwError(span, f"epoch {epoch} comes after the last epoch ({epochs})",
                              "raise --epochs or remove the line")
            current.append((action, pattern))
            try:
                apply_policy(net, current)
            except BwError as err:
                raise BwError(span, err.message, err.hint) from None
    return {e: [(a, p) for a, p, _ in entries] for e, entries in schedule.items()}
