"""The optimizer's settings: what every update of a step reads (learning rate, momentum,
weight decay). A value below both the CUDA lowering (lower/cuda_launches.py writes them
into the update segments) and the runtime (runtime/optimizer.py applies them), so that
lowering never imports the runtime above it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SgdSettings:
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 0.0
