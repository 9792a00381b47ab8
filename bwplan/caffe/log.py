"""Renders Caffe's decisions as Caffe's own log prints them, so that a user can diff bwplan's
emulation against the log of their Caffe run.

`backward_lines` gives the lines Net::Init logs from its backward walk, in its order (last
layer first), with the values from before force_backward was applied, as Caffe prints them.
"""
from __future__ import annotations

from bwplan.caffe.state import CaffeState


def backward_lines(state: CaffeState) -> list[str]:
    return [f"{layer.name} needs backward computation." if layer.need_backward_logged
            else f"{layer.name} does not need backward computation."
            for layer in reversed(state.layers)]


def init_lines(state: CaffeState) -> list[str]:
    """The decision lines of Net::Init in order: layer filtering, the backward walk and the
    net outputs (the lines about blobs, shapes and memory are left out)."""
    return (list(state.filter_log) + backward_lines(state)
            + [f"This network produces output {blob}" for blob in state.outputs])


def render_log(state: CaffeState, full: bool = False) -> str:
    return "\n".join(init_lines(state) if full else backward_lines(state)) + "\n"
