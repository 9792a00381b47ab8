"""`cyclic_gc_paused`: a decorator for the passes that build a large network's values.

Parsing, building, planning, lowering and rendering a 10,000-layer net each allocate
hundreds of thousands of small objects and create no reference cycles that need collecting
before the pass ends. While they run, every few hundred allocations the cyclic collector
walks the young objects, and every so often the whole live Net and Plan: on such a net that
was a third of `explain`'s time and the occasional 1 s spike in re-planning. The collector
is paused for the pass and restored (if it was running) when the pass ends or raises.
"""
from __future__ import annotations

import functools
import gc


def cyclic_gc_paused(fn):
    @functools.wraps(fn)
    def paused(*args, **kwargs):
        if not gc.isenabled():   # an enclosing pass already paused it
            return fn(*args, **kwargs)
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            gc.enable()
    return paused
