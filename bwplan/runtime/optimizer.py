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

import numpy as np

from bwplan.optim import SgdSettings
from bwplan.plan.updates import ParamUpdate


class Sgd:
    """`update` is an optional fused kernel with the signature of
    bwplan.kernels.cpu.update.sgd_update; without one, NumPy does the same arithmetic."""

    def __init__(self, settings: SgdSettings | None = None, update=None) -> None:
        self.settings = settings or SgdSettings()
        self.velocity: dict[str, np.ndarray] = {}
        self.update = update

    def step(self, updates: tuple[ParamUpdate, ...], params: Mapping[str, np.ndarray],
             grads: Mapping[str, np.ndarray], scaled: Mapping[str, np.ndarray]) -> int:
        """Apply one step; returns the number of parameters updated (one kernel each)."""
        s = self.settings
        launched = 0
        for u in updates:
            if u.kind == "none":
                continue
            w = params[u.param]
            g, g_scale = self._gradient(u, grads, scaled)
            decay = u.decay_lr_mult * u.decay_mult * s.weight_decay
            if g is None and not decay:
                continue
            v = self.velocity.get(u.param)
            if v is None:
                v = self.velocity[u.param] = np.zeros_like(w)
            # a partly frozen parameter: only its trainable rows (contiguous views of the
            # leading axis), so the frozen rows and their velocity never change
            if not u.rows:
                self._apply(w, v, g, g_scale, decay)
            for a, b in u.rows:
                self._apply(w[a:b], v[a:b], None if g is None else g[a:b], g_scale, decay)
            launched += 1
        return launched

    def _apply(self, w, v, g, g_scale: float, decay: float) -> None:
        s = self.settings
        if self.update is not None:
            self.update(w, v, g, g_scale, decay, s.lr, s.momentum)
            return
        if g is None:
            diff = decay * w
        elif decay:
            diff = g * g_scale + decay * w
        else:
            diff = g * g_scale
        v *= s.momentum
        v += s.lr * diff
        w -= v

    @staticmethod
    def _gradient(u: ParamUpdate, grads, scaled) -> tuple[np.ndarray | None, float]:
        """The gradient the update uses and its scale: the multiplier-weighted sum over uses
        when their multipliers differ, else the summed gradient times the one multiplier."""
        if u.param in scaled:
            return scaled[u.param], 1.0
        computed = [t for t in u.terms if t.computed]
        if computed and u.param in grads:
            return grads[u.param], computed[0].lr_mult
        return None, 0.0
