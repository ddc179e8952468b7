"""The DuckDB store: opening (with a wait on another writer's lock), schema, and inserting runs."""

from __future__ import annotations

import hashlib
import json
import re
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from typing import Protocol

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracekit.errors import TracekitError
from tracekit.readers.common import TraceData, give_back_memory

SCHEMA_VERSION = 2
# Tables a reader fills, in insert order: kernels last, because their contexts name their ops.
TABLES = ("launches", "ranges", "ops", "memops", "kernels")
# Per-run tables behind the `kernels` view, and tables filled after insert (enrichment); all are
# deleted with the run. kernel_names / kernel_contexts are shared by runs and kept.
RUN_TABLES = ("launches", "ranges", "ops", "memops", "kernel_rows", "kernel_verdicts", "passes",
              "run_ranks", "kernel_totals", "follow_totals", "kernel_sums", "stage_spans")
DERIVED_TABLES = ("passes",)
# Launch dims: part of a kernel context (what rules can see).
DIM_COLS = ("grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z")
# The kernel-row columns that separate independent streams of forward passes within one run
# (processes, GPUs, ranks). Stage attribution numbers passes and iterations within each distinct
# value, the rollups (kernel_totals, stage_spans) and the views group by them: this is the one
# place to extend it (enrich.stages and the views take it from here).
PARTITION: tuple[str, ...] = ("pid", "device", "rank")  # rank: multi-rank runs (tracekit/ranks.py)


class StagePlanner(Protocol):
    """How insert_run decides stages without importing enrichment (the importer hands it
    `tracekit.enrich.stages`): the pipeline runs one way, readers -> store -> enrich, and the
    importer wires the steps together."""

    def plan_kernel_stages(self, con: duckdb.DuckDBPyConnection, run_id: int,
                           kernels: str) -> dict:
        """Stage plan of kernels not written yet (relation `kernels`): arrays kernel_id, pass_id,
        stage (a code into `stages`, the list of distinct stage names)."""
        ...

    def attribute_stages(self, con: duckdb.DuckDBPyConnection, run_id: int) -> str:
        """Stage attribution of kernel rows already written (the SQL insert path)."""
        ...


# How insert_run classifies kernels not written yet (the importer hands it
# enrich.classify.plan_kernel_follows with its rules): (con, run_id, relation of the rows with their
# stages) -> Arrow table kernel_id, follow_category, follow_evidence of the kernels that have one;
# the verdicts are written. So the rows are written once, with their follow_*: an UPDATE of rows
# this transaction inserted makes DuckDB log them all to the WAL at COMMIT instead of keeping the
# row groups it already wrote (COMMIT 1.3 CPU-s and checkpoint 0.3 s at 3.75M kernels).
FollowPlanner = Callable[[duckdb.DuckDBPyConnection, int, str], pa.Table]


def _is_lock_error(exc: Exception) -> bool:
    msg = str(exc).lower()
    return "lock" in msg and ("conflicting" in msg or "could not set lock" in msg)


# Every connection is opened with these, so that a database someone sent you cannot read or write
# other files, load code, or reach the network, even before any query runs: a stored view or macro
# calling read_text('/etc/passwd') fails. The configuration is then locked, so SQL cannot undo it.
SAFE_CONFIG = {
    "enable_external_access": False,
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}

# What a trace file starts with: given as --db, it is refused before DuckDB opens it (DuckDB would
# try to load its sqlite extension for an SQLite file, and write tracekit's schema into it).
_TRACE_MAGIC = ((b"SQLite format 3\x00", "an SQLite file (an nsys export?)"), (b"\x1f\x8b", "a gzip file"))


def _trace_kind(path: str) -> str | None:
    """What kind of trace `path` holds when it is one (not a database), else None."""
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError:
        return None  # DuckDB says why it cannot open it
    if head[8:12] == b"DUCK":
        return None  # a DuckDB file: its first 8 bytes are a checksum, which may start like anything
    for magic, kind in _TRACE_MAGIC:
        if head.startswith(magic):
            return kind
    if head.lstrip(b"\xef\xbb\xbf \t\r\n")[:1] in (b"{", b"["):
        return "a JSON file (a Kineto/Chrome trace?)"
    return None


Reclassify = Callable[[duckdb.DuckDBPyConnection], None]


def creates(path: str | Path) -> bool:
    """Whether opening `path` creates the database: then nothing stored in it needs checking
    (check_stored), and nothing in it can fail to bind tracekit's views."""
    return str(path) == ":memory:" or not Path(path).exists()


def connect(path: str | Path, read_only: bool = False, wait_s: float = 120.0,
            reclassify: Reclassify | None = None) -> duckdb.DuckDBPyConnection:
    """Open the database; while another process holds its write lock, wait (saying so) up to wait_s.

    The connection cannot reach other files, extensions or the network (SAFE_CONFIG, locked), and
    tracekit's tables are checked to be tables and `kernels` defined by this code (check_stored).
    `reclassify(con)`: how a tracekit 0.1 database's runs are classified again when it is upgraded
    on a writable open (the caller's rules: the store knows none; tracekit.open gives it); without
    one such a database is only opened read-only."""
    path = str(path)
    new = creates(path)
    if path != ":memory:":
        if read_only and new:
            raise TracekitError(f"{path}: no such database (import traces into it first)")
        if Path(path).is_dir():
            return _open_dataset(path, read_only)
        if Path(path).exists() and not Path(path).is_file():
            raise TracekitError(f"{path}: not a database file")
        kind = _trace_kind(path)
        if kind is not None:
            raise TracekitError(f"{path}: this is a trace ({kind}), not a database: import it "
                                f"(tracekit import {path} --db study.duckdb)")
    deadline = time.monotonic() + wait_s
    told = False
    while True:
        try:
            # An in-memory database holds nothing anyone sent: it stays as DuckDB opens it (the
            # Parquet dataset's connections read their files and set their own threads).
            con = duckdb.connect(path, read_only=read_only, config=dict(SAFE_CONFIG) if path != ":memory:" else {})
            break
        except duckdb.IOException as exc:
            if not _is_lock_error(exc):
                raise TracekitError(f"{path}: cannot open database ({_first_line(exc)})") from None
            if time.monotonic() >= deadline:
                raise TracekitError(
                    f"{path}: database is locked by another process (waited {wait_s:.0f}s); try again later"
                ) from None
            if not told:
                print(f"tracekit: {path}: locked by another tracekit process; waiting…", file=sys.stderr)
                told = True
            time.sleep(0.25)
        except duckdb.Error as exc:
            raise TracekitError(f"{path}: not a tracekit/DuckDB database ({_first_line(exc)})") from None
    try:
        # A second connection to a file this process has open shares its (already locked) instance.
        if path != ":memory:" and not con.execute("SELECT current_setting('lock_configuration')").fetchall()[0][0]:
            con.execute("SET lock_configuration = true")
        if not new:
            check_stored(con, path)
        if not read_only:
            ensure_schema(con, reclassify)
        try:
            create_kernels_view(con)
        except duckdb.BinderException:
            pass  # an older database lacks added columns: made again once the views' open has added them
    except TracekitError:
        con.close()
        raise
    except duckdb.Error as exc:
        # A corrupt or truncated file can open and fail at its first read.
        con.close()
        raise TracekitError(f"{path}: cannot use this database ({_first_line(exc)})") from None
    return con


def _open_dataset(path: str, read_only: bool) -> duckdb.DuckDBPyConnection:
    """A Parquet dataset directory given as --db: read in place (tracekit.dataset), never written."""
    from tracekit.dataset import is_dataset, open_dataset

    if not is_dataset(path):
        raise TracekitError(f"{path}: not a database file")
    if not read_only:
        raise TracekitError(f"{path}: a Parquet dataset is read-only: import into it with "
                            "`tracekit dataset import --to`, or copy it into a database with `tracekit dataset attach`")
    return open_dataset(path)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _expected_columns() -> dict[str, dict[str, str]]:
    """{table: {column: type}} as schema.sql's CREATE TABLE statements declare them. Read from the
    text, not from a scratch database made from it (that took ~30 ms of every open): schema.sql
    writes each type as DuckDB names it, which tests/test_store_open.py checks against such a
    database."""
    global _EXPECTED
    if _EXPECTED is None:
        _EXPECTED = {}
        for table, body in re.findall(r"^CREATE TABLE IF NOT EXISTS (\w+) \((.*?)^\);", _schema_sql(), re.S | re.M):
            columns = _EXPECTED[table] = {}
            for item in _top_level_items(re.sub(r"--[^\n]*", "", body)):
                name, dtype = item.split()[:2]
                if name.upper() not in ("PRIMARY", "UNIQUE", "CHECK", "FOREIGN", "CONSTRAINT"):
                    columns[name] = dtype
    return _EXPECTED


def _top_level_items(body: str) -> list[str]:
    """The comma-separated items of a CREATE TABLE body, commas inside parentheses kept."""
    items, depth, start = [], 0, 0
    for i, ch in enumerate(body):
        depth += (ch == "(") - (ch == ")")
        if ch == "," and depth == 0:
            items.append(body[start:i])
            start = i + 1
    items.append(body[start:])
    return [item.strip() for item in items if item.strip()]


_EXPECTED: dict[str, dict[str, str]] | None = None
# The narrow tables the `kernels` view reads.
_KERNEL_TABLES = ("kernel_rows", "kernel_names", "kernel_verdicts")


def main_columns(con: duckdb.DuckDBPyConnection) -> dict[str, dict[str, str]]:
    """{table or view: {column: type}} of the database's main schema, in one catalog query."""
    columns: dict[str, dict[str, str]] = {}
    for table, column, dtype in con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() "
            "AND schema_name = 'main'").fetchall():
        columns.setdefault(table, {})[column] = dtype
    return columns


def check_stored(con: duckdb.DuckDBPyConnection, path: str) -> None:
    """Refuse a database whose stored objects could change what tracekit computes: a macro (it
    would shadow a built-in function such as sum), or something in place of one of tracekit's
    tables that is not a table of the expected column types. Stored views are never read: every
    view tracekit reads, `kernels` included, is a TEMP view made by this code on each open."""
    macros = [r[0] for r in con.execute(
        "SELECT DISTINCT function_name FROM duckdb_functions() WHERE NOT internal "
        "AND database_name = current_database() ORDER BY 1").fetchall()]
    if macros:
        raise TracekitError(f"{path}: refusing a database with stored SQL macros ({', '.join(macros[:5])}); "
                            "tracekit makes none")
    objects = {r[0]: r[1] for r in con.execute(
        "SELECT table_name, table_type FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND table_schema = 'main'").fetchall()}
    expected = _expected_columns()
    stored_columns = main_columns(con)
    for name, columns in expected.items():
        if name not in objects:
            continue
        if objects[name] != "BASE TABLE":
            raise TracekitError(f"{path}: refusing this database: `{name}` is a {objects[name].lower()}, "
                                "not a table")
        stored = stored_columns.get(name, {})
        wrong = [c for c, t in columns.items() if c in stored and _family(stored[c]) != _family(t)]
        if wrong:
            c = wrong[0]
            raise TracekitError(f"{path}: refusing this database: {name}.{c} is {stored[c]}, "
                                f"expected {columns[c]}")
    kernels = objects.get("kernels")
    if kernels not in (None, "BASE TABLE"):  # a table: tracekit 0.1's layout (upgraded on write)
        missing = [t for t in _KERNEL_TABLES if t not in objects]
        if missing:
            raise TracekitError(f"{path}: not a tracekit database (missing tables: {', '.join(missing)})")


_INTEGERS = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
             "UBIGINT", "UHUGEINT"}


def _family(dtype: str) -> str:
    """A column type up to integer width (a copied dataset stores run_id as BIGINT): what could
    change what tracekit computes is a number stored as text or the like, not a wider integer."""
    return "integer" if dtype in _INTEGERS else dtype


def kernels_view_sql(name: str = "kernels") -> str:
    """A view's definition (`kernels`) from schema.sql (its one source), as a TEMP view."""
    m = re.search(rf"CREATE (?:OR REPLACE )?VIEW (?:IF NOT EXISTS )?{name} AS\b(.*?);\s*$", _schema_sql(), re.S | re.M)
    if m is None:
        raise KeyError(name)
    return f"CREATE OR REPLACE TEMP VIEW {name} AS{m.group(1)}"


def create_kernels_view(con: duckdb.DuckDBPyConnection) -> None:
    """Make `kernels` this code's view (a TEMP view shadows whatever the file stores under that
    name), unless the file is tracekit 0.1's, whose `kernels` is its table of kernels."""
    have = {r[0]: r[1] for r in con.execute(
        "SELECT table_name, table_type FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND table_schema = 'main'").fetchall()}
    if have.get("kernels") == "BASE TABLE" or any(t not in have for t in _KERNEL_TABLES):
        return
    con.execute(kernels_view_sql())


def has_rollups(con: duckdb.DuckDBPyConnection) -> bool:
    """Whether this connection's database keeps the per-run rollups (schema.sql)."""
    return con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() AND schema_name = 'main' "
        "AND table_name IN ('kernel_totals', 'follow_totals', 'kernel_sums', 'stage_spans')").fetchall()[0][0] == 4


def run_filter(con: duckdb.DuckDBPyConnection, run_ids: list[int] | None, alias: str = "") -> str:
    """A WHERE condition on `alias`run_id selecting `run_ids` (all: None). A long list goes into a
    temp table (a semi-join): an IN list of thousands of literals is evaluated per row. The table
    is named for the list, so a condition holds for the connection's life whatever is asked after."""
    if run_ids is None:
        return "true"
    ids = sorted({int(r) for r in run_ids})
    if len(ids) <= 64:
        return f"{alias}run_id IN ({', '.join(map(str, ids)) or 'NULL'})"
    table = "_tk_sel_" + hashlib.blake2b(np.asarray(ids, np.int64).tobytes(), digest_size=8).hexdigest()
    con.execute(f"CREATE TEMP TABLE IF NOT EXISTS {table} AS SELECT unnest(?::INTEGER[]) AS run_id", [ids])
    return f"{alias}run_id IN (SELECT run_id FROM {table})"


# A kernel whose class its context does not decide (kernel_rows.follow_*: split-K reduces, GEMMs
# decided by their pass, softmaxes by their place): classification rewrites these per kernel.
_FOLLOWS = "(follow_category IS NOT NULL OR follow_evidence IS NOT NULL)"


def kernel_totals_sql(source: str = "kernel_rows", wide: bool = False, follow: bool = False) -> str:
    """The rollup of kernel rows `source` into kernel_totals' rows (by context), `follow` into
    follow_totals' (by context and follow_*: the caller selects those kernels), or, `wide`, of a
    `kernels` relation into kernel_sums' columns (by short name, category, evidence). Only mixed
    passes keep iteration and step: their token share is per pass. The caller adds GROUP BY ALL."""
    part = ", ".join(PARTITION)
    keys = ("short_name, category, evidence" if wide else
            "ctx_id, name_id, follow_category, follow_evidence" if follow else "ctx_id, name_id")
    return (f"SELECT run_id, {part}, stage, CASE WHEN stage = 'mixed' THEN iteration END AS iteration, "
            f"CASE WHEN stage = 'mixed' THEN step END AS step, {keys}, "
            f"count(*)::BIGINT AS n_kernels, sum(dur_ns)::BIGINT AS dur_ns FROM {source}")


def stage_spans_sql(source: str = "kernel_rows") -> str:
    """GPU span and busy time per run, partition, iteration and stage of kernel rows `source`: busy
    counts each instant once however many kernels of the stage overlap it."""
    part = ", ".join(PARTITION)
    return (f"SELECT run_id, {part}, iteration, stage, (max(end_ns) - min(start_ns))::BIGINT AS span_ns, "
            f"sum(greatest(0, end_ns - greatest(start_ns, coalesce(prev_end, start_ns))))::BIGINT AS busy_ns "
            f"FROM (SELECT run_id, {part}, iteration, stage, start_ns, end_ns, "
            f"      max(end_ns) OVER (PARTITION BY run_id, {part}, iteration, stage ORDER BY start_ns, end_ns "
            f"                        ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end "
            f"      FROM {source} WHERE stage IN ('summarization', 'generation')) GROUP BY ALL")


def refresh_rollups(con: duckdb.DuckDBPyConnection, run_ids: list[int] | None = None) -> None:
    """Rewrite every rollup of `run_ids` (all runs: None) from their kernel rows: after an import
    or stage attribution (the rollups are summed by stage), and for code that edits kernel_rows or
    kernel_verdicts by hand. Classification needs only refresh_follow_totals / refresh_kernel_sums."""
    where = run_filter(con, run_ids)
    for table in ("kernel_totals", "stage_spans"):
        con.execute(f"DELETE FROM {table} WHERE {where}")
    con.execute(f"INSERT INTO kernel_totals {kernel_totals_sql(f'(SELECT * FROM kernel_rows WHERE {where})')} "
                "GROUP BY ALL")
    con.execute(f"INSERT INTO stage_spans {stage_spans_sql(f'(SELECT * FROM kernel_rows WHERE {where})')}")
    _refresh_follow_and_sums(con, where)


def refresh_follow_totals(con: duckdb.DuckDBPyConnection, run_ids: list[int] | None) -> None:
    """Rewrite follow_totals and kernel_sums of `run_ids` (all runs: None): after classification
    changed their per-kernel follow_* columns. Reads only the kernels with follow_* set (a few
    per cent) and the per-context totals, never every kernel again."""
    _refresh_follow_and_sums(con, run_filter(con, run_ids))


def refresh_kernel_sums(con: duckdb.DuckDBPyConnection, changed: str) -> None:
    """Rewrite the kernel_sums rows of each (run, short name) with a context in `changed` (a
    relation of run_id, ctx_id whose verdicts changed): after a rules edit, in runs whose follow_*
    did not change. A kernel_sums row sums contexts of one short name, so the other names' rows
    stand: an edit of the busiest rule rewrote every row of 4,640 runs (0.4 s at 10M kernels) to
    change a few of each."""
    # Every name of those short names: the totals are read by name_id, before any join.
    con.execute("CREATE OR REPLACE TEMP TABLE _tk_touched AS "
                f"SELECT DISTINCT c.run_id, n.short_name, m.name_id FROM ({changed}) c "
                "JOIN kernel_contexts x ON x.ctx_id = c.ctx_id JOIN kernel_names n ON n.name_id = x.name_id "
                "JOIN kernel_names m ON m.short_name = n.short_name")
    _write_kernel_sums(con, "(run_id, name_id) IN (SELECT run_id, name_id FROM _tk_touched)",
                       "(run_id, short_name) IN (SELECT run_id, short_name FROM _tk_touched)")
    # On an error the caller's rollback drops it (dropping it here would fail in the aborted
    # transaction and hide the error).
    con.execute("DROP TABLE _tk_touched")


def _refresh_follow_and_sums(con: duckdb.DuckDBPyConnection, where: str) -> None:
    con.execute(f"DELETE FROM follow_totals WHERE {where}")
    con.execute(f"INSERT INTO follow_totals "
                f"{kernel_totals_sql(f'(SELECT * FROM kernel_rows WHERE {where} AND {_FOLLOWS})', follow=True)} "
                "GROUP BY ALL")
    _write_kernel_sums(con, where, where)


def _write_kernel_sums(con: duckdb.DuckDBPyConnection, where: str, sums: str) -> None:
    """Replace the kernel_sums rows `sums` selects by the sums of the totals rows `where` selects:
    each context's totals under its verdict, less its follow kernels (negative rows, under the
    same verdict: they cancel in the sum), plus the follow kernels under theirs."""
    part = ", ".join(PARTITION)
    cols = f"run_id, {part}, stage, iteration, step, ctx_id, name_id"
    con.execute(f"DELETE FROM kernel_sums WHERE {sums}")
    con.execute(
        f"INSERT INTO kernel_sums "
        f"SELECT b.run_id, {', '.join(f'b.{c}' for c in PARTITION)}, b.stage, b.iteration, b.step, n.short_name, "
        f"       coalesce(b.follow_category, v.category) AS category, coalesce(b.follow_evidence, v.evidence) AS evidence, "
        f"       sum(b.n_kernels)::BIGINT, sum(b.dur_ns)::BIGINT "
        f"FROM (SELECT {cols}, NULL::VARCHAR AS follow_category, NULL::VARCHAR AS follow_evidence, n_kernels, dur_ns "
        f"      FROM kernel_totals WHERE {where} "
        f"      UNION ALL SELECT {cols}, NULL, NULL, -n_kernels, -dur_ns FROM follow_totals WHERE {where} "
        f"      UNION ALL SELECT {cols}, follow_category, follow_evidence, n_kernels, dur_ns FROM follow_totals "
        f"      WHERE {where}) b "
        f"JOIN kernel_names n ON n.name_id = b.name_id "
        f"LEFT JOIN kernel_verdicts v ON v.run_id = b.run_id AND v.ctx_id = b.ctx_id "
        f"GROUP BY ALL HAVING sum(b.n_kernels) <> 0")


def _schema_sql() -> str:
    return resources.files("tracekit").joinpath("schema.sql").read_text()


def ensure_schema(con: duckdb.DuckDBPyConnection, reclassify: Reclassify | None = None) -> None:
    """tracekit's tables on a writable open: a database written before a table existed gets it;
    one written before the rollups gets them filled for every run (in one transaction)."""
    if _is_v1(con):
        if reclassify is None:
            raise TracekitError("a tracekit 0.1 database: open it with tracekit.open to upgrade it "
                                "(or read it with read_only=True)")
        _migrate_v1(con, reclassify)
        return
    fill = not has_rollups(con) and con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE database_name = current_database() AND table_name = 'kernel_rows'"
    ).fetchall()[0][0] > 0
    if not fill:
        con.execute(_schema_sql())
        return
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute(_schema_sql())
        refresh_rollups(con, None)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise


def _is_v1(con: duckdb.DuckDBPyConnection) -> bool:
    """tracekit 0.1 kept one wide `kernels` table; now `kernels` is a view over narrow tables."""
    return bool(con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'kernels' AND database_name = current_database()"
    ).fetchall()[0][0])


def _migrate_v1(con: duckdb.DuckDBPyConnection, reclassify: Reclassify) -> None:
    """Move a tracekit 0.1 database to the narrow kernel tables in one transaction, then classify
    again (`reclassify`, the caller's: the default rules; verdicts per kernel cannot be folded into
    verdicts per context losslessly: a split-K reduce's stored class is its GEMM's, not its rule's),
    and write the rollups."""
    path = con.execute(
        "SELECT coalesce(path, database_name) FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchall()[0][0]
    con.execute("BEGIN TRANSACTION")
    try:
        con.execute("ALTER TABLE kernels RENAME TO _tk_kernels_v1")
        con.execute(_schema_sql())
        run_ids = [r[0] for r in con.execute("SELECT DISTINCT run_id FROM _tk_kernels_v1 ORDER BY 1").fetchall()]
        for run_id in run_ids:
            con.execute(f"CREATE OR REPLACE TEMP VIEW _tk_v1run AS SELECT * EXCLUDE (run_id) "
                        f"FROM _tk_kernels_v1 WHERE run_id = {int(run_id)}")
            insert_kernels(con, run_id, "_tk_v1run", keep=("stage", "step", "iteration"))
        con.execute("DROP VIEW IF EXISTS _tk_v1run")
        con.execute("DROP TABLE _tk_kernels_v1")
        refresh_rollups(con, None)  # first: reclassify then rewrites what classification changes
        reclassify(con)
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    print(f"tracekit: {path}: upgraded to the narrow kernel tables (schema {SCHEMA_VERSION}); "
          f"{len(run_ids)} run(s) re-classified with the default rules", file=sys.stderr)


def table_ddl(name: str) -> str:
    """The CREATE TABLE statement of one table, as schema.sql (the one source of truth) has it."""
    m = re.search(rf"CREATE TABLE IF NOT EXISTS {re.escape(name)} \(.*?\n\);", _schema_sql(), re.S)
    if m is None:
        raise KeyError(name)
    return m.group(0)


# `passes` is written by stage attribution; the views need one even in databases written before it.
PASSES_DDL = table_ddl("passes")


def find_run(con: duckdb.DuckDBPyConnection, content_hash: str) -> int | None:
    # fetchall, not fetchone: duckdb 2 refuses the connection's next query while a result is unread.
    rows = con.execute("SELECT run_id FROM runs WHERE content_hash = ?", [content_hash]).fetchall()
    return rows[0][0] if rows else None


def delete_run(con: duckdb.DuckDBPyConnection, run_id: int) -> None:
    for t in (*RUN_TABLES, "run_meta", "runs"):
        con.execute(f"DELETE FROM {t} WHERE run_id = ?", [run_id])


def insert_run(
    con: duckdb.DuckDBPyConnection,
    data: TraceData,
    *,
    source_path: str,
    content_hash: str,
    importer_version: str,
    meta: dict[str, tuple[str, str]],
    stages: StagePlanner | None = None,
    release: bool = False,
    follows: FollowPlanner | None = None,
) -> int:
    """Insert one linked trace as a new run; the caller owns the transaction. `stages` (the
    importer gives tracekit.enrich.stages): also attribute stages, planned before the kernel rows
    are written so that each row is written once with its stage. The rollups (kernel_totals,
    stage_spans) are the caller's to write (refresh_rollups). `release`: each of data's tables is
    emptied once written (the importer's: it needs none of them afterwards), so that its memory
    is free for DuckDB's insert and stage planning instead of stacking under them (issue 15: the
    2.27 GB Kineto trace's ops and launches are ~300 MB). `follows` (with `stages`): also classify,
    the verdicts and each row's follow_* decided before the rows are written (FollowPlanner); the
    caller then writes the rollups (refresh_rollups) and needs no classify. Returns the run id."""
    run_id = con.execute("SELECT nextval('run_id_seq')").fetchall()[0][0]
    n_kernels = data.kernels.num_rows
    kernel_time = pc.sum(data.kernels.column("dur_ns")).as_py() or 0
    con.execute(
        """INSERT INTO runs (run_id, source_path, source_name, format, content_hash, importer_version,
           imported_at, gpu_name, tool_versions, trace_meta, absent, n_kernels, kernel_time_ns)
           VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)""",
        [
            run_id, source_path, Path(source_path).name, data.format, content_hash, importer_version,
            datetime.now(UTC).replace(tzinfo=None), data.gpu_name, json.dumps(data.tool_versions),
            json.dumps(data.trace_meta, default=str), data.absent, n_kernels, kernel_time,
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
        if table == "kernels":
            stages = _insert_kernels(con, run_id, arrow, stages, follows)
        else:
            # Through a relation, not con.register: a view registered and dropped inside the
            # transaction keeps its Arrow table alive until COMMIT (DuckDB keeps the dropped catalog
            # entry), so `release` would free nothing; the relation lets go of it when deleted.
            cols = ", ".join(f'"{c}"' for c in arrow.column_names)
            rel = con.from_arrow(row_groups(arrow))
            rel.query("_tk_in", f"INSERT INTO {table} (run_id, {cols}) SELECT {run_id}, {cols} FROM _tk_in")
            del rel
        if release:
            setattr(data, table, arrow.schema.empty_table())
            del arrow
            give_back_memory()
    if stages is not None:  # not planned while inserting (no kernels, or names the fast path does not take)
        stages.attribute_stages(con, run_id)
    return run_id


# DuckDB writes a big insert's rows to the file as it goes, in row groups of this many rows (its
# default row group size). Each Arrow batch of a parallel scan is written on its own, so batches
# that are not whole row groups leave one part-filled row group each, which the checkpoint on close
# then reads back and merges: 1.4 CPU-s of a 3.75M-kernel nsys import, whose kernel columns come
# in 15 chunks of 250k rows (and 3.5 s of system time; the file was 120 MB instead of 81 MB).
ROW_GROUP = 122_880


def row_groups(table: pa.Table, rows: int = ROW_GROUP) -> pa.RecordBatchReader:
    """`table` as a stream of batches of whole row groups (the last one the rest), for an INSERT
    that DuckDB then writes in full row groups whatever the chunks of the columns. A window is
    copied into one batch only as it is read (a stream is read once), so this holds a window or
    two more than the table, not a second table."""
    def windows():
        for start in range(0, table.num_rows, rows):
            yield from table.slice(start, rows).combine_chunks().to_batches()

    return pa.RecordBatchReader.from_batches(table.schema, windows())


def _insert_kernels(con: duckdb.DuckDBPyConnection, run_id: int, kernels: pa.Table,
                    stages: StagePlanner | None, follows: FollowPlanner | None = None) -> StagePlanner | None:
    """Insert a reader's kernel table (the fast path, else the SQL one); the planner back when
    stages are still to be attributed (None: planned while writing)."""
    con.register("_tk_in", kernels)
    try:
        if _insert_kernels_arrow(con, run_id, kernels, stages, follows):
            return None
        insert_kernels(con, run_id, "_tk_in")
        return stages
    finally:
        try:
            con.unregister("_tk_in")
        except duckdb.Error:
            pass  # an aborted transaction refuses this too; the error that aborted it is the one to report


def _columns(con: duckdb.DuckDBPyConnection, relation: str) -> list[str]:
    return [d[0] for d in con.execute(f"SELECT * FROM {relation} LIMIT 0").description]


def insert_kernels(con: duckdb.DuckDBPyConnection, run_id: int, source: str,
                   keep: tuple[str, ...] = ()) -> None:
    """Insert one run's kernels from relation `source` (kernels columns without run_id; the run's
    ops already stored): names and contexts not yet known get ids, rows get theirs, and the run
    gets one unclassified verdict row per context. `keep`: enrichment columns to carry over."""
    r = int(run_id)
    _add_names(con, source)
    # Kernels with the names' ids and their context's hash, once; both later steps read it.
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _tk_kx AS SELECT k.*, {_context_of('k')} FROM "
        f"(SELECT k.* EXCLUDE (name, short_name), n.name_id FROM {source} k "
        f" JOIN kernel_names n ON n.name = k.name AND n.short_name = k.short_name) k {_ops_of('k', r)}"
    )
    _add_contexts(con, "_tk_kx")
    cols = [c for c in _columns(con, "kernel_rows")
            if c not in ("run_id", "name_id", "ctx_id", "follow_category", "follow_evidence")]
    have = set(_columns(con, "_tk_kx"))
    chosen = [c for c in cols if c in have and (c not in ("stage", "step", "iteration") or c in keep)]
    listed = ", ".join(chosen)
    picked = ", ".join(f"k.{c}" for c in chosen)
    con.execute(
        f"INSERT INTO kernel_rows (run_id, name_id, ctx_id, {listed}) SELECT {r}, k.name_id, c.ctx_id, {picked} "
        f"FROM _tk_kx k JOIN kernel_contexts c ON c.ctx_hash = k._h"
    )
    con.execute(f"INSERT INTO kernel_verdicts (run_id, ctx_id) SELECT DISTINCT {r}, ctx_id "
                f"FROM kernel_rows WHERE run_id = {r}")
    con.execute("DROP TABLE _tk_kx")


def _context_of(k: str) -> str:
    """What makes the context of kernels `k` (which carry name_id and launch dims, joined to their
    op by _ops_of), and its hash. Contexts are matched by this 64-bit hash (one integer join instead
    of nine null-aware ones: 0.29 -> 0.1 s at 375k kernels); two distinct contexts of one database
    colliding is vanishingly unlikely (~n^2 / 2^65 for n contexts). Databases keep the hashes they
    were written with, so the expression must not change."""
    dims = ", ".join(f"{k}.{d}" for d in DIM_COLS)
    return f"o.name AS op_name, o.input_dims, hash({k}.name_id, o.name, o.input_dims, {dims}) AS _h"


def _ops_of(k: str, run_id: int) -> str:
    return f"LEFT JOIN (SELECT op_id, name, input_dims FROM ops WHERE run_id = {int(run_id)}) o ON o.op_id = {k}.op_id"


def _add_contexts(con: duckdb.DuckDBPyConnection, kernels: str) -> None:
    """Give the contexts of relation `kernels` (name_id, op_name, input_dims, launch dims, _h) not
    yet known their ids."""
    firsts = ", ".join(f"any_value({c}) AS {c}" for c in ("name_id", "op_name", "input_dims", *DIM_COLS))
    con.execute(
        f"INSERT INTO kernel_contexts SELECT (SELECT coalesce(max(ctx_id), 0) FROM kernel_contexts) "
        f"+ row_number() OVER (ORDER BY k._h), k.* EXCLUDE (_h), k._h "
        f"FROM (SELECT _h, {firsts} FROM {kernels} GROUP BY _h) k "
        f"ANTI JOIN kernel_contexts c ON c.ctx_hash = k._h"
    )


def _add_names(con: duckdb.DuckDBPyConnection, pairs: str) -> None:
    """Give the distinct (name, short_name) pairs of relation `pairs` not yet known their ids."""
    con.execute(
        "INSERT INTO kernel_names SELECT (SELECT coalesce(max(name_id), 0) FROM kernel_names) "
        "+ row_number() OVER (ORDER BY p.name, p.short_name), p.name, p.short_name "
        f"FROM (SELECT DISTINCT name, short_name FROM {pairs}) p "
        "ANTI JOIN kernel_names n ON n.name = p.name AND n.short_name = p.short_name"
    )


def _codes(col: pa.ChunkedArray) -> tuple[np.ndarray, pa.Array] | None:
    """A string column as (int64 codes per row, dictionary); None when it has nulls."""
    if col.null_count:
        return None
    if not pa.types.is_dictionary(col.type):
        col = pc.dictionary_encode(col)
    if col.num_chunks == 0:
        return np.zeros(0, np.int64), pa.array([], pa.string())
    col = col.unify_dictionaries()
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in col.chunks]).astype(np.int64)
    return codes, col.chunk(0).dictionary


def _name_ids(con: duckdb.DuckDBPyConnection, kernels: pa.Table) -> pa.Array | None:
    """kernel_names ids of every kernel row, new names added. The long names are looked up once per
    distinct (name, short_name) code pair of the columns' dictionaries (hundreds), not per row:
    a DISTINCT plus a join over 375k long strings cost ~0.05 s. None when a name is null (the SQL
    path reports that as the constraint error it is)."""
    name, short = _codes(kernels.column("name")), _codes(kernels.column("short_name"))
    if name is None or short is None:
        return None
    (ni, nd), (si, sd) = name, short
    width = max(len(sd), 1)
    key = ni * width + si
    if len(nd) * width <= 1 << 22:
        present = np.zeros(len(nd) * width, bool)
        present[key] = True
        pairs = np.flatnonzero(present)
        inverse = None
    else:
        pairs, inverse = np.unique(key, return_inverse=True)
    # Dictionaries may repeat a value; pairs are matched to ids by their strings, so repeats share one.
    con.register("_tk_p", pa.table({"k": pairs, "name": nd.take(pairs // width), "short_name": sd.take(pairs % width)}))
    try:
        _add_names(con, "_tk_p")
        got = con.execute(
            "SELECT p.k, n.name_id FROM _tk_p p JOIN kernel_names n ON n.name = p.name AND n.short_name = p.short_name"
        ).fetchnumpy()
    finally:
        con.unregister("_tk_p")
    if inverse is None:
        lut = np.zeros(len(nd) * width, np.int64)
        lut[got["k"]] = got["name_id"]
        return pa.array(lut[key])
    by_pair = np.zeros(len(pairs), np.int64)
    by_pair[np.searchsorted(pairs, got["k"])] = got["name_id"]
    return pa.array(by_pair[inverse])


def _insert_kernels_arrow(con: duckdb.DuckDBPyConnection, run_id: int, kernels: pa.Table,
                          plan: StagePlanner | None, follows: FollowPlanner | None = None) -> bool:
    """insert_kernels for a reader's Arrow table, every per-row id computed in NumPy so that the
    rows are written in one plain INSERT (no 375k-row temp table, no joins in it); with `plan`, with
    their stages (plan_stages). False, having written no rows, when the table is one this path does
    not take (a null name: the SQL path reports it; kernel ids not 0..n-1; ambiguous op ids)."""
    n = kernels.num_rows
    ids = np.asarray(kernels.column("kernel_id").to_numpy())
    if not np.array_equal(ids, np.arange(n)):
        return False
    name_ids = _name_ids(con, kernels)
    if name_ids is None:
        return False
    r = int(run_id)
    src = kernels.drop_columns(["name", "short_name"]).append_column("name_id", name_ids)
    if "rank" not in src.column_names:  # set by tracekit.ranks for multi-rank runs, never by a reader
        src = src.append_column("rank", pa.nulls(n, pa.int32()))
    con.register("_tk_krows", src)
    try:
        # The context hash must stay the one the SQL path (and older imports) computed, so DuckDB
        # computes it; rows are matched back by kernel_id, not by result order.
        dims = ", ".join(f"k.{d}" for d in DIM_COLS)
        con.execute(f"CREATE OR REPLACE TEMP VIEW _tk_kh AS SELECT k.kernel_id, k.name_id, {dims}, "
                    f"{_context_of('k')} FROM _tk_krows k {_ops_of('k', r)}")
        got = con.execute("SELECT kernel_id, _h FROM _tk_kh").fetchnumpy()
        if len(got["kernel_id"]) != n:
            return False  # an op_id naming several ops: the SQL path stores what it always did
        h = np.empty(n, np.uint64)
        h[got["kernel_id"]] = got["_h"]
        _add_contexts(con, "(SELECT * EXCLUDE (kernel_id) FROM _tk_kh)")
        known = con.execute("SELECT ctx_hash, ctx_id FROM kernel_contexts ORDER BY ctx_hash").fetchnumpy()
        ctx = np.asarray(known["ctx_id"])[np.searchsorted(np.asarray(known["ctx_hash"]), h)]
        src = src.append_column("ctx_id", pa.array(ctx))
        cols = [c for c in _columns(con, "kernel_rows")
                if c in src.column_names and c not in ("run_id", "stage", "step", "iteration")]
        if plan is not None:
            kp = plan.plan_kernel_stages(con, r, "_tk_krows")
            passes = con.execute(f"SELECT pass_id, stage, step, iteration FROM passes WHERE run_id = {r}").fetchall()
            for name, column in _stage_columns(n, kp["kernel_id"], kp["pass_id"], passes,
                                               (kp["stages"], np.asarray(kp["stage"]))).items():
                src = src.append_column(name, column)
                cols.append(name)
        con.execute(f"INSERT INTO kernel_verdicts (run_id, ctx_id) SELECT {r}, unnest(?::BIGINT[])",
                    [np.unique(ctx).tolist()])
        if plan is not None and follows is not None:
            con.unregister("_tk_krows")
            con.register("_tk_krows", src)
            for name, column in _follow_columns(n, follows(con, r, "_tk_krows")).items():
                src = src.append_column(name, column)
                cols.append(name)
        con.unregister("_tk_krows")
        con.register("_tk_krows", row_groups(src.select(cols)))
        listed = ", ".join(cols)
        con.execute(f"INSERT INTO kernel_rows (run_id, {listed}) SELECT {r}, {listed} FROM _tk_krows")
    finally:
        for name, drop in (("_tk_kh", "DROP VIEW IF EXISTS _tk_kh"), ("_tk_krows", None)):
            try:
                con.execute(drop) if drop else con.unregister(name)
            except duckdb.Error:
                pass  # an aborted transaction refuses this too; the error that aborted it is the one to report
    return True


def _follow_columns(n: int, planned: pa.Table) -> dict[str, pa.Array]:
    """follow_category / follow_evidence of kernels 0..n-1 from a FollowPlanner's rows (NULL for
    the kernels it does not list), dictionary-encoded: a few distinct values over every row."""
    at = np.full(n, -1, np.int64)
    at[np.asarray(planned.column("kernel_id").to_numpy())] = np.arange(planned.num_rows)
    rows = pa.array(at, mask=at < 0)
    return {c: pc.dictionary_encode(planned.column(c).combine_chunks()).take(rows)
            for c in ("follow_category", "follow_evidence")}


def _stage_columns(n: int, kernel_ids: np.ndarray, pass_ids: np.ndarray, passes: list[tuple],
                   kernel_stages: np.ndarray | tuple[list[str], np.ndarray] | None = None) -> dict[str, pa.Array]:
    """stage / step / iteration of kernels 0..n-1: their pass's (pass_ids, for kernel_ids; -1: no
    pass), else 'other' and NULL; `kernel_stages` (for kernel_ids), where given, is each listed
    kernel's own stage (a mixed pass's one-sided kernels, unattributed kernels). Per-row work stays
    in NumPy: 375k stage strings cost more than the rest."""
    size = max((p[0] for p in passes), default=-1) + 2  # slot 0: no pass
    of = np.zeros(n, np.int64)
    of[np.asarray(kernel_ids, np.int64)] = np.asarray(pass_ids, np.int64) + 1
    own, own_codes = None, None
    if isinstance(kernel_stages, tuple):  # (distinct stages, each listed kernel's code into them)
        if len(kernel_stages[1]):
            own, own_codes = np.asarray(kernel_stages[0], dtype=str), kernel_stages[1]
    elif kernel_stages is not None and len(kernel_stages):
        own, own_codes = np.unique(np.asarray(kernel_stages, dtype=object).astype(str), return_inverse=True)
    words = ["other", *sorted(({p[1] for p in passes} | set(own if own is not None else [])) - {"other"})]
    code = np.zeros(size, np.int32)
    step, iteration = np.zeros(size, np.int32), np.zeros(size, np.int32)
    step_ok, iteration_ok = np.zeros(size, bool), np.zeros(size, bool)
    for pass_id, stage, st, it in passes:
        code[pass_id + 1] = words.index(stage)
        step[pass_id + 1], step_ok[pass_id + 1] = st or 0, st is not None
        iteration[pass_id + 1], iteration_ok[pass_id + 1] = it or 0, it is not None
    codes = code[of]
    if own is not None:
        codes[np.asarray(kernel_ids, np.int64)] = np.array([words.index(w) for w in own], np.int32)[own_codes]
    return {
        "stage": pa.DictionaryArray.from_arrays(pa.array(codes), pa.array(words, pa.string())),
        "step": pa.array(step[of], mask=~step_ok[of]),
        "iteration": pa.array(iteration[of], mask=~iteration_ok[of]),
    }
