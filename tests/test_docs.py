"""The documents that are generated or quoted from code stay in step with it."""
from __future__ import annotations

import re
from pathlib import Path

from bwplan.ops.docs import render
from bwplan.plan.decisions import REASON_CODES

ROOT = Path(__file__).parents[1]


def test_ops_reference_is_current():
    assert (ROOT / "docs" / "ops.md").read_text() == render(), \
        "regenerate with: python -m bwplan.ops.docs > docs/ops.md"


def test_language_doc_quotes_the_grammar():
    grammar = (ROOT / "grammar" / "bw.lark").read_text()
    doc = (ROOT / "docs" / "language.md").read_text()
    rules = [l for l in grammar.splitlines() if l and not l.startswith("//")]
    for line in rules:
        assert line in doc, f"docs/language.md lacks grammar line: {line}"


def test_json_schema_doc_lists_every_reason_code():
    doc = (ROOT / "docs" / "json-schema.md").read_text()
    for code in REASON_CODES:
        assert f"`{code}`" in doc, code
    listed = set(re.findall(r"^\| `([a-z_]+)` \|", doc, re.M))
    assert listed >= set(REASON_CODES)


def test_json_schema_doc_lists_every_finding_code():
    from bwplan.plan.pitfalls import CHECKS
    import inspect
    doc = (ROOT / "docs" / "json-schema.md").read_text()
    codes = set()
    for check in CHECKS:
        codes.update(re.findall(r'Finding\("([a-z_]+)"', inspect.getsource(check)))
    assert codes and all(f"`{c}`" in doc for c in codes)
