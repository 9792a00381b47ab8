"""What both parsers say about a Lark syntax error that no labelled example matches:
"unexpected character 'x'" or "unexpected 'tok' (expected a name, ')')"."""
from __future__ import annotations

from collections.abc import Callable, Mapping

from lark.exceptions import UnexpectedCharacters, UnexpectedInput


def describe(err: UnexpectedInput, text: str, parse: Callable, examples: Mapping,
             pretty: Mapping[str, str]) -> str:
    """A labelled example's message when the error matches one (Lark's match_examples),
    else a generic message naming what was found and what the grammar expected."""
    try:
        label = err.match_examples(parse, examples, use_accepts=True)
    except Exception:  # noqa: BLE001 - a trial parse of an example failing means no label
        label = None
    if label:
        return label
    if isinstance(err, UnexpectedCharacters):
        ch = text[err.pos_in_stream] if err.pos_in_stream < len(text) else "end of file"
        return f"unexpected character {ch!r}"
    tok = getattr(err, "token", None)
    got = "end of file" if tok is None or tok.type == "$END" else repr(str(tok))
    expected = sorted({pretty.get(t, t.lower()) for t in getattr(err, "expected", ()) or ()})
    hint = f" (expected {', '.join(expected[:6])})" if expected else ""
    return f"unexpected {got}{hint}"
