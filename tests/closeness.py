"""The comparison every kernel test uses: |got - ref| <= tol + |ref| * eps elementwise,
reporting the first mismatches by index."""
from __future__ import annotations

import numpy as np
import pytest


def assert_close(got, ref, what: str, tol: float, eps: float) -> None:
    got, ref = np.asarray(got, np.float64), np.asarray(ref, np.float64)
    assert got.shape == ref.shape, f"{what}: shape {got.shape}, reference {ref.shape}"
    bad = ~(np.abs(got - ref) <= tol + np.abs(ref) * eps)
    if bad.any():
        where = np.argwhere(bad)[:5]
        lines = [f"  at {tuple(int(i) for i in w)}: got {got[tuple(w)]!r}, "
                 f"reference {ref[tuple(w)]!r}" for w in where]
        pytest.fail(f"{what}: {int(bad.sum())} of {bad.size} elements differ\n"
                    + "\n".join(lines))
