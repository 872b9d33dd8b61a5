"""Docs stay true: every setting is in config.py's table and docs/configuration.md; the docs pages exist."""

from __future__ import annotations

import re

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
