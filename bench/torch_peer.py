"""The PyTorch peer: the same network, written as a PyTorch user would (float32 leaf
parameters, `requires_grad=False` for frozen ones, `.detach()` for stop-gradient edges,
native functional ops), trained with torch.optim.SGD. Autograd then skips what PyTorch
itself can skip, which is the fair comparison.

Only the ops the benchmark networks use are translated; anything else raises.
"""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


def _maxpool(a, xs, p):
    kernel = _pair(a["kernel"])
    stride = _pair(a["kernel"] if a["stride"] is None else a["stride"])
    pad = _pair(a["pad"])
    # torch's ceil mode drops a window that starts in the right padding, as Caffe does
    return F.max_pool2d(xs[0], kernel, stride, pad, ceil_mode=bool(a["ceil"]))


def _avgpool(a, xs, p):
    kernel = _pair(a["kernel"])
    stride = _pair(a["kernel"] if a["stride"] is None else a["stride"])
    # torch clips a window to the padded image and divides by that size, as Caffe does
    return F.avg_pool2d(xs[0], kernel, stride, _pair(a["pad"]), ceil_mode=bool(a["ceil"]),
                        count_include_pad=True)


OPS = {
    "conv2d": lambda a, xs, p: F.conv2d(xs[0], p["weight"], p.get("bias"), _pair(a["stride"]),
                                        _pair(a["pad"]), _pair(a["dilation"]), a["groups"]),
    "linear": lambda a, xs, p: F.linear(xs[0].flatten(1), p["weight"], p.get("bias")),
    "relu": lambda a, xs, p: F.relu(xs[0]),
    "maxpool": _maxpool,
    "avgpool": _avgpool,
    "global_avgpool": lambda a, xs, p: xs[0].mean(dim=(2, 3), keepdim=True),
    "global_maxpool": lambda a, xs, p: F.adaptive_max_pool2d(xs[0], 1),
    "flatten": lambda a, xs, p: torch.flatten(xs[0], 1),
    "concat": lambda a, xs, p: torch.cat(xs, dim=a["axis"]),
    "add": lambda a, xs, p: xs[0] + xs[1] if len(xs) == 2 and not a["coeffs"] else
    sum(c * x for c, x in zip(a["coeffs"] or (1.0,) * len(xs), xs)),
    "lrn": lambda a, xs, p: F.local_response_norm(xs[0], a["size"], a["alpha"], a["beta"],
                                                  a["k"]),
    "softmax_cross_entropy": lambda a, xs, p: F.cross_entropy(xs[0], xs[1].long()),
    "accuracy": lambda a, xs, p: (xs[0].argmax(1) == xs[1]).float().mean(),
}


class TorchPeer:
    def __init__(self, net, params: Mapping[str, np.ndarray], lr: float, momentum: float,
                 weight_decay: float) -> None:
        self.net = net
        self.params = {}
        for name, value in params.items():
            uses = [u for _, u in net.uses_of(name)]
            trains = net.params[name].learnable and any(u.lr_mult > 0 for u in uses)
            self.params[name] = torch.tensor(value).requires_grad_(trains)
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

    def step(self, batch: Mapping[str, torch.Tensor]) -> float:
        if self.optimizer is not None:
            self.optimizer.zero_grad(set_to_none=True)
        values = dict(batch)
        loss = None
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
            for layer in self.net.layers:
                xs = [values[e.src].detach() if e.stop_gradient else values[e.src]
                      for e in layer.inputs]
                ps = {u.slot: self.params[u.param] for u in layer.params}
                if layer.op == "accuracy":
                    with torch.no_grad():
                        values[layer.name] = OPS[layer.op](layer.attrs, xs, ps)
                    continue
                out = OPS[layer.op](layer.attrs, xs, ps)
                values[layer.name] = out
                if layer.loss_weight:
                    term = layer.loss_weight * out
                    loss = term if loss is None else loss + term
        self.saved_bytes = sum(saved.values())
        if loss.requires_grad:
            loss.backward()
        if self.optimizer is not None:
            self.optimizer.step()
        return float(loss.detach())


def torch_batch(batch: Mapping[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in batch.items()}
