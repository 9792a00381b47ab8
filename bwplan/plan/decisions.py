"""Decisions are data: each says whether some work is needed and why, with a stable code
for JSON, a sentence for people, and the chain of names that proves it."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Reason:
    code: str
    text: str
    via: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Decision:
    needed: bool
    reason: Reason

    @staticmethod
    def yes(code: str, text: str, via: tuple[str, ...] = ()) -> "Decision":
        return Decision(True, Reason(code, text, via))

    @staticmethod
    def no(code: str, text: str, via: tuple[str, ...] = ()) -> "Decision":
        return Decision(False, Reason(code, text, via))


# Every code a Reason may carry, with what it means; docs/json-schema.md prints this table.
REASON_CODES = {
    # forward
    "fwd_loss": "the layer is a loss term or feeds one",
    "fwd_metric": "the layer is a metric or feeds one (computed, never differentiated)",
    "fwd_unused": "the output reaches no loss and no metric: a training step skips it",
    # dX: gradient into one input edge
    "dx_flows": "a trainable parameter upstream gets a gradient through this edge",
    "dx_stop_gradient": "the edge carries stop_gradient / propagate_down: false",
    "dx_not_differentiable": "the op is not differentiable with respect to this input",
    "dx_integer": "the input is an integer tensor (labels, indices)",
    "dx_nothing_upstream_trains": "no trainable parameter lies upstream of the input",
    "dx_data_input": "the input is network data that does not ask for its gradient",
    "dx_no_gradient_above": "the layer's output receives no gradient from any loss",
    # dW: gradient of one parameter use
    "dw_trains": "the parameter trains and this use's output reaches a loss",
    "dw_frozen": "the layer is frozen (lr multiplier 0)",
    "dw_lr_zero": "this use's lr multiplier is 0",
    "dw_statistics": "running statistics are never trained by gradients",
    "dw_no_gradient_above": "the layer's output receives no gradient from any loss",
}
