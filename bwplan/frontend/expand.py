"""Expands blocks: every instance `t = tower(x, width=4)` becomes the block's layers named
`t/<layer>`, block value parameters are substituted, and later references to `t` mean the
block's returned layer. `shares` between instances becomes `shares` between corresponding
layers; `frozen`, `lr=` and `decay=` on an instance apply to every layer inside (lr and decay
multiply the layers' own settings).

Input: a parsed Module. Output: a flat Module of InputDecl, ParamDecl and LayerStmt only.
"""
from __future__ import annotations

from dataclasses import replace

from bwplan.errors import (AttrError, BwError, BwSyntaxError, Redefined, UnknownName,
                           raise_all)
from bwplan.frontend import ast
from bwplan.gc_pause import cyclic_gc_paused

_VALUE_KINDS = {
    "int": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "float": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    "bool": lambda v: isinstance(v, bool),
    "ints": lambda v: (isinstance(v, int) and not isinstance(v, bool)) or (
        isinstance(v, tuple) and all(isinstance(i, int) for i in v)),
    "name": lambda v: isinstance(v, ast.NameRef),
}

# The most layers a net may expand to. Blocks nest, so a short file can ask for
# exponentially many; expansion stops with an error as soon as it passes this.
MAX_LAYERS = 100_000


@cyclic_gc_paused
def expand(module: ast.Module) -> ast.Module:
    blocks: dict[str, ast.BlockDef] = {}
    errors: list[BwError] = []
    for stmt in module.statements:
        if isinstance(stmt, ast.BlockDef):
            if stmt.name in blocks:
                errors.append(Redefined(stmt.span, "block", stmt.name, blocks[stmt.name].span))
            blocks[stmt.name] = stmt
    raise_all(errors)
    if not blocks:
        return module
    expander = _Expander(blocks)
    out: list[ast.Statement] = []
    for stmt in module.statements:
        if isinstance(stmt, ast.BlockDef):
            continue
        if isinstance(stmt, ast.LayerStmt):
            expander.count(stmt)
            out.extend(expander.layer(stmt, prefix="", local={}, values={}, stack=()))
        else:
            out.append(stmt)
    raise_all(expander.errors)
    return ast.Module(module.path, tuple(_resolve_aliases(s, expander.aliases) for s in out))


def _resolve_aliases(stmt: ast.Statement, aliases: dict[str, str]) -> ast.Statement:
    if not isinstance(stmt, ast.LayerStmt) or not aliases:
        return stmt
    args = tuple(replace(a, name=_follow(a.name, aliases)) for a in stmt.call.args)
    mods = tuple(
        replace(m, value=replace(m.value, name=_follow(m.value.name, aliases)))
        if m.key == "shares" and isinstance(m.value, ast.NameRef) and m.value.name not in aliases
        else m
        for m in stmt.modifiers)
    return replace(stmt, call=replace(stmt.call, args=args), modifiers=mods)


def _follow(name: str, aliases: dict[str, str]) -> str:
    seen = set()
    while name in aliases and name not in seen:
        seen.add(name)
        name = aliases[name]
    return name


class _Expander:
    def __init__(self, blocks: dict[str, ast.BlockDef]) -> None:
        self.blocks = blocks
        self.aliases: dict[str, str] = {}   # instance name -> returned layer's full name
        self.instances: dict[str, tuple[str, ...]] = {}  # instance -> its body layer names
        self.errors: list[BwError] = []
        self.emitted = 0
        self._sizes: dict[str, int] = {}

    def count(self, stmt: ast.LayerStmt) -> None:
        """Count the layers `stmt` expands to before expanding it, and stop once the net
        passes MAX_LAYERS: the count is cheap, the expansion is not."""
        self.emitted += self.size(stmt.call.op, ())
        if self.emitted > MAX_LAYERS:
            raise BwError(stmt.call.span, f"expanding '{stmt.name}' makes the net more than "
                          f"{MAX_LAYERS:,} layers, the most a net may have",
                          "blocks nest: each level multiplies the layers of the one below")

    def size(self, op: str, stack: tuple[str, ...]) -> int:
        if op not in self.blocks or op in stack:  # a self-instantiation is reported later
            return 1 if op not in self.blocks else 0
        if op not in self._sizes:
            self._sizes[op] = sum(self.size(s.call.op, stack + (op,))
                                  for s in self.blocks[op].body)
        return self._sizes[op]

    def layer(self, stmt: ast.LayerStmt, prefix: str, local: dict[str, str],
              values: dict[str, ast.Value], stack: tuple[str, ...]) -> list[ast.LayerStmt]:
        full = prefix + stmt.name
        args = tuple(replace(a, name=local.get(a.name, a.name)) for a in stmt.call.args)
        kwargs = tuple(replace(k, value=_subst(k.value, values)) for k in stmt.call.kwargs)
        mods = tuple(self._local_modifier(m, local, values, prefix) for m in stmt.modifiers)
        if stmt.call.op not in self.blocks:
            call = replace(stmt.call, args=args, kwargs=kwargs)
            return [replace(stmt, name=full, call=call, modifiers=mods)]
        return self.instance(replace(stmt, name=full, modifiers=mods), args, kwargs, stack)

    def _local_modifier(self, mod, local, values, prefix):
        if mod.key == "shares" and isinstance(mod.value, ast.NameRef):
            # inside a block, `shares a` names a sibling layer (or instance) of the body
            return replace(mod, value=replace(mod.value, name=local.get(mod.value.name,
                                                                         mod.value.name)))
        return replace(mod, value=_subst(mod.value, values))

    def instance(self, stmt: ast.LayerStmt, args: tuple[ast.Arg, ...],
                 kwargs: tuple[ast.KwArg, ...], stack: tuple[str, ...]) -> list[ast.LayerStmt]:
        block = self.blocks[stmt.call.op]
        if block.name in stack:
            chain = " -> ".join(stack + (block.name,))
            self.errors.append(BwSyntaxError(stmt.call.op_span,
                                             f"block '{block.name}' instantiates itself ({chain})"))
            return []
        tensor_params = [p for p in block.params if p.kind is None]
        value_params = {p.name: p for p in block.params if p.kind is not None}
        if len(args) != len(tensor_params):
            self.errors.append(BwSyntaxError(
                stmt.call.span, f"block '{block.name}' takes {len(tensor_params)} tensor "
                f"input(s), {len(args)} given"))
            return []
        values: dict[str, ast.Value] = {}
        for kw in kwargs:
            spec = value_params.get(kw.key)
            if spec is None:
                self.errors.append(UnknownName(kw.span, f"argument of block '{block.name}'",
                                               kw.key, value_params))
                continue
            if not _VALUE_KINDS.get(spec.kind, lambda v: True)(kw.value):
                self.errors.append(BwSyntaxError(kw.span, f"'{kw.key}' must be {spec.kind}"))
                continue
            values[kw.key] = kw.value
        for name, spec in value_params.items():
            if name not in values:
                if spec.default is None:
                    self.errors.append(BwSyntaxError(
                        stmt.call.span, f"block '{block.name}' needs a value for '{name}'"))
                    return []
                values[name] = spec.default
        prefix = stmt.name + "/"
        body_names = [s.name for s in block.body]
        local = {p.name: a.name for p, a in zip(tensor_params, args)}
        local.update({n: prefix + n for n in body_names})
        # input -> the call-site argument that cuts it, where the user wrote stop_gradient
        cut = {p.name: a for p, a in zip(tensor_params, args) if a.stop_gradient}
        self.instances[stmt.name] = tuple(prefix + n for n in body_names)
        if block.ret.name not in local or block.ret.name in {p.name for p in tensor_params}:
            self.errors.append(UnknownName(block.ret.span, f"layer in block '{block.name}'",
                                           block.ret.name, body_names))
            return []
        self.aliases[stmt.name] = local[block.ret.name]
        shares = next((m for m in stmt.modifiers if m.key == "shares"), None)
        for m in stmt.modifiers:
            if m.key not in ("frozen", "lr", "decay", "shares"):
                self.errors.append(BwSyntaxError(
                    m.span, f"'{m.key}' cannot be set on a block instance",
                    "only frozen, lr=, decay= and shares apply to a whole block; "
                    "set it on a layer inside the block"))
        inherited = tuple(m for m in stmt.modifiers if m.key == "frozen")
        # instance-level lr/decay scale the inner layers' own settings
        lr_scale = decay_scale = 1.0
        for m in stmt.modifiers:
            if m.key in ("lr", "decay"):
                if not isinstance(m.value, (int, float)) or isinstance(m.value, bool):
                    self.errors.append(AttrError(m.span, f"'{m.key}' needs a number"))
                elif m.key == "lr":
                    lr_scale *= float(m.value)
                else:
                    decay_scale *= float(m.value)
        out: list[ast.LayerStmt] = []
        for body_stmt in block.body:
            if cut:  # stop_gradient at the call site cuts every edge from that input
                call = body_stmt.call
                body_stmt = replace(body_stmt, call=replace(call, args=tuple(
                    replace(a, stop_gradient=True, span=cut[a.name].span)
                    if a.name in cut and not a.stop_gradient else a for a in call.args)))
            for inner in self.layer(body_stmt, prefix, local, values, stack + (block.name,)):
                mods = inner.modifiers + inherited
                if shares is not None:
                    suffix = inner.name[len(prefix):]
                    other = replace(shares.value, name=shares.value.name + "/" + suffix)
                    mods = tuple(m for m in mods if m.key != "shares") + (
                        replace(shares, value=other),)
                out.append(replace(inner, modifiers=mods, lr_scale=inner.lr_scale * lr_scale,
                                   decay_scale=inner.decay_scale * decay_scale))
        return out


def _subst(value, values: dict[str, ast.Value]):
    if isinstance(value, ast.NameRef) and value.name in values:
        return values[value.name]
    if isinstance(value, tuple):
        return tuple(_subst(v, values) for v in value)
    return value
