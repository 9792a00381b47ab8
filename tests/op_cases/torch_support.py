"""PyTorch for the rows' translations, and what several translations share.

`torch` and `F` (torch.nn.functional) load torch on first use, not on import: a test that
only draws cases (most of them) neither needs torch installed nor pays its seconds of
start-up; the tests that call a translation skip without torch before they call it.
Every translation is written from the semantics the docs give the op (Caffe's, mostly),
without reading bwplan's NumPy references or kernels.
"""
from __future__ import annotations

import importlib
import os

# Loading torch starts the OpenMP runtime that the cpu target's Numba kernels then share,
# and the runtime reads OMP_WAIT_POLICY only then: left to spin, its idle workers made the
# cpu target 20x slower on 2 cores in everything that ran after this import. The cpu
# target asks for a passive policy itself (bwplan/kernels/cpu/threads.py), too late here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


class _OnFirstUse:
    """A module imported when one of its attributes is first read."""

    def __init__(self, name: str) -> None:
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)


torch = _OnFirstUse("torch")
F = _OnFirstUse("torch.nn.functional")


def pair(value) -> tuple[int, int]:
    if isinstance(value, (tuple, list)):
        return (int(value[0]), int(value[-1]))
    return (int(value), int(value))


def channel_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.reshape((1, -1) + (1,) * (ndim - 2))


# ---- decisions at kinks ------------------------------------------------------------------
# A ReLU's sign test and the max ops' choice of winner are discontinuous. Where the oracle's
# float64 value lies within float32 rounding of such a kink, bwplan's float32 run may decide
# either way, and one flipped decision moves a gradient by ~1e-3 of its norm (five steps of
# cnn_small at batch 2 meet one for some seeds). So the rows marked `deciding` accept
# `hints`: bwplan's own values of the layer's inputs. A decision whose margin is positive but
# below UNDECIDED times the largest magnitude of the tensor follows them; every other
# decision, exact ties included, is the oracle's own.
UNDECIDED = 1e-5


def undecided(margin: torch.Tensor, scale_of: torch.Tensor) -> torch.Tensor:
    limit = UNDECIDED * float(scale_of.detach().abs().max())
    return (margin > 0) & (margin <= limit)


def winner(values: torch.Tensor, dim: int, hint: torch.Tensor | None,
           scale_of: torch.Tensor) -> torch.Tensor:
    """The first maximum along `dim`; where the first maximum of `hint` (laid out like
    `values`) is another element, short of the best by an undecided margin, that one."""
    values = values.detach()
    pick = values.argmax(dim)
    if hint is None:
        return pick
    theirs = hint.argmax(dim)
    margin = take(values, dim, pick) - take(values, dim, theirs)
    return torch.where(undecided(margin, scale_of), theirs, pick)


def take(values: torch.Tensor, dim: int, index: torch.Tensor) -> torch.Tensor:
    """The element `index` picks along `dim`; the gradient flows to it alone."""
    return values.gather(dim, index.unsqueeze(dim)).squeeze(dim)
