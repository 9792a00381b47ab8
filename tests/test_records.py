"""`record` builds the same values as dataclass(frozen=True, slots=True): defaults,
factories, __post_init__, equality, hashing, ordering, replace and the error on
assignment; only the constructor differs."""
from dataclasses import FrozenInstanceError, dataclass, field, fields, replace

import pytest

from bwplan.records import record


def _pair(**options):
    def body(cls_name):
        return {"__annotations__": {"a": "int", "b": "str", "c": "tuple", "d": "int"},
                "b": "x", "c": field(default_factory=lambda: (1,)),
                "d": field(init=False, default=7)}
    fast = record(type("Fast", (), body("Fast")), **options)
    plain = dataclass(frozen=True, slots=True, **options)(type("Plain", (), body("Plain")))
    return fast, plain


@pytest.mark.parametrize("args, kwargs", [((1,), {}), ((1, "y"), {}), ((1,), {"c": (2, 3)}),
                                          ((), {"a": 4, "b": "z"})])
def test_same_fields_as_a_frozen_dataclass(args, kwargs):
    fast, plain = _pair()
    f, p = fast(*args, **kwargs), plain(*args, **kwargs)
    assert [getattr(f, x.name) for x in fields(f)] == [getattr(p, x.name) for x in fields(p)]
    assert f == fast(*args, **kwargs) and hash(f) == hash(fast(*args, **kwargs))
    assert replace(f, b="w").b == "w" and replace(f, b="w").a == f.a
    with pytest.raises(FrozenInstanceError):
        f.a = 2


def test_factory_called_per_instance_and_missing_argument_refused():
    @record
    class Bag:
        items: list = field(default_factory=list)
    assert Bag().items is not Bag().items
    fast, _ = _pair()
    with pytest.raises(TypeError):
        fast()
    with pytest.raises(TypeError):
        fast(1, d=3)      # an init=False field is no parameter


def test_post_init_and_order():
    seen = []

    @record(order=True)
    class Key:
        kind: str
        wrt: str = ""

        def __post_init__(self):
            seen.append(self.kind)
    assert sorted([Key("dw", "b"), Key("dx"), Key("dw", "a")]) == [
        Key("dw", "a"), Key("dw", "b"), Key("dx")]
    assert seen[:3] == ["dw", "dx", "dw"]


def test_a_record_extending_a_record_sets_the_inherited_fields():
    @record
    class Base:
        a: int

    @record
    class Derived(Base):
        b: int = 2
    d = Derived(1)
    assert (d.a, d.b) == (1, 2) and d == Derived(1, 2) and d != Derived(1, 3)
