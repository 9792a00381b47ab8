"""Caffe's state after `Net::Init`, as `emulate` computes it: per layer (inserted Splits
included) whether it needs backward, each bottom's and param's flag, loss weights, and the
multipliers the solver will use. Pure data; see `emulate` for how it is computed."""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from bwplan.caffe.shapes import Shape
from bwplan.source import Span


@dataclass(frozen=True, slots=True)
class BottomState:
    blob: str
    propagate: bool                 # Net::bottom_need_backward
    shape: Shape | None


@dataclass(frozen=True, slots=True)
class TopState:
    blob: str
    loss_weight: float              # Layer::loss(top)
    shape: Shape | None


@dataclass(frozen=True, slots=True)
class ParamState:
    index: int
    name: str                       # the ParamSpec name, "" when anonymous
    display_name: str               # the name, or the index as Caffe prints it
    lr_mult: float                  # the layer's own ParamSpec after SetUp (default 1)
    decay_mult: float
    lr_mult_given: bool
    decay_mult_given: bool
    propagate: bool                 # Layer::param_propagate_down
    shared_from: tuple[str, int] | None     # (owner layer, its param index)
    effective_lr_mult: float        # Net::params_lr of the owning learnable param
    effective_decay_mult: float
    effective_lr_mult_given: bool
    effective_decay_mult_given: bool
    shape: Shape | None
    span: Span                      # the param { } block, or the layer when none

    @property
    def use_lr_mult(self) -> float:
        """The multiplier this use trains with where each use keeps its own (bwplan): its own
        lr_mult when the prototxt gives one, else the shared param's effective one."""
        return self.lr_mult if self.lr_mult_given else self.effective_lr_mult


@dataclass(frozen=True, slots=True)
class LayerState:
    name: str
    type: str
    need_backward: bool             # final Net::layer_need_backward (after force_backward)
    need_backward_logged: bool      # as Caffe's log prints it (before force_backward)
    bottoms: tuple[BottomState, ...]
    tops: tuple[TopState, ...]
    params: tuple[ParamState, ...]
    source: str | None              # the prototxt layer; None for an inserted Split
    span: Span


@dataclass(frozen=True, slots=True)
class WaivedCheck:
    """A check Caffe would fail that bwplan let pass (strict=False)."""

    code: str
    message: str                    # Caffe's own text
    span: Span


@dataclass(frozen=True)
class CaffeState:
    phase: str
    layers: tuple[LayerState, ...]
    blob_need_backward: Mapping[str, bool]      # forward flags, by blob in creation order
    blob_loss_weight: Mapping[str, float]
    inputs: tuple[str, ...]                     # tops of Input layers
    outputs: tuple[str, ...]                    # blobs nobody reads, sorted as std::set
    force_backward: bool
    filter_log: tuple[str, ...]                 # FilterNet's "The NetState ..." lines
    waived: tuple[WaivedCheck, ...]

    def layer(self, name: str) -> LayerState:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)
