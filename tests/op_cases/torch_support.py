"""PyTorch for the rows' translations, when it is installed (`torch` is None otherwise, and
only the tests that call a translation skip), and what several translations share.

Every translation is written from the semantics the docs give the op (Caffe's, mostly),
without reading bwplan's NumPy references or kernels.
"""
from __future__ import annotations

import os

# Loading torch starts the OpenMP runtime that the cpu target's Numba kernels then share,
# and the runtime reads OMP_WAIT_POLICY only then: left to spin, its idle workers made the
# cpu target 20x slower on 2 cores in everything that ran after this import. The cpu
# target asks for a passive policy itself (bwplan/kernels/cpu/threads.py), too late here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

try:
    import torch
    import torch.nn.functional as F
except ImportError:   # the strategies still work; the translations are never called
    torch = F = None


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
