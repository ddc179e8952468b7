"""The nsys reader's fast paths (bare ADBC reads filtered in Arrow, a large kernel table read in two
rowid ranges, dictionary name columns) against plain SQL over the same real export."""

from __future__ import annotations

import shutil
import sqlite3
from collections import Counter
from itertools import pairwise
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from conftest import NSYS_L2

from tracekit.readers import nsys_sqlite
from tracekit.readers.nsys_sqlite import _CUT_ROWS, _cuts, _tables

K = "CUPTI_ACTIVITY_KIND_KERNEL"
RT = "CUPTI_ACTIVITY_KIND_RUNTIME"


def good(t: str = "") -> str:
    """The reader's documented rule for a usable extent, in SQL (t: table alias with its dot)."""
    s, e = f"{t}start", f'{t}"end"'
    return (f"typeof({s}) = 'integer' AND typeof({e}) = 'integer' AND {e} >= {s} "
            f"AND {s} >= -4611686018427387904 AND {e} <= 4611686018427387904")


def launched(t: str = "") -> str:
    """The rule for a launch, in SQL: a call whose correlation id some GPU row (a kernel or memory
    operation the reader keeps) has."""
    gpu = " UNION ALL ".join(f"SELECT correlationId FROM {g} WHERE {good()}"
                            for g in (K, "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET"))
    return f"{t}correlationId IN ({gpu})"


def _grow(con: sqlite3.Connection, table: str, rows: int) -> None:
    """Copies of the table's rows, each shifted past the last, until it holds `rows` rows."""
    cols = [r[1] for r in con.execute(f"PRAGMA table_info({table})")]
    shift = con.execute(f'SELECT max("end") - min(start) + 1 FROM {table}').fetchone()[0]
    while con.execute(f"SELECT count(*) FROM {table}").fetchone()[0] < rows:
        sel = ", ".join(f'"{c}" + {shift}' if c in ("start", "end") else f'"{c}"' for c in cols)
        con.execute(f"INSERT INTO {table} SELECT {sel} FROM {table}")
        shift *= 2


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> Path:
    """The real export grown past the cut size, with gaps in its rowids, ties and bad extents in
    both halves, and a driver table beside the runtime one (some names shared, some inline text)."""
    p = tmp_path_factory.mktemp("nsysfast") / "big.sqlite"
    shutil.copy(NSYS_L2, p)
    con = sqlite3.connect(p)
    _grow(con, K, 2 * _CUT_ROWS + 10_000)
    _grow(con, RT, 2 * _CUT_ROWS)
    con.execute(f"DELETE FROM {K} WHERE rowid % 5 = 0")
    # Ties in (start, end) across both halves: kernel ids follow the file's order among them.
    con.execute(f'UPDATE {K} SET start = 1000, "end" = 2000 WHERE rowid % 1013 = 3')
    con.execute(f'UPDATE {K} SET "end" = start - 1 WHERE rowid % 997 = 1')
    con.execute(f'UPDATE {K} SET start = -4611686018427387905 WHERE rowid % 1009 = 2')
    con.execute(f'UPDATE {RT} SET "end" = start - 3 WHERE rowid % 499 = 0')
    con.execute(f"CREATE TABLE CUPTI_ACTIVITY_KIND_DRIVER AS SELECT * FROM {RT} WHERE rowid % 4 = 0")
    con.execute("UPDATE CUPTI_ACTIVITY_KIND_DRIVER SET nameId = 'cuLaunchKernel' WHERE rowid % 3 = 0")
    con.commit()
    con.close()
    return p


@pytest.mark.parametrize("slice_rows", [nsys_sqlite._SLICE_ROWS, 7_001])
def test_big_table_is_cut_in_rowid_slices(big, monkeypatch, slice_rows):
    monkeypatch.setattr(nsys_sqlite, "_SLICE_ROWS", slice_rows)
    con = sqlite3.connect(big)
    cuts = _cuts(con, K, _tables(con)[K])
    lo, hi = con.execute(f"SELECT min(rowid), max(rowid) FROM {K}").fetchone()
    assert len(cuts) == max(2, -(-(hi - lo + 1) // slice_rows))
    n = con.execute(f"SELECT count(*) FROM {K}").fetchone()[0]
    assert sum(con.execute(f"SELECT count(*) FROM {K}{w}").fetchone()[0] for w in cuts) == n
    # Consecutive and disjoint: each row in exactly one slice, slices in rowid order.
    firsts = [con.execute(f"SELECT min(rowid), max(rowid) FROM {K}{w}").fetchone() for w in cuts]
    assert all(a[1] < b[0] for a, b in pairwise(firsts) if a[1] is not None and b[0] is not None)


@pytest.fixture(params=["default slices", "many slices"])
def slices(request, monkeypatch):
    """The reader with its usual slices, and with slices of a few thousand rows (dozens a table,
    more than the workers: slices finish out of order)."""
    if request.param == "many slices":
        monkeypatch.setattr(nsys_sqlite, "_SLICE_ROWS", 5_003)
    return request.param


def test_kernels_are_the_good_rows_in_start_order(big, slices):
    con = sqlite3.connect(big)
    expected = con.execute(f"SELECT start, \"end\", correlationId, gridX FROM {K} WHERE {good()} "
                           "ORDER BY start, \"end\", rowid").fetchall()
    skipped = con.execute(f"SELECT count(*) FROM {K} WHERE NOT ({good()})").fetchone()[0]
    assert skipped > 0
    data = nsys_sqlite.read(big)
    k = data.kernels
    got = list(zip(*(k.column(c).to_pylist() for c in ("start_ns", "end_ns", "correlation", "grid_x")), strict=True))
    assert got == expected
    assert f"{K}: {skipped} kernels with missing, non-integer or negative extents (skipped)" in data.absent


def test_name_columns_are_dictionaries_of_the_names_used(big, slices):
    con = sqlite3.connect(big)
    expected = Counter(v for (v,) in con.execute(
        f"SELECT s.value FROM {K} k JOIN StringIds s ON s.id = k.demangledName WHERE {good('k.')}"))
    data = nsys_sqlite.read(big)
    for table, col in (("kernels", "name"), ("kernels", "short_name"), ("launches", "name"), ("launches", "kind")):
        arr = data.table(table).column(col)
        assert arr.type == pa.dictionary(pa.int32(), pa.string()), (table, col)
        values = [v for chunk in arr.chunks for v in chunk.dictionary.to_pylist()]
        # Each string once, and only strings some row has: a consumer may key on the codes.
        assert len(values) == len(set(values)) and set(values) == set(arr.to_pylist()), (table, col)
    assert Counter(data.kernels.column("name").to_pylist()) == expected


def test_launches_of_runtime_and_driver_tables_in_one_column(big, slices):
    con = sqlite3.connect(big)
    expected = []
    for table, kind in ((RT, "runtime"), ("CUPTI_ACTIVITY_KIND_DRIVER", "driver")):
        expected += [(n, kind, s, c) for n, s, c in con.execute(
            f"SELECT coalesce(s.value, r.nameId), r.start, r.correlationId FROM {table} r "
            f"LEFT JOIN StringIds s ON s.id = r.nameId AND typeof(r.nameId) = 'integer' "
            f"WHERE {good('r.')} AND {launched('r.')} ORDER BY r.rowid")]
    n_calls = con.execute(f"SELECT count(*) FROM {RT}").fetchone()[0]
    assert 0 < len(expected) < n_calls / 2  # most calls launch nothing, and are not launches
    la = nsys_sqlite.read(big).launches
    got = list(zip(*(la.column(c).to_pylist() for c in ("name", "kind", "start_ns", "correlation")), strict=True))
    assert got == expected
    assert la.column("launch_id").to_pylist() == list(range(len(expected)))
    assert "cuLaunchKernel" in la.column("name").chunk(0).dictionary.to_pylist()


def test_a_value_only_the_guarded_read_takes_in_a_late_slice(big, tmp_path, monkeypatch):
    """Text where an integer belongs, in the last slices only: the slices already read are
    dropped and the whole table is read again guarded (the value becomes NULL), rows in order."""
    monkeypatch.setattr(nsys_sqlite, "_SLICE_ROWS", 5_003)
    p = tmp_path / "late.sqlite"
    shutil.copy(big, p)
    con = sqlite3.connect(p)
    hi = con.execute(f"SELECT max(rowid) FROM {RT}").fetchone()[0]
    con.execute(f"UPDATE {RT} SET globalTid = 'x' || globalTid WHERE rowid > {hi - 50}")
    con.commit()
    expected = con.execute(
        f"SELECT start, CASE WHEN typeof(globalTid) = 'integer' THEN globalTid >> 24 & 16777215 END FROM {RT} "
        f"WHERE {good()} AND {launched()} ORDER BY rowid").fetchall()
    assert any(pid is None for _, pid in expected[-20:])
    la = nsys_sqlite.read(p).launches
    la = la.filter(pc.equal(la.column("kind").cast(pa.string()), "runtime"))
    got = list(zip(la.column("start_ns").to_pylist(), la.column("pid").to_pylist(), strict=True))
    assert got == expected


@pytest.mark.parametrize("change", [
    # (a view in a table's place is refused before any read: tests/robustness/test_hostile_sqlite.py)
    f"CREATE TABLE w (a INTEGER PRIMARY KEY, b) WITHOUT ROWID; DROP TABLE {K}; ALTER TABLE w RENAME TO {K}",
    f"ALTER TABLE {K} ADD COLUMN oid INTEGER",
])
def test_tables_without_a_usable_rowid_are_read_whole(tmp_path, change):
    p = tmp_path / "t.sqlite"
    shutil.copy(NSYS_L2, p)
    con = sqlite3.connect(p)
    _grow(con, K, 2 * _CUT_ROWS + 10_000)
    con.executescript(change)
    assert _cuts(con, K, _tables(con)[K]) == [""]


def test_launches_with_correlation_ids_scattered_wide(tmp_path):
    """Correlation ids far apart (a hand-made file): the launch test takes its other path
    (np.isin instead of a lookup table over the ids' range), with the same rows."""
    p = tmp_path / "wide.sqlite"
    shutil.copy(NSYS_L2, p)
    con = sqlite3.connect(p)
    lo = con.execute(f"SELECT min(correlationId) FROM {K}").fetchone()[0]
    for t in (K, RT):
        con.execute(f"UPDATE {t} SET correlationId = correlationId + (1 << 40) WHERE correlationId = {lo}")
    con.commit()
    expected = con.execute(f"SELECT start, correlationId FROM {RT} r WHERE {good('r.')} AND {launched('r.')} "
                           "ORDER BY rowid").fetchall()
    assert (1 << 40) + lo in [c for _, c in expected]
    la = nsys_sqlite.read(p).launches
    assert list(zip(la.column("start_ns").to_pylist(), la.column("correlation").to_pylist(), strict=True)) == expected


def _thp_disabled() -> int:
    """The process's "THP disable" flag, read through /proc (independent of the reader's prctl)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("THP_enabled:"):
            return 1 - int(line.split()[1])
    pytest.skip("this kernel does not report THP_enabled in /proc/self/status")


@pytest.mark.skipif(nsys_sqlite._prctl() is None, reason="prctl is Linux's")
@pytest.mark.parametrize("before", [0, 1])
def test_no_huge_pages_while_reading(monkeypatch, before):
    """Transparent huge pages are off while the export is read (zeroing 2 MB per first touch cost
    the reader 1-1.5 CPU-s at 3.75M kernels), and the process's own setting is back afterwards,
    also when the process had turned them off itself."""
    prctl = nsys_sqlite._prctl()
    prctl(nsys_sqlite._PR_SET_THP_DISABLE, before, 0, 0, 0)
    seen = []
    inner = nsys_sqlite._read

    def spy(*args):
        seen.append(_thp_disabled())
        return inner(*args)

    monkeypatch.setattr(nsys_sqlite, "_read", spy)
    try:
        assert _thp_disabled() == before
        assert nsys_sqlite.read(NSYS_L2).kernels.num_rows
        assert seen == [1]
        assert _thp_disabled() == before
    finally:
        prctl(nsys_sqlite._PR_SET_THP_DISABLE, 0, 0, 0, 0)


def test_free_memory_given_back_after_reading(monkeypatch):
    """What the slices left free (the Arrow pool's, and the C heap's: SQLite's and ADBC's buffers,
    on the workers' arenas, ~47 MB of a 3.75M-kernel import's later peak) goes back to the system
    once, after the read: readers.common.give_back_memory (its own test: test_give_back_memory.py)."""
    calls = []
    monkeypatch.setattr(nsys_sqlite, "give_back_memory", lambda: calls.append("given back"))
    assert nsys_sqlite.read(NSYS_L2).kernels.num_rows
    assert calls == ["given back"]


def _rss_mb() -> float:
    return int(Path("/proc/self/statm").read_text().split()[1]) * 4096 / 2**20


@pytest.mark.skipif(not Path("/proc/self/statm").exists(), reason="reads the resident size from /proc")
def test_all_null_columns_take_no_memory():
    """A column the export leaves all NULL (graphNodeId without CUDA graphs, per plain sqlite3)
    comes back all NULL, over buffers nothing wrote: 64 MB of such int64 values add (almost)
    nothing to the resident size, where pa.nulls would add all of it."""
    con = sqlite3.connect(NSYS_L2)
    rows, valued = con.execute(f"SELECT count(*), count(graphNodeId) FROM {K}").fetchone()
    con.close()
    assert valued == 0
    col = nsys_sqlite.read(NSYS_L2).kernels.column("graph_node_id")
    assert col.null_count == len(col) == rows
    for t in (pa.int32(), pa.int64(), pa.binary()):
        assert nsys_sqlite._nulls(1000, t).equals(pa.nulls(1000, t))
    before = _rss_mb()
    held = [nsys_sqlite._nulls(1 << 20, pa.int64()) for _ in range(8)]
    assert _rss_mb() - before < 8
    assert sum(a.null_count for a in held) == 8 << 20
