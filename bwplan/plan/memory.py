"""The peak of live activation bytes for one training step, read from its Program.

Counts the batch, activations, aux buffers kept for backward, activation gradients and
the temporaries of accumulating dX steps: every buffer lowering gives a lifetime
(bwplan/lower/schedule.py). Parameters and their gradients are resident in any case and
are not counted. The CPU executor allocates and frees exactly these buffers at exactly
these positions, so its measured peak equals this figure.
"""
from __future__ import annotations


def peak_bytes(program) -> int:
    """The largest sum of live bytes at any schedule position of `program`."""
    return program.peak_bytes()
