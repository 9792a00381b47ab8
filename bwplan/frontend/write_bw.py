"""Writes a flat AST Module as .bw source text: the inverse of parse_bw for modules without
blocks (what `bwplan convert model.prototxt -o model.bw` writes).

    input data: f32[64, 1, 28, 28]
    input label: i64[64]
    conv1 = conv2d(data, out=20, kernel=5) weight.lr=0
    loss = softmax_cross_entropy(conv1, label)

The text re-parses to the same module (spans aside). A name the .bw grammar cannot spell,
such as a Caffe layer called "conv 1" or a layer called "input", is a BwError naming it.
"""
from __future__ import annotations

import math
import re
from collections.abc import Iterable

from bwplan.errors import BwError
from bwplan.frontend import ast
from bwplan.source import Span

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_/.\-]*")
# words the grammar reads as keywords where a name would stand
_NOT_LAYER = frozenset({"input", "param", "block"})
_NOT_ARG = frozenset({"stop_gradient"})
_NOT_VALUE = frozenset({"true", "false"})
_STRING = re.compile(r'[^"\n]*')


def _name(name: str, what: str, span: Span, reserved: frozenset[str] = frozenset()) -> str:
    if not _NAME.fullmatch(name):
        raise BwError(span, f"the {what} name '{name}' cannot be written in .bw (a name is a "
                      "letter or '_' followed by letters, digits, '_', '/', '.' or '-')",
                      "rename it in the source net")
    if name in reserved:
        raise BwError(span, f"the {what} name '{name}' is a .bw keyword in that position",
                      "rename it in the source net")
    return name


def _value(value: ast.Value, span: Span) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise BwError(span, f"the value {value} cannot be written in .bw")
        return repr(value)
    if isinstance(value, ast.NameRef):
        return _name(value.name, "value", value.span, _NOT_VALUE)
    if isinstance(value, str):
        if not _STRING.fullmatch(value):
            raise BwError(span, f"the string {value!r} cannot be written in .bw (it holds a "
                          "quote or a newline)")
        return f'"{value}"'
    if isinstance(value, tuple):
        return "[" + ", ".join(_value(v, span) for v in value) + "]"
    raise BwError(span, f"the value {value!r} cannot be written in .bw")


def _modifiers(mods: Iterable[ast.Modifier]) -> str:
    out = []
    for m in mods:
        if m.key == "frozen":
            out.append("frozen")
        elif m.key == "shares":
            name = m.value.name if isinstance(m.value, ast.NameRef) else str(m.value)
            out.append(f"shares {_name(name, 'layer', m.span)}")
        else:
            out.append(f"{_name(m.key, 'setting', m.span)}={_value(m.value, m.span)}")
    return "".join(" " + m for m in out)


def _type(t) -> str:
    return f"{t.dtype}[{', '.join(str(d) for d in t.shape)}]"


def _call(call: ast.Call) -> str:
    parts = []
    for a in call.args:
        name = _name(a.name, "tensor", a.span, _NOT_ARG)
        parts.append(f"stop_gradient({name})" if a.stop_gradient else name)
    for kw in call.kwargs:
        parts.append(f"{_name(kw.key, 'attribute', kw.span)}={_value(kw.value, kw.span)}")
    return f"{_name(call.op, 'op', call.op_span)}({', '.join(parts)})"


def _statement(stmt: ast.Statement) -> str:
    if isinstance(stmt, ast.InputDecl):
        grad = " grad" if stmt.grad else ""
        grad += "" if stmt.batched else " unbatched"
        return f"input {_name(stmt.name, 'input', stmt.span)}: {_type(stmt.type)}{grad}"
    if isinstance(stmt, ast.ParamDecl):
        return (f"param {_name(stmt.name, 'param', stmt.span)}: {_type(stmt.type)}"
                f"{_modifiers(stmt.modifiers)}")
    if isinstance(stmt, ast.LayerStmt):
        name = _name(stmt.name, "layer", stmt.name_span, _NOT_LAYER)
        return f"{name} = {_call(stmt.call)}{_modifiers(stmt.modifiers)}"
    raise BwError(stmt.span, "only flat modules can be written (expand blocks first)")


def write_bw(module: ast.Module, header: Iterable[str] = ()) -> str:
    """The .bw text of a flat module; `header` lines become leading comments."""
    lines = [f"# {h}" if h else "#" for h in header]
    lines += [_statement(s) for s in module.statements]
    return "\n".join(lines) + "\n"
