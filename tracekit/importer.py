"""Importing trace files: one atomic, idempotent transaction per file."""

from __future__ import annotations

import hashlib
import os
import stat
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import duckdb

from tracekit import __version__, ranks
from tracekit.enrich import stages
from tracekit.enrich.classify import classify, plan_kernel_follows
from tracekit.enrich.links import link
from tracekit.enrich.rules import RuleSet
from tracekit.errors import TraceError, TracekitError
from tracekit.manifest import read_manifest
from tracekit.readers import is_trace_name, read
from tracekit.readers.common import TraceData
from tracekit.store import delete_run, find_run, refresh_rollups


@dataclass
class ImportResult:
    path: str
    status: str  # 'imported' | 'replaced' | 'skipped' | 'failed'
    run_id: int | None = None
    error: str | None = None
    n_kernels: int = 0
    seconds: float = 0.0  # the whole file: hashing, parsing and storing
    duplicate_of: str | None = None  # skipped: the same content came earlier in this call, from this file


class DatabaseUnusable(TracekitError):
    """The database cannot take any more writes (its connection failed): the batch stops here."""


def expand(paths: Iterable[str | Path]) -> list[Path]:
    """Files named, plus every trace file under directories named (sorted, each once).

    In a directory, an `X.nsys-rep` next to its own export `X.sqlite` is the same capture twice:
    only the export is taken.
    """
    out: list[Path] = []
    seen: set[Path] = set()
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and is_trace_name(f))
            names = {f.with_suffix("") for f in found if f.suffix == ".sqlite"}
            found = [f for f in found if not (f.suffix == ".nsys-rep" and f.with_suffix("") in names)]
        else:
            found = [p]
        for f in found:
            key = f.resolve() if f.exists() else f
            if key not in seen:
                seen.add(key)
                out.append(f)
    return out


def file_hash(path: Path) -> str:
    h = hashlib.sha256()
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            # A FIFO or a device (/dev/zero, /dev/urandom) would block or never end.
            raise TraceError(path, "not a regular file (a trace is a file: give its path)")
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    except OSError as exc:
        raise TraceError(path, f"cannot read ({exc.strerror or exc})") from None
    return h.hexdigest()


def _parse(path: Path, nsys: str | None) -> TraceData:
    return link(read(path, nsys=nsys))


def _parse_job(args: tuple[Path, str | None]) -> tuple[TraceData | None, str | None, float]:
    """(data, None, seconds) or (None, one-line error, seconds). Runs in a worker process with
    -j: what it returns is plain values, so that nothing of it can fail to cross back."""
    t0 = time.perf_counter()
    try:
        return _parse(*args), None, time.perf_counter() - t0
    except TraceError as exc:
        return None, str(exc), time.perf_counter() - t0
    except (Exception, RecursionError) as exc:  # a reader bug must still name the file
        return None, f"{args[0]}: could not be read ({type(exc).__name__}: {exc})", time.perf_counter() - t0


def _parse_or_error(f: Path, nsys: str | None) -> TraceData | TraceError:
    """_parse_job's result as a rank group's import takes it: the data, or the file's TraceError."""
    data, error, _ = _parse_job((f, nsys))
    return data if data is not None else TraceError(f, (error or "").removeprefix(f"{f}: "))


Phase = Callable[[str, str], None]


def _no_phase(path: str, phase: str) -> None:
    return None


def _enrich(con: duckdb.DuckDBPyConnection, run_id: int, rules: RuleSet, on_phase: Phase, path: str,
            classified: bool) -> None:
    # Stages were attributed by insert_run, as the kernel rows were written (one write per row):
    # the importer handed it enrich.stages as its planner; and, `classified`, the verdicts too.
    on_phase(path, "stages")
    on_phase(path, "classifying")
    # The run's rollups (store.py): summed by stage and verdict, so written once both are; when
    # insert_run could not classify (rows its fast path does not take), classification rewrites
    # the part that depends on verdicts.
    refresh_rollups(con, [run_id])
    if not classified:
        classify(con, [run_id], rules)


def _parse_in_order(todo: list[tuple[Path, str, float]], nsys: str | None, on_phase: Phase):
    for f, _, _ in todo:
        on_phase(str(f), "reading")
        yield _parse_job((f, nsys))


def import_paths(
    con: duckdb.DuckDBPyConnection,
    paths: Iterable[str | Path],
    *,
    meta: dict[str, str] | None = None,
    replace: bool = False,
    rules_dirs: list[Path] | None = None,
    nsys: str | None = None,
    jobs: int = 1,
    on_result: Callable[[ImportResult], None] | None = None,
    on_phase: Phase | None = None,
    group: str | None = None,
) -> list[ImportResult]:
    """Import each trace in its own transaction; a failure leaves nothing of that file.

    Broken rule files fail the whole call up front (RuleError) rather than every file in turn.
    `on_phase(path, phase)` hears each file's progress: reading, storing, stages, classifying.
    The rank traces of one job (tracekit.ranks: names with a rank token, or all files with `group`)
    import as ONE run, in one transaction.
    """
    on_phase = on_phase or _no_phase
    rules = RuleSet.load(rules_dirs or [])
    files, groups = ranks.group_files(expand(paths), group)
    cli_meta = dict(meta or {})
    results: list[ImportResult] = []
    for g in groups:
        results.append(_report(on_result, ranks.import_group(
            con, g, parse=lambda f: _parse_or_error(f, nsys), file_hash=file_hash, find_run=find_run, replace=replace,
            store=lambda f, h, d, t0: _store(con, f, h, d, cli_meta, replace, rules, t0, on_phase))))
    todo: list[tuple[Path, str, float]] = []  # file, content hash, seconds spent hashing it
    first_of: dict[str, Path] = {}  # content hash -> the first file of this call with it
    for f in files:
        t0 = time.perf_counter()
        try:
            h = file_hash(f)
        except TraceError as exc:
            results.append(_report(on_result, ImportResult(str(f), "failed", error=str(exc))))
            continue
        if h in first_of:
            # Identical content is one run within a call as across calls, --replace or not: the
            # first file's run (its id, its metadata) is the one kept.
            results.append(_report(on_result, ImportResult(str(f), "skipped", duplicate_of=str(first_of[h]),
                                                          seconds=time.perf_counter() - t0)))
            continue
        first_of[h] = f
        try:
            existing = find_run(con, h)
        except duckdb.Error as exc:  # a damaged database fails at its first read, not at open
            raise DatabaseUnusable(_one_line(exc)) from None
        if existing is not None and not replace:
            results.append(_report(on_result, ImportResult(str(f), "skipped", run_id=existing,
                                                          seconds=time.perf_counter() - t0)))
            continue
        todo.append((f, h, time.perf_counter() - t0))

    parsed: Iterable[tuple[TraceData | None, str | None, float]]
    if jobs > 1 and len(todo) > 1:
        pool = ProcessPoolExecutor(max_workers=min(jobs, len(todo), os.cpu_count() or 1))
        parsed = pool.map(_parse_job, [(f, nsys) for f, _, _ in todo])
    else:
        pool = None
        parsed = _parse_in_order(todo, nsys, on_phase)
    done = 0
    try:
        for (f, h, hash_s), (data, error, parse_s) in zip(todo, parsed, strict=False):
            done += 1
            if data is None:
                results.append(_report(on_result, ImportResult(str(f), "failed", error=error,
                                                              seconds=hash_s + parse_s)))
                continue
            r = _store(con, f, h, data, cli_meta, replace, rules, time.perf_counter(), on_phase)
            r.seconds += hash_s + parse_s  # the file's whole time, not only its storing
            results.append(_report(on_result, r))
    except DatabaseUnusable as exc:
        # Nothing more can be stored: the file that found it out and every file after it get their
        # line, then the caller stops.
        for f, _, _ in todo[done - 1:]:
            results.append(_report(on_result, ImportResult(
                str(f), "failed", error=f"{f}: not imported: the database cannot be written ({exc})")))
        raise
    except BrokenProcessPool:
        # A parser process was killed (typically by the OOM killer on a huge trace); the pool
        # cannot say which file did it, so every file not yet stored is reported, none is lost.
        for f, _, _ in todo[done:]:
            results.append(_report(on_result, ImportResult(
                str(f), "failed", error=f"{f}: a parser process died (out of memory?); nothing of this file "
                                        "was stored; retry with -j 1")))
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    return results


def is_interrupt(exc: BaseException) -> bool:
    """Whether `exc` is Ctrl-C arriving while DuckDB ran a query: duckdb 1.x raises
    InterruptException, duckdb 2 a RuntimeError "Query interrupted"."""
    return isinstance(exc, duckdb.InterruptException) or (
        type(exc) is RuntimeError and "interrupted" in str(exc).lower())


def _one_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _report(cb: Callable[[ImportResult], None] | None, r: ImportResult) -> ImportResult:
    if r.error and "\n" in r.error:
        # DuckDB and some parsers explain over several lines; the user gets one line per file.
        r.error = r.error.splitlines()[0] + " …"
    if cb is not None:
        cb(r)
    return r


def _store(
    con: duckdb.DuckDBPyConnection, f: Path, h: str, data: TraceData, cli_meta: dict[str, str],
    replace: bool, rules: RuleSet, t0: float, on_phase: Phase = _no_phase,
) -> ImportResult:
    try:
        meta: dict[str, tuple[str, str]] = {k: (v, "trace") for k, v in data.found_meta.items()}
        meta.update({k: (v, "manifest") for k, v in read_manifest(f).items()})
        meta.update({k: (v, "cli") for k, v in cli_meta.items()})
    except TraceError as exc:
        return ImportResult(str(f), "failed", error=str(exc))
    try:
        con.execute("BEGIN TRANSACTION")
    except duckdb.Error as exc:
        # The connection is gone (a failed write invalidated the database): no later file can be stored.
        raise DatabaseUnusable(_one_line(exc)) from None
    try:
        on_phase(str(f), "storing")
        old = find_run(con, h)
        if old is not None:
            delete_run(con, old)
        n_kernels = data.kernels.num_rows
        classified: list[int] = []

        def follows(con: duckdb.DuckDBPyConnection, run_id: int, kernels: str):
            classified.append(run_id)
            return plan_kernel_follows(con, run_id, kernels, rules)

        # release: the tables are emptied as they are written (nothing after needs them), so the
        # store step's peak is not the reader's output plus DuckDB's copy of it.
        run_id = ranks.insert(con, ranks.prepare(f, data), source_path=str(f), content_hash=h,
                              importer_version=__version__, meta=meta, stages=stages, release=True,
                              follows=follows)
        _enrich(con, run_id, rules, on_phase, str(f), bool(classified))
        con.execute("COMMIT")
    except BaseException as exc:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass  # the transaction is already gone with a failed connection; nothing was committed
        if is_interrupt(exc):
            raise KeyboardInterrupt from None  # Ctrl-C while DuckDB ran: the user's, not this file's
        if isinstance(exc, TracekitError):
            return ImportResult(str(f), "failed", error=str(exc) if isinstance(exc, TraceError)
                                else f"{f}: {exc}")
        if isinstance(exc, Exception):
            # Enrichment of an odd but readable trace must fail that file in one line, not the run.
            return ImportResult(str(f), "failed", error=f"{f}: could not be stored ({type(exc).__name__}: {exc})")
        raise  # KeyboardInterrupt / SystemExit: rolled back above, then stop
    return ImportResult(str(f), "replaced" if old is not None else "imported", run_id=run_id,
                        n_kernels=n_kernels, seconds=time.perf_counter() - t0)
