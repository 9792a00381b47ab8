"""`LalrLoop`: a Lark LALR parser's own tables, lexers and callbacks, run in one loop.

`Lark.parse` passes every token through a chain of generators (the contextual lexer, the
post-lexer connector, the parser's token loop) and a `feed_token` call that sets up its
locals again for each token; on a 10,000-layer file those hand-offs, not the regular
expressions or the tree callbacks, were most of the parse. This loop does the same work
from the same pieces, for the same result: the parse table Lark computed from the grammar,
the contextual lexer's scanner for each parser state (so a keyword is a keyword only where
the grammar accepts it, as in Lark), its keyword callbacks, the grammar's post-lexer and
the tree builder's callbacks (here the inline transformer, which builds the AST).

It handles only text that parses. At the first character no scanner matches or the first
token the table has no action for, it returns `REJECTED` and the caller runs `Lark.parse`
on the same text, which raises Lark's own error with its state for error analysis; an
exception raised by a callback or the post-lexer propagates as it would from Lark.
"""
from __future__ import annotations

from lark import Lark, Token
from lark.lexer import PatternStr, UnlessCallback
from lark.parsers.lalr_analysis import Shift

REJECTED = object()


class _Rejected(Exception):
    """Raised inside the loop where Lark would raise UnexpectedInput."""


def _keywords(callback) -> dict[str, str] | None:
    """Lark's keyword callback (a NAME that spells `input` is the INPUT terminal) as a
    table, when its keywords are plain strings; None for any other callback."""
    scanner = getattr(callback, "scanner", None)
    if type(callback) is not UnlessCallback or scanner.g_regex_flags or not all(
            isinstance(t.pattern, PatternStr) and not t.pattern.flags for t in scanner.terminals):
        return None
    words: dict[str, str] = {}
    for t in scanner.terminals:
        words.setdefault(t.pattern.value, t.name)
    return words


class LalrLoop:
    def __init__(self, lark: Lark, start: str = "start") -> None:
        frontend = lark.parser
        lexer = frontend.lexer
        self.postlex = getattr(lexer, "postlexer", None)
        contextual = getattr(lexer, "lexer", lexer)
        table = frontend.parser._parse_table
        self.states = table.states
        self.start_state = table.start_states[start]
        self.end_state = table.end_states[start]
        self.callbacks = frontend.parser.parser.callbacks
        # per parser state: (compiled alternatives, keyword callbacks, ignored types,
        # types that may hold a newline), shared between the states Lark shares a lexer by
        by_lexer: dict[int, tuple] = {}
        self.scanners = {}
        for state, basic in contextual.lexers.items():
            entry = by_lexer.get(id(basic))
            if entry is None:
                mres = tuple(basic.scanner._mres)   # builds the scanner and its callbacks
                keywords, callbacks = {}, {}
                for type_, callback in basic.callback.items():
                    words = _keywords(callback)
                    if words is None:
                        callbacks[type_] = callback
                    else:
                        keywords[type_] = words
                entry = by_lexer[id(basic)] = (mres, keywords, callbacks, basic.ignore_types,
                                               basic.newline_types)
            self.scanners[state] = entry

    def parse(self, text: str):
        """The value Lark's parse returns for `text`, or REJECTED where it would raise."""
        try:
            return self._run(text)
        except _Rejected:
            return REJECTED

    def _tokens(self, text: str, state_stack: list):
        scanners, new_token = self.scanners, Token._future_new
        pos, line, line_start, end = 0, 1, 0, len(text)
        while pos < end:
            mres, keywords, callback, ignore, newline_types = scanners[state_stack[-1]]
            for mre in mres:
                m = mre.match(text, pos)
                if m:
                    break
            else:
                raise _Rejected
            value, type_ = m.group(0), m.lastgroup
            start, start_line, start_column = pos, line, pos - line_start + 1
            pos += len(value)
            if type_ in newline_types:
                newlines = value.count("\n")
                if newlines:
                    line += newlines
                    line_start = start + value.rindex("\n") + 1
            ignored = type_ in ignore
            if ignored and type_ not in callback and type_ not in keywords:
                continue
            tok = new_token(keywords[type_].get(value, type_) if type_ in keywords else type_,
                            value, start, start_line, start_column, line,
                            pos - line_start + 1, pos)
            if type_ in callback:
                tok = callback[type_](tok)
            if not ignored:
                yield tok

    def _run(self, text: str):
        states, callbacks = self.states, self.callbacks
        state_stack, value_stack = [self.start_state], []
        tokens = self._tokens(text, state_stack)
        if self.postlex is not None:
            tokens = self.postlex.process(tokens)
        token = None
        for token in tokens:
            type_ = token.type
            while True:
                action, arg = states[state_stack[-1]].get(type_, (None, None))
                if action is Shift:
                    state_stack.append(arg)
                    value_stack.append(callbacks[type_](token) if type_ in callbacks
                                       else token)
                    break
                if action is None:
                    raise _Rejected
                size = len(arg.expansion)
                if size:
                    children = value_stack[-size:]
                    del state_stack[-size:]
                    del value_stack[-size:]
                else:
                    children = []
                value_stack.append(callbacks[arg](children))
                state_stack.append(states[state_stack[-1]][arg.origin.name][1])
        # the end of input: reduce until the start rule is accepted
        while True:
            action, arg = states[state_stack[-1]].get("$END", (None, None))
            if action is None or action is Shift:
                raise _Rejected
            size = len(arg.expansion)
            if size:
                children = value_stack[-size:]
                del state_stack[-size:]
                del value_stack[-size:]
            else:
                children = []
            value_stack.append(callbacks[arg](children))
            state_stack.append(states[state_stack[-1]][arg.origin.name][1])
            if state_stack[-1] == self.end_state:
                return value_stack[-1]
