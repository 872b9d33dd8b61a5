"""Docs as tests: the README tour and the shell examples in docs/*.md run, as written, against a fresh store.

A shell example is a fenced block (```bash, ```sh, ```console or unlabelled) whose first command starts
with ``tracekit`` or ``python``; every command of it must exit 0. A page runs in its own temporary
directory with a fresh ``TRACEKIT_DB`` (``./tracekit.duckdb``) and the default spool root, where
``fixtures/`` is the repository's and ``../shared`` the ``shared/`` folder beside the checkout (the
Who&When logs the examples read; blocks naming it are left out where it is absent); the files a page's Python blocks name on their first line
(``# my_app.py``) are written there first, and a docs page starts from the README tour's first step
(``python my_app.py``: a run named ``demo``).

A block that cannot run offline or quickly (it needs a GPU-less 4-rank torchrun, a dataset outside
the repository, a server that keeps running) carries an explicit marker on the line above its fence:

    <!-- doc-test: skip (the reason) -->
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

from foundation_helpers import REPO

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
_FENCE = re.compile(r"^```([a-z]*)[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
_SKIP = re.compile(r"<!--\s*doc-test:\s*skip\b(.*?)-->")
_SHELL = ("", "bash", "sh", "shell", "console")
_FILE = re.compile(r"^#\s*([\w./-]+\.py)\s*$")
COMMAND_TIMEOUT = 60


@dataclass(frozen=True)
class Block:
    page: Path
    line: int
    commands: tuple[str, ...]
    skip: str | None

    @property
    def where(self) -> str:
        return f"{self.page.relative_to(REPO)}:{self.line}"


def _commands(body: str) -> list[str]:
    out = []
    for raw in body.splitlines():
        line = raw.strip()
        if line.startswith("$ "):
            line = line[2:]
        if not line or line.startswith("#"):
            continue
        out.append(line)
    return out


def blocks(page: Path) -> list[Block]:
    text = page.read_text()
    found = []
    for m in _FENCE.finditer(text):
        if m.group(1) not in _SHELL:
            continue
        commands = _commands(m.group(2))
        if not commands or not commands[0].split()[0] in ("tracekit", "python"):
            continue
        before = text[: m.start()].rstrip().splitlines()
        marker = _SKIP.search(before[-1]) if before else None
        line = text[: m.start()].count("\n") + 1
        found.append(Block(page, line, tuple(commands), marker.group(1).strip(" -—()") or "marked" if marker else None))
    return found


def files(pages: list[Path]) -> dict[str, str]:
    """Python snippets that name their file on their first line (``# my_app.py``)."""
    out: dict[str, str] = {}
    for page in pages:
        for m in _FENCE.finditer(page.read_text()):
            first, _, rest = m.group(2).partition("\n")
            name = _FILE.match(first.strip())
            if m.group(1) == "python" and name:
                out[name.group(1)] = rest
    return out


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRACEKIT_")}
    env["TRACEKIT_DB"] = str(tmp / "tracekit.duckdb")
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["COLUMNS"] = "160"
    return env


def _run(command: str, tmp: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # `python` is this interpreter (the one tracekit is installed into)
    line = re.sub(r"(^|\s)python(?=\s)", lambda m: m.group(1) + shlex.quote(sys.executable), command)
    return subprocess.run(["bash", "-c", line], cwd=tmp, env=env, capture_output=True, text=True,
                          timeout=COMMAND_TIMEOUT)


ALL = {page: blocks(page) for page in PAGES}


def test_the_tour_and_the_docs_have_shell_examples() -> None:
    readme = ALL[REPO / "README.md"]
    assert any(b.commands[0].split()[:2] == ["python", "my_app.py"] and b.skip is None for b in readme), \
        "the README tour lost its first step"
    assert sum(1 for bs in ALL.values() for b in bs if b.skip is None) >= 5
    assert "my_app.py" in files(PAGES)


def test_skips_are_few_and_give_a_reason() -> None:
    skipped = [b for bs in ALL.values() for b in bs if b.skip is not None]
    assert all(b.skip != "marked" for b in skipped), [b.where for b in skipped if b.skip == "marked"]
    runnable = [b for bs in ALL.values() for b in bs if b.skip is None]
    assert len(skipped) <= 2 * len(runnable) + 10, "most shell examples are skipped: make them runnable"


SHARED = REPO.parent / "shared"


@pytest.mark.parametrize("page", [p for p in PAGES if ALL[p]], ids=lambda p: p.name)
def test_shell_examples_run(page: Path, tmp_path: Path) -> None:
    (tmp_path / "shared").symlink_to(SHARED)  # examples read ../shared/data/whowhen, as in a checkout
    tmp_path = tmp_path / "work"
    tmp_path.mkdir()
    env = _env(tmp_path)
    for name, source in files(PAGES).items():
        (tmp_path / name).write_text(source)
    (tmp_path / "fixtures").symlink_to(REPO / "fixtures")  # examples name the repository's fixtures
    runnable = [b for b in ALL[page] if b.skip is None
                and (SHARED.is_dir() or not any("../shared" in c for c in b.commands))]
    if not runnable:
        pytest.skip(f"every shell example of {page.name} is marked doc-test: skip")
    if page.name != "README.md":  # a docs page starts where the tour's first step leaves the store
        seeded = _run("python my_app.py", tmp_path, env)
        assert seeded.returncode == 0, seeded.stderr
    failures = []
    for block in runnable:
        for command in block.commands:
            try:
                done = _run(command, tmp_path, env)
            except subprocess.TimeoutExpired:
                failures.append(f"{block.where}: `{command}` took over {COMMAND_TIMEOUT} s")
                continue
            if done.returncode != 0:
                failures.append(f"{block.where}: `{command}` exited {done.returncode}\n"
                                f"{(done.stderr or done.stdout).strip()[-600:]}")
    assert not failures, "shell examples that do not run as written (fix them, or mark them " \
                         "<!-- doc-test: skip (reason) -->):\n" + "\n".join(failures)
