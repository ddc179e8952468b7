"""The Parquet dataset: runs parsed anywhere (one process, or a Dask cluster), each written as its
own immutable directory of Parquet files, read back through DuckDB views.

Layout (one directory per run, named by its content hash; one Parquet file per table):

    DIR/run_key=<13 hex digits of the file's sha256>/runs.parquet
                                                    /run_meta.parquet
                                                    /kernels.parquet   (one row per kernel, the `kernels` view's columns)
                                                    /passes.parquet, ops.parquet, ranges.parquet, launches.parquet, memops.parquet
                                                    /kernel_sums.parquet, stage_spans.parquet (the per-run rollups the
                                                     stage_ratio / composition views read; kernel_sums joined, as kernels)

Each file goes through the normal import (readers -> links -> an in-memory DuckDB with tracekit's
schema -> insert + stages + classification, `importer.import_paths`), then that run's tables are
copied out. The run directory is written under a temporary name inside DIR and renamed into place:
a rename of a directory onto an existing non-empty one fails, so whoever renames first owns the
run, readers never see half a run, and no lock or coordinator is needed.

run_id = the run key read as an integer (52 bits: exact in JSON and in JavaScript numbers, so
charts keep it). Two different traces whose sha256 share those 52 bits collide: the second is
refused (reported, nothing written) rather than stored under the first one's id; at 10,000 runs
the odds of any collision are ~1e-8, at a million ~1e-4.
"""

from __future__ import annotations

import errno
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import duckdb

from tracekit.errors import TracekitError

KEY_DIGITS = 13
RUN_DIR_PREFIX = "run_key="
SCHEMAS_DIR = "_schemas"
# Per-run tables copied out as they are (the run's own ids); the narrow kernel tables are not:
# their name/context ids are only unique inside one database, so `kernels` is written joined.
_INTERNAL = ("kernel_rows", "kernel_verdicts", "kernel_names", "kernel_contexts", "kernel_totals", "follow_totals")
# Tables every run has a file for (a table added to the schema later is found and written too).
BASE_TABLES = ("runs", "run_meta", "kernels", "passes", "launches", "ranges", "ops", "memops")
# The per-run rollups (store.py): read from the files only where every run has them (a dataset
# written before them, or partly, gets tracekit.views' live rollups over `kernels` instead).
ROLLUPS = ("kernel_sums", "stage_spans")


@dataclass
class DatasetResult:
    path: str
    status: str  # 'imported' | 'skipped' | 'failed'
    run_key: str | None = None
    run_id: int | None = None
    error: str | None = None
    n_kernels: int = 0
    seconds: float = 0.0


def run_key(content_hash: str) -> str:
    """The directory key of a run: the first 13 hex digits of its file's sha256."""
    return content_hash[:KEY_DIGITS]


def run_id_of(key: str) -> int:
    return int(key, 16)


def run_dir(dataset: str | Path, key: str) -> Path:
    return Path(dataset) / f"{RUN_DIR_PREFIX}{key}"


def _sql_str(s: str) -> str:
    return "'" + s.replace("'", "''") + "'"


def _run_tables(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Tables of this database that hold per-run rows, in a stable order, plus the kernels view."""
    found = [r[0] for r in con.execute(
        "SELECT DISTINCT table_name FROM duckdb_columns() WHERE column_name = 'run_id' "
        "AND database_name = current_database() AND NOT internal ORDER BY 1"
    ).fetchall()]
    extra = [t for t in found if t not in BASE_TABLES and t not in _INTERNAL and t not in ROLLUPS]
    return [*BASE_TABLES, *extra, *ROLLUPS]


def _stored_hash(run: Path) -> str | None:
    import pyarrow.parquet as pq

    try:
        col = pq.read_table(run / "runs.parquet", columns=["content_hash"]).column("content_hash")
    except (OSError, KeyError, ValueError):
        return None
    return col[0].as_py() if len(col) == 1 else None


def _already(run: Path, content_hash: str, given: str, key: str, t0: float) -> DatasetResult:
    """What to report for a file whose run directory exists (written earlier, or just now by another
    worker): the same content is one run; other content under the same key is a collision."""
    stored = _stored_hash(run)
    if stored == content_hash:
        return DatasetResult(given, "skipped", key, run_id_of(key), seconds=time.perf_counter() - t0)
    if stored is None:
        return DatasetResult(given, "failed", key, error=f"{given}: {run} exists but holds no complete run "
                                                        "(not written by tracekit?); remove it and retry")
    return DatasetResult(given, "failed", key, error=(
        f"{given}: run key {key} is taken by another trace (sha256 {stored[:16]}…, this file {content_hash[:16]}…); "
        "nothing stored: import this file into a DuckDB store or another dataset"))


def _schema_fingerprint(con: duckdb.DuckDBPyConnection, tables: list[str]) -> str:
    import hashlib

    cols = con.execute(
        "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE database_name = current_database() "
        "AND list_contains(?, table_name) ORDER BY table_name, column_index", [tables]).fetchall()
    return hashlib.sha256(repr(cols).encode()).hexdigest()[:16]


def _register_schema(dataset: Path, fingerprint: str) -> None:
    """Record that runs of this table layout exist (an empty file named by its fingerprint;
    creating it twice is harmless, so no lock). One layout: the views read each table's files
    with the first file's columns (fast); several: by column name (every file's footer at bind)."""
    d = dataset / SCHEMAS_DIR
    d.mkdir(exist_ok=True)
    (d / fingerprint).touch()


def _export(con: duckdb.DuckDBPyConnection, local_id: int, run_id: int, given: str, out: Path) -> None:
    tables = _run_tables(con)
    _register_schema(out.parent, _schema_fingerprint(con, tables))
    for table in tables:
        cols = "CAST(? AS BIGINT) AS run_id"
        if table == "runs":
            # as given on the command line (the worker read it by its absolute path)
            cols += ", ? AS source_path"
            params: list = [run_id, given, local_id]
        else:
            params = [run_id, local_id]
        target = _sql_str(str(out / f"{table}.parquet"))
        con.execute(f"COPY (SELECT * REPLACE ({cols}) FROM {table} WHERE run_id = ?) TO {target} "
                    "(FORMAT parquet, COMPRESSION zstd)", params)


def import_file(
    path: str, dataset: str, *, given: str | None = None, meta: dict[str, str] | None = None,
    rules_dirs: list[str] | None = None, nsys: str | None = None,
) -> DatasetResult:
    """Import one trace into the dataset (runs wherever the file and the dataset are reachable: a
    Dask worker, or this process). Failures come back as values, naming the file as `given`."""
    from tracekit.errors import TraceError
    from tracekit.importer import file_hash, import_paths
    from tracekit.store import connect

    t0 = time.perf_counter()
    given = given or path
    f = Path(path)
    try:
        h = file_hash(f)
    except TraceError as exc:
        return DatasetResult(given, "failed", error=str(exc).replace(path, given, 1))
    key = run_key(h)
    final = run_dir(dataset, key)
    if final.exists():
        return _already(final, h, given, key, t0)
    con = connect(":memory:")
    try:
        con.execute("SET threads TO 1")  # one file per worker process: parallelism comes from the workers
        r = import_paths(con, [f], meta=meta, rules_dirs=[Path(d) for d in rules_dirs or []], nsys=nsys)[0]
        if r.status != "imported":
            err = (r.error or r.status).replace(path, given, 1)
            return DatasetResult(given, "failed", key, error=err)
        stored = con.execute("SELECT content_hash FROM runs WHERE run_id = ?", [r.run_id]).fetchall()[0][0]
        if stored != h:
            return DatasetResult(given, "failed", key, error=f"{given}: changed while it was being imported; nothing stored")
        tmp = Path(dataset) / f".tmp-{key}-{uuid.uuid4().hex}"
        tmp.mkdir(parents=True)
        try:
            _export(con, r.run_id, run_id_of(key), given, tmp)
            os.rename(tmp, final)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if exc.errno in (errno.EEXIST, errno.ENOTEMPTY) and final.exists():
                return _already(final, h, given, key, t0)  # another worker wrote it first
            return DatasetResult(given, "failed", key, error=f"{given}: cannot write {final} ({exc.strerror or exc})")
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return DatasetResult(given, "imported", key, run_id_of(key), n_kernels=r.n_kernels,
                             seconds=time.perf_counter() - t0)
    finally:
        con.close()


def _import_job(item: tuple[str, str], **kw) -> DatasetResult:
    # Runs on a worker: errors travel back as values naming the file, never as a worker traceback.
    path, given = item
    try:
        return import_file(path, given=given, **kw)
    except Exception as exc:
        return DatasetResult(given, "failed", error=f"{given}: could not be imported ({type(exc).__name__}: {exc})")


def import_to_dataset(
    paths: Iterable[str | Path],
    dataset: str | Path,
    *,
    scheduler: str | None = None,
    workers: int = 1,
    meta: dict[str, str] | None = None,
    rules_dirs: list[Path] | None = None,
    nsys: str | None = None,
    on_result: Callable[[DatasetResult], None] | None = None,
) -> list[DatasetResult]:
    """Import trace files (or directories of them) into the Parquet dataset at `dataset`.

    scheduler: address of a running Dask scheduler (tcp://host:8786); its workers must see the
    traces and the dataset at the same absolute paths as this machine. Else `workers` > 1 starts a
    local Dask cluster of that many worker processes; `workers` == 1 imports in this process
    (Dask not needed). Runs already in the dataset are skipped.
    """
    from tracekit.enrich.rules import RuleSet
    from tracekit.importer import expand

    RuleSet.load(rules_dirs or [])  # broken rule files fail the whole call up front, once
    root = Path(dataset).resolve()
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise TracekitError(f"{dataset}: cannot make the dataset directory ({exc.strerror or exc})") from None
    files = expand(paths)
    items = [(str(f.resolve()), str(f)) for f in files]
    kw = {"dataset": str(root), "meta": dict(meta or {}), "nsys": nsys,
          "rules_dirs": [str(Path(d).resolve()) for d in rules_dirs or []]}
    results: list[DatasetResult] = []

    def report(r: DatasetResult) -> None:
        if r.error and "\n" in r.error:
            r.error = r.error.splitlines()[0] + " …"
        results.append(r)
        if on_result is not None:
            on_result(r)

    if scheduler is None and workers <= 1:
        for item in items:
            report(_import_job(item, **kw))
        return results
    try:
        from dask.distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise TracekitError("the Dask engine is not installed: pip install 'tracekit[dist]' "
                            "(or import with --workers 1)") from None
    import logging

    cluster = None
    try:
        if scheduler is not None:
            client = Client(scheduler, timeout="30s")
        else:
            import dask

            # No dashboard, so no use for the workers' stack sampling (every 10 ms: ~0.5 CPU-s a
            # worker over 8 files of 5 MB); the nannies hand this config to their workers.
            with dask.config.set({"distributed.worker.profile.enabled": False}):
                cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                       dashboard_address=None, silence_logs=logging.ERROR)
            client = Client(cluster)
    except OSError as exc:
        raise TracekitError(f"{scheduler or 'local cluster'}: cannot reach the Dask scheduler ({exc})") from None
    try:
        futures = client.map(_import_job, items, pure=False, **kw)
        given = {fut.key: item[1] for fut, item in zip(futures, items, strict=True)}
        for fut in as_completed(futures):
            try:
                report(fut.result())
            except Exception as exc:  # the worker died (out of memory?) or was lost
                g = given[fut.key]
                report(DatasetResult(g, "failed", error=f"{g}: its Dask worker failed ({type(exc).__name__}: {exc}); "
                                                        "nothing of this file was stored"))
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
    return results


# --- reading the dataset -------------------------------------------------------------------------

def _schema_columns(table: str) -> list[tuple[str, str]]:
    """(column, type) of a per-run table as tracekit's schema defines it (for tables no run has)."""
    from tracekit.store import connect

    con = connect(":memory:")
    try:
        return [(r[0], r[1]) for r in con.execute(f"DESCRIBE {table}").fetchall()]
    finally:
        con.close()


def tables_in(dataset: str | Path) -> list[str]:
    """Per-run tables present in the dataset: the base ones, plus any other a run has a file for."""
    root = Path(dataset)
    first = next(root.glob(f"{RUN_DIR_PREFIX}*"), None)
    extra = sorted(p.stem for p in first.glob("*.parquet")) if first is not None else []
    runs = [d for d in root.glob(f"{RUN_DIR_PREFIX}*") if d.is_dir()] if set(ROLLUPS) & set(extra) else []
    return [*BASE_TABLES, *(t for t in extra if t not in BASE_TABLES
                            and (t not in ROLLUPS or all((d / f"{t}.parquet").exists() for d in runs)))]


def create_dataset_views(con: duckdb.DuckDBPyConnection, dataset: str | Path) -> list[str]:
    """Create one view per table over the dataset's Parquet files (read when queried, so runs
    added later are seen), in the caller's in-memory database. Raises TracekitError when DIR holds
    no runs."""
    root = Path(dataset).resolve()
    if not root.is_dir() or next(root.glob(f"{RUN_DIR_PREFIX}*"), None) is None:
        raise TracekitError(f"{dataset}: no tracekit runs here (import some with `tracekit dataset import`)")
    opts = _read_options(root)
    made = []
    for table in tables_in(root):
        glob = _sql_str(str(root / f"{RUN_DIR_PREFIX}*" / f"{table}.parquet"))
        if next(root.glob(f"{RUN_DIR_PREFIX}*/{table}.parquet"), None) is not None:
            body = f"SELECT * FROM read_parquet({glob}, {opts})"
        else:  # no run has this table (a dataset written before the table existed)
            body = _empty_select(table)
        con.execute(f"CREATE OR REPLACE VIEW {table} AS {body}")
        made.append(table)
    return made


# A table in a database `attach` wrote: which dataset it copies.
MARKER = "_tracekit_dataset"


def _read_options(root: Path) -> str:
    layouts = len(list((root / SCHEMAS_DIR).glob("*")))
    # run_key is the directory name: a string, never guessed as a number.
    return (f"hive_partitioning = true, hive_types = {{'run_key': VARCHAR}}, "
            f"union_by_name = {'false' if layouts == 1 else 'true'}")


def _copy_runs(con: duckdb.DuckDBPyConnection, root: Path) -> int:
    """Copy the runs of the dataset not yet in this database's tables into them (all, the first
    time); returns how many. Reads only the new runs' files."""
    have_runs = bool(con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'runs' AND NOT temporary").fetchall()[0][0])
    have = {r[0] for r in con.execute("SELECT run_key FROM runs").fetchall()} if have_runs else set()
    new = sorted(p.name[len(RUN_DIR_PREFIX):] for p in root.glob(f"{RUN_DIR_PREFIX}*") if p.is_dir())
    new = [k for k in new if k not in have]
    opts = _read_options(root)
    con.execute("BEGIN TRANSACTION")
    try:
        for table in tables_in(root):
            files = [str(f) for k in new if (f := run_dir(root, k) / f"{table}.parquet").exists()]
            exists = bool(con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = ? AND NOT temporary",
                                      [table]).fetchall()[0][0])
            if table in ROLLUPS and not exists and have:
                continue  # copied before the rollups existed: partial rollups would be wrong; views roll up live
            if files:
                verb = f"INSERT INTO {table} BY NAME" if exists else f"CREATE TABLE {table} AS"
                con.execute(f"{verb} SELECT * FROM read_parquet(?, {opts})", [files])
            elif not exists:
                con.execute(f"CREATE TABLE {table} AS {_empty_select(table)}")
        con.execute("COMMIT")
    except BaseException:
        con.execute("ROLLBACK")
        raise
    return len(new)


def _empty_select(table: str) -> str:
    cols = ", ".join(f"CAST(NULL AS {t}) AS \"{c}\"" for c, t in _schema_columns(table))
    return f"SELECT {cols}, CAST(NULL AS VARCHAR) AS run_key WHERE false"


def attach(dataset: str | Path, db_path: str | Path) -> tuple[list[str], int]:
    """Copy the dataset's runs into a DuckDB file (a store of real tables: every command reads it
    with --db, as fast as an imported store); attaching again copies only the runs added since.
    Returns (tables, runs copied). To read the Parquet files in place instead, give the dataset
    directory itself as --db (`open_dataset`): a file of views over Parquet would have to be
    trusted to read files, which no database tracekit opens may do."""
    root = Path(dataset).resolve()
    if not is_dataset(root):
        raise TracekitError(f"{dataset}: no tracekit runs here (import some with `tracekit dataset import`)")
    try:
        con = duckdb.connect(str(db_path))
    except duckdb.Error as exc:
        raise TracekitError(f"{db_path}: cannot open ({str(exc).splitlines()[0]})") from None
    try:
        tables = {r[0] for r in con.execute("SELECT table_name FROM duckdb_tables() WHERE NOT temporary").fetchall()}
        if tables:
            marked = con.execute(f"SELECT path FROM {MARKER}").fetchall() if MARKER in tables else []
            if not marked:
                raise TracekitError(f"{db_path}: holds tables not written by `tracekit dataset attach` (a tracekit "
                                    "store?); attach to a new file")
            if marked[0][0] != str(root):
                raise TracekitError(f"{db_path}: was attached to {marked[0][0]}; attach to a new file")
        else:
            con.execute(f"CREATE TABLE {MARKER} (path VARCHAR, mode VARCHAR)")
            con.execute(f"INSERT INTO {MARKER} VALUES (?, 'copy')", [str(root)])
        return tables_in(root), _copy_runs(con, root)
    except duckdb.Error as exc:
        raise TracekitError(f"{db_path}: {str(exc).splitlines()[0]}") from None
    finally:
        con.close()


def is_dataset(path: str | Path) -> bool:
    """A directory holding runs written by `tracekit dataset import`."""
    root = Path(path)
    return root.is_dir() and next(root.glob(f"{RUN_DIR_PREFIX}*"), None) is not None


def open_dataset(dataset: str | Path) -> duckdb.DuckDBPyConnection:
    """An in-memory DuckDB connection with one view per table over the dataset's Parquet files
    (read at each query: runs imported later are seen at once; each query opens every run's files,
    ~1 ms a file). It may read files under the dataset directory the user named and nothing else:
    external access off but for that directory, no extension loading, configuration locked."""
    root = Path(dataset).resolve()
    con = duckdb.connect(":memory:", config={"autoinstall_known_extensions": False,
                                             "autoload_known_extensions": False})
    try:
        con.execute("SET allowed_directories = ?", [[str(root) + "/"]])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        create_dataset_views(con, root)
    except BaseException:
        con.close()
        raise
    return con


def connect_dataset(dataset: str | Path) -> duckdb.DuckDBPyConnection:
    """`open_dataset` plus tracekit's analysis views (stage_ratio, composition, top_kernels, ...),
    as a DuckDB store has them."""
    from tracekit.views import create_views

    con = open_dataset(dataset)
    try:
        create_views(con)
    except BaseException:
        con.close()
        raise
    return con
