"""Imports a Caffe .prototxt: reads it, emulates Caffe's Net::Init on it, maps it to bwplan's
flat AST and builds the Net. The entry point the loader calls for .prototxt files.

    text -read_net-> CaffeNet -emulate-> CaffeState -to_flat_ast-> flat AST -build-> Net
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from bwplan.caffe.differences import differences
from bwplan.caffe.emulate import emulate
from bwplan.caffe.state import CaffeState
from bwplan.caffe.model import read_net
from bwplan.caffe.to_ast import to_flat_ast
from bwplan.errors import CaffeError, MultipleErrors, raise_all
from bwplan.frontend import ast
from bwplan.frontend.import_warning import ImportWarning
from bwplan.ir.build import build
from bwplan.ir.net import Net


@dataclass(frozen=True)
class CaffeImport:
    caffe: CaffeState                           # Caffe's own decisions (`explain --caffe`)
    module: ast.Module                          # the flat AST, spans into the prototxt
    net: Net
    layer_map: Mapping[str, tuple[str, ...]]    # Caffe layer name -> bwplan layers
    warnings: tuple[ImportWarning, ...]
    # per layer of `caffe.layers`, in order: the bwplan layers it became (layer names may
    # repeat in a prototxt; layer_map merges them)
    built_as: tuple[tuple[str, ...], ...] = ()


def caffe_state(text: str, path: str = "<input>", phase: str = "TRAIN",
                input_shapes: Mapping[str, Sequence[int]] | None = None,
                strict: bool = False) -> tuple[CaffeState, tuple[CaffeError, ...]]:
    """Caffe's decisions alone, for nets bwplan may not be able to import: (state, the
    fields left out because they do not fit the schema). Raises CaffeError only where Caffe
    itself rejects the net."""
    net = read_net(text, path, collect=True)
    return emulate(net, phase, input_shapes, strict), net.problems


def caffe_module(text: str, path: str = "<input>", phase: str = "TRAIN",
                 input_shapes: Mapping[str, Sequence[int]] | None = None,
                 strict: bool = False):
    """Everything but the Net: (state, flat import, warnings). Needs no op registry.
    Fields that do not fit the schema, layer types and settings bwplan cannot import are
    raised together, as one MultipleErrors when there are several."""
    net = read_net(text, path, collect=True)
    problems = list(net.problems)
    try:
        state = emulate(net, phase, input_shapes, strict)
        flat = to_flat_ast(net, state, input_shapes)
    except MultipleErrors as err:
        raise_all(problems + list(err.errors))
        raise
    except CaffeError as err:
        raise_all(problems + [err])
        raise
    raise_all(problems)
    return state, flat, differences(net, state)


def import_caffe_text(text: str, path: str = "<input>", phase: str = "TRAIN",
                      input_shapes: Mapping[str, Sequence[int]] | None = None,
                      strict: bool = False) -> CaffeImport:
    """Import prototxt text. `phase` picks the layers (TRAIN or TEST rules); `input_shapes`
    ({blob: shape}) gives or overrides data shapes; `strict` rejects every net Caffe rejects
    (by default, shared params with different explicit lr_mult are accepted with a warning).
    Raises BwSyntaxError for text that does not parse and CaffeError for a net Caffe rejects
    or bwplan cannot import."""
    state, flat, warnings = caffe_module(text, path, phase, input_shapes, strict)
    return CaffeImport(state, flat.module, build(flat.module), flat.layer_map, warnings,
                       flat.built_as)
