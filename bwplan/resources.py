"""Where the grammar and CUDA sources live: beside the package in a source checkout, or
under <prefix>/share/bwplan after a regular (non-editable) install."""
from __future__ import annotations

import sys
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parents[1]


def resource_dir(name: str) -> Path:
    for base in (_CHECKOUT, Path(sys.prefix) / "share" / "bwplan"):
        candidate = base / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bwplan cannot find its '{name}' folder; reinstall the package")
