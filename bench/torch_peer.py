"""The PyTorch peer: the same network, written as a PyTorch user would (float32 leaf
parameters, `requires_grad=False` for frozen ones, `.detach()` for stop-gradient edges,
native functional ops), trained with torch.optim.SGD. Autograd then skips what PyTorch
itself can skip, which is the fair comparison.

A user after speed would also try the other ways PyTorch runs the same code, so a peer has
a variant (VARIANTS): "eager" (the default NCHW layout), "channels_last" (4-D batch inputs
and 4-D weights in NHWC memory order; its convolutions then run NHWC oneDNN kernels) and
"compile" (the forward through `torch.compile`, whose backward AOTAutograd compiles too;
it needs a C++ compiler for its generated CPU code, and compiles on the first steps, which
the benchmark's warm-up absorbs). The benchmark times all three and takes the fastest.

Each op is written as its row in tests/op_cases says: the row's `peer` where a PyTorch user
after speed would call torch's native kernel (ReLU, the pools, the cross-entropy), else the
row's torch translation, the one the training oracle runs. An op without either raises.
"""
from __future__ import annotations

import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from bwplan import ops as registry

# the op rows live with the tests, which import them by plain module name
sys.path.append(str(Path(__file__).resolve().parents[1] / "tests"))
from op_cases import ROWS  # noqa: E402


# op -> (attrs, inputs, params by slot) -> output: each op's row (tests/op_cases), whose
# translations test_ops_reference.py checks against bwplan's forward
OPS = {name: fn for name, row in ROWS.items() if (fn := row.peer_translation()) is not None}


VARIANTS = ("eager", "channels_last", "compile")


def _layout(t: torch.Tensor, variant: str) -> torch.Tensor:
    if variant == "channels_last" and t.dim() == 4:
        return t.contiguous(memory_format=torch.channels_last)
    return t


class TorchPeer:
    def __init__(self, net, params: Mapping[str, np.ndarray], lr: float, momentum: float,
                 weight_decay: float, variant: str = "eager") -> None:
        if variant not in VARIANTS:
            raise ValueError(f"unknown PyTorch variant {variant!r}")
        self.net = net
        self.variant = variant
        self.params = {}
        for name, value in params.items():
            uses = [u for _, u in net.uses_of(name)]
            trains = net.params[name].learnable and any(u.lr_mult > 0 for u in uses)
            self.params[name] = _layout(torch.tensor(value), variant).requires_grad_(trains)
        # PyTorch cannot freeze part of a tensor: its users compute the whole dW and put the
        # frozen rows back after each step (which also undoes momentum and decay on them)
        self._kept_rows = [(self.params[name], a, b, self.params[name][a:b].detach().clone())
                           for name, p in net.params.items() if name in self.params
                           for a, b in p.frozen_rows]
        groups = []
        for name, t in self.params.items():
            if t.requires_grad:
                uses = [u for _, u in net.uses_of(name)]
                groups.append({"params": [t], "lr": lr * uses[0].lr_mult,
                               "weight_decay": weight_decay * uses[0].decay_mult})
        self.optimizer = torch.optim.SGD(groups, lr=lr, momentum=momentum) if groups else None
        for layer in net.layers:
            if layer.op not in OPS:
                raise NotImplementedError(f"the PyTorch peer has no {layer.op}")
        self.saved_bytes = 0
        self._forward = self._loss
        if variant == "compile":
            # every peer compiles the same function (_loss): Dynamo's per-code recompile
            # limit (8) would otherwise send a benchmark's later nets back to eager
            import torch._dynamo.config as dynamo
            dynamo.recompile_limit = max(dynamo.recompile_limit, 256)
            self._forward = torch.compile(self._loss)
        self._counted = False

    def batch(self, batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
        """The batch as this variant's tensors."""
        return {k: _layout(v, self.variant) for k, v in torch_batch(batch).items()}

    def _loss(self, values: dict) -> torch.Tensor:
        loss = None
        for layer in self.net.layers:
            xs = [values[e.src].detach() if e.stop_gradient else values[e.src]
                  for e in layer.inputs]
            ps = {u.slot: self.params[u.param] for u in layer.params}
            if registry.OPS[layer.op].role == "metric":
                with torch.no_grad():
                    values[layer.name] = OPS[layer.op](layer.attrs, xs, ps)
                continue
            out = OPS[layer.op](layer.attrs, xs, ps)
            values[layer.name] = out
            if layer.loss_weight:
                term = layer.loss_weight * out
                loss = term if loss is None else loss + term
        return loss

    def step(self, batch: Mapping[str, torch.Tensor]) -> float:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        if self._counted:
            loss = self._forward(dict(batch))
        else:
            loss = self._first_forward(batch)
        if loss.requires_grad:
            loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
        if self._kept_rows:
            with torch.no_grad():
                for t, a, b, rows in self._kept_rows:
                    t[a:b] = rows
        return float(loss.detach())

    def _first_forward(self, batch) -> torch.Tensor:
        """The eager forward once, counting the activations autograd saves (hooks would
        break a compiled graph, and the count is the same every step)."""
        saved: dict[int, int] = {}
        param_storage = {t.untyped_storage().data_ptr() for t in self.params.values()}

        def pack(t):
            # activations only, each storage once (relu's output and the next conv's input
            # are one tensor); parameters saved for a dX are resident anyway
            storage = t.untyped_storage()
            if storage.data_ptr() not in param_storage:
                saved[storage.data_ptr()] = storage.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = self._loss(dict(batch))
        self.saved_bytes = sum(saved.values())
        self._counted = True
        return loss


def torch_batch(batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
