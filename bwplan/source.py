"""Source text and positions: `Span` marks where something was written, `SourceFile` maps
offsets to lines. Every AST node, layer, edge and error carries a Span so that any message
can point back at the text the user wrote."""
from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from bwplan.records import record


@record
class Span:
    """A region of a source file; lines and columns count from 1, `end_col` is exclusive."""

    path: str
    line: int
    col: int
    end_line: int
    end_col: int

    def __str__(self) -> str:
        return f"{self.path}:{self.line}:{self.col}"

    @staticmethod
    def whole(path: str) -> "Span":
        """The span used for facts about a file as a whole (e.g. it cannot be read)."""
        return Span(path, 0, 0, 0, 0)

    @staticmethod
    def synthetic(what: str) -> "Span":
        """A span for things no file wrote, such as a command-line option."""
        return Span(what, 0, 0, 0, 0)

    @property
    def has_position(self) -> bool:
        return self.line > 0


@dataclass(frozen=True)
class SourceFile:
    """The text of one input file, with a line index built once."""

    path: str
    text: str
    _line_starts: tuple[int, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        starts = [0]
        find, at = self.text.find, self.text.find("\n")
        while at >= 0:      # str.find, not a loop over every character of a large file
            starts.append(at + 1)
            at = find("\n", at + 1)
        object.__setattr__(self, "_line_starts", tuple(starts))

    def line_text(self, line: int) -> str:
        """The text of a 1-based line, without its newline ('' when out of range)."""
        if not 1 <= line <= len(self._line_starts):
            return ""
        start = self._line_starts[line - 1]
        end = self.text.find("\n", start)
        return self.text[start:] if end < 0 else self.text[start:end]

    def position(self, offset: int) -> tuple[int, int]:
        """(line, col) of a 0-based character offset."""
        line = bisect.bisect_right(self._line_starts, offset)
        return line, offset - self._line_starts[line - 1] + 1

    def span(self, start: int, end: int) -> Span:
        line, col = self.position(start)
        end_line, end_col = self.position(max(start, end))
        return Span(self.path, line, col, end_line, end_col)


_SOURCES: dict[str, SourceFile] = {}


def register(source: SourceFile) -> SourceFile:
    """Remember a file's text so that diagnostics can quote it later."""
    _SOURCES[source.path] = source
    return source


def lookup(path: str) -> SourceFile | None:
    return _SOURCES.get(path)
