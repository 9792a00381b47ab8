"""Human-readable numbers for the renderers."""
from __future__ import annotations


def flops(n: int) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}FLOP"
    return f"{n} FLOP"


def nbytes(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def saving(full: int, planned: int) -> str:
    if full == 0:
        return "nothing to save"
    if planned == full:
        return "no saving"
    share = 100.0 * (full - planned) / full
    return f"saves {share:.1f}%" if share >= 0.05 else "saves under 0.1%"
