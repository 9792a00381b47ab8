"""Runtimes: execute a Program on a target (CPU with Numba kernels, or NumPy references)."""
