"""Numba CPU kernels, one module per op family; forward, dX and dW are separate kernels so
the runtime can skip any of them.

Names are "<family>.<function>" (e.g. "conv.conv2d_dx"); `get` imports the family module
only when one of its kernels is first asked for, so importing this package costs nothing
and does not load Numba.

Calling convention (all arrays C-contiguous, float32 in normal use, float64 also works):

    fwd(ctx, inputs, params, out, aux, training, rng) -> None
        fills `out`, and every buffer in `aux` (name -> preallocated array); an aux buffer
        the backward will not read is left out of `aux`, and then it is not computed.
    dx(ctx, saved, dout, index, out) -> None
        overwrites `out` with the gradient into input `index` (the position among the
        op's inputs; only a variadic port's kernel reads it). `saved` holds exactly what
        the gradient rule's `needs` names. A loss's `dout` is a 0-d array: the loss weight.
    dw(ctx, saved, dout, out) -> None
        overwrites `out` with the gradient of the rule's parameter slot.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

FAMILIES = ("conv", "linear", "elementwise", "pool", "norm", "shape", "loss", "activation",
            "reduction", "broadcast", "embed", "spatial_norm", "spatial",
            "unpool", "stochastic")


def get(name: str) -> Callable[..., Any]:
    """The kernel called `name` ("<family>.<function>"); KeyError if there is none."""
    family, _, function = name.partition(".")
    if family not in FAMILIES or not function:
        raise KeyError(f"no CPU kernel family for {name!r}; families: {', '.join(FAMILIES)}")
    kernel = None
    if not function.startswith("_"):  # a module's private helpers are not kernels
        kernel = getattr(importlib.import_module(f"{__name__}.{family}"), function, None)
    if kernel is None:
        raise KeyError(f"CPU kernel module {family!r} has no kernel {function!r}")
    return kernel


def with_channel_sum(name: str) -> Callable[..., Any] | None:
    """The variant of dX kernel `name` that also sums its output over every axis but 1,
    `<name>_channel_sum(ctx, saved, dout, index, out, channel_sum)`, or None where the
    family has none (the executor then runs the bias gradient as its own kernel)."""
    family, _, function = name.partition(".")
    get(name)   # the plain kernel exists
    return getattr(importlib.import_module(f"{__name__}.{family}"), f"{function}_channel_sum",
                   None)


def with_epilogue(name: str, epilogue: str) -> Callable[..., Any] | None:
    """The variant of forward kernel `name` that applies the forward of kernel `epilogue`
    (an epilogue op's, OpDef.epilogue) to every value it writes,
    `<name>_<epilogue's function less _fwd>(ctx, inputs, params, out, aux, training, rng,
    epilogue_ctx)` (e.g. conv.conv2d_fwd_relu for elementwise.relu_fwd), or None where the
    family has none (the executor then runs the epilogue's kernel in place)."""
    family, _, function = name.partition(".")
    get(name)
    get(epilogue)
    applied = epilogue.partition(".")[2].removesuffix("_fwd")
    return getattr(importlib.import_module(f"{__name__}.{family}"), f"{function}_{applied}",
                   None)
