"""The CLI contracts of issue 2: runs/spans/sql formats, read-only sql, exports, clean errors, light --help, docs."""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from foundation_helpers import REPO, assert_one_line_error, clean_env, cli, cli_here, run_py

DEMO_PROGRAM = """
import tracekit

tracekit.init(run="demo", node="service:api")

@tracekit.trace(node="service:db")
def query(i):
    if i == 3:
        raise RuntimeError("db timeout")

@tracekit.trace
def handle(i):
    try:
        query(i)
    except RuntimeError:
        pass

for i in range(6):
    handle(i)

@tracekit.trace
def crash():
    raise ValueError("bad input")

try:
    crash()
except ValueError:
    pass
"""


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A store holding one real run: 13 spans on two nodes, two of them errors."""
    tmp = tmp_path_factory.mktemp("cli")
    done = run_py(tmp, DEMO_PROGRAM)
    assert done.code == 0, done.err
    return tmp


def test_runs_json_csv_and_table(demo):
    runs = json.loads(cli_here(demo, "runs", "--format", "json").out)
    assert len(runs) == 1
    run = runs[0]
    assert {"run_id", "name", "kind", "status", "spans", "errors"} <= run.keys()
    assert (run["name"], run["kind"], run["status"], run["spans"], run["errors"]) == ("demo", "service", "error", 13, 2)
    assert re.fullmatch(r"[0-9a-f]{32}", run["run_id"])

    rows = list(csv.DictReader(io.StringIO(cli_here(demo, "runs", "--format", "csv").out)))
    assert [(r["run_id"], r["name"], r["spans"], r["errors"]) for r in rows] == [(run["run_id"], "demo", "13", "2")]

    table = cli_here(demo, "runs", COLUMNS="200")
    assert table.code == 0 and "demo" in table.out and run["run_id"][:12] in table.out


def test_spans_by_name_or_id_prefix_with_errors_filter(demo):
    run_id = json.loads(cli_here(demo, "runs", "--format", "json").out)[0]["run_id"]
    by_name = json.loads(cli_here(demo, "spans", "demo", "--errors", "--format", "json").out)
    by_prefix = json.loads(cli_here(demo, "spans", run_id[:8], "--errors", "--format", "json").out)
    assert by_name == by_prefix
    assert sorted((s["name"], s["node"], s["status"], s["status_message"]) for s in by_name) == [
        ("crash", "service:api", "error", "ValueError: bad input"),
        ("query", "service:db", "error", "RuntimeError: db timeout"),
    ]
    every = json.loads(cli_here(demo, "spans", "demo", "--node", "service:db", "--format", "json").out)
    assert len(every) == 6 and {s["name"] for s in every} == {"query"}


def test_sql_json_is_one_array_of_row_objects(demo):
    done = cli_here(demo, "sql", "SELECT node, count(*) AS n FROM spans GROUP BY node ORDER BY node", "--format", "json")
    assert done.code == 0, done.err
    assert json.loads(done.out) == [{"node": "service:api", "n": 7}, {"node": "service:db", "n": 6}]
    rows = list(csv.reader(io.StringIO(cli_here(demo, "sql", "SELECT 1 AS a, 'x' AS b", "--format", "csv").out)))
    assert rows == [["a", "b"], ["1", "x"]]


def test_sql_is_read_only_and_sandboxed(demo):
    for query in (
        "DELETE FROM spans",
        "CREATE TABLE t AS SELECT 1",
        "  insert into runs (run_id) values ('x')",
        "WITH x AS (SELECT 1) DELETE FROM spans",
        "COPY spans TO 'stolen.csv'",
        "SELECT * FROM read_csv('/etc/hostname')",
        "ATTACH 'other.duckdb' AS other",
        "SELECT * FROM no_such_table",
    ):
        done = cli_here(demo, "sql", query)
        assert_one_line_error(done)
    assert "read-only" in cli_here(demo, "sql", "DELETE FROM spans").err
    assert json.loads(cli_here(demo, "sql", "SELECT count(*) AS n FROM spans", "--format", "json").out) == [{"n": 13}]
    assert not (demo / "stolen.csv").exists() and not (demo / "other.duckdb").exists()


def test_export_chrome_trace_has_one_complete_event_per_span(demo):
    done = cli_here(demo, "export", "demo", "--format", "chrome-trace", "-o", "out/demo.json")
    assert done.code == 0, done.err
    doc = json.loads((demo / "out" / "demo.json").read_text())
    complete = [e for e in doc["traceEvents"] if e["ph"] == "X"]
    assert len(complete) == 13
    assert all({"name", "ts", "dur", "pid", "tid"} <= e.keys() and e["dur"] >= 0 for e in complete)
    names = {e["args"]["name"] for e in doc["traceEvents"] if e["ph"] == "M" and e["name"] == "process_name"}
    assert names == {"service:api", "service:db"}
    assert sum(e["cat"] == "error" for e in complete) == 2


def test_export_parquet_is_hive_partitioned_by_run_and_readable(demo):
    run_id = json.loads(cli_here(demo, "runs", "--format", "json").out)[0]["run_id"]
    done = cli_here(demo, "export", "demo", "--format", "parquet", "-o", "lake")
    assert done.code == 0, done.err
    assert list((demo / "lake" / "spans").iterdir()) == [demo / "lake" / "spans" / f"run_id={run_id}"]
    with duckdb.connect() as con:
        got = con.execute(
            "SELECT run_id, count(*), count(*) FILTER (WHERE status = 'error') FROM "
            "read_parquet(?, hive_partitioning = true) GROUP BY run_id",
            [str(demo / "lake" / "spans" / "*" / "*.parquet")],
        ).fetchall()
    assert got == [(run_id, 13, 2)]


def test_bad_input_is_one_line_and_exit_2(demo):
    for args in (
        ["spans", "no-such-run"],
        ["export", "no-such-run", "--format", "chrome-trace", "-o", "x.json"],
        ["runs", "--db", "missing.duckdb"],
        ["ingest", "does/not/exist"],
        ["sql", "   "],
    ):
        assert_one_line_error(cli_here(demo, *args))
    (demo / "a-file").write_text("x")
    assert_one_line_error(cli_here(demo, "export", "demo", "--format", "chrome-trace", "-o", "a-file/sub/x.json"))
    # and once through a real console process: the contract holds outside pytest too
    assert_one_line_error(cli(demo, "spans", "no-such-run"))


HEAVY = ("torch", "streamlit", "polars", "duckdb", "pyarrow", "pandas", "opentelemetry.sdk", "networkx", "ray")


def test_help_imports_nothing_heavy(tmp_path):
    probe = (
        "import sys\n"
        "sys.argv = ['tracekit', '--help']\n"
        "from tracekit.cli import main\n"
        "try:\n    main()\nexcept SystemExit:\n    pass\n"
        f"print('LOADED', sorted(m for m in {HEAVY!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, env=clean_env(tmp_path),
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "LOADED []" in done.stdout, done.stdout.splitlines()[-1]


def _commands() -> list[str]:
    from typer.main import get_command

    from tracekit.cli import app

    return sorted(get_command(app).commands)  # type: ignore[attr-defined]


def test_every_command_has_help_and_a_section_in_docs_cli_md():
    """sqlite-utils' habit: a command without help text or documentation fails the build."""
    from typer.testing import CliRunner

    from tracekit.cli import app

    docs = (REPO / "docs" / "cli.md").read_text()
    runner = CliRunner()
    commands = _commands()
    assert {"runs", "spans", "sql", "ingest", "export", "record"} <= set(commands)
    for name in commands:
        result = runner.invoke(app, [name, "--help"])
        assert result.exit_code == 0, (name, result.output)
        summary = result.output.split("Usage:", 1)[1].split("\n\n", 2)[1].strip()
        assert summary and not summary.startswith(("Options", "Arguments")), f"`tracekit {name}` has no help text"
        assert re.search(rf"^## tracekit {re.escape(name)}\b", docs, re.M), f"docs/cli.md has no section for {name}"


def test_sql_table_shows_bracketed_text_verbatim(tmp_path):
    """Guards the crash seen with gloo error text: rich took `[/__w/...]` in a cell for markup."""
    import subprocess
    import sys

    from tracekit.store.db import connect

    db = tmp_path / "s.duckdb"
    connect(db).close()
    out = subprocess.run(
        [sys.executable, "-m", "tracekit", "sql", "SELECT '[/__w/gloo] [bold]x[/bold]' AS msg", "--db", str(db)],
        capture_output=True, text=True,
    )
    assert out.returncode == 0, out.stderr
    assert "[/__w/gloo]" in out.stdout and "[bold]x[/bold]" in out.stdout


def test_analysis_commands_on_a_missing_store_do_not_create_one(tmp_path):
    """Guards the bug where `tracekit anomalies x` in an empty directory silently created an empty
    store, so every later command reported unknown runs instead of the missing store."""
    import subprocess
    import sys

    db = tmp_path / "nowhere.duckdb"
    for command in (["anomalies", "x"], ["attribute", "x"]):
        out = subprocess.run([sys.executable, "-m", "tracekit", *command, "--db", str(db)],
                             capture_output=True, text=True)
        assert out.returncode == 2, (command, out.stderr)
        assert "no tracekit store" in out.stderr and "Traceback" not in out.stderr
        assert not db.exists()


def test_tables_show_12_character_ids_that_every_run_taking_command_accepts(demo):
    run_id = json.loads(cli_here(demo, "runs", "--format", "json").out)[0]["run_id"]
    table = cli_here(demo, "runs", COLUMNS="200").out
    assert run_id[:12] in table and run_id[:13] not in table  # git-style short ids in tables only
    spans_table = cli_here(demo, "spans", run_id[:12], COLUMNS="200").out
    span_ids = [s["span_id"] for s in json.loads(cli_here(demo, "spans", run_id[:12], "--format", "json").out)]
    assert all(len(s) == 16 for s in span_ids)  # json keeps full ids
    assert span_ids[0][:12] in spans_table and span_ids[0] not in spans_table
    csv_ids = [r["run_id"] for r in csv.DictReader(io.StringIO(cli_here(demo, "runs", "--format", "csv").out))]
    assert csv_ids == [run_id]
    assert cli_here(demo, "export", run_id[:12], "--format", "chrome-trace", "-o", "short.json").code == 0


def test_version_option_and_shell_completion():
    from typer.testing import CliRunner

    from tracekit import __version__
    from tracekit.cli import app

    runner = CliRunner()
    assert runner.invoke(app, ["--version"]).output.strip() == f"tracekit {__version__}"
    # the shell named, not detected from the process tree (typer's switch for that; detection fails when
    # no shell is among this process's ancestors, as under a detached runner)
    env = {**os.environ, "_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}
    done = subprocess.run([sys.executable, "-m", "tracekit", "--show-completion", "bash"], capture_output=True,
                          text=True, timeout=60, env=env)
    assert done.returncode == 0 and "complete" in done.stdout and "tracekit" in done.stdout, done.stderr
