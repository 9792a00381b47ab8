"""A metric's value as the reports show it: one number per name. A scalar metric
(accuracy) is its own entry; a vector one (the per-class accuracy of Caffe's Accuracy, the
three scores of SegAccuracy) gives one entry per element, `name[k]` in its flat order, so
every report, the epoch lines included, reads plain floats."""
from __future__ import annotations

import numpy as np


def metric_entries(name: str, value) -> dict[str, float]:
    arr = np.asarray(value)
    if arr.ndim == 0:
        return {name: float(arr)}
    return {f"{name}[{k}]": float(v) for k, v in enumerate(arr.reshape(-1))}


def metrics_of(names, values) -> dict[str, float]:
    """The entries of the metrics `names`, read from `values` (name -> array)."""
    out: dict[str, float] = {}
    for name in names:
        if name in values:
            out.update(metric_entries(name, values[name]))
    return out
