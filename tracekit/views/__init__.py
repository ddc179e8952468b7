"""The analysis views: one SQL file per topic, each documenting its columns in a header comment.

Views are created as TEMP views on every connection, so they work on read-only databases and
always match the installed code (an old database never carries stale view definitions).
Files run in name order; a view may read only views of files before it (work_roofline.sql, last,
reads step_totals). The roofline views also read the GPU peak tables, which are installed on the
connection with them (tracekit.peaks).

The ON_DEMAND files may be left for later (`create_views(con, on_demand=False)`, then
`create_on_demand_views(con)` when a query names one of `on_demand_names()`): binding the
roofline's nested views costs more than all the others together, on every open of every command.
"""

from __future__ import annotations

import re
from importlib import resources

import duckdb

from tracekit.errors import TracekitError
from tracekit.store import PARTITION, PASSES_DDL, main_columns

# Tables the views read (besides `passes`, which create_views supplies when missing).
_NEEDED = ("runs", "run_meta", "kernels")
# View files made only when a query needs them (tracekit.api.Database): work_roofline.sql binds
# op_work's 300-line definition once per view that nests it, 55-60 ms of a ~110 ms open. They sort
# after every other file, so nothing made on every open reads them.
ON_DEMAND = ("work_roofline.sql",)
# The TEMP tables the on-demand views read, made with them (tracekit.peaks).
_ON_DEMAND_TABLES = ("gpu_peaks", "peak_override")


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


_ADDED = re.compile(r"^-- @added (\w+) (\w+) (\w+)$", re.M)


def _added_columns(con: duckdb.DuckDBPyConnection, main: dict[str, dict[str, str]]) -> None:
    """Columns schema.sql lists as added later (`-- @added TABLE COLUMN TYPE`): added to a
    database written before them on a writable open; on a read-only one each such table gets a
    temporary view with the missing columns as NULL, so that the views bind. Only in a tracekit
    database (its `runs` has content_hash): a foreign file is left exactly as it was. `main`:
    store.main_columns before any was added."""
    from tracekit.store import _schema_sql

    if "content_hash" not in main.get("runs", ()):
        return
    missing: dict[str, list[tuple[str, str]]] = {}
    for table, col, typ in _ADDED.findall(_schema_sql()):
        have = main.get(table)
        if have and col not in have:
            missing.setdefault(table, []).append((col, typ))
    db = con.execute("SELECT current_database()").fetchall()[0][0]
    for table, cols in missing.items():
        try:
            for col, typ in cols:
                con.execute(f"ALTER TABLE main.{table} ADD COLUMN IF NOT EXISTS {col} {typ}")
        except (duckdb.InvalidInputException, duckdb.PermissionException, duckdb.CatalogException):
            extra = ", ".join(f"NULL::{typ} AS {col}" for col, typ in cols)
            con.execute(f'CREATE OR REPLACE TEMP VIEW {table} AS SELECT *, {extra} FROM "{db}".main.{table}')


def _ensure_rank_columns(con: duckdb.DuckDBPyConnection, main: dict[str, dict[str, str]]) -> None:
    # A database written before multi-rank runs, opened read-only: _added_columns stood a NULL
    # kernel_rows.rank in; `kernels` is made again from this code's definition over it (never from
    # the view the file stores), and the missing run_ranks gets a temporary stand-in.
    from tracekit.store import create_kernels_view

    if "content_hash" in main.get("runs", ()):
        create_kernels_view(con)
    if not _has_table(con, "run_ranks"):
        from tracekit.store import table_ddl

        ddl = table_ddl("run_ranks")
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


def _rollups(con: duckdb.DuckDBPyConnection) -> None:
    """`kernel_sums` and `stage_spans`, which stage_ratio and composition read, are the stored
    per-run rollups where there are some: a store's tables, a Parquet dataset's views, or the
    tables `dataset attach` copied. Where none are stored (a database written before them opened read-only, an older
    dataset), they are live views over `kernels` with the same columns: the one fallback."""
    from tracekit.store import kernel_totals_sql, stage_spans_sql

    objs = {r[0]: r[1] for r in con.execute(
        "SELECT table_name, table_type FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND table_schema = 'main'").fetchall()}
    temp = {r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE temporary AND view_name IN ('kernel_sums', 'stage_spans')"
    ).fetchall()}
    # A dataset's connection is in memory, its tables views over Parquet (`runs` is one); a file's
    # stored views are never read.
    dataset = objs.get("runs") == "VIEW"

    def stored(name: str) -> bool:
        return name in temp or objs.get(name) == "BASE TABLE" or (dataset and objs.get(name) == "VIEW")

    if not stored("kernel_sums"):
        con.execute(f"CREATE OR REPLACE TEMP VIEW kernel_sums AS {kernel_totals_sql('kernels', wide=True)} GROUP BY ALL")
    if not stored("stage_spans"):
        con.execute(f"CREATE OR REPLACE TEMP VIEW stage_spans AS {stage_spans_sql('kernels')}")


def _roofline_inputs(con: duckdb.DuckDBPyConnection) -> None:
    from tracekit import peaks

    peaks.install(con)


def _with_partition(sql: str) -> str:
    """The view text with stages.PARTITION (the columns that separate processes and GPUs) written
    in: `{{partition}}` -> `pid, device`, `{{partition:k}}` -> `k.pid, k.device`,
    `{{partition_eq:a:b}}` -> `a.pid IS NOT DISTINCT FROM b.pid AND ...` (NULL equals NULL)."""
    sql = re.sub(r"\{\{partition_eq:(\w+):(\w+)\}\}", lambda m: " AND ".join(
        f"{m[1]}.{c} IS NOT DISTINCT FROM {m[2]}.{c}" for c in PARTITION), sql)
    sql = re.sub(r"\{\{partition:(\w+)\}\}", lambda m: ", ".join(f"{m[1]}.{c}" for c in PARTITION), sql)
    return sql.replace("{{partition}}", ", ".join(PARTITION))


def _run_files(con: duckdb.DuckDBPyConnection, names: list[str]) -> None:
    root = resources.files(__package__)
    for name in names:
        con.execute(_with_partition(root.joinpath(name).read_text()))


def create_views(con: duckdb.DuckDBPyConnection, on_demand: bool = True) -> None:
    """Create (or replace) every analysis view on this connection; `on_demand=False` leaves the
    ON_DEMAND files' views to create_on_demand_views.

    Raises TracekitError when the database lacks tracekit's tables."""
    _check_tables(con)
    _ensure_passes(con)
    # One catalog read for both: adding columns changes no `runs.content_hash`, all the second reads.
    main = main_columns(con)
    _added_columns(con, main)
    _ensure_rank_columns(con, main)
    _rollups(con)
    _run_files(con, [n for n in sql_files() if n not in ON_DEMAND])
    if on_demand:
        create_on_demand_views(con)


def create_on_demand_views(con: duckdb.DuckDBPyConnection) -> None:
    """The ON_DEMAND files' views and the GPU peak tables they read, on a connection that has the
    others (create_views)."""
    _roofline_inputs(con)
    _run_files(con, [n for n in sql_files() if n in ON_DEMAND])


def _views_of(names: list[str]) -> list[str]:
    found = []
    root = resources.files(__package__)
    for name in names:
        for line in root.joinpath(name).read_text().splitlines():
            if line.startswith("-- @view "):
                found.append(line.split()[2])
    return found


def view_names() -> list[str]:
    """The views the SQL files define, for listings and tests."""
    return _views_of(sql_files())


def on_demand_names() -> list[str]:
    """What create_on_demand_views makes: the ON_DEMAND files' views and the tables they read."""
    return [*_views_of([n for n in sql_files() if n in ON_DEMAND]), *_ON_DEMAND_TABLES]
