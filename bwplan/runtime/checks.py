"""Checks that training runs on sound inputs and stops when it stops being sound.

Before the first step: the training options (`check_options`) and the data set against the
net (`check_dataset`: sizes, element kinds, finite values, labels that name a class). During
training: `check_step` stops at the first non-finite loss or gradient with the step, the
epoch and the likely cause. Each raises a BwError; nothing here prints.
"""
from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from bwplan import ops as registry
from bwplan.errors import BwError
from bwplan.ir.net import Net
from bwplan.runtime.backend import numpy_dtype
from bwplan.runtime.data import DataError
from bwplan.source import Span


class DivergedError(BwError):
    """Training produced a non-finite loss or gradient."""


def _option(name: str, message: str, hint: str | None = None) -> BwError:
    return BwError(Span.synthetic(name), message, hint)


def check_options(epochs: int, batch: int, seed: int, unfreeze_every: int, lr: float,
                  momentum: float, weight_decay: float, checkpoint_every: int = 0) -> None:
    """The numeric options of `train`, each with the range it admits."""
    ints = (("--epochs", epochs, 1), ("--batch", batch, 1), ("--seed", seed, 0),
            ("--unfreeze-every", unfreeze_every, 0), ("--checkpoint-every", checkpoint_every, 0))
    for name, value, low in ints:
        if value < low:
            raise _option(name, f"{name} must be at least {low}, got {value}")
    for name, value in (("--lr", lr), ("--momentum", momentum),
                        ("--weight-decay", weight_decay)):
        if not math.isfinite(value):
            raise _option(name, f"{name} must be a finite number, got {value}")
        if value < 0:
            raise _option(name, f"{name} must not be negative, got {value:g}")
    if momentum >= 1:
        raise _option("--momentum", f"--momentum must be in [0, 1), got {momentum:g}",
                      "at 1 or above the velocity never decays and training diverges")


def check_dataset(net: Net, train: Mapping[str, np.ndarray], val: Mapping[str, np.ndarray],
                  path: str) -> None:
    """Every array fits its input's element kind, holds finite values (floats) and, where it
    feeds a label port, only classes of the consuming layer or its ignore label."""
    where = Span.whole(path)
    batched = [i.name for i in net.inputs if i.batched]
    if not len(train[batched[0]] if batched else next(iter(train.values()))):
        raise DataError(where, "the data set is empty: the training arrays have no rows")
    if val and not len(val[batched[0]] if batched else next(iter(val.values()))):
        raise DataError(where, "the validation arrays (val/...) have no rows",
                        "leave them out to train without validation")
    for split, arrays in (("", train), ("val/", val)):
        for inp in net.inputs:
            if inp.name in arrays:
                _check_array(net, inp, split + inp.name, arrays[inp.name], where)


def _check_array(net: Net, inp, key: str, arr: np.ndarray, where: Span) -> None:
    want = numpy_dtype(inp.type.dtype)
    kind = arr.dtype.kind
    if np.issubdtype(want, np.floating):
        if kind not in "fiu":
            raise DataError(where, f"array '{key}' holds {arr.dtype} values; input "
                            f"'{inp.name}' is {inp.type.dtype}, which needs real numbers")
        if kind == "f" and not np.isfinite(arr).all():
            first = tuple(int(i) for i in np.argwhere(~np.isfinite(arr))[0])
            raise DataError(where, f"array '{key}' holds a non-finite value "
                            f"({arr[first]}) at index {list(first)}",
                            "clean the data: NaN or inf inputs make the loss NaN")
        return
    if kind not in "iu":
        raise DataError(where, f"array '{key}' holds {arr.dtype} values; input "
                        f"'{inp.name}' is {inp.type.dtype}, which needs integers")
    problem = label_problem(net, inp.name, arr)
    if problem:
        raise DataError(where, f"array '{key}' holds " + problem[0], problem[1])


def label_problem(net: Net, name: str, arr: np.ndarray) -> tuple[str, str | None] | None:
    """Where the input `name` feeds a label port, the first value that names no class of
    the consuming layer (and is not its ignore label), as (message, hint); else None. Run
    on the host before a step, so no target's kernels see such a label (the CUDA loss would
    turn it into a NaN and its dX into a wrong gradient)."""
    for edge in net.consumers(name):
        layer = net.layer(edge.dst)
        op = registry.OPS[layer.op]
        port = op.port_for(edge.index)
        if port.classes_of is None:
            continue
        logits = next(e for e in layer.inputs
                      if op.port_for(e.index).name == port.classes_of)
        shape = net.tensor_type(logits.src).shape
        classes = shape[1] if len(shape) > 1 else 1
        ignore = layer.attrs.get("ignore_label")
        # one ignore label, several (seg_accuracy's), or none
        ignored = ignore if isinstance(ignore, tuple) else () if ignore is None else (ignore,)
        bad = (arr < 0) | (arr >= classes)
        if ignored:
            bad &= ~np.isin(arr, ignored)
        if bad.any():
            first = tuple(int(i) for i in np.argwhere(bad)[0])
            also = (f" or the ignore label{'s' * (len(ignored) > 1)} "
                    f"{', '.join(map(str, ignored))}") if ignored else ""
            return (f"label {arr[first]} at index {list(first)}: '{layer.name}' "
                    f"({layer.op}) takes classes 0-{classes - 1}{also}",
                    None if ignored else f"'{layer.name}' has no ignore label")
    return None


def check_step(loss: float, grads: Mapping[str, np.ndarray], epoch: int, step: int,
               lr: float) -> None:
    """Stop at the first non-finite loss or gradient, before it reaches a saved file."""
    bad_grads = [] if not math.isfinite(loss) else [
        p for p, g in grads.items() if not np.isfinite(g).all()]
    if math.isfinite(loss) and not bad_grads:
        return
    what = f"loss is {loss}" if not math.isfinite(loss) else \
        f"gradient of '{sorted(bad_grads)[0]}' is not finite"
    cause = ("the first step already diverged: check the data and the initial weights for "
             "NaN or inf, or lower --lr" if step == 1 else
             f"the run diverged: --lr {lr:g} is likely too high; try a smaller one")
    raise DivergedError(Span.synthetic("train"), f"training stopped at step {step} (epoch "
                        f"{epoch}): the {what}", cause + "; nothing non-finite was written")
