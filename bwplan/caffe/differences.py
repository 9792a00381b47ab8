"""Where an imported net's training differs from Caffe's, as warnings a user can act on.

Each warning is (code, span, text, fix). They come from Caffe's state alone:

  caffe-rejects-shared-lr    Caffe rejects shared params with different explicit lr_mult;
                             bwplan accepted them (per-use multipliers)
  caffe-force-backward       force_backward asks for input gradients; inputs are marked grad
  caffe-propagate-down-true  Caffe computes a bottom gradient nothing needs
  caffe-unused-param-grad    Caffe computes param gradients it never applies (the shared
                             param's effective lr_mult is 0)
  caffe-batchnorm-statistics Caffe differentiates BatchNorm statistics that have no
                             `param { lr_mult: 0 }` (it masks them only in the layer's copy)
  caffe-python-layer-stop    a Python layer with bottoms, imported as a stop point: its tops
                             are inputs of the shapes the user gave
  caffe-stop-point           a non-differentiable layer (PriorBox, DetectionOutput)
                             imported as a stop point: its tops are inputs of Caffe's shapes

In each case bwplan's own plan computes less than Caffe, never more.
"""
from __future__ import annotations

from bwplan.caffe.catalogue import caffe_type
from bwplan.caffe.prepare import built_layers
from bwplan.caffe.state import CaffeState, LayerState
from bwplan.caffe.model import CaffeLayer, CaffeNet
from bwplan.frontend.import_warning import ImportWarning


def _rejected(state: CaffeState) -> list[ImportWarning]:
    return [ImportWarning(
        "caffe-rejects-shared-lr", w.span,
        f"Caffe rejects this net ({w.message}); bwplan accepts it and trains each use of the "
        "shared param with its own lr_mult",
        "give every use of the shared param the same lr_mult, or pass --caffe-strict "
        "(strict=True) to reject the net as Caffe does") for w in state.waived]


def _force_backward(net: CaffeNet, state: CaffeState) -> list[ImportWarning]:
    if not net.force_backward:
        return []
    return [ImportWarning(
        "caffe-force-backward", net.record.where("force_backward"),
        "force_backward: true asks Caffe for the gradient of every input: bwplan marks the "
        "float inputs 'grad' and computes their gradients too",
        "remove force_backward: true unless you need gradients with respect to the inputs")]


def _propagate_down(layer: CaffeLayer, ls: LayerState, state: CaffeState
                    ) -> list[ImportWarning]:
    out = []
    for j, (given, bottom) in enumerate(zip(layer.propagate_down, ls.bottoms)):
        if given and bottom.propagate and not state.blob_need_backward.get(bottom.blob, True):
            out.append(ImportWarning(
                "caffe-propagate-down-true", layer.record.where("propagate_down", j),
                f"propagate_down: true makes Caffe compute the gradient of '{ls.name}' with "
                f"respect to '{bottom.blob}', which nothing below needs; bwplan skips it",
                "drop propagate_down: true here (it only costs Caffe time)", ls.name))
    return out


def _unused_params(layer: CaffeLayer, ls: LayerState) -> list[ImportWarning]:
    # Caffe runs a layer's backward only when the layer needs it: a pruned layer (a deploy
    # net without a loss) computes no param gradient, whatever param_propagate_down says.
    # A use whose own lr_mult is nonzero trains in bwplan (per-use multipliers): not wasted.
    wasted = [p for p in ls.params if ls.need_backward and p.propagate
              and p.effective_lr_mult == 0 and p.use_lr_mult == 0]
    if not wasted:
        return []
    names = ", ".join(f"'{p.display_name}'" for p in wasted)
    if ls.type == "BatchNorm":
        return [ImportWarning(
            "caffe-batchnorm-statistics", layer.span,
            f"Caffe marks '{ls.name}' as needing backward and computes gradients for its "
            f"statistics ({names}): with no param {{ lr_mult: 0 }} in the prototxt, Net::Init "
            "sees lr_mult 1, while BatchNorm masks them with lr_mult 0 only in its own copy, "
            "so the gradients are never applied; bwplan treats them as statistics",
            f"add param {{ lr_mult: 0 }} three times to '{ls.name}' to make Caffe skip "
            "them too", ls.name)]
    owners = sorted({p.shared_from[0] for p in wasted if p.shared_from})
    why = (f"shared with {', '.join(repr(o) for o in owners)}, whose lr_mult is 0"
           if owners else "their effective lr_mult is 0")
    return [ImportWarning(
        "caffe-unused-param-grad", layer.span,
        f"Caffe computes the gradient of {names} in '{ls.name}' but never applies it ({why}); "
        "bwplan skips it",
        f"give those params lr_mult: 0 in '{ls.name}' too, so that Caffe skips them",
        ls.name)]


def _stop_point(layer: CaffeLayer, ls: LayerState) -> list[ImportWarning]:
    """A non-differentiable layer imported as inputs: say so, once per layer."""
    ctype = caffe_type(layer.type)
    imported_as = getattr(ctype.imports, "kind", "")
    if layer.type == "Python" or ctype.nature != "stop" or imported_as != "inputs":
        return []
    tops = ", ".join(repr(t) for t in layer.tops)
    return [ImportWarning(
        "caffe-stop-point", layer.record.where("type"),
        f"{layer.type} layer '{ls.name}' is not differentiable: it is planned as a stop "
        f"point, {tops} an input of the shape Caffe gives it, and no gradient flows into "
        f"{', '.join(repr(b) for b in layer.bottoms)} through it",
        "nothing to do: Caffe propagates nothing through it either", ls.name)]


def _python_stop(layer: CaffeLayer, ls: LayerState) -> list[ImportWarning]:
    if layer.type != "Python" or not layer.bottoms:
        return []
    p = layer.sub("python_param")
    module, name = (p.get(f, ("?",))[0] for f in ("module", "layer"))
    return [ImportWarning(
        "caffe-python-layer-stop", layer.record.where("type"),
        f"Python layer '{ls.name}' ({module}.{name}) is planned as non-differentiable: its "
        f"tops are inputs of the shapes given, and no gradient flows into "
        f"{', '.join(repr(b) for b in layer.bottoms)} through it, whatever its backward does",
        "if its backward matters, replace it by layers bwplan knows", ls.name)]


def differences(net: CaffeNet, state: CaffeState) -> tuple[ImportWarning, ...]:
    out = _rejected(state) + _force_backward(net, state)
    for (built, original), ls in zip(built_layers(net, state.phase), state.layers):
        if original is None:
            continue
        out += _propagate_down(original, ls, state) + _python_stop(original, ls)
        out += _stop_point(original, ls)
        if not state.force_backward:
            out += _unused_params(original, ls)
    return tuple(out)
