"""Reader for `nsys export --type sqlite` files (Nsight Systems 2021 and later).

Exports differ by version: string columns are inline text in old exports and `StringIds`
references in new ones, NVTX text is `text` or `textId`, metadata lives in `EXPORT_META_DATA` or
`META_DATA_EXPORT`, and whole tables are absent when nothing of their kind was traced. Each
lookup here therefore asks the file what it has and records what it lacked in `absent`.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import json
import mmap
import os
import re
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from tracekit.errors import TraceError
from tracekit.readers.common import (
    KERNEL_SCHEMA,
    LAUNCH_SCHEMA,
    MEMOP_SCHEMA,
    OP_SCHEMA,
    RANGE_SCHEMA,
    WHOLE_GRAPH_SHORT_NAME,
    TraceData,
    give_back_memory,
    libc_function,
    short_name,
    to_table,
)

KERNEL_TABLE = "CUPTI_ACTIVITY_KIND_KERNEL"

# NVTX event types (ENUM_NSYS_EVENT_TYPE); stable since nsys 2020.
_NVTX_PUSHPOP, _NVTX_STARTEND, _NVTX_DOMAIN_CREATE = 59, 60, 75

# torch.autograd.profiler.emit_nvtx labels: "aten::mm, seq = 3, op_id = 5, sizes = [[..]], ..."
_EMIT_NVTX = re.compile(r"^(?P<name>[^,]+), (?:seq = \d+, )?op_id = (?P<op_id>\d+)(?P<rest>.*)$", re.S)


def _sizes(rest: str) -> str | None:
    """The `[[..]]` after `sizes = ` in an emit_nvtx label's tail, ending at the first `]]` that
    is followed by `, input_op_ids` or ends the label; None if there is none.

    In linear time: the regex this replaces (`sizes = (\\[.*?\\]\\])(?:, input_op_ids|$)`) retried
    from every `sizes = ` in the label, quadratic in a long label (one 200 KB label: 23 s). Only
    the first `sizes = [` can match: every end a later start could reach, the first reaches too.
    """
    start = rest.find("sizes = [")
    if start < 0:
        return None
    lo = start + len("sizes = [")
    ends = []
    mid = rest.find("]], input_op_ids", lo)
    if mid >= 0:
        ends.append(mid)
    for tail in ("]]", "]]\n"):  # `$` matches at the end, or before a final newline
        if rest.endswith(tail) and len(rest) - len(tail) >= lo:
            ends.append(len(rest) - len(tail))
    if not ends:
        return None
    return rest[lo - 1:min(ends) + 2]


def looks_like(path: Path, head: bytes) -> bool:
    return head.startswith(b"SQLite format 3\x00")


def _tables(con: sqlite3.Connection) -> dict[str, set[str]]:
    """The file's real tables and their columns. A view is never read: one standing in for a
    table tracekit reads is refused (_not_tables), others (tools add their own) are ignored."""
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
    return {n: {r[1] for r in con.execute(f'PRAGMA table_info("{n}")')} for n in names}


# The names tracekit reads, or that an nsys export uses for its own tables.
_NSYS_PREFIXES = ("CUPTI_", "NVTX_", "TARGET_INFO_", "META_DATA_", "ENUM_", "OSRT_", "CUDA_", "StringIds",
                  "EXPORT_META_DATA", "ThreadNames", "ProcessStreams")


def _not_tables(con: sqlite3.Connection) -> list[tuple[str, str]]:
    """(name, type) of views (or triggers, ...) named like an nsys table: an export holds real
    tables, and a view in a table's place can run any query (a recursive one never ends)."""
    return [(n, t) for n, t in con.execute("SELECT name, type FROM sqlite_master WHERE type NOT IN ('table', 'index')")
            if isinstance(n, str) and n.startswith(_NSYS_PREFIXES)]


# Time a file's SQLite reads may take: generous for real exports (the largest bench export,
# 736 MB, reads in under a minute), finite for a hostile one. SQLite's own heap is capped too.
_BUDGET_BASE_S = 120.0
_BUDGET_S_PER_MB = 1.0
_HEAP_LIMIT = 2 << 30
# SQLite VM steps between two deadline checks (~10 µs of SQLite work: the check costs ~1% of it).
_PROGRESS_EVERY = 10_000


def _budget_s(path: Path) -> float:
    try:
        size = path.stat().st_size
    except OSError:
        size = 0
    return _BUDGET_BASE_S + _BUDGET_S_PER_MB * size / 2**20


class _Budget:
    """Progress handler and trace callback of the sqlite3 connection: stops a read past its
    deadline (SQLite then raises "interrupted"), and remembers the statement running, so that
    the error can name the table. Ctrl-C, which Python cannot deliver while SQLite runs a long
    step in C, arrives here (in the handler's Python code) and also stops the statement."""

    _FROM = re.compile(r'\b(?:FROM\s+|PRAGMA\s+\w+\()"?([A-Za-z_][A-Za-z0-9_]*)"?', re.I)

    def __init__(self, path: Path) -> None:
        self.seconds = _budget_s(path)
        self.deadline = time.monotonic() + self.seconds
        self.sql = ""
        self.expired = False

    def progress(self) -> int:
        if time.monotonic() > self.deadline:
            self.expired = True
            return 1
        return 0

    def trace(self, sql: str) -> None:
        self.sql = sql

    def table(self) -> str:
        m = self._FROM.search(self.sql or "")
        return m.group(1) if m else "the file"


def _failed(path: Path, exc: Exception, budget: _Budget, what: str) -> TraceError:
    if budget.expired:
        return TraceError(path, f"reading {budget.table()} took longer than its budget of {budget.seconds:.0f} s "
                                "(a table far larger than the file should hold?)")
    if isinstance(exc, sqlite3.OperationalError) and str(exc) == "interrupted":
        raise KeyboardInterrupt  # Ctrl-C arrived in the progress handler
    return TraceError(path, f"{what} ({_why(exc)})")


def _wal_or_journal(path: Path) -> str | None:
    """Why the main file alone does not hold the database's committed state, or None.

    Exports are opened immutable (nothing is ever written beside the user's file, which may sit
    on a read-only filesystem), and then SQLite reads the main file only: committed rows still in
    a `-wal` file would be missed, and pages of an interrupted transaction (a hot `-journal`)
    would be read as if committed. Both are refused, saying how to make the file whole."""
    try:
        with path.open("rb") as f:
            header = f.read(20)
    except OSError:
        return None
    fix = f"run `sqlite3 {path.name} 'PRAGMA wal_checkpoint(TRUNCATE)'` on a writable copy (with its -wal) and import that"
    wal = path.with_name(path.name + "-wal")
    # Bytes 18-19 are 2 in WAL mode; a -wal longer than its 32-byte header holds frames.
    if len(header) >= 20 and header[18] == 2 and wal.exists() and wal.stat().st_size > 32:
        return f"is in WAL mode with {wal.name} holding changes not yet in the file; {fix}"
    journal = path.with_name(path.name + "-journal")
    try:
        with journal.open("rb") as f:
            magic = f.read(8)
    except OSError:
        return None
    if magic == b"\xd9\xd5\x05\xf9\x20\xa1\x63\xd7":  # a hot journal: a write was interrupted
        return (f"has a hot rollback journal {journal.name} (a write was interrupted): the file may hold "
                f"uncommitted rows; open a writable copy (with its -journal) once with `sqlite3` to roll it back, "
                f"and import that")
    return None


# SQLite columns hold any type whatever their declaration; a value of the wrong type or out of
# range becomes NULL here instead of failing later in Arrow with a message naming no file.
def _int(expr: str, bits: int = 64) -> str:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return f"(CASE WHEN typeof({expr}) = 'integer' AND {expr} BETWEEN {lo} AND {hi} THEN {expr} END)"


# Rows whose extent is not a pair of integers with end >= start cannot be placed on a timeline;
# within +-2^62 ns the duration end - start cannot overflow 64 bits.
_GOOD_EXTENT = ("typeof(\"start\") = 'integer' AND typeof(\"end\") = 'integer' AND \"end\" >= \"start\" "
                "AND \"start\" >= -4611686018427387904 AND \"end\" <= 4611686018427387904")


def _gtid_pid(g: int | None) -> int | None:
    # globalTid / globalPid pack (hardware id, pid, tid) as 0x00HH_PPPPPP_TTTTTT.
    return None if g is None else (g >> 24) & 0xFFFFFF


def _gtid_tid(g: int | None) -> int | None:
    return None if g is None else g & 0xFFFFFF


class _Strings:
    """Resolves a column that is either inline text or a StringIds id."""

    def __init__(self, con: sqlite3.Connection, has_table: bool) -> None:
        self.map: dict[int, str] = dict(con.execute(
            "SELECT id, value FROM StringIds WHERE typeof(value) = 'text'")) if has_table else {}

    def get(self, v: object) -> str | None:
        if v is None or isinstance(v, str):
            return v
        return self.map.get(v)


# A corrupt page can put invalid UTF-8 into SQLite's own error message, which Python then fails
# to decode: that is the same corruption, not a different problem.
_SQLITE_ERRORS = (sqlite3.DatabaseError, UnicodeDecodeError)


def _why(exc: Exception) -> str:
    return "invalid text in the file's schema or index pages" if isinstance(exc, UnicodeDecodeError) else str(exc)


# prctl(2) options: whether the kernel may back this process's memory with transparent huge pages.
_PR_SET_THP_DISABLE, _PR_GET_THP_DISABLE = 41, 42


def _prctl() -> Callable[..., int] | None:
    """prctl with its arguments typed: the kernel refuses garbage in the unused ones."""
    prctl = libc_function("prctl")
    if prctl is not None:
        prctl.argtypes = [ctypes.c_int, *[ctypes.c_ulong] * 4]
        prctl.restype = ctypes.c_int
    return prctl


@contextlib.contextmanager
def _small_pages() -> Iterator[None]:
    """No transparent huge pages for memory first touched during the read (Linux).

    numpy asks the kernel for huge pages for every large array (madvise), and the kernel then
    zeroes 2 MB at a time on first touch, compacting memory to find them. The reader's arrays
    are mostly short-lived slices: at 3.75M kernels that zeroing was 1.0-1.5 of the reader's
    8-9 CPU-s, and partly used huge pages ~65 MB of its peak. The flag is the whole process's:
    set only where huge pages were allowed, and allowed again after the read (a read running at
    the same time in another thread may then end with them allowed: slower, not different).
    """
    prctl = _prctl()
    changed = (prctl is not None and prctl(_PR_GET_THP_DISABLE, 0, 0, 0, 0) == 0
               and prctl(_PR_SET_THP_DISABLE, 1, 0, 0, 0) == 0)
    try:
        yield
    finally:
        if changed:
            prctl(_PR_SET_THP_DISABLE, 0, 0, 0, 0)


def read(path: Path) -> TraceData:
    with _small_pages():
        return _read_file(path)


def _read_file(path: Path) -> TraceData:
    why = _wal_or_journal(path)
    if why:
        raise TraceError(path, why)
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro&immutable=1"
    budget = _Budget(path)
    con = None
    try:
        # Read-only and immutable: the user's file is never touched, even its journal.
        con = sqlite3.connect(uri, uri=True)
        # Names are copied from the traced program; invalid UTF-8 there must not fail the import.
        con.text_factory = lambda b: b.decode("utf-8", "replace")
        con.set_progress_handler(budget.progress, _PROGRESS_EVERY)
        con.set_trace_callback(budget.trace)
        heap = con.execute("PRAGMA hard_heap_limit").fetchone()[0]
        con.execute(f"PRAGMA hard_heap_limit = {min(heap or _HEAP_LIMIT, _HEAP_LIMIT)}")
        views = _not_tables(con)
        tables = _tables(con)
    except _SQLITE_ERRORS as exc:
        if con is not None:
            con.close()
        raise _failed(path, exc, budget, "not a readable SQLite file") from None
    if views:
        name, kind = views[0]
        con.execute(f"PRAGMA hard_heap_limit = {heap}")
        con.close()
        raise TraceError(path, f"{name} is a {kind}, not a table: an nsys export holds tables, and a {kind} "
                               "in its place could run any query; refusing to read it")
    fetch = None
    try:
        fetch = _Fetch(con, uri)
        return _read(fetch, path, tables)
    except _SQLITE_ERRORS as exc:
        raise _failed(path, exc, budget, f"SQLite error while reading {budget.table()}") from None
    finally:
        if fetch is not None:
            fetch.close()
            # The slices' intermediate columns went back to the Arrow pool, which keeps freed
            # memory for reuse; what follows the reader allocates little there, so it is given
            # back to the system (~0.25 GB of peak at 3.75M kernels). So is what the workers'
            # SQLite and ADBC buffers left free in the C heap, which DuckDB does not allocate
            # from (~47 MB at 3.75M kernels, ~4 ms).
            give_back_memory()
        try:
            con.execute(f"PRAGMA hard_heap_limit = {heap}")
        except _SQLITE_ERRORS:
            pass
        con.close()


class _Fetch:
    """Runs the bulk SELECTs into Arrow columns: through ADBC when it can, else through sqlite3.

    Python's sqlite3 makes one tuple per row, and at a million rows those objects, not SQLite,
    bound the import; ADBC fills Arrow buffers in C. ADBC fixes each column's type from the first
    rows it sees and fails on a later value of another type. So the bulk columns are first read
    bare, and kept only if each came back as int64 (or all NULL), range-checked in Arrow; else
    they are read again with every column guarded in SQL to one type, through ADBC and, if it
    still refuses (a hostile file), through sqlite3, which keeps its error handling.

    Bare reads run on worker threads (_Pool), a large table in rowid slices (_cuts): SQLite
    decodes rows in C without the GIL, and so does Arrow compute, so the cores share the work,
    and a table's raw columns never exist whole, only each slice's final ones (issue 15: 736 MB
    exports in bounded memory).
    """

    def __init__(self, con: sqlite3.Connection, uri: str) -> None:
        self.con = con
        self.uri = uri
        self.adbc = None
        self.pool: _Pool | None = None
        self.pending: dict[str, _TableRead] = {}
        self.launched = _Launched()
        if con.execute("PRAGMA encoding").fetchone()[0] != "UTF-8":
            return  # text is fetched as raw bytes below, which must be UTF-8 to decode
        try:
            self.adbc = _Adbc(uri)
        except Exception:  # noqa: BLE001 - no ADBC means the slower sqlite3 path, not a failure
            self.adbc = None

    def close(self) -> None:
        self.launched.cancel()  # a launch slice waiting for the GPU rows' ids stops waiting
        if self.pool is not None:
            self.pool.close()  # waits for the slices being read: their connections are their own
        if self.adbc is not None:
            try:
                self.adbc.close()
            except Exception:  # noqa: BLE001, S110 - closing a read-only handle cannot lose data
                pass

    def submit(self, table: str, specs: Sequence[tuple[str | None, str]], cuts: Sequence[str] = ("",),
               finish: Callable[[list[pa.Array]], list[pa.Array]] | None = None) -> None:
        """Start the bare read of `table` on the workers; extent_rows(table, ...) then takes its
        result. `finish` turns each slice's checked, filtered columns into the ones kept."""
        if self.adbc is not None:
            if self.pool is None:
                self.pool = _Pool(self.uri, _WORKERS)
            self.pending[table] = self.pool.read(f"SELECT {', '.join(e or 'NULL' for e, _ in specs)} "
                                                 f'FROM "{table}"', cuts, specs, finish)

    def extent_rows(self, table: str, specs: Sequence[tuple[str | None, str]], cuts: Sequence[str] = ("",),
                    finish: Callable[[list[pa.Array]], list[pa.Array]] | None = None,
                    ) -> tuple[list[pa.Array], int]:
        """One array per spec (two for a "name" spec: StringIds ids, then inline text as bytes)
        over the rows whose (start, end), the first two specs, pass _GOOD_EXTENT, through
        `finish` where given; and how many rows failed that test (before `finish`).

        A spec is (SQL expression, or None where the file lacks the column; kind), kind being
        "int64", "int32" or "name" (a column holding text or a StringIds id). cuts: _cuts(table).
        """
        if table not in self.pending:
            self.submit(table, specs, cuts, finish)
        job = self.pending.pop(table, None)
        bare = None if job is None else job.result()
        if bare is not None:
            return bare
        sql = "SELECT " + ", ".join(_guarded(e, k) for e, k in specs) + f' FROM "{table}" WHERE {_GOOD_EXTENT}'
        types = [t for _, k in specs for t in _TYPES[k]]
        cols = None
        if self.adbc is not None:
            tbl = _adbc_read(self.adbc, sql)
            cols = None if tbl is None else _typed(tbl, types)
        if cols is None:
            rows = self.con.execute(sql).fetchall()
            cols_ = list(zip(*rows, strict=True)) if rows else [()] * len(types)
            del rows
            cols = [pa.array(c, t) for c, t in zip(cols_, types, strict=True)]
        # A bare count(*) does not scan the rows as the negated condition would.
        skipped = self.con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] - len(cols[0])
        return (finish(cols) if finish else cols), skipped


# Rows per slice of a large table (~40 MB of raw kernel columns), and the most slices of one table
# (rowids far apart make slices sparse, never more).
_SLICE_ROWS = 1 << 18
_MAX_SLICES = 256
# Below this many rows a table is read in one piece: a second slice costs more than it shares.
_CUT_ROWS = 100_000
# Worker threads for the bare reads: each has its own SQLite connection.
_WORKERS = min(4, max(2, os.cpu_count() or 2))


def _cuts(con: sqlite3.Connection, table: str, cols: set[str]) -> list[str]:
    """WHERE clauses that cut `table` into rowid ranges of about _SLICE_ROWS rows (at least two),
    or [""] where it is small or cannot be cut.

    A scan of a rowid table returns rows in rowid order, so the slices read one after the other
    are the rows of one scan. Views, WITHOUT ROWID and virtual tables, and tables that name a
    column rowid (then "rowid" means that column), are read whole.
    """
    row = con.execute("SELECT type, sql FROM sqlite_master WHERE name = ?", [table]).fetchone()
    sql = row[1].upper() if row and isinstance(row[1], str) else ""
    if (row is None or row[0] != "table" or "WITHOUT" in sql or sql.startswith("CREATE VIRTUAL")
            or {"rowid", "_rowid_", "oid"} & {c.lower() for c in cols}):
        return [""]
    try:
        # Two queries: SQLite answers a lone min() or max() of the rowid from the b-tree's edge.
        lo = con.execute(f'SELECT min(rowid) FROM "{table}"').fetchone()[0]
        hi = con.execute(f'SELECT max(rowid) FROM "{table}"').fetchone()[0]
    except _SQLITE_ERRORS:
        return [""]  # a damaged table: the read itself reports it, as for an uncut one
    if not isinstance(lo, int) or not isinstance(hi, int) or hi - lo < _CUT_ROWS:
        return [""]
    n = min(_MAX_SLICES, max(2, -(-(hi - lo + 1) // _SLICE_ROWS)))
    step = -(-(hi - lo + 1) // n)
    return [f" WHERE rowid BETWEEN {a} AND {min(a + step - 1, hi)}" for a in range(lo, hi + 1, step)]


class _TableRead:
    """The bare read of one table, slice by slice on the pool's workers (see _bare_slice)."""

    def __init__(self, select: str, cuts: Sequence[str], specs: Sequence[tuple[str | None, str]],
                 finish: Callable[[list[pa.Array]], list[pa.Array]] | None) -> None:
        self.select, self.cuts, self.specs, self.finish = select, list(cuts), specs, finish
        self.parts: list[tuple[list[pa.Array], int] | None] = [None] * len(self.cuts)
        self.left = len(self.cuts)
        self.failed = False
        self.lock = threading.Lock()
        self.done = threading.Event()

    def run(self, con: _Adbc | None, i: int) -> None:
        try:
            part = None if self.failed or con is None else _bare_slice(con, self.select + self.cuts[i], self.specs,
                                                                       self.finish)
        except Exception:  # noqa: BLE001 - the caller reads again and reports any error
            part = None
        with self.lock:
            if part is None:
                self.failed = True
                self.parts = []  # nothing of a failed read is kept
            elif not self.failed:
                self.parts[i] = part
            self.left -= 1
            if self.left == 0:
                self.done.set()

    def cancel(self) -> None:
        with self.lock:
            self.failed = True
            self.parts = []

    def result(self) -> tuple[list[pa.Array | pa.ChunkedArray], int] | None:
        """The columns of every slice, in rowid order (one chunk a slice: copying them into one
        array would cost a copy of the table), and the rows skipped; None if a slice failed."""
        self.done.wait()
        if self.failed:
            return None
        parts, self.parts = self.parts, []
        skipped = sum(n for _, n in parts)
        if len(parts) == 1:
            return parts[0][0], skipped
        cols = [pa.chunked_array([p[0][j] for p in parts], parts[0][0][j].type) for j in range(len(parts[0][0]))]
        return cols, skipped


def _bare_slice(con: _Adbc, sql: str, specs: Sequence[tuple[str | None, str]],
                finish: Callable[[list[pa.Array]], list[pa.Array]] | None) -> tuple[list[pa.Array], int] | None:
    """One slice's unguarded read: its columns as _guarded would give them, rows with a bad extent
    dropped, through `finish`; and how many rows the extent test dropped. None if a column holds
    values that only the guarded read handles.

    The extent test runs in Arrow: on all-integer columns it is the same test as _GOOD_EXTENT, but
    SQLite no longer evaluates five conditions per row, and the rows skipped need no count(*) of
    their own.
    """
    raw = con.read(sql, _SLICE_ROWS)  # one batch: nothing to stitch
    total = raw.num_rows
    imported = {b.address for col in raw.columns for chunk in col.chunks for b in chunk.buffers() if b is not None}
    cols = _checked(raw, specs)
    del raw
    if cols is None:
        return None
    ok = _good_extent(cols[0], cols[1])
    if ok is not None:
        cols = [c.filter(ok) for c in cols]
    skipped = total - len(cols[0])
    cols = finish(cols) if finish else cols
    # A column still in the buffers ADBC filled is copied out: those buffers are freed together,
    # when the last column of the batch goes, so one column kept would hold every column read
    # (the globalTid and int64 originals of int32 columns: ~0.6 GB at 3.75M kernels).
    return [pa.concat_arrays([c]) if any(b is not None and b.address in imported for b in c.buffers()) else c
            for c in cols], skipped


class _Pool:
    """Worker threads, each with an ADBC connection of its own, reading slices in the order given."""

    def __init__(self, uri: str, workers: int) -> None:
        self.uri = uri
        self.tasks: collections.deque[tuple[_TableRead, int]] = collections.deque()
        self.reads: list[_TableRead] = []
        self.cv = threading.Condition()
        self.closing = False
        self.threads = [threading.Thread(target=self._work, daemon=True) for _ in range(workers)]
        for t in self.threads:
            t.start()

    def read(self, select: str, cuts: Sequence[str], specs: Sequence[tuple[str | None, str]],
             finish: Callable[[list[pa.Array]], list[pa.Array]] | None) -> _TableRead:
        job = _TableRead(select, cuts, specs, finish)
        with self.cv:
            self.reads.append(job)
            self.tasks.extend((job, i) for i in range(len(job.cuts)))
            self.cv.notify_all()
        return job

    def _work(self) -> None:
        try:
            con: _Adbc | None = _Adbc(self.uri)
        except Exception:  # noqa: BLE001 - its slices fail, and the caller reads them again
            con = None
        try:
            while True:
                with self.cv:
                    while not self.tasks and not self.closing:
                        self.cv.wait()
                    if not self.tasks:
                        return
                    job, i = self.tasks.popleft()
                job.run(con, i)
        finally:
            if con is not None:
                try:
                    con.close()
                except Exception:  # noqa: BLE001, S110 - closing a read-only handle cannot lose data
                    pass

    def close(self) -> None:
        """Drop the slices not yet started and wait for those being read."""
        for job in self.reads:
            job.cancel()
        with self.cv:
            self.closing = True
            self.cv.notify_all()
        for t in self.threads:
            t.join()


_EXTENT_LIMIT = 2**62


def _good_extent(start: pa.Array, end: pa.Array) -> pa.Array | None:
    """_GOOD_EXTENT on int64 columns as a mask, or None when every row passes."""
    if start.null_count == 0 and end.null_count == 0:
        s, e = start.to_numpy(), end.to_numpy()
        ok = (e >= s) & (s >= -_EXTENT_LIMIT) & (e <= _EXTENT_LIMIT)
        return None if ok.all() else pa.array(ok)
    ok = pc.and_(pc.and_(pc.greater_equal(end, start), pc.greater_equal(start, -_EXTENT_LIMIT)),
                 pc.less_equal(end, _EXTENT_LIMIT))
    return pc.fill_null(ok, False)


class _Adbc:
    """A read-only ADBC SQLite connection through adbc_driver_manager's low-level API.

    Its DB-API module imports polars (0.1-0.15 s) whenever that is installed, which an import
    would otherwise pay for nothing: tables come back as pyarrow Tables all the same.
    """

    def __init__(self, uri: str) -> None:
        import adbc_driver_manager
        import adbc_driver_sqlite

        self.db = adbc_driver_sqlite.connect(uri)
        try:
            self.con = adbc_driver_manager.AdbcConnection(self.db)
        except BaseException:
            self.db.close()
            raise

    def read(self, sql: str, batch_rows: int = 65536) -> pa.Table:
        import adbc_driver_manager

        stmt = adbc_driver_manager.AdbcStatement(self.con)
        try:
            # Fewer, larger batches: less to stitch together, and more rows to infer types from
            # (a slice comes back as one batch: nothing to stitch).
            stmt.set_options(**{"adbc.sqlite.query.batch_rows": str(batch_rows)})
            stmt.set_sql_query(sql)
            stream, _ = stmt.execute_query()
            return pa.RecordBatchReader._import_from_c(stream.address).read_all()
        finally:
            stmt.close()

    def close(self) -> None:
        try:
            self.con.close()
        finally:
            self.db.close()


def _adbc_read(con: _Adbc, sql: str) -> pa.Table | None:
    try:
        return con.read(sql)
    except Exception:  # noqa: BLE001 - the caller reads again through sqlite3, whose errors name the problem
        return None


_TYPES = {"int64": [pa.int64()], "int32": [pa.int32()], "name": [pa.int64(), pa.binary()]}
_INT32 = (-(2**31), 2**31 - 1)


def _guarded(expr: str | None, kind: str) -> str:
    if expr is None:
        return "NULL, NULL" if kind == "name" else "NULL"
    if kind == "name":
        # One column of each type so that ADBC sees one type per column; text comes as raw bytes
        # so that invalid UTF-8 is replaced on decoding instead of entering Arrow unchecked.
        return (f"(CASE WHEN typeof({expr}) = 'integer' THEN {expr} END), "
                f"(CASE WHEN typeof({expr}) = 'text' THEN CAST({expr} AS BLOB) END)")
    return _int(expr, 32 if kind == "int32" else 64)


def _chunk(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    if isinstance(col, pa.Array):
        return col
    return col.chunk(0) if col.num_chunks == 1 else col.combine_chunks()


def _nulls(n: int, t: pa.DataType) -> pa.Array:
    """n NULLs of type t (int32, int64 or binary) over zero pages nothing has written.

    pa.nulls writes its zeros, so an all-NULL column held memory through the whole import
    (graph_node_id of an export without CUDA graphs: 29 MB at 3.75M kernels); an anonymous
    mapping reads as zeros and takes memory only where written. The one mapping is both the
    validity bitmap (all 0: every row NULL) and the values (for binary, the offsets: all empty).
    """
    zeros = pa.py_buffer(mmap.mmap(-1, 8 * (n + 1)))
    buffers = [zeros, zeros, zeros] if t == pa.binary() else [zeros, zeros]
    return pa.Array.from_buffers(t, n, buffers, null_count=n)


def _checked(tbl: pa.Table, specs: Sequence[tuple[str | None, str]]) -> list[pa.Array] | None:
    """The bare read's columns as _guarded would give them, or None if a column needs the guards."""
    out: list[pa.Array] = []
    for col, (_, kind) in zip(tbl.columns, specs, strict=True):
        arr = _chunk(col)
        if arr.null_count == len(arr):
            out.extend(_nulls(len(arr), t) for t in _TYPES[kind])
            continue
        if arr.type != pa.int64():
            return None  # text, real or blob values: only the guarded read handles those
        if kind == "int32":
            lo, hi = pc.min_max(arr).values()  # one pass; the mask only where some value is out of range
            if lo.as_py() < _INT32[0] or hi.as_py() > _INT32[1]:
                ok = pc.and_(pc.greater_equal(arr, _INT32[0]), pc.less_equal(arr, _INT32[1]))
                arr = pc.if_else(ok, arr, pa.scalar(None, pa.int64()))
            out.append(arr.cast(pa.int32()))
        elif kind == "name":
            out.extend([arr, _nulls(len(arr), pa.binary())])
        else:
            out.append(arr)
    return out


def _typed(tbl: pa.Table, types: Sequence[pa.DataType]) -> list[pa.Array] | None:
    out = []
    for col, t in zip(tbl.columns, types, strict=True):
        arr = _chunk(col)
        if arr.type == t:
            out.append(arr)
        elif arr.null_count == len(arr):
            out.append(_nulls(len(arr), t))  # an all-NULL column comes back typed int64
        elif pa.types.is_integer(arr.type) and pa.types.is_integer(t):
            out.append(arr.cast(t))  # ranges are guarded in SQL, so this cannot overflow
        else:
            return None
    return out


def _read(fetch: _Fetch, path: Path, tables: dict[str, set[str]]) -> TraceData:
    con = fetch.con
    if KERNEL_TABLE not in tables:
        nsys_marks = {"StringIds", "TARGET_INFO_GPU", "META_DATA_EXPORT", "EXPORT_META_DATA", "NVTX_EVENTS"}
        if not nsys_marks & tables.keys():
            raise TraceError(path, "SQLite file is not an Nsight Systems export (no nsys tables)")
        raise TraceError(path, f"no GPU kernels in this nsys export ({KERNEL_TABLE} absent: was CUDA traced?)")
    absent: list[str] = []
    strings = _Strings(con, {"id", "value"} <= tables.get("StringIds", set()))
    kcols = tables[KERNEL_TABLE]
    required = {"start", "end", "correlationId"}
    missing = required - kcols
    if missing or not ({"demangledName", "shortName", "name"} & kcols):
        raise TraceError(path, f"{KERNEL_TABLE} lacks columns {sorted(missing) or ['demangledName']}")

    kernels = _kernels(fetch, kcols, strings, absent, tables)
    # The dictionary holds exactly the names that rows use (_dictionary), so testing it tests them.
    names = kernels.column("name").chunk(0).dictionary if kernels.num_rows else pa.array([], pa.string())
    if kernels.num_rows and pc.all(pc.or_(pc.starts_with(names, "<string "), pc.starts_with(names, "<no name>"))).as_py():
        raise TraceError(path, "no kernel name could be resolved (StringIds table missing or malformed)")
    kernels = _with_whole_graphs(con, tables, kernels, absent)
    if not kernels.num_rows:
        bad = _count(con, tables, KERNEL_TABLE)
        why = f" ({bad} rows with unusable start/end)" if bad else " (kernel table is empty)"
        raise TraceError(path, f"no GPU kernels in this nsys export{why}")
    # Memory operations first, for their correlation ids; their notes keep their place in `absent`.
    memop_notes: list[str] = []
    memops = _memops(con, tables, memop_notes)
    fetch.launched.set(np.concatenate([t.column("correlation").drop_null().to_numpy() for t in (kernels, memops)]))
    launches = _launches(fetch, tables, strings, absent)
    ranges, ops = _nvtx(con, tables, strings, absent)
    absent += memop_notes
    gpu_name, tool_versions, trace_meta = _meta(con, tables, absent)
    return TraceData(
        format="nsys-sqlite", kernels=kernels, launches=launches, ranges=ranges, ops=ops,
        memops=memops, gpu_name=gpu_name, tool_versions=tool_versions, trace_meta=trace_meta,
        absent=absent,
    )


GRAPH_TABLE = "CUPTI_ACTIVITY_KIND_GRAPH_TRACE"


def _with_whole_graphs(con: sqlite3.Connection, tables: dict[str, set[str]], kernels: pa.Table,
                       absent: list[str]) -> pa.Table:
    """The kernel rows plus one row per CUDA graph execution traced whole.

    Under `nsys profile --cuda-graph-trace=graph` (nsys's default) a graph launch is recorded as
    one CUPTI_ACTIVITY_KIND_GRAPH_TRACE row (its execution on the GPU: first node start to last
    node end) and its kernels are not recorded. Each such row becomes a kernel-like row named
    `CUDA graph <graphId> (exec <graphExecId>): kernels not traced`, short name
    WHOLE_GRAPH_SHORT_NAME, with the graph's device, stream, process and the correlation id of
    its cudaGraphLaunch, so that it is linked to that launch and takes the stage of the pass that
    launched it. Its duration is the graph's span on the GPU (gaps between its kernels included),
    and what ran inside it is unknown: no category by name, and the composition view shows it
    as its own bucket. runs.absent says how many there were.
    """
    cols = tables.get(GRAPH_TABLE)
    if cols is None or not {"start", "end"} <= cols:
        return kernels
    def c(name: str, bits: int = 64) -> str:
        return _int(f'"{name}"', bits) if name in cols else "NULL"
    rows = con.execute(
        f'SELECT "start", "end", {c("deviceId", 32)}, {c("contextId")}, {c("streamId")}, {c("correlationId")}, '
        f'{c("globalPid")}, {c("graphId")}, {c("graphExecId")} FROM "{GRAPH_TABLE}" WHERE {_GOOD_EXTENT} '
        'ORDER BY "start", "end"').fetchall()
    if not rows:
        return kernels
    absent.append(f"kernels of {len(rows)} CUDA graph launches traced as whole graphs (--cuda-graph-trace=graph): "
                  f"each is one row '{WHOLE_GRAPH_SHORT_NAME}'")
    n = len(rows)
    start, end, dev, ctx, stream, corr, gpid, gid, xid = (list(v) for v in zip(*rows, strict=True))
    names = [f"CUDA graph {g} (exec {x}): kernels not traced" for g, x in zip(gid, xid, strict=True)]
    null32, null64 = pa.nulls(n, pa.int32()), pa.nulls(n, pa.int64())
    graphs = _table({
        "kernel_id": null64, "name": pa.array(names, pa.string()).dictionary_encode(),
        "short_name": pa.array([WHOLE_GRAPH_SHORT_NAME] * n, pa.string()).dictionary_encode(),
        "start_ns": pa.array(start, pa.int64()), "end_ns": pa.array(end, pa.int64()),
        "dur_ns": pa.array([e - s for s, e in zip(start, end, strict=True)], pa.int64()),
        "device": pa.array(dev, pa.int32()), "context": pa.array(ctx, pa.int64()),
        "stream": pa.array(stream, pa.int64()), "correlation": pa.array(corr, pa.int64()),
        "pid": pa.array([_gtid_pid(g) for g in gpid], pa.int64()),
        "grid_x": null32, "grid_y": null32, "grid_z": null32, "block_x": null32, "block_y": null32,
        "block_z": null32, "registers": null32, "shared_static": null64, "shared_dynamic": null64,
        "graph_node_id": null64,
    }, KERNEL_SCHEMA)
    both = pa.concat_tables([kernels, graphs]).unify_dictionaries().combine_chunks()
    s, e = both.column("start_ns").to_numpy(), both.column("end_ns").to_numpy()
    both = both.take(pa.array(np.lexsort((e, s))))
    return both.set_column(0, "kernel_id", pa.array(np.arange(both.num_rows), pa.int64())).combine_chunks()


def _count(con: sqlite3.Connection, tables: dict[str, set[str]], table: str) -> int:
    return con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] if table in tables else 0


def _skipped(con: sqlite3.Connection, table: str, absent: list[str], what: str, n: int | None = None) -> None:
    """Note in `absent` the `n` rows of `table` skipped for their extent (None: counted here)."""
    if n is None:
        n = con.execute(f'SELECT count(*) FROM "{table}" WHERE NOT ({_GOOD_EXTENT}) OR "start" IS NULL '
                        'OR "end" IS NULL').fetchone()[0]
    if n:
        absent.append(f"{table}: {n} {what} with missing, non-integer or negative extents (skipped)")


def _col(cols: set[str], name: str, absent: list[str], table: str, kind: str = "int64") -> tuple[str | None, str]:
    if name in cols:
        return f'"{name}"', kind
    absent.append(f"{table}.{name}")
    return None, kind


def _unresolved(v: object) -> str:
    # Keep the id visible: an empty name would silently merge unrelated kernels.
    return f"<string {v}>" if isinstance(v, int) else "<no name>"


def _kernels(fetch: _Fetch, cols: set[str], strings: _Strings, absent: list[str], tables: dict[str, set[str]]):
    t = KERNEL_TABLE
    demangled = "demangledName" if "demangledName" in cols else "name" if "name" in cols else "shortName"
    short = "shortName" if "shortName" in cols else None
    if short is None:
        absent.append(f"{t}.shortName")
    specs = [
        ('"start"', "int64"), ('"end"', "int64"), _col(cols, "deviceId", absent, t, "int32"),
        _col(cols, "contextId", absent, t), _col(cols, "streamId", absent, t), ('"correlationId"', "int64"),
        _col(cols, "globalPid", absent, t), (f'"{demangled}"', "name"), (f'"{short}"' if short else None, "name"),
        *(_col(cols, c, absent, t, "int32") for c in ("gridX", "gridY", "gridZ", "blockX", "blockY", "blockZ")),
        _col(cols, "registersPerThread", absent, t, "int32"), _col(cols, "staticSharedMemory", absent, t),
        _col(cols, "dynamicSharedMemory", absent, t), ('"graphNodeId"' if "graphNodeId" in cols else None, "int64"),
    ]
    cuts = _cuts(fetch.con, t, cols)
    fetch.submit(t, specs, cuts)
    # Queued behind the kernels: read by the workers while this thread builds the kernel table.
    _read_launches_ahead(fetch, tables)
    c, skipped = fetch.extent_rows(t, specs, cuts)
    c = _by_extent(c)
    _skipped(fetch.con, t, absent, "kernels", skipped)
    # Names repeat (tens of distinct kernels over 100k+ rows): resolve each distinct value once.
    idx, uniq = _codes(_chunk(c[7]), _chunk(c[8]))
    resolved = [strings.get(v) for v in uniq]
    counts = np.bincount(idx.to_numpy(zero_copy_only=False), minlength=len(uniq))
    missing = int(sum(counts[i] for i, r in enumerate(resolved) if not r))
    if missing:
        absent.append(f"{t}: {missing} kernel names not found in StringIds (named <string N>)")
    name_u = [r or _unresolved(v) for r, v in zip(resolved, uniq, strict=True)]
    # shortName is resolved per distinct (name, shortName) pair: a missing one falls back to
    # the short form of that row's own name.
    sidx, suniq = _codes(_chunk(c[9]), _chunk(c[10]))
    pair = pc.dictionary_encode(pc.add(pc.multiply(idx.cast(pa.int64()), len(suniq)), sidx.cast(pa.int64())))
    short_u = [strings.get(suniq[k % len(suniq)]) or short_name(name_u[k // len(suniq)])
               for k in pair.dictionary.to_pylist()]
    start, end = c[0], c[1]
    return _table({
        "kernel_id": pa.array(np.arange(len(start)), pa.int64()), "name": _dictionary(idx, name_u),
        "short_name": _dictionary(pair.indices, short_u), "start_ns": start, "end_ns": end,
        "dur_ns": pc.subtract(end, start), "device": c[2], "context": c[3], "stream": c[4],
        "correlation": c[5], "pid": _gtid_part(c[6], 24), "grid_x": c[11], "grid_y": c[12], "grid_z": c[13],
        "block_x": c[14], "block_y": c[15], "block_z": c[16],
        "registers": c[17], "shared_static": c[18], "shared_dynamic": c[19], "graph_node_id": c[20],
    }, KERNEL_SCHEMA)


def _by_extent(c: list[pa.Array]) -> list[pa.Array]:
    """Columns ordered by (start, end), as kernel ids are numbered.

    Sorted in NumPy rather than by an ORDER BY: exports are usually in order already, which a
    check finds at a fraction of what SQLite's sorter spends; lexsort is stable, so ties keep
    the file's order.
    """
    s, e = c[0].to_numpy(), c[1].to_numpy()  # no NULLs: rows passed _GOOD_EXTENT
    if len(s) < 2 or bool(np.all((s[1:] > s[:-1]) | ((s[1:] == s[:-1]) & (e[1:] >= e[:-1])))):
        return c
    order = pa.array(np.lexsort((e, s)))
    return [col.take(order) for col in c]


def _codes(ids: pa.Array, texts: pa.Array) -> tuple[pa.Array, list]:
    """Per-row index into the distinct values of a text-or-id column (the ids/texts pair above).

    The distinct values are ints (StringIds ids), str (inline text) and a final None (neither).
    """
    enc = pc.dictionary_encode(ids)
    uniq: list = enc.dictionary.to_pylist()
    idx = enc.indices
    if texts.null_count < len(texts):
        tenc = pc.dictionary_encode(texts)
        shifted = pc.add(tenc.indices, pa.scalar(len(uniq), tenc.indices.type))
        idx = pc.if_else(pc.is_valid(tenc.indices), shifted, idx)
        uniq += [b.decode("utf-8", "replace") for b in tenc.dictionary.to_pylist()]
    uniq.append(None)
    return pc.fill_null(idx, pa.scalar(len(uniq) - 1, idx.type)), uniq


def _dictionary(idx: pa.Array | np.ndarray, values: list[str]) -> pa.DictionaryArray:
    """values[idx] as a dictionary column: each distinct string is stored once, not once per row
    (the store takes dictionary columns as their values).

    The dictionary holds each string once and only strings some row uses: codes of one id
    resolving to the same text as another's, or of unused ids, would otherwise let two codes
    mean one name, or a name appear that no kernel has.
    """
    codes = idx if isinstance(idx, np.ndarray) else idx.to_numpy(zero_copy_only=False)
    used = np.bincount(codes, minlength=len(values)) if len(codes) else np.zeros(len(values), np.int64)
    first: dict[str, int] = {}
    remap = np.zeros(len(values), np.int32)
    for i in np.flatnonzero(used):
        remap[i] = first.setdefault(values[i], len(first))
    if len(first) != len(values) or np.any(remap != np.arange(len(values))):
        codes = remap[codes]
    return pa.DictionaryArray.from_arrays(pa.array(codes, pa.int32()), pa.array(list(first), pa.string()))


def _gtid_part(g: pa.Array, shift: int) -> pa.Array:
    """_gtid_pid (shift 24) or _gtid_tid (shift 0) of a whole column."""
    return pc.bit_wise_and(pc.shift_right(g, shift) if shift else g, 0xFFFFFF)


def _table(cols: dict[str, object], schema: pa.Schema) -> pa.Table:
    arrays = [v if isinstance(v, pa.DictionaryArray) and f.type == pa.string()
              else v.cast(f.type) if isinstance(v, (pa.Array, pa.ChunkedArray)) else pa.array(v, f.type)
              for f, v in ((f, cols[f.name]) for f in schema)]
    return pa.Table.from_arrays(arrays, names=schema.names)


_LAUNCH_TABLES = (("CUPTI_ACTIVITY_KIND_RUNTIME", "runtime"), ("CUPTI_ACTIVITY_KIND_DRIVER", "driver"))


def _launch_name_col(tc: set[str]) -> str | None:
    name_col = "nameId" if "nameId" in tc else "name" if "name" in tc else None
    return name_col if name_col and {"start", "end", "globalTid", "correlationId"} <= tc else None


def _launch_specs(name_col: str) -> list[tuple[str | None, str]]:
    return [('"start"', "int64"), ('"end"', "int64"), ('"globalTid"', "int64"), ('"correlationId"', "int64"),
            (f'"{name_col}"', "name")]


def _read_launches_ahead(fetch: _Fetch, tables: dict[str, set[str]]) -> None:
    """Start the launch tables' reads on the workers, behind the kernels' (read first)."""
    for table, _ in _LAUNCH_TABLES:
        name_col = _launch_name_col(tables.get(table, set()))
        if name_col:
            fetch.submit(table, _launch_specs(name_col), _cuts(fetch.con, table, tables[table]),
                         fetch.launched.finish)


class _Launched:
    """Which runtime and driver calls can be launches: those whose correlation id some GPU row
    (kernel, whole graph, memory operation) has. enrich.links keeps only the calls it links GPU
    rows to, a subset of these; the others (two thirds of an LLM export's calls: synchronizations,
    queries, events) are dropped in each slice as it is read, so that they are neither kept,
    decoded into names nor handed on. The GPU rows' ids are known once the kernels are read: a
    launch slice read before that waits for them (set), or for the read's end (cancel)."""

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.lo = 0
        self.table: np.ndarray | None = None  # table[id - lo]: whether id is a GPU row's
        self.ids: np.ndarray | None = None  # the sorted ids, where their range is too wide for a table

    def set(self, ids: np.ndarray) -> None:
        if len(ids):
            lo, hi = int(ids.min()), int(ids.max())
            # CUPTI numbers every API call from 1, so the range is about the calls recorded: a
            # table of a byte per id (~50 MB at 3.75M kernels) tests a call in ~5 ns; only ids
            # scattered far wider (a hand-made file) fall back to np.isin's sort (~100 ns).
            if hi - lo < 32 * len(ids) + (1 << 26):
                self.lo, self.table = lo, np.zeros(hi - lo + 1, bool)
                self.table[ids - lo] = True
            else:
                self.ids = np.unique(ids)
        else:
            self.ids = ids
        self.ready.set()

    def cancel(self) -> None:
        self.ready.set()  # without ids: a slice still read is kept whole, then dropped with its read

    def finish(self, cols: list[pa.Array]) -> list[pa.Array]:
        """A launch slice's columns (see _launch_slice), less the calls that launched nothing."""
        self.ready.wait()
        corr = cols[3]
        vals = (corr.fill_null(0) if corr.null_count else corr).to_numpy()
        if self.table is not None:
            at = vals - self.lo
            inside = (at >= 0) & (at < len(self.table))
            keep = np.zeros(len(vals), bool)
            keep[inside] = self.table[at[inside]]
        elif self.ids is not None:
            keep = np.isin(vals, self.ids)
        else:
            return _launch_slice(cols)  # cancelled: the read is being abandoned
        if corr.null_count:
            keep &= corr.is_valid().to_numpy(zero_copy_only=False)
        return _launch_slice([c.filter(pa.array(keep)) for c in cols])


def _launches(fetch: _Fetch, tables: dict[str, set[str]], strings: _Strings, absent: list[str]):
    """The launch tables' calls that can be launches (_Launched), as one table."""
    parts: list[tuple[str, dict[str, pa.Array]]] = []
    for table, kind in _LAUNCH_TABLES:
        tc = tables.get(table)
        if tc is None:
            absent.append(table)
            continue
        name_col = _launch_name_col(tc)
        if name_col is None:
            absent.append(f"{table} (unexpected columns)")
            continue
        cols, skipped = fetch.extent_rows(table, _launch_specs(name_col), finish=fetch.launched.finish)
        _skipped(fetch.con, table, absent, "calls", skipped)
        part = _launch_part(cols, kind, strings)
        del cols
        n = len(part["start_ns"])
        if n:
            parts.append((kind, part))
    if not parts:
        return to_table({k: [] for k in LAUNCH_SCHEMA.names}, LAUNCH_SCHEMA)
    sizes = [len(p["start_ns"]) for _, p in parts]
    if len(parts) == 1:
        cols = dict(parts[0][1])
        cols["kind"] = pa.DictionaryArray.from_arrays(pa.array(np.zeros(sizes[0], np.int32)), [parts[0][0]])
    else:
        # Each part's names index its own dictionary: one dictionary for all, codes offset.
        names = [p["name"] for _, p in parts]
        offsets = np.cumsum([0] + [len(a.dictionary) for a in names[:-1]])
        codes = np.concatenate([a.indices.to_numpy() + off for a, off in zip(names, offsets, strict=True)])
        cols = {f.name: _concat([p[f.name] for _, p in parts]) for f in LAUNCH_SCHEMA
                if f.name not in ("launch_id", "name", "kind")}
        cols["name"] = _dictionary(codes, [v for a in names for v in a.dictionary.to_pylist()])
        cols["kind"] = _dictionary(np.repeat(np.arange(len(parts)), sizes), [k for k, _ in parts])
    cols["launch_id"] = pa.array(np.arange(sum(sizes)), pa.int64())
    return _table(cols, LAUNCH_SCHEMA)


def _launch_slice(cols: list[pa.Array]) -> list[pa.Array]:
    """A launch table's columns (start, end, globalTid, correlation, name id, name text) as the
    ones kept: start, end, duration, pid, tid, correlation, name id, name text. Per slice, so that
    globalTid is never held whole."""
    start, end, gtid, corr, nid, ntext = cols
    return [start, end, pc.subtract(end, start), _gtid_part(gtid, 24), _gtid_part(gtid, 0), corr, nid, ntext]


def _concat(cols: list[pa.Array | pa.ChunkedArray]) -> pa.ChunkedArray:
    """Columns one after the other, as chunks (not copied)."""
    chunks = [c for col in cols for c in (col.chunks if isinstance(col, pa.ChunkedArray) else [col])]
    return pa.chunked_array(chunks, cols[0].type)


def _launch_part(cols: list[pa.Array], kind: str, strings: _Strings) -> dict[str, pa.Array]:
    """One launch table's rows (as _launch_slice gives them) as LAUNCH_SCHEMA columns, less
    launch_id and kind."""
    start, end, dur, pid, tid, corr, nid, ntext = cols
    idx, uniq = _codes(_chunk(nid), _chunk(ntext))
    return {
        "name": _dictionary(idx, [strings.get(v) or "" for v in uniq]), "start_ns": start, "end_ns": end,
        "dur_ns": dur, "pid": pid, "tid": tid, "correlation": corr,
    }


def _nvtx(con: sqlite3.Connection, tables: dict[str, set[str]], strings: _Strings, absent: list[str]):
    rcols: dict[str, list] = {k: [] for k in RANGE_SCHEMA.names}
    ocols: dict[str, list] = {k: [] for k in OP_SCHEMA.names}
    tc = tables.get("NVTX_EVENTS")
    if tc is None or not {"start", "end", "eventType", "globalTid"} <= tc:
        absent.append("NVTX_EVENTS" if tc is None else "NVTX_EVENTS (unexpected columns)")
        return to_table(rcols | {"range_id": []}, RANGE_SCHEMA), to_table(ocols | {"op_id": []}, OP_SCHEMA)
    text = "(CASE WHEN typeof(\"text\") = 'text' THEN \"text\" END)" if "text" in tc else "NULL"
    text_id = _int('"textId"') if "textId" in tc else "NULL"
    domain_col = _int('"domainId"') if "domainId" in tc else "NULL"
    domains: dict[int, str] = {}
    for dom, t, tid_ in con.execute(
        f"SELECT {domain_col}, {text}, {text_id} FROM NVTX_EVENTS WHERE eventType = {_NVTX_DOMAIN_CREATE}"
    ):
        domains[dom] = t if t is not None else strings.get(tid_)
    open_ranges = bad = 0
    for start, end, gtid, t, tid_, dom, _etype in con.execute(
        f'SELECT "start", "end", {_int("globalTid")}, {text}, {text_id}, {domain_col}, eventType FROM NVTX_EVENTS '
        f"WHERE eventType IN ({_NVTX_PUSHPOP}, {_NVTX_STARTEND}) ORDER BY \"start\""
    ):
        if end is None:
            open_ranges += 1  # never closed before capture stopped: no extent to attribute
            continue
        if not isinstance(start, int) or not isinstance(end, int) or end < start or max(-start, end) > 2**62:
            bad += 1
            continue
        label = t if t is not None else strings.get(tid_)
        if label is None:
            label = ""
        pid, tid = _gtid_pid(gtid), _gtid_tid(gtid)
        m = _EMIT_NVTX.match(label)
        if m:
            sizes = _sizes(m.group("rest"))
            ocols["name"].append(m.group("name"))
            ocols["source"].append("nvtx")
            ocols["start_ns"].append(start)
            ocols["end_ns"].append(end)
            ocols["dur_ns"].append(end - start)
            ocols["pid"].append(pid)
            ocols["tid"].append(tid)
            ocols["external_id"].append(int(m.group("op_id")))
            ocols["input_dims"].append(_json_dims(sizes) if sizes else None)
            ocols["input_types"].append(None)
            # Under emit_nvtx, record_function labels (stage markers among them) arrive in the same
            # format as operators; anything not namespaced like an operator is also kept as a range.
            if "::" in m.group("name"):
                continue
            label = m.group("name")
        rcols["name"].append(label)
        rcols["kind"].append("nvtx")
        rcols["domain"].append("emit_nvtx" if m else domains.get(dom) if dom else None)
        rcols["start_ns"].append(start)
        rcols["end_ns"].append(end)
        rcols["dur_ns"].append(end - start)
        rcols["pid"].append(pid)
        rcols["tid"].append(tid)
    if open_ranges:
        absent.append(f"NVTX_EVENTS: {open_ranges} ranges never closed (skipped)")
    if bad:
        absent.append(f"NVTX_EVENTS: {bad} ranges with non-integer or negative extents (skipped)")
    rcols["range_id"] = list(range(len(rcols["name"])))
    ocols["op_id"] = list(range(len(ocols["name"])))
    return to_table(rcols, RANGE_SCHEMA), to_table(ocols, OP_SCHEMA)


def _json_dims(text: str) -> str | None:
    try:
        return json.dumps(json.loads(text), separators=(",", ":"))
    except ValueError:
        return None


def _memops(con: sqlite3.Connection, tables: dict[str, set[str]], absent: list[str]):
    cols: dict[str, list] = {k: [] for k in MEMOP_SCHEMA.names}
    kinds: dict[int, str] = {}
    if {"id", "label"} <= tables.get("ENUM_CUDA_MEMCPY_OPER", set()):
        kinds = {i: label for i, label in con.execute("SELECT id, label FROM ENUM_CUDA_MEMCPY_OPER")}
    for table, kind in (("CUPTI_ACTIVITY_KIND_MEMCPY", "memcpy"), ("CUPTI_ACTIVITY_KIND_MEMSET", "memset")):
        tc = tables.get(table)
        if tc is None or not {"start", "end"} <= tc:
            absent.append(table if tc is None else f"{table} (unexpected columns)")
            continue
        ck, dev, stream, nbytes, corr_col = (
            _int(f'"{c}"', bits) if c in tc else "NULL"
            for c, bits in (("copyKind", 64), ("deviceId", 32), ("streamId", 64), ("bytes", 64), ("correlationId", 64))
        )
        _skipped(con, table, absent, "rows")
        for start, end, d, s, corr, b, k in con.execute(
            f'SELECT "start", "end", {dev}, {stream}, {corr_col}, {nbytes}, {ck} FROM "{table}" WHERE {_GOOD_EXTENT}'
        ):
            label = kinds.get(k, str(k)) if k is not None else None
            cols["kind"].append(kind)
            cols["name"].append(f"Memcpy {label}" if kind == "memcpy" else "Memset")
            cols["start_ns"].append(start)
            cols["end_ns"].append(end)
            cols["dur_ns"].append(end - start)
            cols["bytes"].append(b)
            cols["device"].append(d)
            cols["stream"].append(s)
            cols["correlation"].append(corr)
            cols["copy_kind"].append(label)
    order = sorted(range(len(cols["kind"])), key=lambda i: cols["start_ns"][i])
    cols = {k: [v[i] for i in order] for k, v in cols.items() if v or k != "memop_id"}
    cols["memop_id"] = list(range(len(order)))
    return to_table(cols, MEMOP_SCHEMA)


def _meta(con: sqlite3.Connection, tables: dict[str, set[str]], absent: list[str]):
    gpu_name = None
    if "TARGET_INFO_GPU" in tables and "name" in tables["TARGET_INFO_GPU"]:
        names = sorted({r[0] for r in con.execute(
            "SELECT name FROM TARGET_INFO_GPU WHERE typeof(name) = 'text'") if r[0]})
        gpu_name = ", ".join(names) or None
    else:
        absent.append("TARGET_INFO_GPU")
    trace_meta: dict[str, object] = {}
    tool_versions: dict[str, str] = {}
    meta_table = next((t for t in ("META_DATA_EXPORT", "EXPORT_META_DATA")
                       if {"name", "value"} <= tables.get(t, set())), None)
    if meta_table:
        export = dict(con.execute(f'SELECT name, value FROM "{meta_table}"'))
        trace_meta["export"] = export
        if "EXPORT_PRODUCT_VERSION" in export:
            tool_versions["nsys"] = str(export["EXPORT_PRODUCT_VERSION"])
        if "EXPORT_SCHEMA_VERSION" in export:
            tool_versions["nsys_schema"] = str(export["EXPORT_SCHEMA_VERSION"])
    else:
        absent.append("META_DATA_EXPORT")
    if {"name", "value"} <= tables.get("META_DATA_CAPTURE", set()):
        capture = dict(con.execute("SELECT name, value FROM META_DATA_CAPTURE"))
        keep = {k: v for k, v in capture.items() if "VERSION" in k.upper() or "COMMAND" in k.upper()}
        trace_meta["capture"] = keep
        for k, v in keep.items():
            if k.upper() in ("CUDA_DRIVER_VERSION", "CUDA_VERSION", "NSYS_VERSION"):
                tool_versions[k.lower()] = str(v)
    if "name" in tables.get("TARGET_INFO_CUDA_GPU", set()) and gpu_name is None:
        row = con.execute("SELECT name FROM TARGET_INFO_CUDA_GPU WHERE typeof(name) = 'text' LIMIT 1").fetchone()
        gpu_name = row[0] if row else None
    return gpu_name, tool_versions, trace_meta
