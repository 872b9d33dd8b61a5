"""DuckDB schema of the store, applied as numbered, named migrations recorded in `schema_migrations`."""

from __future__ import annotations

import time
from typing import NamedTuple

import duckdb

from tracekit.errors import StoreError
from tracekit.store.sql import one


class Migration(NamedTuple):
    version: int
    name: str
    sql: str


MIGRATIONS: list[Migration] = [
    Migration(1, "core tables", """
    CREATE TABLE runs (
        run_id VARCHAR PRIMARY KEY, kind VARCHAR, name VARCHAR, started_ns BIGINT, ended_ns BIGINT,
        status VARCHAR, attributes JSON);
    -- random hex ids and free text defeat dictionary/FSST analysis (2-3x the load time): zstd them;
    -- low-cardinality columns (node, name, status) keep the default, dictionary-friendly encodings.
    CREATE TABLE spans (
        run_id VARCHAR, trace_id VARCHAR USING COMPRESSION zstd, span_id VARCHAR USING COMPRESSION zstd, parent_id VARCHAR USING COMPRESSION zstd,
        name VARCHAR, node VARCHAR, kind VARCHAR, start_ns BIGINT, end_ns BIGINT, status VARCHAR,
        status_message VARCHAR USING COMPRESSION zstd, attributes JSON USING COMPRESSION zstd, pid INTEGER);
    CREATE TABLE events (
        run_id VARCHAR, span_id VARCHAR USING COMPRESSION zstd, ts_ns BIGINT, name VARCHAR, attributes JSON USING COMPRESSION zstd);
    CREATE TABLE links (
        run_id VARCHAR, src_span_id VARCHAR, dst_span_id VARCHAR, relation VARCHAR,
        provenance VARCHAR, confidence DOUBLE, attributes JSON);
    CREATE TABLE collectives (
        run_id VARCHAR, rank INTEGER, world_size INTEGER, process_group VARCHAR, seq BIGINT,
        op VARCHAR, bytes BIGINT, dtype VARCHAR, enter_ns BIGINT, exit_ns BIGINT, step BIGINT,
        ok BOOLEAN, pid INTEGER);
    CREATE TABLE steps (
        run_id VARCHAR, rank INTEGER, step BIGINT, start_ns BIGINT, end_ns BIGINT, loss DOUBLE,
        grad_norm DOUBLE, nonfinite BOOLEAN, pid INTEGER);
    CREATE TABLE faults (
        run_id VARCHAR, campaign VARCHAR, test VARCHAR, point VARCHAR, fault_type VARCHAR,
        injected BOOLEAN, ts_ns BIGINT, span_id VARCHAR, detail JSON);
    CREATE TABLE findings (
        run_id VARCHAR, analysis VARCHAR, kind VARCHAR, subject VARCHAR, score DOUBLE,
        rank_order INTEGER, first_step BIGINT, confidence DOUBLE, detail JSON, created_ns BIGINT);
    """),
    Migration(2, "ingest bookkeeping", """
    CREATE TABLE spool_files (
        file_id VARCHAR PRIMARY KEY, run_id VARCHAR, stream VARCHAR, path VARCHAR, pid INTEGER,
        host VARCHAR, node VARCHAR, started_ns BIGINT, ended_ns BIGINT, offset_bytes BIGINT,
        records BIGINT, torn_bytes BIGINT, ingested_ns BIGINT);
    CREATE TABLE quarantine (
        run_id VARCHAR, source VARCHAR, line BIGINT, record_id VARCHAR, error VARCHAR,
        raw VARCHAR, ingested_ns BIGINT);
    CREATE VIEW processes AS
        SELECT run_id, host, pid, any_value(node) AS node, min(started_ns) AS started_ns,
               max(ended_ns) AS ended_ns, bool_and(ended_ns IS NOT NULL) AS clean_exit
        FROM spool_files WHERE pid IS NOT NULL GROUP BY run_id, host, pid;
    """),
    Migration(3, "spans: native rows and Parquet segments behind one view", """
    ALTER TABLE spans RENAME TO span_rows;
    CREATE TABLE span_segments (
        segment VARCHAR PRIMARY KEY, path VARCHAR, run_ids VARCHAR[], rows BIGINT, bytes BIGINT, created_ns BIGINT,
        agent BOOLEAN, min_start_ns BIGINT, max_end_ns BIGINT, root_errors BIGINT);
    CREATE VIEW spans AS SELECT * FROM span_rows;
    """),
    Migration(10, "training: collective details, link probes, rank heartbeats", """
    ALTER TABLE collectives ADD COLUMN peer INTEGER;
    ALTER TABLE collectives ADD COLUMN async_op BOOLEAN;
    ALTER TABLE collectives ADD COLUMN source VARCHAR;
    ALTER TABLE collectives ADD COLUMN nonfinite BOOLEAN;
    ALTER TABLE collectives ADD COLUMN error VARCHAR;
    CREATE TABLE probes (
        run_id VARCHAR, rank INTEGER, world_size INTEGER, round BIGINT, src INTEGER, dst INTEGER,
        bytes BIGINT, ts_ns BIGINT, dur_ns BIGINT, step BIGINT, pid INTEGER);
    CREATE TABLE heartbeats (
        run_id VARCHAR, rank INTEGER, ts_ns BIGINT, step BIGINT, last_seq BIGINT, inflight_op VARCHAR,
        inflight_seq BIGINT, inflight_since_ns BIGINT, state VARCHAR, pid INTEGER);
    """),
    Migration(11, "training: scheduling lag in rank heartbeats (CPU starvation)", """
    ALTER TABLE heartbeats ADD COLUMN sched_lag_ns BIGINT;
    """),
    Migration(12, "training: the step in progress at a heartbeat's worst wake-up", """
    ALTER TABLE heartbeats ADD COLUMN lag_step BIGINT;
    """),
    Migration(13, "training: each torchrun worker's exit as its launcher saw it", """
    CREATE TABLE worker_exits (
        run_id VARCHAR, rank INTEGER, local_rank INTEGER, worker_pid BIGINT, exit_code INTEGER,
        signal INTEGER, ts_ns BIGINT, host VARCHAR, pid INTEGER);
    """),
    Migration(30, "fault-injection campaigns", """
    CREATE TABLE campaigns (
        campaign_id VARCHAR PRIMARY KEY, name VARCHAR, file VARCHAR, strategy VARCHAR, budget INTEGER,
        executor VARCHAR, started_ns BIGINT, ended_ns BIGINT, status VARCHAR, config JSON, summary JSON);
    CREATE TABLE campaign_points (
        run_id VARCHAR, point VARCHAR, parent VARCHAR, kind VARCHAR, returns VARCHAR, raises VARCHAR,
        pid INTEGER);
    """),
]

LATEST = max(m.version for m in MIGRATIONS)


def current_version(con: duckdb.DuckDBPyConnection) -> int:
    exists = one(con, 
        "SELECT count(*) FROM information_schema.tables WHERE table_name = 'schema_migrations'"
    )
    if not exists or not exists[0]:
        return 0
    row = one(con, "SELECT coalesce(max(version), 0) FROM schema_migrations")
    return int(row[0]) if row else 0


def migrate(con: duckdb.DuckDBPyConnection) -> int:
    """Apply every migration not yet recorded, all in one transaction (all or none); returns the schema version.

    Versions are grouped by area (1-9 core, 10-19 training, 20-29 agents, 30-39 campaigns,
    40-49 dashboard), so a migration is applied when it is missing, not only when it is newest.
    One transaction for all of them: a new store is made with one commit (one WAL sync), not one per migration.
    """
    version = current_version(con)
    if version > LATEST:
        raise StoreError(
            f"the store has schema version {version}, newer than this tracekit understands "
            f"({LATEST}): upgrade tracekit"
        )
    if version == 0:
        con.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations "
            "(version INTEGER PRIMARY KEY, name VARCHAR, applied_ns BIGINT)"
        )
    applied = {int(r[0]) for r in con.execute("SELECT version FROM schema_migrations").fetchall()}
    pending = [m for m in sorted(MIGRATIONS, key=lambda m: m.version) if m.version not in applied]
    if not pending:
        return version
    con.execute("BEGIN TRANSACTION")
    try:
        for migration in pending:
            con.execute(migration.sql)
            con.execute(
                "INSERT INTO schema_migrations VALUES (?, ?, ?)",
                [migration.version, migration.name, time.time_ns()],
            )
        con.execute("COMMIT")
    except Exception:
        con.execute("ROLLBACK")
        raise
    return current_version(con)
