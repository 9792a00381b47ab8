"""The places an op touches, as docs/architecture.md states them, kept true.

Everything else in bwplan/ reads an op through its `OpDef` (the registry), so no other module
may name an op: for every registered op, its name as a string constant (found with `ast`,
so comments and docstrings do not count) may appear only in

- its op module, `bwplan/ops/<family>.py`;
- its family's CUDA table, `bwplan/kernels/cuda/<family>.py`, for a kernel whose launch is
  not its kind's default (a `LAUNCH`/`ALSO`/`WORKSPACE` row);
- an importer's table: a row saying which bwplan op a Caffe layer type or an ONNX op type
  becomes (`caffe/catalogue.py`, `caffe/mapping.py`, `onnx/table.py`, `onnx/loss.py`).

The Numba kernels (`kernels/cpu/<family>.py`) and the CUDA C (`cuda/<family>.cu`) are
reached through the kernel names the OpDef holds, never by the op's name.

In the tests, an op has exactly one row, in `tests/op_cases/<family>.py`: its cases, its
PyTorch translation and its lines in a generated training net. No other module of tests/ or
bench/ keeps a table keyed by op (a dict display with op names as keys), so a new op needs
no row anywhere else.
"""
from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

from bwplan import ops as registry
from op_cases import ROWS, ROWS_BY_FAMILY

ROOT = Path(__file__).parent.parent
PACKAGE = ROOT / "bwplan"

OP_MODULE = "bwplan/ops/{family}.py"
CUDA_ROWS = "bwplan/kernels/cuda/{family}.py"
IMPORTER_TABLES = ("bwplan/caffe/catalogue.py", "bwplan/caffe/mapping.py",
                   "bwplan/onnx/table.py", "bwplan/onnx/loss.py")
TEST_ROW = "tests/op_cases/{family}.py"
# modules of tests/ and bench/ allowed a table keyed by op, and why
OP_TABLES = {
    "tests/netgen.py": "the plan oracle's random nets describe their five ops as plain data, "
                       "so that the oracle never reads bwplan's registry",
}

# (module, string): why the string there is not the op of that name
NOT_THE_OP = {
    ("bwplan/caffe/schema.py", "normalize"): "LossParameter's `normalize` field",
    ("bwplan/caffe/schema.py", "transpose"): "InnerProductParameter's `transpose` field",
    ("bwplan/caffe/shapes.py", "transpose"): "InnerProduct's `transpose` field, read",
}

# op names that are also the name of a port, parameter slot, attribute, aux value or op
# family, so a string constant cannot tell the two apart: these ops are not checked here.
# A new op whose name collides so must be added with the reason.
SHARED_NAMES = {
    "argmax": "the aux value of maximum and the max-pooling ops",
    "bias": "the bias parameter slot (and attribute) of conv2d, linear, batchnorm, ...",
    "embed": "the embed family",
    "linear": "the linear family",
    "pad": "conv2d's and the pooling ops' pad attribute",
    "power": "the power attribute of power",
    "reduction": "the reduction family",
    "scale": "the scale attribute of power, exp and log; an aux value of the lrn ops",
    "threshold": "the threshold attribute of threshold",
}


def _other_names() -> set[str]:
    names: set[str] = set()
    for op in registry.OPS.values():
        names |= {p.name for p in op.ports} | {s.name for s in op.params}
        names |= {a.name for a in op.attrs} | {a.name for a in op.aux} | {op.family}
    return names


def _mentions() -> dict[str, dict[str, list[int]]]:
    """op name -> module -> lines where the name is a string constant."""
    found: dict[str, dict[str, list[int]]] = defaultdict(lambda: defaultdict(list))
    for path in sorted(PACKAGE.rglob("*.py")):
        module = path.relative_to(ROOT).as_posix()
        for node in ast.walk(ast.parse(path.read_text(), module)):
            if isinstance(node, ast.Constant) and node.value in registry.OPS:
                found[node.value][module].append(node.lineno)
    return found


def test_the_shared_names_are_exactly_the_colliding_ones():
    assert set(registry.OPS) & _other_names() == set(SHARED_NAMES)


def test_no_module_outside_an_ops_places_names_it():
    mentions = _mentions()
    wrong = []
    for name, op in sorted(registry.OPS.items()):
        if name in SHARED_NAMES:
            continue
        allowed = {OP_MODULE.format(family=op.family), CUDA_ROWS.format(family=op.family),
                   *IMPORTER_TABLES}
        for module, lines in sorted(mentions[name].items()):
            if module not in allowed and (module, name) not in NOT_THE_OP:
                wrong.append(f"{module}:{lines[0]} names op {name!r}")
    assert not wrong, "\n".join(wrong)


def test_every_op_is_named_in_its_own_module():
    mentions = _mentions()
    for name, op in registry.OPS.items():
        assert OP_MODULE.format(family=op.family) in mentions[name], name


def test_the_exceptions_are_still_needed():
    mentions = _mentions()
    for module, name in NOT_THE_OP:
        assert module in mentions[name], (module, name)


def test_every_family_has_its_kernel_sources():
    for family in {op.family for op in registry.OPS.values()}:
        assert (PACKAGE / "kernels" / "cpu" / f"{family}.py").is_file(), family
        assert (ROOT / "cuda" / f"{family}.cu").is_file(), family


def test_every_op_has_exactly_one_row_in_its_familys_module():
    """A row for every registered op and for nothing else, in the module of the op's family;
    each with a torch translation or the reason why there is none, and net lines that end
    in the op's own layer."""
    seen: dict[str, list[str]] = defaultdict(list)
    for family, rows in ROWS_BY_FAMILY.items():
        assert (ROOT / TEST_ROW.format(family=family)).is_file(), family
        for name in rows:
            seen[name].append(family)
    assert set(seen) == set(registry.OPS)
    for name, families in seen.items():
        assert families == [registry.OPS[name].family], (name, families)
    for name, row in ROWS.items():
        assert (row.torch is None) == bool(row.no_torch), name
        last = row.net.layers.splitlines()[-1]
        assert last.split("=")[0].strip() == name and f"{name}(" in last, name


def _op_tables() -> dict[str, int]:
    """module of tests/ or bench/ -> line of a dict display keyed by two or more op names."""
    found = {}
    for path in sorted([*ROOT.joinpath("tests").rglob("*.py"),
                        *ROOT.joinpath("bench").rglob("*.py")]):
        module = path.relative_to(ROOT).as_posix()
        if module.startswith("tests/op_cases/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), module)):
            if isinstance(node, ast.Dict):
                keys = {k.value for k in node.keys if isinstance(k, ast.Constant)}
                if len(keys & set(registry.OPS) - set(SHARED_NAMES)) >= 2:
                    found.setdefault(module, node.lineno)
    return found


def test_no_test_or_benchmark_keeps_its_own_table_of_ops():
    wrong = [f"{m}:{line}" for m, line in _op_tables().items() if m not in OP_TABLES]
    assert not wrong, "a table keyed by op outside tests/op_cases: " + ", ".join(wrong)
    assert set(_op_tables()) == set(OP_TABLES), "an exception no longer needed"


def test_the_architecture_document_names_these_places():
    text = (ROOT / "docs" / "architecture.md").read_text()
    section = text[text.index("Adding an op touches"):]
    for place in ("bwplan/ops/<family>.py", "bwplan/kernels/cpu/<family>.py",
                  "cuda/<family>.cu", "bwplan/kernels/cuda/<family>.py",
                  TEST_ROW.format(family="<family>"),
                  "tests/test_op_places.py", *IMPORTER_TABLES):
        short = place.removeprefix("bwplan/") if place in IMPORTER_TABLES else place
        assert short in section, place
