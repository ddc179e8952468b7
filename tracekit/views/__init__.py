"""The analysis views: one SQL file per topic, each documenting its columns in a header comment.

Views are created as TEMP views on every connection, so they work on read-only databases and
always match the installed code (an old database never carries stale view definitions).
"""

from __future__ import annotations

from importlib import resources

import duckdb

from tracekit.enrich.stages import PASSES_DDL
from tracekit.errors import TracekitError

# Tables the views read (besides `passes`, which create_views supplies when missing).
_NEEDED = ("runs", "run_meta", "kernels")


def sql_files() -> list[str]:
    """Names of the view files, in the order they are created: a view may read views of files that
    sort before its own (comm_ops.sql before composition.sql and ranks.sql)."""
    return sorted(f.name for f in resources.files(__package__).iterdir() if f.name.endswith(".sql"))


def _has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    # `kernels` is a view over the narrow kernel tables (a table in databases of tracekit 0.1).
    return bool(con.execute(
        "SELECT (SELECT count(*) FROM duckdb_tables() WHERE table_name = $n) "
        "+ (SELECT count(*) FROM duckdb_views() WHERE view_name = $n AND NOT temporary)", {"n": name}
    ).fetchall()[0][0])


def _ensure_passes(con: duckdb.DuckDBPyConnection) -> None:
    # A database written before stage attribution kept its passes has no `passes` table; the
    # views still need one. A read-only connection gets an empty temporary stand-in.
    if _has_table(con, "passes"):
        return
    try:
        con.execute(PASSES_DDL)
    except (duckdb.InvalidInputException, duckdb.PermissionException, duckdb.CatalogException):
        con.execute(PASSES_DDL.replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE IF NOT EXISTS"))


def _ensure_rank_columns(con: duckdb.DuckDBPyConnection) -> None:
    # A database written before multi-rank runs, opened read-only (a writer adds the columns and
    # tables first: store.ensure_schema): temporary stand-ins with the missing columns NULL and
    # the missing tables empty, so the views still read it (every run in it has one rank).
    cols = {(t, c) for t, c in con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE database_name = current_database()").fetchall()}
    db = '"' + con.execute("SELECT current_database()").fetchall()[0][0].replace('"', '""') + '".main'
    if ("kernels", "rank") not in cols:
        con.execute(f"CREATE OR REPLACE TEMP VIEW kernels AS SELECT *, NULL::INTEGER AS rank FROM {db}.kernels")
    if ("runs", "world_size") not in cols:
        con.execute("CREATE OR REPLACE TEMP VIEW runs AS "
                    f"SELECT *, NULL::INTEGER AS world_size, NULL::VARCHAR AS ranks FROM {db}.runs")
    from tracekit.store import table_ddl

    for table in ("run_ranks", "pass_ranks"):
        if not _has_table(con, table):
            ddl = table_ddl(table)
            try:
                con.execute(ddl)
            except (duckdb.InvalidInputException, duckdb.PermissionException, duckdb.CatalogException):
                con.execute(ddl.replace("CREATE TABLE IF NOT EXISTS", "CREATE TEMP TABLE IF NOT EXISTS"))


def _check_tables(con: duckdb.DuckDBPyConnection) -> None:
    missing = [t for t in _NEEDED if not _has_table(con, t)]
    if missing:
        path = con.execute(
            "SELECT coalesce(path, database_name) FROM duckdb_databases() WHERE database_name = current_database()"
        ).fetchall()[0][0]
        raise TracekitError(f"{path}: not a tracekit database (missing tables: {', '.join(missing)})")


def create_views(con: duckdb.DuckDBPyConnection) -> None:
    """Create (or replace) every analysis view on this connection.

    Raises TracekitError when the database lacks tracekit's tables."""
    _check_tables(con)
    _ensure_passes(con)
    _ensure_rank_columns(con)
    root = resources.files(__package__)
    for name in sql_files():
        con.execute(root.joinpath(name).read_text())


def view_names() -> list[str]:
    """The views the SQL files define, for listings and tests."""
    names = []
    root = resources.files(__package__)
    for name in sql_files():
        for line in root.joinpath(name).read_text().splitlines():
            if line.startswith("-- @view "):
                names.append(line.split()[2])
    return names
