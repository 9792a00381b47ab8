"""Parses .bw text into an AST `Module`. This is the only module that sees Lark's
exceptions: each becomes a `BwSyntaxError` with a span and, for common mistakes, a hint."""
from __future__ import annotations

from functools import lru_cache

from lark import Lark, Token, Transformer
from lark.exceptions import (UnexpectedInput,
                             VisitError)

from bwplan.errors import BwSyntaxError
from bwplan.frontend import ast
from bwplan.gc_pause import cyclic_gc_paused
from bwplan.ir.types import DTYPE_BYTES, MAX_EXTENT, TensorType
from bwplan.frontend.lalr_loop import REJECTED, LalrLoop
from bwplan.frontend.lark_errors import describe
from bwplan.records import record
from bwplan.resources import resource_dir
from bwplan.source import SourceFile, Span, register

GRAMMAR = resource_dir("grammar") / "bw.lark"

_OPEN = {"LPAR": "RPAR", "LSQB": "RSQB"}
# The longest list a .bw file may write (attribute values, dimensions of a type).
MAX_LIST = 4096
_CLOSE = {"RPAR", "RSQB"}


class _BracketNewlines:
    """Drops newlines inside ( ) and [ ] so that long calls may span lines, and reports an
    unclosed bracket where it was opened rather than at the end of the file."""

    always_accept = ("_NL",)

    def __init__(self) -> None:
        self.path = "<input>"

    def process(self, stream):
        stack: list[Token] = []
        commas: list[int] = []
        for tok in stream:
            if tok.type in _OPEN:
                stack.append(tok)
                commas.append(0)
            elif tok.type in _CLOSE and stack:
                stack.pop()
                commas.pop()
            elif tok.type == "_NL" and stack:
                continue
            elif tok.type == "COMMA" and stack:
                commas[-1] += 1
                if commas[-1] >= MAX_LIST and stack[-1].type == "LSQB":
                    # refused while lexing: parsing a megabyte list would take half a minute
                    start = stack[-1]
                    raise BwSyntaxError(Span(self.path, start.line, start.column, start.line,
                                             start.column + 1),
                                        f"a list of more than {MAX_LIST} values")
            yield tok
        if stack:
            tok = stack[-1]
            closer = ")" if tok.type == "LPAR" else "]"
            span = Span(self.path, tok.line, tok.column, tok.line, tok.column + 1)
            raise BwSyntaxError(span, f"'{tok.value}' is never closed",
                                f"add the missing '{closer}'")


@lru_cache(maxsize=1)
def _parser() -> tuple[Lark, _BracketNewlines]:
    """A plain parser, used only to analyse a syntax error (`match_examples`): built on the
    first error, not on the first parse."""
    postlex = _BracketNewlines()
    return Lark(GRAMMAR.read_text(), parser="lalr", postlex=postlex, cache=True), postlex


@lru_cache(maxsize=1)
def _building_parser() -> tuple[Lark, _BracketNewlines, "_ToAst"]:
    """The parser that builds the AST while it parses: no intermediate tree and no
    position propagation, which makes large files parse three times faster. Every token is
    kept so that each node's span runs from its first token to its last. The grammar's
    analysis is cached on disk by Lark (`cache=True`), which saves a tenth of a second of
    each command's start."""
    postlex = _BracketNewlines()
    to_ast = _ToAst("<input>")
    parser = Lark(GRAMMAR.read_text(), parser="lalr", postlex=postlex,
                  maybe_placeholders=True, keep_all_tokens=True, transformer=to_ast, cache=True)
    return parser, postlex, to_ast


@lru_cache(maxsize=1)
def _loop(parser: Lark) -> LalrLoop:
    """The building parser's tables, lexers and callbacks in one loop (lalr_loop.py): the
    same AST, a third of Lark's time on a large file."""
    return LalrLoop(parser)


def _tok_span(path: str, tok: Token) -> Span:
    return Span(path, tok.line, tok.column, tok.end_line or tok.line,
                tok.end_column or tok.column + len(tok))


@record
class _Val:
    """A literal value with its span, unwrapped by the node that holds it."""

    value: object
    span: Span


def _first_mark(items) -> Token | Span:
    """The first item with a position: a token not dropped from the tree (an underscore
    name), or a node's span."""
    for item in items:
        if isinstance(item, Token):
            if not item.type.startswith("_"):
                return item
        else:
            span = getattr(item, "span", None)
            if span is not None:
                return span
    raise ValueError("a node without a positioned item")


class _ToAst(Transformer):
    """Callbacks run by the parser as it reduces each rule; children arrive already
    converted (tokens, _Val, or AST nodes)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self.path = path

    def _span(self, items) -> Span:
        # the first and the last item that has a position, scanned for from each end (this
        # runs for each of a large file's tens of thousands of nodes; no Span is made for
        # the end tokens themselves)
        first = _first_mark(items)
        last = _first_mark(reversed(items))
        if isinstance(first, Token):
            line, col = first.line, first.column
        else:
            line, col = first.line, first.col
        if isinstance(last, Token):
            end_line, end_col = last.end_line or last.line, last.end_column or \
                last.column + len(last)
        else:
            end_line, end_col = last.end_line, last.end_col
        return Span(self.path, line, col, end_line, end_col)

    def start(self, items):
        return ast.Module(self.path, tuple(i for i in items if not isinstance(i, Token)
                                           and i is not None))

    def tensor_type(self, items):
        dtype = items[0]
        dims = [t for t in items[2:-1] if isinstance(t, Token) and t.type == "INT"]
        if str(dtype) not in DTYPE_BYTES:
            raise BwSyntaxError(_tok_span(self.path, dtype), f"unknown element type '{dtype}'",
                                "use one of " + ", ".join(sorted(DTYPE_BYTES)))
        for d in dims:
            size = _integer(self.path, d)
            if not 1 <= size <= MAX_EXTENT:
                raise BwSyntaxError(_tok_span(self.path, d), f"a dimension must be between 1 "
                                    f"and {MAX_EXTENT}, not {d}")
        return _Val(TensorType(str(dtype), tuple(int(d) for d in dims)), self._span(items))

    def input_decl(self, items):
        _, name, _, ttype, grad, unbatched = items
        return ast.InputDecl(str(name), ttype.value, grad is not None, self._span(items),
                             batched=unbatched is None)

    def param_decl(self, items):
        _, name, _, ttype, *mods = items
        return ast.ParamDecl(str(name), ttype.value, tuple(mods), self._span(items))

    def layer_stmt(self, items):
        name, _, call, *mods = items
        return ast.LayerStmt(str(name), call, tuple(mods), self._span(items),
                             _tok_span(self.path, name))

    def call(self, items):
        op = items[0]
        arguments = [a for a in items[2:-1] if isinstance(a, (ast.Arg, ast.KwArg))]
        args = tuple(a for a in arguments if isinstance(a, ast.Arg))
        kwargs = tuple(a for a in arguments if isinstance(a, ast.KwArg))
        first_kw = next((i for i, a in enumerate(arguments) if isinstance(a, ast.KwArg)), None)
        if first_kw is not None:
            for late in arguments[first_kw:]:
                if isinstance(late, ast.Arg):
                    raise BwSyntaxError(late.span, "a tensor argument follows a keyword argument",
                                        "put tensor inputs first: op(x, y, key=value)")
        return ast.Call(str(op), args, kwargs, self._span(items), _tok_span(self.path, op))

    def tensor_arg(self, items):
        return ast.Arg(str(items[0]), False, self._span(items))

    def stopped_arg(self, items):
        return ast.Arg(str(items[2]), True, self._span(items))

    def kwarg(self, items):
        key, _, value = items
        return ast.KwArg(str(key), _value(value), self._span(items))

    def number(self, items):
        text = str(items[0])
        value = float(text) if any(c in text for c in ".eE") else _integer(self.path, items[0])
        return _Val(value, self._span(items))

    def true(self, items):
        return _Val(True, self._span(items))

    def false(self, items):
        return _Val(False, self._span(items))

    def string(self, items):
        return _Val(str(items[0])[1:-1], self._span(items))

    def name_value(self, items):
        return ast.NameRef(str(items[0]), self._span(items))

    def list(self, items):
        values = tuple(_value(i) for i in items[1:-1]
                       if i is not None and not isinstance(i, Token))
        return _Val(values, self._span(items))

    def frozen(self, items):
        return ast.Modifier("frozen", None, self._span(items))

    def shares(self, items):
        tok = items[1]
        return ast.Modifier("shares", ast.NameRef(str(tok), _tok_span(self.path, tok)),
                            self._span(items))

    def setting(self, items):
        key, _, value = items
        return ast.Modifier(str(key), _value(value), self._span(items))

    def block_param(self, items):
        name = items[0]
        kind = next((t for t in items[1:] if isinstance(t, Token) and t.type == "NAME"), None)
        default = next((i for i in items[1:] if isinstance(i, (_Val, ast.NameRef))), None)
        return ast.BlockParam(str(name), None if kind is None else str(kind),
                              None if default is None else _value(default), self._span(items))

    def return_stmt(self, items):
        return ast.NameRef(str(items[1]), _tok_span(self.path, items[1]))

    def block_def(self, items):
        name = items[1]
        params = tuple(p for p in items if isinstance(p, ast.BlockParam))
        body = tuple(s for s in items if isinstance(s, ast.LayerStmt))
        ret = next(i for i in items if isinstance(i, ast.NameRef))
        return ast.BlockDef(str(name), params, body, ret, self._span(items))


# Longer integer literals are refused before conversion (which is quadratic in the digits,
# and which Python refuses beyond 4,300 digits); no attribute or dimension admits them.
_MAX_INT_DIGITS = 20


def _integer(path: str, tok: Token) -> int:
    digits = str(tok).lstrip("+-").lstrip("0")
    if len(digits) > _MAX_INT_DIGITS:
        raise BwSyntaxError(_tok_span(path, tok), f"integer literal of {len(digits)} digits is "
                            "too large", f"integers here are at most {MAX_EXTENT}")
    return int(str(tok))


def _value(item):
    return item.value if isinstance(item, _Val) else item


# Common mistakes, recognised by the parser state they leave it in.
_EXAMPLES = {
    "expected '=' and an op call after a layer name": ["conv1 conv2d(x)\n", "y relu(x)\n"],
    "expected an op call such as relu(x) after '='": ["y = x\n", "y = 3\n"],
    "expected ':' and a type such as f32[64, 10] after the input name": [
        "input x f32[2]\n", "input x\n"],
    "a tensor type needs a shape in brackets, e.g. f32[64, 3, 32, 32]": ["input x : f32\n"],
    "expected ',' or ')' between arguments": ["y = relu(x y)\n", "y = conv2d(x out=3)\n"],
    "a block must end with 'return NAME' before its '}'": ["block b(x) {\n y = relu(x)\n}\n"],
}


def _describe(err: UnexpectedInput, text: str, path: str) -> str:
    _parser()[1].path = path
    return describe(err, text, _parser()[0].parse, _EXAMPLES, _PRETTY)


_PRETTY = {"NAME": "a name", "_NL": "end of line", "LPAR": "'('", "RPAR": "')'",
           "LSQB": "'['", "RSQB": "']'", "COMMA": "','", "EQUAL": "'='", "COLON": "':'",
           "SIGNED_NUMBER": "a number", "INT": "an integer", "LBRACE": "'{'", "RBRACE": "'}'",
           "STRING": "a string", "$END": "end of file"}


def _error_span(err: UnexpectedInput, src: SourceFile) -> Span:
    tok = getattr(err, "token", None)
    if tok is not None and getattr(tok, "line", None) and tok.type != "$END":
        return _tok_span(src.path, tok)
    line = getattr(err, "line", None)
    col = getattr(err, "column", None)
    if isinstance(line, int) and line > 0 and isinstance(col, int) and col > 0:
        return Span(src.path, line, col, line, col + 1)
    # end of file: point just past the last non-blank character
    stripped = src.text.rstrip()
    line, col = src.position(len(stripped))
    return Span(src.path, line, col, line, col + 1)


@cyclic_gc_paused
def parse_bw(text: str, path: str = "<input>") -> ast.Module:
    """Parse .bw source text. Raises BwSyntaxError for text that does not parse."""
    src = register(SourceFile(path, text))
    parser, postlex, to_ast = _building_parser()
    postlex.path = to_ast.path = path
    try:
        module = _loop(parser).parse(text)
        if module is not REJECTED:
            return module
        return parser.parse(text)   # raises Lark's error for what the loop rejected
    except UnexpectedInput as err:
        raise BwSyntaxError(_error_span(err, src), _describe(err, text, src.path)) from None
    except VisitError as err:
        if isinstance(err.orig_exc, BwSyntaxError):
            raise err.orig_exc from None
        raise
