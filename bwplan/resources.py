"""Where the grammars and CUDA sources live: inside the package (bwplan/_data/, placed there
by setup.py's build) in an installed wheel, or at the top of a source checkout (which an
editable install also reads)."""
from __future__ import annotations

from importlib import resources
from pathlib import Path

_PACKAGED = Path(str(resources.files("bwplan"))) / "_data"
_CHECKOUT = Path(__file__).resolve().parents[1]


def resource_dir(name: str) -> Path:
    for base in (_PACKAGED, _CHECKOUT):
        candidate = base / name
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"bwplan cannot find its '{name}' folder; reinstall the package")
