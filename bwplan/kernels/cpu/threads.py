"""How many threads the CPU kernels use, and how the thread pools share cores.

Two kinds of work run in parallel:

- BLAS calls (conv and linear GEMMs), the Numba loops around them (im2col, col2im), the
  largest elementwise loops and pooling run on the kernel workers here: a kernel cuts its
  work into tasks and `for_each` runs them on the calling thread and `width - 1` helper
  threads, each task calling single-threaded BLAS and serial `nogil` Numba loops on its
  own slice.
- The other Numba kernels (batchnorm, losses) use Numba's parallel loops, which cost
  several times a serial loop's compile time on a cold start.

BLAS itself is kept at one thread (threadpoolctl, when installed), because its own pool
would otherwise sit beside Numba's: OpenBLAS's workers spin for a long while after each
GEMM (OPENBLAS_THREAD_TIMEOUT, read when NumPy loads; lowering it made GEMMs several times
slower), and on two vCPUs a spinning worker takes the core a Numba loop needs. Measured on
the 2-vCPU machine, a 2x2 max pool ran 1.9x slower right after a GEMM than alone, and
Numba's second thread gained nothing anywhere in a training step. The kernel workers sleep
on a queue between tasks instead, so nothing spins between kernels (a hand-off costs about
70 us there), and a task keeps its im2col columns, its GEMMs and its output pass on one
core, in its cache. Without threadpoolctl, BLAS keeps the threads it chose and `for_each`
runs every task on the calling thread. The kernels cut their work by shapes only, never by
the number of threads, so their results do not depend on it.

Numba's OpenMP workers would spin after each parallel loop as well: `configure` sets
OMP_WAIT_POLICY=PASSIVE (unless already set) so they sleep instead; that must happen before
Numba's OpenMP runtime starts, i.e. before the first parallel kernel runs. Numba's count is
per calling thread (numba.set_num_threads), so call `configure` from the thread that runs
the kernels. Numba's threading layer is chosen OpenMP first: its idle workers can sleep
(above), and the workqueue fallback must not be entered from two threads at once.
"""
from __future__ import annotations

import itertools
import os
import queue
import threading
from collections.abc import Callable


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure(threads: int | None = None) -> int:
    """Use `threads` threads (default: every core this process may run on) for the Numba
    kernels and, when threadpoolctl is installed, for the kernel workers, with BLAS at one
    thread. Returns the Numba count, which Numba caps at the NUMBA_NUM_THREADS it started
    with. Call once, before the first kernel runs."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numba  # only a runtime that executes kernels pays for importing Numba

    if numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
    global _configured
    wanted = max(1, threads or available_cores())
    count = min(wanted, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(count)
    _configured = count
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        set_width(1)
        return count
    threadpool_limits(limits=1, user_api="blas")
    set_width(wanted)
    return count


def configured() -> int | None:
    """The Numba thread count the last `configure` set, or None before the first: a
    runtime configures the default only where nobody (a benchmark, a test) chose."""
    return _configured


_configured: int | None = None


def width() -> int:
    """How many threads `for_each` runs tasks on."""
    return _workers.width


def set_width(threads: int) -> int:
    """Run `for_each`'s tasks on `threads` threads from now on (1: on the calling thread
    only); returns the width before. `configure` sets it; tests use it to reach the
    multi-threaded paths."""
    before, _workers.width = _workers.width, max(1, threads)
    return before


def for_each(count: int, task: Callable[[int], None]) -> None:
    """Call task(i) for every i in range(count), on the kernel workers; returns when all
    are done, raising the first exception a task raised. Tasks are handed out in index
    order to whichever thread is free, so a task must not depend on which thread runs it
    or on the order the others finish in. A call made while another is running (from a
    task, or from a second thread) runs its tasks on its own thread."""
    _workers.run(count, task)


class _Workers:
    """The helper threads: each waits on its inbox for (job, done), runs the job and puts
    a token in `done`. A run has a `done` queue of its own, so a run cut short (an
    interrupt while waiting) leaves no token behind for the next."""

    def __init__(self) -> None:
        self.width = 1
        self._busy = threading.Lock()
        self._inboxes: list[queue.SimpleQueue] = []

    def run(self, count: int, task: Callable[[int], None]) -> None:
        helpers = min(self.width, count) - 1
        if helpers <= 0 or not self._busy.acquire(blocking=False):
            for i in range(count):
                task(i)
            return
        try:
            while len(self._inboxes) < helpers:
                self._start_helper()
            indices = itertools.count()  # next() on it is atomic: each index goes once
            errors: list[BaseException] = []

            def drain() -> None:
                try:
                    for i in indices:
                        if i >= count or errors:  # after a failure, the rest is moot
                            return
                        task(i)
                except BaseException as error:  # noqa: BLE001 - re-raised by the caller
                    errors.append(error)

            done: queue.SimpleQueue = queue.SimpleQueue()
            for inbox in self._inboxes[:helpers]:
                inbox.put((drain, done))
            drain()
            for _ in range(helpers):
                done.get()
        finally:
            self._busy.release()
        if errors:
            raise errors[0]

    def _start_helper(self) -> None:
        inbox: queue.SimpleQueue = queue.SimpleQueue()
        threading.Thread(target=_serve, args=(inbox,), daemon=True,
                         name=f"bwplan-kernel-{len(self._inboxes) + 1}").start()
        self._inboxes.append(inbox)

    def forget_helpers(self) -> None:
        """After a fork the child has none of the parent's threads."""
        self._busy = threading.Lock()
        self._inboxes = []


def _serve(inbox: queue.SimpleQueue) -> None:
    while True:
        job, done = inbox.get()
        try:
            job()  # catches what its tasks raise
        finally:
            done.put(None)


_workers = _Workers()
if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(after_in_child=_workers.forget_helpers)


# Numba's parallel loops over fewer elements than this run serially. A parallel loop is a
# fork-join: on the shared 2-vCPU machine, with the second worker asleep or descheduled,
# softmax_cross_entropy's forward over [128, 2] took 0.6-0.9 ms at 2 threads against 0.07
# ms at 1 (and its dX 0.1-0.2 against 0.02): the wake-up, not the work.
PARALLEL_MIN_ELEMENTS = 1 << 15


def parallel_from(elements: int = PARALLEL_MIN_ELEMENTS):
    """Decorates a `parallel=True` Numba kernel so that a call whose first argument has
    fewer than `elements` elements runs a serial build of the same function (prange is
    range there). The serial build is compiled under its own name, so that Numba's disk
    cache keeps the two apart. A kernel whose prange loop reduces (+=) may round
    differently in the two builds; which one runs depends on the shapes only."""
    def wrap(parallel):
        import types

        from numba import njit
        from numba.core.caching import NullCache

        py = parallel.py_func
        twin = types.FunctionType(py.__code__, py.__globals__, py.__name__ + "_serial",
                                  py.__defaults__, py.__closure__)
        twin.__qualname__ = py.__qualname__ + "_serial"
        options = {k: v for k, v in parallel.targetoptions.items()
                   if k not in ("parallel", "nopython")}
        # `cache` is the dispatcher's, not a target option: without it here the serial
        # build compiled again in every process, a warm cache included
        serial = njit(cache=not isinstance(parallel._cache, NullCache), **options)(twin)

        def call(*args):
            return (parallel if args[0].size >= elements else serial)(*args)

        call.parallel, call.serial, call.py_func = parallel, serial, py
        call.__doc__, call.__name__ = py.__doc__, py.__name__
        return call
    return wrap
