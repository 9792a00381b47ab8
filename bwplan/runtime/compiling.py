"""Numba compiles a CPU kernel the first time a program calls it with a new signature and
caches it on disk; a cold first run spends most of a minute there. This module counts
those compilations (cache misses only: a kernel loaded from the disk cache is not one) and
their time, so that `train` can say what it waits for and leave that time out of its
throughput; and the process's own age in wall and CPU time, so that `train --profile` can
say when its first step ended (the cold start)."""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable

from numba.core import event


class _Watch(event.Listener):
    """Numba's "numba:compile" events, outermost ones only (a kernel compiles the kernels
    it calls inside its own event)."""

    def __init__(self) -> None:
        self.depth = 0
        self.count = 0
        self.seconds = 0.0
        self._started = 0.0
        self.on_compiled: Callable[[int, str], None] | None = None

    def on_start(self, ev) -> None:
        if self.depth == 0:
            self._started = time.perf_counter()
        self.depth += 1

    def on_end(self, ev) -> None:
        self.depth -= 1
        if self.depth == 0:
            self.seconds += time.perf_counter() - self._started
            self.count += 1
            if self.on_compiled is not None:
                dispatcher = (ev.data or {}).get("dispatcher")
                name = getattr(getattr(dispatcher, "py_func", None), "__name__", "kernel")
                self.on_compiled(self.count, name)


_WATCH: _Watch | None = None
_LOCK = threading.Lock()


def watch() -> _Watch:
    """The process's one watcher, installed on first use."""
    global _WATCH
    with _LOCK:
        if _WATCH is None:
            _WATCH = _Watch()
            event.register("numba:compile", _WATCH)
    return _WATCH


def seconds_so_far() -> float:
    """Seconds spent compiling kernels since the watcher was installed."""
    return watch().seconds


def process_age() -> tuple[float | None, float]:
    """(wall seconds since this process started, CPU seconds it has used: user + system,
    every thread). The wall figure reads the start time Linux records in /proc/self/stat
    (to a clock tick, 10 ms), so it includes the interpreter's start and the imports; None
    where there is no /proc."""
    cpu = time.process_time()
    try:
        with open("/proc/self/stat") as f:
            # the command name (field 2) is in parentheses and may hold spaces
            fields = f.read().rpartition(")")[2].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")   # field 22: starttime
        return time.clock_gettime(time.CLOCK_BOOTTIME) - started, cpu
    except (OSError, ValueError, IndexError, AttributeError):
        return None, cpu
