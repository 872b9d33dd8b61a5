"""Docs stay true: every setting is in config.py's table and docs/configuration.md; the docs pages exist; every
doctest example in the package runs."""

from __future__ import annotations

import re

import pytest

import tracekit.config
from foundation_helpers import REPO

_ROW = re.compile(r"^\|\s*(TRACEKIT_[A-Z_]+)\s*\|\s*([^|]*?)\s*\|", re.M)


def test_configuration_md_matches_the_table_in_config_py():
    source = dict(_ROW.findall(tracekit.config.__doc__ or ""))
    docs = dict(_ROW.findall((REPO / "docs" / "configuration.md").read_text()))
    assert source, "tracekit/config.py lost its settings table"
    assert docs == source


def test_every_tracekit_variable_the_code_reads_is_documented():
    documented = set(_ROW.findall(tracekit.config.__doc__ or ""))
    documented_names = {name for name, _default in documented}
    used: set[str] = set()
    for path in (REPO / "tracekit").rglob("*.py"):
        used |= set(re.findall(r"\bTRACEKIT_[A-Z][A-Z_]*[A-Z]\b", path.read_text()))
    assert used - documented_names == set(), "add these to the table in tracekit/config.py"


def test_the_foundation_pages_exist_and_link_to_each_other():
    for page in ("cli.md", "configuration.md", "concepts.md", "capture.md"):
        text = (REPO / "docs" / page).read_text()
        assert text.startswith("# "), page
        for target in re.findall(r"\]\(([a-z_]+\.md)(?:#[^)]*)?\)", text):
            assert (REPO / "docs" / target).exists(), f"{page} links to a missing page {target}"


# --- docs as tests: every doctest example in the package runs (issue #15) ------------------------

DOCTEST_MODULES = sorted(
    ".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__")
    for p in (REPO / "tracekit").rglob("*.py") if ">>>" in p.read_text()
)  # found by reading the source, so collection imports nothing (no torch, no streamlit)


def test_the_package_has_doctests() -> None:
    assert {"tracekit.graph.propagation", "tracekit.analysis.collectives", "tracekit.analysis"} <= set(DOCTEST_MODULES)


@pytest.mark.parametrize("module", DOCTEST_MODULES)
def test_doctest_examples_run(module: str) -> None:
    import doctest
    import importlib
    import io

    mod = importlib.import_module(module)
    finder = doctest.DocTestFinder(exclude_empty=True)
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = io.StringIO()
    tests = [t for t in finder.find(mod, module) if t.examples]
    for test in tests:
        runner.run(test, out=out.write)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"{module} has '>>>' in its source but no doctest was found"
    assert result.failed == 0, out.getvalue()
