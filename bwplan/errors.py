"""The error family. Library code raises these with a Span; only the CLI prints them.

`BwError` and its subclasses are mistakes in the user's input (exit status 2).
`InternalError` is a bug in bwplan itself and says so.
"""
from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence

from bwplan.source import Span


class BwError(Exception):
    """A problem with the user's input, located by a span."""

    kind = "error"

    def __init__(self, span: Span, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.span = span
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.span}: {self.message}"


class BwSyntaxError(BwError):
    """Text that does not follow the grammar."""


class UnknownName(BwError):
    """A reference to a layer, input, parameter, op, block or attribute that does not exist."""

    def __init__(self, span: Span, what: str, name: str, candidates: Iterable[str] = ()) -> None:
        close = difflib.get_close_matches(name, list(candidates), n=1)
        hint = f"did you mean '{close[0]}'?" if close else None
        super().__init__(span, f"unknown {what} '{name}'", hint)
        self.name = name


class Redefined(BwError):
    """A name given twice."""

    def __init__(self, span: Span, what: str, name: str, first: Span) -> None:
        super().__init__(span, f"{what} '{name}' is already defined at {first}")
        self.name = name


class AttrError(BwError):
    """A missing, unknown or ill-typed attribute of an op."""


class ShapeError(BwError):
    """Shapes that do not fit together."""


class CycleError(BwError):
    """Layers that feed each other."""


class ParamError(BwError):
    """A parameter used inconsistently (shapes, sharing, multipliers)."""


class FileError(BwError):
    """A file that cannot be read or written."""


class DataError(BwError):
    """Data (a data file, a batch) that does not fit the net: a label naming no class,
    a non-finite value, the wrong element kind."""


class CaffeError(BwError):
    """A Caffe net that Caffe itself rejects, or that bwplan cannot import."""


class MultipleErrors(BwError):
    """Several errors found in one pass, sorted by position."""

    def __init__(self, errors: Sequence[BwError]) -> None:
        ordered = sorted(errors, key=lambda e: (e.span.path, e.span.line, e.span.col))
        first = ordered[0]
        super().__init__(first.span, first.message, first.hint)
        self.errors = tuple(ordered)


def raise_all(errors: Sequence[BwError]) -> None:
    """Raise nothing, the only error, or all of them together."""
    if len(errors) == 1:
        raise errors[0]
    if errors:
        raise MultipleErrors(errors)


class InternalError(Exception):
    """A bug in bwplan: an invariant that the code itself should have kept."""

    def __init__(self, message: str, context: str = "") -> None:
        super().__init__(message)
        self.context = context
