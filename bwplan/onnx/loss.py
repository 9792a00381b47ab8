"""Attaches a loss to an imported inference graph, which an exporter writes without one.

    --loss softmax_cross_entropy   label input `label: i64[N]`; on the logits (the input of
                                   a final Softmax, whose output is then not trained)
    --loss euclidean_loss          target input `target` shaped like the output

Without --loss, a single output [N, classes] (or [N, classes, 1, 1], then flattened) is
assumed to be logits and gets softmax_cross_entropy; the returned note says so. Anything
else needs --loss.
"""
from __future__ import annotations

from dataclasses import replace

from bwplan.frontend import ast
from bwplan.ir.types import TensorType
from bwplan.onnx.errors import OnnxError
from bwplan.onnx.to_ast import Converted, note
from bwplan.source import Span

LOSSES = ("softmax_cross_entropy", "euclidean_loss")


def _unique(want: str, taken: set[str]) -> str:
    name, k = want, 2
    while name in taken:
        name, k = f"{want}_{k}", k + 1
    return name


def attach_loss(conv: Converted, out_shape: tuple[int, ...] | None, loss: str | None,
                path: str) -> Converted:
    if loss is not None and loss not in LOSSES:
        raise OnnxError(Span.synthetic("--loss"), f"unknown loss '{loss}'",
                        "losses: " + ", ".join(LOSSES))
    if len(conv.outputs) != 1:
        raise OnnxError(Span.whole(path), f"the model has {len(conv.outputs)} outputs "
                        f"({', '.join(conv.outputs)}); bwplan attaches a loss to a single "
                        "output", "export the model with one output")
    if out_shape is None:
        raise OnnxError(Span.whole(path), "the shape of the model's output is not known")
    assumed = loss is None
    # [N, C, 1, 1] (a classifier ending in global pooling) is [N, C] once flattened
    squeeze = len(out_shape) > 2 and all(d == 1 for d in out_shape[2:])
    if assumed and len(out_shape) != 2 and not squeeze:
        raise OnnxError(Span.whole(path), f"the model has no loss and its output is "
                        f"{list(out_shape)}, not [N, classes]",
                        "choose one: --loss " + " | --loss ".join(LOSSES))
    loss = loss or "softmax_cross_entropy"
    statements = list(conv.module.statements)
    taken = {s.name for s in statements}
    layers = {s.name: s for s in statements if isinstance(s, ast.LayerStmt)}
    target = conv.outputs[0]
    via = ""
    last = layers.get(target)
    if loss == "softmax_cross_entropy" and last is not None and last.call.op == "softmax":
        target = last.call.args[0].name
        via = f" (the input of the final softmax '{last.name}', which the loss includes)"
    span = Span.synthetic("--loss")
    inputs = [s for s in statements if isinstance(s, ast.InputDecl)]
    extra: list[ast.LayerStmt] = []
    if loss == "softmax_cross_entropy" and squeeze:
        flat = _unique(f"{target}.flat", taken)
        taken.add(flat)
        extra.append(ast.LayerStmt(flat, ast.Call("flatten", (ast.Arg(target, False, span),),
                                                  (), span, span), (), span, span))
        via += f", flattened to [N, {out_shape[1]}] by '{flat}'"
        target = flat
    if loss == "softmax_cross_entropy":
        label = ast.InputDecl(_unique("label", taken), TensorType("i64", (out_shape[0],)),
                              False, span)
    else:
        # the target has the batch axis only where the output's first axis is the inputs'
        # batch: a graph that transposes or concatenates along axis 0 has an output whose
        # first axis is no batch, and its target is then a whole array
        batches = {s.type.shape[0] for s in inputs if s.batched and s.type.shape}
        label = ast.InputDecl(_unique("target", taken), TensorType("f32", tuple(out_shape)),
                              False, span, batched=batches == {out_shape[0]})
    taken.add(label.name)
    name = _unique("loss", taken)
    call = ast.Call(loss, (ast.Arg(target, False, span), ast.Arg(label.name, False, span)),
                    (), span, span)
    layer = ast.LayerStmt(name, call, (), span, span)
    rest = [s for s in statements if not isinstance(s, ast.InputDecl)]
    module = ast.Module(conv.module.path, tuple(inputs + [label] + rest + extra + [layer]))
    text = (f"the ONNX graph has no loss: {'assumed' if assumed else 'attached'} {loss} on "
            f"'{conv.outputs[0] if not via else target}'{via}, with the input '{label.name}'")
    fix = ("choose the loss with --loss " + " | ".join(LOSSES) if assumed else
           "the batch must hold '" + label.name + "'")
    return replace(conv, module=module,
                   notes=conv.notes + (note(path, "onnx_loss_assumed" if assumed else
                                            "onnx_loss_attached", text, fix),))
