"""The DuckDB store: opening (with a wait on another writer's lock), schema, and inserting runs."""

from __future__ import annotations

import json
import re
import sys
import time
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path

import duckdb
import pyarrow.compute as pc

from tracekit.errors import TracekitError
from tracekit.readers.common import TraceData

SCHEMA_VERSION = 1
TABLES = ("kernels", "launches", "ranges", "ops", "memops")
# Tables filled after insert (enrichment); deleted with the run like the others.
DERIVED_TABLES = ("passes",)


def _is_lock_error(exc: Exception) -> bool:
    msg = str(exc).lower()
    return "lock" in msg and ("conflicting" in msg or "could not set lock" in msg)


def connect(path: str | Path, read_only: bool = False, wait_s: float = 120.0) -> duckdb.DuckDBPyConnection:
    """Open the database; while another process holds its write lock, wait (saying so) up to wait_s."""
    path = str(path)
    if read_only and path != ":memory:" and not Path(path).exists():
        raise TracekitError(f"{path}: no such database (import traces into it first)")
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            con = duckdb.connect(path, read_only=read_only)
            break
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise TracekitError(f"{path}: cannot open database ({str(exc).splitlines()[0]})") from None
            if time.monotonic() >= deadline:
                raise TracekitError(
                    f"{path}: database is locked by another process (waited {wait_s:.0f}s); try again later"
                ) from None
            if not told:
                print(f"tracekit: {path}: locked by another tracekit process; waiting…", file=sys.stderr)
                told = True
            time.sleep(0.25)
        except duckdb.Error as exc:
            raise TracekitError(f"{path}: not a tracekit/DuckDB database ({str(exc).splitlines()[0]})") from None
    if not read_only:
        ensure_schema(con)
    return con


def _schema_sql() -> str:
    return resources.files("tracekit").joinpath("schema.sql").read_text()


def ensure_schema(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(_schema_sql())


def table_ddl(name: str) -> str:
    """The CREATE TABLE statement of one table, as schema.sql (the one source of truth) has it."""
    m = re.search(rf"CREATE TABLE IF NOT EXISTS {re.escape(name)} \(.*?\n\);", _schema_sql(), re.S)
    if m is None:
        raise KeyError(name)
    return m.group(0)


def find_run(con: duckdb.DuckDBPyConnection, content_hash: str) -> int | None:
    row = con.execute("SELECT run_id FROM runs WHERE content_hash = ?", [content_hash]).fetchone()
    return row[0] if row else None


def delete_run(con: duckdb.DuckDBPyConnection, run_id: int) -> None:
    for t in (*TABLES, *DERIVED_TABLES, "run_meta", "runs"):
        con.execute(f"DELETE FROM {t} WHERE run_id = ?", [run_id])


def insert_run(
    con: duckdb.DuckDBPyConnection,
    data: TraceData,
    *,
    source_path: str,
    content_hash: str,
    importer_version: str,
    meta: dict[str, tuple[str, str]],
) -> int:
    """Insert one linked trace as a new run; the caller owns the transaction."""
    run_id = con.execute("SELECT nextval('run_id_seq')").fetchone()[0]
    k = data.kernels
    kernel_time = pc.sum(k.column("dur_ns")).as_py() or 0
    con.execute(
        """INSERT INTO runs (run_id, source_path, source_name, format, content_hash, importer_version,
           imported_at, gpu_name, tool_versions, trace_meta, absent, n_kernels, kernel_time_ns)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [
            run_id, source_path, Path(source_path).name, data.format, content_hash, importer_version,
            datetime.now(UTC).replace(tzinfo=None), data.gpu_name, json.dumps(data.tool_versions),
            json.dumps(data.trace_meta, default=str), data.absent, k.num_rows, kernel_time,
        ],
    )
    if meta:
        con.executemany(
            "INSERT INTO run_meta VALUES (?, ?, ?, ?)",
            [[run_id, key, value, source] for key, (value, source) in meta.items()],
        )
    for table in TABLES:
        arrow = data.table(table)
        if arrow.num_rows == 0:
            continue
        cols = ", ".join(f'"{c}"' for c in arrow.column_names)
        con.register("_tk_in", arrow)
        try:
            con.execute(f"INSERT INTO {table} (run_id, {cols}) SELECT {run_id}, {cols} FROM _tk_in")
        finally:
            con.unregister("_tk_in")
    return run_id
