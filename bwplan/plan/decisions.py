"""Decisions are data: each says whether some work is needed and why, with a stable code
for JSON, a sentence for people, and the chain of names that proves it."""
from __future__ import annotations


from bwplan.records import record
from bwplan.source import Span


@record
class Reason:
    code: str
    text: str
    via: tuple[str, ...] = ()


@record
class Decision:
    needed: bool
    reason: Reason

    @staticmethod
    def yes(code: str, text: str, via: tuple[str, ...] = ()) -> "Decision":
        return Decision(True, Reason(code, text, via))

    @staticmethod
    def no(code: str, text: str, via: tuple[str, ...] = ()) -> "Decision":
        return Decision(False, Reason(code, text, via))


# skips that hold for every net and are not worth the one reason a row has room for
ROUTINE = frozenset({"dx_integer", "dx_not_differentiable", "dw_statistics", "dx_data_input"})


def headline(forward: Decision, dx, dw) -> Reason:
    """The one reason about a layer most worth reading: what it trains when all its
    parameters train and only a routine input gradient is skipped; else a skip if something
    was skipped,
    else why the backward runs, else why the forward is or is not needed."""
    decisions = list(dw) + list(dx)
    skipped = [d for d in decisions if not d.needed and d.reason.code not in ROUTINE]
    running = [d for d in decisions if d.needed]
    trains = [d for d in dw if d.needed]
    if trains and all(d.needed for d in dw) and all(
            d.reason.code == "dx_nothing_upstream_trains" for d in skipped):
        # the layer trains and skips only the input gradient nothing below could use (the
        # one trainable layer of a fine-tune): what it computes is the news; a cut the user
        # wrote (stop_gradient) stays the reason shown
        return trains[0].reason
    if skipped:
        return skipped[0].reason
    if running:
        return running[0].reason
    return forward.reason


# which skip best says why a group of layers runs no backward: why its input gets no
# gradient before why a parameter does not train, and statistics last
_NO_BACKWARD_ORDER = ("dx_no_gradient_above", "dx_stop_gradient",
                      "dx_nothing_upstream_trains", "dw_frozen", "dw_lr_zero",
                      "dw_no_gradient_above")


def why_no_backward(layer_plans) -> Reason:
    """The most telling reason that none of `layer_plans` (the layers one imported layer
    became) runs a backward."""
    skips = [d for lp in layer_plans for d in lp.dx + lp.dw if not d.needed]
    for code in _NO_BACKWARD_ORDER:
        for d in skips:
            if d.reason.code == code:
                return d.reason
    return skips[0].reason if skips else layer_plans[0].forward.reason


@record
class Finding:
    """A setting that likely does not do what its author meant (plan/pitfalls.py)."""

    code: str
    severity: str        # "warning" | "note"
    span: Span
    text: str
    fix: str
    subject: str = ""    # the layer, input or parameter it is about (for grouping)


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
