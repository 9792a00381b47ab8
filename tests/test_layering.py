"""Stages import only what lies below them: nothing from the parsers down to lowering and
the kernel tables imports the runtime, the API, the artifacts or the CLI (the lowering
reads the optimizer's settings from bwplan/optim.py, not from the runtime)."""
from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).parent.parent / "bwplan"
BELOW_THE_RUNTIME = ("frontend", "caffe", "onnx", "ir", "ops", "plan", "explain", "lower",
                     "kernels")
ABOVE = ("bwplan.runtime", "bwplan.api", "bwplan.artifacts", "bwplan.cli")


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
    return found


def test_no_stage_below_the_runtime_imports_it():
    wrong = [f"{path.relative_to(PACKAGE.parent)}:{line}: {name}"
             for folder in BELOW_THE_RUNTIME for path in sorted((PACKAGE / folder).rglob("*.py"))
             for line, name in _imports(path)
             if any(name == a or name.startswith(a + ".") for a in ABOVE)]
    assert not wrong, "\n".join(wrong)


def test_the_check_sees_an_upward_import(tmp_path):
    module = tmp_path / "m.py"
    module.write_text("def f():\n    from bwplan.runtime.optimizer import Sgd\n")
    assert _imports(module) == [(2, "bwplan.runtime.optimizer")]
