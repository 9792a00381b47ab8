"""The cyclic collector is paused for a large pass and restored after it, also on errors."""
import gc

import pytest

from bwplan.gc_pause import cyclic_gc_paused


@cyclic_gc_paused
def _state(fail: bool = False) -> bool:
    if fail:
        raise ValueError("bad input")
    return gc.isenabled()


@cyclic_gc_paused
def _nested() -> tuple[bool, bool]:
    return _state(), gc.isenabled()


def test_paused_during_and_restored_after():
    assert gc.isenabled()
    assert _state() is False
    assert gc.isenabled()
    assert _nested() == (False, False)
    assert gc.isenabled()


def test_restored_when_the_pass_raises():
    with pytest.raises(ValueError):
        _state(fail=True)
    assert gc.isenabled()


def test_left_off_when_the_caller_turned_it_off():
    gc.disable()
    try:
        assert _state() is False
        assert not gc.isenabled()
    finally:
        gc.enable()
