"""Launch geometry of cuda/activation.cu: none of its own. Every kernel there takes the
default launch of its component kind (default.py), bound by its parameter names."""
from __future__ import annotations

LAUNCH: dict = {}
