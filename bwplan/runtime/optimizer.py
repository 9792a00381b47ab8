"""SGD with momentum, with Caffe's semantics.

For each parameter the plan updates:

    diff = sum over uses of (lr_mult_u * g_u)   +   M * decay_mult * weight_decay * w
    v    = momentum * v + lr * diff
    w   -= v

where M is the parameter's decay lr multiplier (its lr_mult when every use agrees, which
makes this exactly Caffe's `v = momentum*v + lr*lr_mult*(g + decay_mult*wd*w)`). A parameter
whose every use has lr_mult 0 is not touched at all (Caffe multiplies the decay by lr_mult
too); a trainable parameter that got no gradient still decays.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

from bwplan.plan.updates import ParamUpdate


@dataclass(frozen=True)
class SgdSettings:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0


class Sgd:
    def __init__(self, settings: SgdSettings | None = None) -> None:
        self.settings = settings or SgdSettings()
        self.velocity: dict[str, np.ndarray] = {}

    def step(self, updates: tuple[ParamUpdate, ...], params: Mapping[str, np.ndarray],
             grads: Mapping[str, np.ndarray], scaled: Mapping[str, np.ndarray]) -> int:
        """Apply one step; returns the number of parameters updated (one kernel each)."""
        s = self.settings
        launched = 0
        for u in updates:
            if u.kind == "none":
                continue
            w = params[u.param]
            diff = self._diff(u, grads, scaled, w)
            if diff is None:
                continue
            v = self.velocity.get(u.param)
            if v is None:
                v = self.velocity[u.param] = np.zeros_like(w)
            v *= s.momentum
            v += s.lr * diff
            w -= v
            launched += 1
        return launched

    def _diff(self, u: ParamUpdate, grads, scaled, w) -> np.ndarray | None:
        s = self.settings
        computed = [t for t in u.terms if t.computed]
        if u.param in scaled:
            diff = scaled[u.param].copy()
        elif computed and u.param in grads:
            # every computed use shares one multiplier
            diff = grads[u.param] * computed[0].lr_mult
        else:
            diff = None
        decay = u.decay_lr_mult * u.decay_mult * s.weight_decay
        if decay:
            diff = decay * w if diff is None else diff + decay * w
        return diff
