"""Parses protobuf text format into a tree of `Message`s, each field with its Span.

This module knows the syntax only: it does not know which fields a Caffe net may hold or
what type their values have (`schema` and `model` decide that). It is the one place that
sees Lark's exceptions; each becomes a `BwSyntaxError` at file:line:col.

    >>> msg = parse_prototxt('layer { name: "a" top: "a" }  force_backward: true')
    >>> [f.name for f in msg.fields]
    ['layer', 'force_backward']
    >>> msg.fields[0].value.first("name").value
    'a'
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Union

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import (LarkError, UnexpectedCharacters, UnexpectedEOF, UnexpectedInput,
                             VisitError)

from bwplan.errors import BwSyntaxError
from bwplan.frontend.lark_errors import describe
from bwplan.resources import resource_dir
from bwplan.source import SourceFile, Span, register

GRAMMAR = resource_dir("grammar") / "prototxt.lark"


@dataclass(frozen=True, slots=True)
class Ident:
    """A bare word used as a value: an enum name, true / false, inf, nan."""

    name: str

    def __str__(self) -> str:
        return self.name


@dataclass(frozen=True, slots=True)
class Field:
    name: str
    value: "Scalar | Message"
    span: Span          # the whole field, name to value
    name_span: Span
    value_span: Span


@dataclass(frozen=True, slots=True)
class Message:
    """A message body: its fields in the order written (repeated fields stay separate)."""

    fields: tuple[Field, ...]
    span: Span

    def all(self, name: str) -> tuple[Field, ...]:
        return tuple(f for f in self.fields if f.name == name)

    def first(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None


Scalar = Union[int, float, str, Ident]


# The longest [ ] list a prototxt may write; refused while lexing, since parsing a
# megabyte list takes tens of seconds.
MAX_LIST = 4096


class _ListLimit:
    """Counts the elements of each [ ] list as the tokens stream by."""

    always_accept = ()

    def __init__(self) -> None:
        self.path = "<input>"

    def process(self, stream):
        opened: list[list] = []   # [token, commas] per open '['
        for tok in stream:
            if tok.type == "LSQB":
                opened.append([tok, 0])
            elif tok.type == "RSQB" and opened:
                opened.pop()
            elif tok.type == "COMMA" and opened:
                opened[-1][1] += 1
                if opened[-1][1] >= MAX_LIST:
                    raise BwSyntaxError(_tok_span(self.path, opened[-1][0]),
                                        f"a list of more than {MAX_LIST} values")
            yield tok


@lru_cache(maxsize=1)
def _parser() -> Lark:
    return Lark(GRAMMAR.read_text(), parser="lalr", propagate_positions=True,
                postlex=_ListLimit())


def _tok_span(path: str, tok: Token) -> Span:
    return Span(path, tok.line, tok.column, tok.end_line or tok.line,
                tok.end_column or tok.column + len(tok))


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "a": "\a", "b": "\b", "f": "\f", "v": "\v",
            "\\": "\\", "'": "'", '"': '"', "?": "?"}
_ESCAPE = re.compile(r"\\(x[0-9a-fA-F]{1,2}|[0-7]{1,3}|.)")


def _unescape(body: str) -> str:
    def one(m: re.Match) -> str:
        e = m.group(1)
        if e[0] == "x":
            return chr(int(e[1:], 16))
        if e[0] in "01234567":
            return chr(int(e, 8))
        return _ESCAPES.get(e, e)
    return _ESCAPE.sub(one, body)


def _number(text: str) -> int | float:
    t = text.lstrip("+-")
    sign = -1 if text.startswith("-") else 1
    if t[:2] in ("0x", "0X"):
        return sign * int(t[2:], 16)
    if t.isdigit():
        return sign * int(t)
    return sign * float(t.rstrip("fF"))


_MAX_NUMBER_CHARS = 400
# Messages nest at most this deep (Caffe nets nest about 4 levels); deeper text would
# exhaust Python's stack in the recursive passes that follow the parse.
MAX_DEPTH = 100


def _check_depth(tree, path: str) -> None:
    """Iteratively, so that the check itself cannot overflow the stack."""
    todo = [(tree, 0)]
    while todo:
        node, depth = todo.pop()
        if getattr(node, "data", None) == "message":
            depth += 1
            if depth > MAX_DEPTH:
                m = node.meta
                raise BwSyntaxError(Span(path, m.line, m.column, m.line, m.column + 1),
                                    f"messages nest more than {MAX_DEPTH} levels deep")
        todo.extend((c, depth) for c in getattr(node, "children", ()))


class _ToTree(Transformer):
    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def _span(self, meta) -> Span:
        return Span(self.path, meta.line, meta.column, meta.end_line, meta.end_column)

    @v_args(meta=True)
    def start(self, meta, items):
        if meta.empty:
            return Message(tuple(items), Span(self.path, 1, 1, 1, 1))
        return Message(tuple(items), self._span(meta))

    @v_args(meta=True)
    def message(self, meta, items):
        return Message(tuple(items), self._span(meta))

    # values arrive as (value, span) pairs so that each field knows where its value is
    def number(self, items):
        span = _tok_span(self.path, items[0])
        if len(items[0]) > _MAX_NUMBER_CHARS:
            # Python refuses to convert integers of more than 4,300 digits; no field of a
            # Caffe net holds more than 64 bits
            raise BwSyntaxError(span, f"number of {len(items[0])} characters is too long")
        return _number(str(items[0])), span

    def string(self, items):
        first, last = _tok_span(self.path, items[0]), _tok_span(self.path, items[-1])
        text = "".join(_unescape(str(t)[1:-1]) for t in items)
        return text, Span(self.path, first.line, first.col, last.end_line, last.end_col)

    def identifier(self, items):
        return Ident(str(items[0])), _tok_span(self.path, items[0])

    @v_args(meta=True)
    def negative_identifier(self, meta, items):
        return Ident("-" + str(items[0])), self._span(meta)

    @v_args(meta=True)
    def scalar_field(self, meta, items):
        name, (value, vspan) = items
        return Field(str(name), value, self._span(meta), _tok_span(self.path, name), vspan)

    @v_args(meta=True)
    def message_field(self, meta, items):
        name, msg = items
        return Field(str(name), msg, self._span(meta), _tok_span(self.path, name), msg.span)

    @v_args(meta=True)
    def list_field(self, meta, items):
        """`dim: [1, 2]` means `dim: 1 dim: 2`: one Field per element."""
        name, *elements = items
        nspan = _tok_span(self.path, name)
        out = []
        for el in elements:
            if el is None:
                continue
            value, vspan = (el, el.span) if isinstance(el, Message) else el
            out.append(Field(str(name), value, vspan, nspan, vspan))
        return _Many(tuple(out))


@dataclass(frozen=True, slots=True)
class _Many:
    fields: tuple[Field, ...]


def _flatten(msg: Message) -> Message:
    """Splice list fields into their message and recurse."""
    fields: list[Field] = []
    for f in msg.fields:
        parts = f.fields if isinstance(f, _Many) else (f,)
        for p in parts:
            if isinstance(p.value, Message):
                p = Field(p.name, _flatten(p.value), p.span, p.name_span, p.value_span)
            fields.append(p)
    return Message(tuple(fields), msg.span)


# Common mistakes, recognised by the parser state they leave it in.
_EXAMPLES = {
    "expected ':' between the field name and its value": [
        'name "conv1"', "num_output 10", 'layer { name "x" }'],
    "expected a value after ':'": ["name: }", "a { name: }", "name: :"],
    "expected a field name": ['"conv1"', "3", 'layer { "x" }', ": 3"],
    "'}' closes a message that was never opened": ["}", "a: 1 }"],
}

_PRETTY = {"NAME": "a field name or word", "NUMBER": "a number", "STRING": "a string",
           "COLON": "':'", "LBRACE": "'{'", "RBRACE": "'}'", "LESSTHAN": "'<'",
           "MORETHAN": "'>'", "LSQB": "'['", "RSQB": "']'", "COMMA": "','",
           "SEMICOLON": "';'", "MINUS": "'-'", "$END": "end of file"}


def _describe(err: UnexpectedInput, text: str) -> str:
    if isinstance(err, UnexpectedCharacters) and text[err.pos_in_stream:][:1] in ("'", '"'):
        return "this string is never closed (a string ends on the line it starts)"
    return describe(err, text, _parser().parse, _EXAMPLES, _PRETTY)


def _unclosed(text: str, path: str) -> BwSyntaxError | None:
    """At the end of the file, point at the innermost '{' or '<' that was never closed."""
    stack: list[Token] = []
    closers = {"RBRACE": "LBRACE", "MORETHAN": "LESSTHAN"}
    try:
        for tok in _parser().lex(text):
            if tok.type in ("LBRACE", "LESSTHAN"):
                stack.append(tok)
            elif tok.type in closers and stack:
                stack.pop()
    except LarkError:
        return None
    if not stack:
        return None
    tok = stack[-1]
    closer = "}" if tok.type == "LBRACE" else ">"
    return BwSyntaxError(_tok_span(path, tok), f"'{tok}' is never closed",
                         f"add the missing '{closer}'")


def _error(err: UnexpectedInput, src: SourceFile) -> BwSyntaxError:
    tok = getattr(err, "token", None)
    at_end = isinstance(err, UnexpectedEOF) or (tok is not None and tok.type == "$END")
    if at_end:
        unclosed = _unclosed(src.text, src.path)
        if unclosed is not None:
            return unclosed
    if tok is not None and tok.type != "$END" and getattr(tok, "line", None):
        span = _tok_span(src.path, tok)
    elif isinstance(getattr(err, "line", None), int) and err.line > 0 and not at_end:
        span = Span(src.path, err.line, err.column, err.line, err.column + 1)
    else:
        line, col = src.position(len(src.text.rstrip()))
        span = Span(src.path, line, col, line, col + 1)
    return BwSyntaxError(span, _describe(err, src.text))


def parse_prototxt(text: str, path: str = "<input>") -> Message:
    """Parse protobuf text. Raises BwSyntaxError for text that does not parse."""
    src = register(SourceFile(path, text))
    _parser().options.postlex.path = path
    try:
        tree = _parser().parse(text)
    except UnexpectedInput as err:
        raise _error(err, src) from None
    _check_depth(tree, path)
    try:
        return _flatten(_ToTree(path).transform(tree))
    except VisitError as err:
        if isinstance(err.orig_exc, BwSyntaxError):
            raise err.orig_exc from None
        raise
