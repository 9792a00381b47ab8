"""`record`: a frozen, slotted dataclass whose constructor costs a third of dataclasses'.

A frozen dataclass's generated `__init__` stores each field through `object.__setattr__`,
about 0.2 µs a field on CPython 3.11. `explain` of a 10,000-layer net builds over half a
million such values (spans, edges, decisions, steps, buffers), which made that a third of
its time. `record` is `dataclass(frozen=True, slots=True)` with only `__init__` replaced:
the new one has the same parameters and defaults and stores each field through its slot's
descriptor, which the frozen `__setattr__` never sees. Fields, equality, hashing, repr,
`dataclasses.replace` and the error on assignment are dataclasses' own.

A class using what this constructor does not reproduce (init-only variables, keyword-only
fields) keeps dataclasses' `__init__`.
"""
from __future__ import annotations

import dataclasses
from dataclasses import MISSING


def record(cls=None, /, **options):
    """`@record` or `@record(order=True)`: a frozen, slotted dataclass (any further
    dataclass options pass through)."""
    def make(c):
        made = dataclasses.dataclass(frozen=True, slots=True, **options)(c)
        init = _slot_init(made)
        if init is not None:
            init.__qualname__ = f"{made.__qualname__}.__init__"
            init.__doc__ = made.__init__.__doc__
            made.__init__ = init
        return made
    return make if cls is None else make(cls)


class _Factory:
    """The default of a parameter whose field has a default_factory."""


def _slot(cls, name: str):
    """The slot descriptor of a field, on the class or on the record it extends."""
    for klass in cls.__mro__:
        if name in klass.__dict__:
            return klass.__dict__[name]
    raise TypeError(f"{cls.__name__}.{name} has no slot")


def _slot_init(cls):
    fields = dataclasses.fields(cls)
    if any(f.kw_only for f in fields) or any(
            f._field_type is dataclasses._FIELD_INITVAR
            for f in cls.__dataclass_fields__.values()):
        return None
    env: dict[str, object] = {"_FACTORY": _Factory}
    params, body = [], []
    for f in fields:
        store = f"_store_{f.name}"
        env[store] = _slot(cls, f.name).__set__
        if f.default_factory is not MISSING:
            env[f"_make_{f.name}"] = f.default_factory
        elif f.default is not MISSING:
            env[f"_default_{f.name}"] = f.default
        if not f.init:
            if f.default_factory is not MISSING:
                body.append(f"{store}(self, _make_{f.name}())")
            elif f.default is not MISSING:
                body.append(f"{store}(self, _default_{f.name})")
            continue
        if f.default_factory is not MISSING:
            params.append(f"{f.name}=_FACTORY")
            body.append(f"{store}(self, _make_{f.name}() if {f.name} is _FACTORY "
                        f"else {f.name})")
        elif f.default is not MISSING:
            params.append(f"{f.name}=_default_{f.name}")
            body.append(f"{store}(self, {f.name})")
        else:
            params.append(f.name)
            body.append(f"{store}(self, {f.name})")
    if hasattr(cls, "__post_init__"):
        body.append("self.__post_init__()")
    source = (f"def __init__(self, {', '.join(params)}):\n"
              + "".join(f"    {line}\n" for line in body or ["pass"]))
    exec(source, env)   # the generated code names only the fields and env's entries
    return env["__init__"]
