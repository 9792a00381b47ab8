"""Turns a read ONNX model into bwplan's flat AST and the weights it starts from.

One walk over the nodes in their (topological) file order:

    node folds (fold.py)             -> its outputs are constants; no layer
    node feeds no graph output       -> skipped (e.g. a Dropout's mask, BN's new statistics)
    op type has a row (table.py)     -> the row's layers
    anything else                    -> collected; all of them are reported in one error

Names. A parameter is named after its initializer (`layer1.0.conv1.weight`) when that is a
valid bwplan name and the values are used as stored; otherwise `<layer>.<slot>`. A layer
with a `weight` initializer named `X.weight` (PyTorch) or `X_w_0` (Caffe2) is called X, so
`--freeze 'layer1.*'` matches what PyTorch calls layer1; other layers take the module path
PyTorch's exporter writes in the node name (`/layer1/layer1.0/relu/Relu` ->
`layer1.0.relu`), else the node's name, else its first output's. An initializer used by
two nodes is one shared parameter; a constant reached through an Identity node is a copy,
so it is a parameter of its own.
"""
from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from bwplan.frontend import ast
from bwplan.frontend.import_warning import ImportWarning
from bwplan.ir.types import TensorType
from bwplan.onnx.errors import OnnxError, node_span
from bwplan.onnx.fold import attrs_of, try_fold
from bwplan.onnx.read import OnnxModel, shapes_after_folding
from bwplan.onnx.table import PREVIOUS, ROWS, Emit, NodeView, Unsupported, Weight
from bwplan.source import Span

# how exporters end a layer's weight: PyTorch `conv1.weight`, Caffe2 `conv1_w_0`
_WEIGHT_SUFFIXES = (".weight", "_w_0")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_/.\-]*$")
_FLOAT_TYPES = {1: "f32", 11: "f64", 10: "f16"}   # onnx TensorProto element types
_INT_TYPES = {6, 7}


def valid_name(name: str) -> bool:
    return bool(_NAME.match(name))


def sanitize(name: str) -> str:
    name = re.sub(r"[^A-Za-z0-9_/.\-]", "_", name.strip("/"))
    return name if valid_name(name) else "_" + name


def note(path: str, code: str, text: str, fix: str = "") -> ImportWarning:
    """A fact about the whole model that `explain` tells as a note."""
    return ImportWarning(code, Span.whole(path), text, fix, severity="note")


@dataclass(frozen=True)
class Converted:
    module: ast.Module
    weights: Mapping[str, np.ndarray]       # bwplan parameter name -> initial value
    outputs: tuple[str, ...]                # layers that compute the graph's outputs
    notes: tuple[ImportWarning, ...] = ()
    layer_of_node: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    shapes: Mapping[str, tuple[int, ...]] = field(default_factory=dict)   # ONNX tensor shapes


class _Names:
    def __init__(self) -> None:
        self.taken: set[str] = set()

    def take(self, want: str) -> str:
        name, k = want, 2
        while name in self.taken:
            name, k = f"{want}_{k}", k + 1
        self.taken.add(name)
        return name


def _scope(name: str) -> tuple[str, str] | None:
    """(qualified module path, last piece) of a PyTorch exporter's node name. A segment
    repeats its parent segment as a prefix when the parent is a container (`/layer1/layer1.0`,
    `/downsample/downsample.0`) and is a plain attribute name otherwise (`/relu`):
    `/layer2/layer2.0/downsample/downsample.0/Conv` -> ("layer2.0.downsample.0", "Conv")."""
    if not name.startswith("/"):
        return None
    parts = name[1:].split("/")
    path, parent = "", ""
    for seg in parts[:-1]:
        if parent and seg.startswith(parent + "."):
            path += seg[len(parent):]
        else:
            path = f"{path}.{seg}" if path else seg
        parent = seg
    return path, parts[-1]


class _Converter:
    def __init__(self, model: OnnxModel) -> None:
        self.model = model
        self.path = model.path
        self.graph = model.proto.graph
        # one list of the node objects, held for the whole walk: protobuf may hand out a new
        # wrapper (and id) on every iteration of graph.node
        self.nodes = list(self.graph.node)
        self.names = _Names()
        self.constants: dict[str, np.ndarray] = {}
        self.current: dict[str, str] = {}       # ONNX tensor -> bwplan tensor
        self.layers: list[ast.LayerStmt] = []
        # (ONNX initializer, slot) -> its declaration, and the bwplan parameter it became
        self.params: dict[tuple[str, str] | str, ast.ParamDecl] = {}
        self.used: dict[tuple[str, str], str] = {}
        self.weights: dict[str, np.ndarray] = {}
        self.problems: list[str] = []
        self.failed: set[str] = set()     # outputs of nodes that could not be imported
        self.layer_of_node: dict[str, tuple[str, ...]] = {}
        self.users: dict[str, list] = {}
        for node in self.nodes:
            for name in node.input:
                if name:
                    self.users.setdefault(name, []).append(node)
        self.scope_count: dict[str, int] = {}
        self.scope_parents: set[str] = set()
        for node in self.nodes:
            s = _scope(node.name)
            if s is not None:
                self.scope_count[s[0]] = self.scope_count.get(s[0], 0) + 1
                parts = s[0].split(".")
                for k in range(1, len(parts)):
                    self.scope_parents.add(".".join(parts[:k]))

    # ---- the walk ---------------------------------------------------------------------
    def run(self) -> Converted:
        from onnx import numpy_helper
        for init in self.graph.initializer:
            self.constants[init.name] = np.array(numpy_helper.to_array(init))
        self.initializers = frozenset(self.constants)
        inputs = self.input_decls()
        live = self.live_nodes()
        # Fold first, all of it: a row that looks at a later node (MatMul's Add) must see
        # that node's constant inputs even when the file computes them after the row's node.
        folded = {id(node) for node in self.nodes if self.fold(node)}
        # nodes left to map per module path: a row that maps all of a module's is named
        # after the module (a stochastic depth's draw, Less, Cast, Mul and Div)
        self.mapped_in_scope: dict[str, int] = {}
        for node in self.nodes:
            s = _scope(node.name)
            if s is not None and id(node) not in folded and id(node) in live:
                self.mapped_in_scope[s[0]] = self.mapped_in_scope.get(s[0], 0) + 1
        self.shapes = self.model.shapes
        if any(o not in self.shapes for node in self.nodes
               if id(node) in live and id(node) not in folded for o in node.output if o):
            self.shapes = shapes_after_folding(
                self.model, {k: v for k, v in self.constants.items()
                             if k not in self.initializers},
                {i for i, node in enumerate(self.nodes) if id(node) in folded})
        absorbed: set[int] = set()
        for node in self.nodes:
            if id(node) in absorbed or id(node) in folded or id(node) not in live:
                continue
            row = ROWS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
            if row is None:
                self.problem(node, "bwplan has no mapping for this op type")
                continue
            view = NodeView(node, attrs_of(node), self.model.opset, self.constants,
                            self.shapes, lambda t: self.users.get(t, []),
                            self.initializers)
            try:
                mapped = row(view)
            except Unsupported as why:
                self.problem(node, str(why))
                continue
            missing = [a for e in mapped.layers for a in e.args
                       if a not in self.current and a != PREVIOUS]
            if missing:
                # an input from an unsupported node is reported there; any other is not
                unknown = [a for a in missing if a.split("#")[0] not in self.failed]
                if unknown:
                    self.problem(node, f"input '{unknown[0]}' is not computed by a layer "
                                 "(a sequence position past its end?)")
                self.failed.update(node.output)
                continue
            absorbed.update(id(n) for n in mapped.absorbed)
            self.emit(node, mapped.layers, mapped.absorbed)
        if self.problems:
            raise OnnxError(Span.whole(self.path), f"{len(self.problems)} node(s) that bwplan "
                            "cannot import (opset " + str(self.model.opset) + "):\n" +
                            "\n".join(self.problems),
                            "every op bwplan imports is listed in docs/onnx.md")
        outputs = []
        producer = {o: n for n in self.nodes for o in n.output if o}
        for out in self.graph.output:
            node = producer.get(out.name)
            if out.name not in self.current and node is not None and id(node) not in folded:
                # a second output of an imported node: a Dropout's mask, a BN's new
                # statistics, a MaxPool's indices
                k = list(node.output).index(out.name)
                raise OnnxError(Span.whole(self.path), f"graph output '{out.name}' is output "
                                f"{k} of node '{node.name or node.output[0]}' "
                                f"({node.op_type}), which bwplan does not compute",
                                "export the model with that node's first output only")
            if out.name not in self.current:
                raise OnnxError(Span.whole(self.path), f"graph output '{out.name}' is a "
                                "constant or a graph input, not computed by a layer")
            outputs.append(self.current[out.name])
        statements = tuple(inputs) + tuple(self.params.values()) + tuple(self.layers)
        return Converted(ast.Module(self.path, statements), self.weights, tuple(outputs),
                         (), dict(self.layer_of_node), self.shapes)

    def problem(self, node, why: str) -> None:
        self.failed.update(node.output)
        name = node.name or (node.output[0] if node.output else "?")
        self.problems.append(f"  {self.path}: node '{name}' ({node.op_type}, opset "
                             f"{self.model.opset}): {why}")

    def fold(self, node) -> bool:
        try:
            outs = try_fold(node, self.constants, self.model.shapes, self.model.dtypes)
        except Exception as err:  # a malformed constant subgraph
            self.problem(node, f"cannot evaluate this constant node ({err})")
            return True
        if outs is None:
            return False
        for name, value in zip(node.output, outs):
            self.constants[name] = value
        return True

    def live_nodes(self) -> set[int]:
        """The nodes some graph output depends on."""
        producer = {o: n for n in self.nodes for o in n.output if o}
        seen: set[int] = set()
        stack = [o.name for o in self.graph.output]
        while stack:
            node = producer.get(stack.pop())
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            stack.extend(i for i in node.input if i)
        return seen

    # ---- pieces -----------------------------------------------------------------------
    def input_decls(self) -> list[ast.InputDecl]:
        """The graph inputs. The first one's first axis is the batch; another input whose
        first axis differs from it (a lookup table, a constant fed at run time) has no batch
        axis, so that a batch of another size takes it whole."""
        decls = []
        batch = None
        for inp in self.graph.input:
            if inp.name not in self.model.input_shapes:
                continue
            elem = inp.type.tensor_type.elem_type
            dtype = _FLOAT_TYPES.get(elem, "i64" if elem in _INT_TYPES else None)
            if dtype is None:
                raise OnnxError(Span.whole(self.path), f"input '{inp.name}' has ONNX element "
                                f"type {elem}; bwplan imports float and integer inputs")
            name = self.names.take(sanitize(inp.name))
            self.current[inp.name] = name
            shape = self.model.input_shapes[inp.name]
            if batch is None and shape:
                batch = shape[0]
            decls.append(ast.InputDecl(name, TensorType(dtype, shape), False,
                                       Span.whole(self.path),
                                       batched=not shape or shape[0] == batch))
        return decls

    def layer_name(self, node, e: Emit, absorbed=()) -> str:
        w = e.weights.get("weight")
        if w is not None and w.name and valid_name(w.name):
            for suffix in _WEIGHT_SUFFIXES:
                # a weight shared by a later node names the first one only
                if (w.name.endswith(suffix) and len(w.name) > len(suffix)
                        and w.name[:-len(suffix)] not in self.names.taken):
                    return w.name[:-len(suffix)]
        scope = _scope(node.name)
        if scope is not None:
            path, piece = scope
            whole = self.scope_count.get(path) == 1 or (
                absorbed and self.mapped_in_scope.get(path) == 1 + len(absorbed)
                and all((_scope(n.name) or ("",))[0] == path for n in absorbed))
            if path and whole and path not in self.scope_parents:
                return path
            return f"{path}.{piece.lower()}" if path else piece.lower()
        if node.name:
            return sanitize(node.name)
        return sanitize(node.output[0])

    def emit(self, node, layers: tuple[Emit, ...], absorbed=()) -> None:
        span = node_span(self.path, node.name or node.output[0], node.op_type)
        made: list[str] = []
        # the layer that holds the weight names them all (a conv's `.pad` layer before it)
        named = [e for e in layers if e.op is not None]
        base = self.layer_name(node, next((e for e in named if e.weights), named[0]),
                               absorbed) \
            if named else None
        for e in layers:
            args = tuple(made[-1] if a == PREVIOUS else self.current[a] for a in e.args)
            if e.op is None:
                self.current[e.output] = args[0]
                continue
            name = self.names.take(base + e.suffix)
            kwargs = [ast.KwArg(k, v, span) for k, v in e.attrs.items()]
            for slot, w in e.weights.items():
                pname = self.param(name, slot, w, span)
                if pname is not None:
                    kwargs.append(ast.KwArg(slot, ast.NameRef(pname, span), span))
            call = ast.Call(e.op, tuple(ast.Arg(a, False, span) for a in args), tuple(kwargs),
                            span, span)
            self.layers.append(ast.LayerStmt(name, call, (), span, span))
            made.append(name)
            if e.output is not None:
                self.current[e.output] = name
        self.layer_of_node[node.name or node.output[0]] = tuple(made)

    def param(self, layer: str, slot: str, w: Weight, span: Span) -> str | None:
        """The declared parameter for this use, or None for the default `<layer>.<slot>`.

        One initializer in the same slot of two layers is one shared parameter (tied
        weights); in different slots it is a copy per slot: the dynamo exporter's optimizer
        merges equal constants, so a fresh model's BN scale and running variance (both ones)
        can arrive as one initializer, which is no tie."""
        value = np.ascontiguousarray(w.value, dtype=np.float32)
        key = None if w.name is None else (w.name, slot)
        if key is not None and key in self.used:
            # the same initializer again: one shared parameter, now declared, so that the
            # first use's default binding `<layer>.<slot>` finds the declaration too
            name = self.used[key]
            if key not in self.params:
                self.declare(name, value, span, key)
            return name
        default = f"{layer}.{slot}"
        if w.name is None or not valid_name(w.name) or w.name == default:
            name = self.names.take(default)
            self.weights[name] = value
            if key is not None:
                self.used[key] = name
            return None if name == default else self.declare(name, value, span, None)
        name = self.names.take(w.name)
        self.weights[name] = value
        self.used[key] = name
        return self.declare(name, value, span, key)

    def declare(self, name: str, value: np.ndarray, span: Span,
                key: tuple[str, str] | None) -> str:
        decl = ast.ParamDecl(name, TensorType("f32", tuple(value.shape)), (), span)
        self.params[key or name] = decl
        return name


def to_flat_ast(model: OnnxModel) -> Converted:
    return _Converter(model).run()
