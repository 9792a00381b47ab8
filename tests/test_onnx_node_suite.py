"""The onnx package's own node tests, a reference nobody here wrote: one ONNX graph per case
with its inputs and the outputs ONNX's NumPy references compute for them.

The wheel installed here ships the generators of those cases (`onnx.backend.test.case.node`,
from which `onnx`'s `backend-test-tools generate-data` writes `data/node/test_*/`), not the
written files; the cases are the same. A case is taken when every node of its graph has an
op type the importer's tables know (`bwplan.onnx.table.ROWS`, `bwplan.onnx.fold.FOLDABLE`);
only the generator modules named after a table's op type are imported, so a function's
expanded form made by another op's module (Swish, RotaryEmbedding) is not among them.

Each case is imported twice at most: as written (every input a graph input, as the node
tests write weights, bounds and shapes) and, if the importer refuses that, with every input
after the first as an initializer holding the case's value (as exporters write them). The
first form that imports runs forward on the case's inputs (the cpu target, euclidean_loss
attached so that any output shape has a loss) and must give the stored outputs within
1e-4. A case neither form imports must be refused with bwplan's own error (a BwError), never
a crash; `test_enough_cases_compare` keeps the count compared from falling unnoticed.
"""
from __future__ import annotations

import functools
import importlib
import pkgutil
import warnings

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
nodepkg = pytest.importorskip("onnx.backend.test.case.node")
from onnx import numpy_helper  # noqa: E402

import bwplan  # noqa: E402
from bwplan.errors import BwError  # noqa: E402
from bwplan.onnx.fold import FOLDABLE  # noqa: E402
from bwplan.onnx.table import ROWS  # noqa: E402

RTOL = ATOL = 1e-4
# measured: 159 of the 280 cases taken compare (onnx 1.23.2); the rest are refused
AT_LEAST_COMPARED = 155


def _cases() -> list:
    """The node test cases whose op types the importer's tables hold."""
    wanted = {op.lower() for op in ROWS}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")      # the generators' own overflow warnings
        np_state = np.random.get_state()
        for mod in pkgutil.iter_modules(nodepkg.__path__):
            if mod.name.replace("_", "").lower() in wanted:
                importlib.import_module(f"{nodepkg.__name__}.{mod.name}")
        np.random.set_state(np_state)
    known = set(ROWS) | FOLDABLE
    taken = {}
    for case in nodepkg._NodeTestCases:
        nodes = case.model.graph.node
        if (all(n.op_type in known and n.domain in ("", "ai.onnx") for n in nodes)
                and any(n.op_type in ROWS for n in nodes)):
            taken.setdefault(case.name, case)
    return sorted(taken.values(), key=lambda c: c.name)


CASES = _cases()


def _with_initializers(model, inputs):
    """The model with every graph input after the first an initializer of its value."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    rest = list(m.graph.input[1:])
    del m.graph.input[1:]
    for vi, value in zip(rest, inputs[1:]):
        m.graph.initializer.append(numpy_helper.from_array(np.asarray(value), vi.name))
    return m


def _drop_ratio(model, inputs) -> float | None:
    """The ratio of a Dropout the case runs in training mode (its third input true): its
    stored output is one random draw, which bwplan's own masks cannot reproduce."""
    given = {vi.name: v for vi, v in zip(model.graph.input, inputs)}
    given.update({t.name: numpy_helper.to_array(t) for t in model.graph.initializer})
    for node in model.graph.node:
        if node.op_type == "Dropout" and len(node.input) > 2 and bool(given.get(
                node.input[2], False)):
            ratio = float(given[node.input[1]]) if node.input[1] else 0.5
            return ratio if ratio > 0 else None
    return None


def _forward(path, feeds, training=False) -> np.ndarray:
    prog = bwplan.compile(str(path), onnx_options={"loss": "euclidean_loss"})
    batch = {}
    for inp in prog.net.inputs:       # the attached loss's target: zeros
        batch[inp.name] = np.asarray(feeds[inp.name]) if inp.name in feeds else np.zeros(
            inp.type.shape, np.float32)
    out = prog.net.layers[-1].inputs[0].src     # the attached loss reads the output
    return prog.forward(batch, outputs=[out], training=training)[out]


@functools.cache
def _outcome(name: str, tmp: str):
    """("compared", form, got, want), ("drawn", form, got, want, x, ratio) for a random
    draw, or ("refused", messages)."""
    case = next(c for c in CASES if c.name == name)
    inputs, outputs = case.data_sets[0]
    forms = [("as written", case.model, inputs)]
    if len(case.model.graph.input) > 1 and all(isinstance(v, (np.ndarray, np.generic))
                                               for v in inputs):
        forms.append(("initializers", _with_initializers(case.model, inputs), inputs[:1]))
    refusals = []
    for k, (form, model, given) in enumerate(forms):
        path = f"{tmp}/{name}.{k}.onnx"
        onnx.save(model, path)
        feeds = {vi.name: v for vi, v in zip(model.graph.input, given)}
        ratio = _drop_ratio(case.model, inputs)
        try:
            got = _forward(path, feeds, training=ratio is not None)
        except BwError as err:
            refusals.append(f"{form}: {str(err).splitlines()[-1].strip()}")
            continue
        if ratio is not None:
            return "drawn", form, got, outputs[0], np.asarray(inputs[0]), ratio
        return "compared", form, got, outputs[0]
    return "refused", tuple(refusals)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("node_suite"))


@pytest.mark.parametrize("name", [c.name for c in CASES])
def test_node_case(name, workdir):
    result = _outcome(name, workdir)
    if result[0] == "refused":
        # bwplan's own error, one clear message per form; nothing else is acceptable
        assert all(r.strip() for r in result[1]), result
        return
    if result[0] == "drawn":
        # a training-mode Dropout: each output is 0 or x / (1 - ratio), in the stored draw
        # and in bwplan's (which keeps about 1 - ratio of them)
        _, form, got, want, x, ratio = result
        kept = x / (1 - ratio)
        for out in (got, np.asarray(want)):
            assert np.all(np.isclose(out, 0, atol=ATOL) | np.isclose(out, kept, rtol=RTOL,
                                                                     atol=ATOL)), form
        share = np.mean(np.abs(got) > ATOL) / max(np.mean(np.abs(kept) > ATOL), 1e-9)
        assert abs(share - (1 - ratio)) < 4 * np.sqrt(ratio * (1 - ratio) / x.size), share
        return
    _, form, got, want = result
    assert got.shape == want.shape, (form, got.shape, want.shape)
    np.testing.assert_allclose(got, np.asarray(want, dtype=np.float32), rtol=RTOL, atol=ATOL,
                               err_msg=f"{name} ({form})")


def test_enough_cases_compare(workdir):
    compared = [c.name for c in CASES if _outcome(c.name, workdir)[0] != "refused"]
    assert len(compared) >= AT_LEAST_COMPARED, (len(compared), len(CASES))
