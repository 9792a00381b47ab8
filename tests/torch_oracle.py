"""An outside oracle for training runs: a bwplan `Net` computed by PyTorch.

Every op is its row's torch translation (tests/op_cases: written from the semantics the
docs give the op, Caffe's mostly, without reading bwplan's NumPy references or kernels);
torch's autograd then plays the role of bwplan's planned backward. The training settings
map onto plain autograd:

* a parameter is a torch leaf; one whose every use has lr multiplier 0 (frozen) does not
  require a gradient, and running statistics never do;
* each use of a trainable parameter reads a view `w * 1` whose gradient hook records that
  use's raw gradient and returns it scaled by the use's lr multiplier, so the leaf's `.grad`
  is sum over uses of (lr_mult * gradient), the quantity Caffe's update is built from; a use
  with lr multiplier 0 reads `w.detach()`;
* a stop_gradient edge reads `value.detach()`; shared parameters are the same leaf;
* the objective is the sum of each weighted layer's output times its weight;
* a batchnorm with batch statistics updates its running mean and (unbiased) variance in
  the forward, as torch does, with torch's momentum = 1 - the layer's `momentum`.

The oracle computes in float64 by default, so that a comparison with a float32 run sees
bwplan's rounding and not the oracle's. At a kink (a ReLU's sign test, a max's winner) the
two may still decide differently where float32 cannot tell; the caller can pass bwplan's
own values to settle exactly those decisions (see "decisions at kinks" in
op_cases/torch_support.py).

The update is `torch.optim.SGD` with one group per parameter: Caffe's
`v = momentum*v + lr*diff; w -= v` is torch's momentum SGD for a constant learning rate,
with the parameter's decay (weight_decay * decay_mult * its largest lr multiplier) as the
group's weight_decay. A trainable parameter that got no gradient is given a zero one, so
that it still decays. A partly frozen parameter (frozen rows of its leading axis) is what
PyTorch users write by hand: its gradient masked on those rows (raw gradients too), and
since torch's decay and momentum would still move them, the rows and their momentum
buffer are put back after each step.

Not covered: dropout with p > 0 (its masks come from bwplan's generator) and gradients with
respect to inputs.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

# Loading torch starts the OpenMP runtime that the cpu target's Numba kernels then share,
# and the runtime reads OMP_WAIT_POLICY only then: left to spin, its idle workers made the
# cpu target 20x slower on 2 cores in everything that ran after this import. The cpu
# target asks for a passive policy itself (bwplan/kernels/cpu/threads.py), too late here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from bwplan import ops as registry  # noqa: E402
from bwplan.runtime.metrics import metric_entries  # noqa: E402
from op_cases import ROWS  # noqa: E402
from op_cases.norm import lrn  # noqa: E402,F401  (the oracle's own checks read these)
from op_cases.pool import avgpool, caffe_pool_len, maxpool  # noqa: E402,F401

LOSS_OPS = frozenset(n for n, op in registry.OPS.items() if op.role == "loss")
METRIC_OPS = frozenset(n for n, op in registry.OPS.items() if op.role == "metric")
# the translations that take `hints`
DECIDING_OPS = frozenset(n for n, row in ROWS.items() if row.deciding)
OPS = {n: row.torch for n, row in ROWS.items() if row.torch is not None}


# ---- a whole net -------------------------------------------------------------------------
@dataclass
class TorchStep:
    loss: float                                 # the objective: weighted sum of loss terms
    losses: dict[str, float]                    # every loss term, unweighted (summed)
    metrics: dict[str, float]
    raw_grads: dict[str, np.ndarray]            # per parameter: sum over uses that train
    scaled_grads: dict[str, np.ndarray]         # per parameter: sum of lr_mult * gradient


class TorchNet:
    """A bwplan Net with its parameters (copied), trained by torch in `dtype`."""

    def __init__(self, net, params: Mapping[str, np.ndarray],
                 dtype: torch.dtype = torch.float64) -> None:
        self.net = net
        self.dtype = dtype
        self.params: dict[str, torch.Tensor] = {}
        for name in net.params:
            t = torch.tensor(params[name])
            if t.is_floating_point():
                t = t.to(dtype)
            t.requires_grad_(self.trains(name))
            self.params[name] = t
        self.optimizer: torch.optim.SGD | None = None
        self._use_grads: dict[tuple[str, str], torch.Tensor] = {}
        # partly frozen parameters: True on the rows that train
        self.row_masks: dict[str, torch.Tensor] = {}
        for name, p in net.params.items():
            if p.frozen_rows:
                mask = torch.ones(p.type.shape[0], dtype=torch.bool)
                for a, b in p.frozen_rows:
                    mask[a:b] = False
                self.row_masks[name] = mask

    def trains(self, name: str) -> bool:
        """Whether the parameter ever changes: learnable, with some use's lr_mult > 0."""
        return self.net.params[name].learnable and any(
            u.lr_mult > 0 for _, u in self.net.uses_of(name))

    def set_optimizer(self, lr: float, momentum: float, weight_decay: float) -> None:
        groups = []
        for name, t in self.params.items():
            if not t.requires_grad:
                continue
            uses = [u for _, u in self.net.uses_of(name)]
            decay = weight_decay * uses[0].decay_mult * max(u.lr_mult for u in uses)
            groups.append({"params": [t], "lr": lr, "momentum": momentum,
                           "weight_decay": decay})
        self.optimizer = torch.optim.SGD(groups, lr=lr) if groups else None

    # ---- forward ---------------------------------------------------------------------
    def _use(self, layer: str, use) -> torch.Tensor:
        w = self.params[use.param]
        if not w.requires_grad or not torch.is_grad_enabled():
            return w
        if use.lr_mult == 0:
            return w.detach()
        view = w * 1
        key, mult = (layer, use.param), use.lr_mult

        def hook(g: torch.Tensor) -> torch.Tensor:
            self._use_grads[key] = g.detach().clone()
            return g * mult

        view.register_hook(hook)
        return view

    def _tensor(self, value: np.ndarray) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(value))
        return t.to(self.dtype) if t.is_floating_point() else t

    def run(self, batch: Mapping[str, np.ndarray], training: bool = True,
            hints: Mapping[str, np.ndarray] | None = None
            ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every layer's output and the objective. `hints`: bwplan's values of the same
        step by tensor name, to settle the decisions float32 leaves open."""
        values = {name: self._tensor(v) for name, v in batch.items()}
        objective = torch.zeros((), dtype=self.dtype)
        for layer in self.net.layers:
            inputs = [values[e.src].detach() if e.stop_gradient else values[e.src]
                      for e in layer.inputs]
            params = {u.slot: self._use(layer.name, u) for u in layer.params}
            extra = {}
            if layer.op in DECIDING_OPS and hints is not None:
                extra["hints"] = [self._tensor(hints[e.src]) for e in layer.inputs]
            with torch.set_grad_enabled(torch.is_grad_enabled() and layer.op not in METRIC_OPS):
                out = OPS[layer.op](layer.attrs, inputs, params, training, **extra)
            values[layer.name] = out
            if layer.loss_weight != 0:
                objective = objective + layer.loss_weight * out.sum()
        return values, objective

    def forward(self, batch, outputs, training: bool = False, hints=None
                ) -> dict[str, np.ndarray]:
        """The named outputs, without gradients (in training mode a batchnorm still
        updates its running statistics)."""
        with torch.no_grad():
            values, _ = self.run(batch, training, hints)
        return {n: values[n].numpy().copy() for n in outputs}

    # ---- one training step -----------------------------------------------------------
    def step(self, batch: Mapping[str, np.ndarray],
             hints: Mapping[str, np.ndarray] | None = None) -> TorchStep:
        """Forward, backward and (when an optimizer is set) the update."""
        self._use_grads.clear()
        for t in self.params.values():
            t.grad = None
        values, objective = self.run(batch, True, hints)
        if objective.requires_grad:
            objective.backward()
        raw: dict[str, np.ndarray] = {}
        for (_, param), g in self._use_grads.items():
            raw[param] = raw[param] + g.numpy() if param in raw else g.numpy().copy()
        for name, mask in self.row_masks.items():    # the gradient-masking hook
            if name in raw:
                raw[name][~mask.numpy()] = 0
            if self.params[name].grad is not None:
                self.params[name].grad[~mask] = 0
        scaled = {n: t.grad.numpy().copy() for n, t in self.params.items()
                  if t.grad is not None}
        if self.optimizer is not None:
            for t in self.params.values():
                if t.requires_grad and t.grad is None:
                    t.grad = torch.zeros_like(t)     # no gradient, but it still decays
            kept = {n: self.params[n].detach()[~m].clone() for n, m in self.row_masks.items()}
            self.optimizer.step()
            with torch.no_grad():   # decay and momentum masked by hand
                for name, rows in kept.items():
                    t, mask = self.params[name], self.row_masks[name]
                    t[~mask] = rows
                    buf = self.optimizer.state.get(t, {}).get("momentum_buffer")
                    if buf is not None:
                        buf[~mask] = 0
        losses = {l.name: float(values[l.name].detach().sum()) for l in self.net.layers
                  if l.op in LOSS_OPS or l.loss_weight != 0}
        # a vector metric one entry per element, as bwplan reports it
        metrics = {k: v for l in self.net.layers if l.op in METRIC_OPS
                   for k, v in metric_entries(l.name, values[l.name].detach().numpy()).items()}
        return TorchStep(float(objective.detach()), losses, metrics, raw, scaled)

    def numpy_params(self) -> dict[str, np.ndarray]:
        return {n: t.detach().numpy().copy() for n, t in self.params.items()}
