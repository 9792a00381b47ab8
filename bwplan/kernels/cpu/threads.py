"""How many threads the CPU kernels use, and how Numba's threads and BLAS's share cores.

Two thread pools do the work: Numba's (the parallel loops: im2col, pooling, batchnorm...)
and the BLAS that NumPy ships (OpenBLAS: conv and linear GEMMs). They never run at the
same moment, since a kernel calls one and then the other from one Python thread, but each
keeps its workers busy-waiting for a while after its work ends, and on a machine with few
cores a spinning idle worker takes the core the other pool needs:

- Numba's OpenMP workers spin after each parallel loop; measured on 2 vCPUs, a GEMM right
  after a parallel im2col took 1.7x as long. `configure` sets OMP_WAIT_POLICY=PASSIVE
  (unless already set) so they sleep instead; that must happen before Numba's OpenMP
  runtime starts, i.e. before the first parallel kernel runs.
- OpenBLAS workers spin after each GEMM (OPENBLAS_THREAD_TIMEOUT, read when NumPy loads;
  lowering it made GEMMs several times slower here, so it is left alone). A parallel loop
  right after a GEMM can run up to twice as slow; it is still no slower than serially.
- BLAS's thread count is OpenBLAS's own: OPENBLAS_NUM_THREADS or OMP_NUM_THREADS before
  NumPy is imported, or threadpoolctl at run time, which `configure` uses when it is
  installed. Numba's count is per calling thread (numba.set_num_threads), so call
  `configure` from the thread that runs the kernels.
- Where the "cores" are virtual CPUs that do not really run at once (two busy processes
  each at half speed, as on the 2-vCPU machine these figures come from), a two-thread
  GEMM waits whole scheduler slices (8-16 ms) for its second thread; there one thread is
  faster and far steadier.

Numba's threading layer is chosen OpenMP first: its idle workers can sleep (above), and
the workqueue fallback must not be entered from two threads at once.
"""
from __future__ import annotations

import os


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def configure(threads: int | None = None) -> int:
    """Use `threads` threads (default: every core this process may run on) for the Numba
    kernels and, when threadpoolctl is installed, for BLAS. Returns the Numba count, which
    Numba caps at the NUMBA_NUM_THREADS it started with. Call once, before the first
    kernel runs."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import numba  # only a runtime that executes kernels pays for importing Numba

    if numba.config.THREADING_LAYER == "default":
        numba.config.THREADING_LAYER_PRIORITY = ["omp", "tbb", "workqueue"]
    wanted = max(1, threads or available_cores())
    count = min(wanted, numba.config.NUMBA_NUM_THREADS)
    numba.set_num_threads(count)
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return count
    threadpool_limits(limits=wanted, user_api="blas")
    return count
