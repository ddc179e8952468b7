"""Hostile or half-written SQLite exports, built by each test from a real nsys export: nothing
hangs, nothing uncommitted is read as committed, nothing committed is silently missed."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from robust_util import NSYS_REGISTERED, tk

from tracekit.errors import TraceError
from tracekit.readers import nsys_sqlite

K = "CUPTI_ACTIVITY_KIND_KERNEL"

RECURSIVE = ("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) "
             "SELECT n AS start, n + 1 AS \"end\", n AS correlationId, n AS demangledName, n AS shortName FROM r")


def copy(tmp_path: Path, name: str = "t.sqlite") -> Path:
    p = tmp_path / name
    shutil.copy(NSYS_REGISTERED, p)
    return p


@pytest.mark.parametrize("table", [K, "StringIds", "CUPTI_ACTIVITY_KIND_RUNTIME", "NVTX_EVENTS"])
def test_recursive_view_in_place_of_a_table_is_refused_at_once(tmp_path, table):
    p = copy(tmp_path)
    con = sqlite3.connect(p)
    con.execute(f'DROP TABLE "{table}"')
    con.execute(f'CREATE VIEW "{table}" AS {RECURSIVE}')
    con.commit()
    con.close()
    t = time.monotonic()
    proc = tk("import", str(p), "--db", str(tmp_path / "t.duckdb"), timeout=60)
    assert time.monotonic() - t < 30
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert f"{table} is a view, not a table" in proc.stderr, proc.stderr


def test_views_a_tool_added_beside_the_tables_are_ignored(tmp_path):
    # Extra-P adds views of its own to real exports (external/nsys/extrap_con_kernel.sqlite).
    p = copy(tmp_path)
    con = sqlite3.connect(p)
    con.execute(f"CREATE VIEW MY_TOOL_VIEW AS {RECURSIVE}")
    con.commit()
    con.close()
    n = sqlite3.connect(p).execute(f"SELECT count(*) FROM {K}").fetchone()[0]
    assert nsys_sqlite.read(p).kernels.num_rows == n


def test_reads_past_their_time_budget_stop_and_name_the_table(tmp_path, monkeypatch):
    p = copy(tmp_path)
    monkeypatch.setattr(nsys_sqlite, "_BUDGET_BASE_S", -1.0)  # already past: the first statement stops
    monkeypatch.setattr(nsys_sqlite, "_BUDGET_S_PER_MB", 0.0)
    monkeypatch.setattr(nsys_sqlite, "_PROGRESS_EVERY", 10)  # the fixture's statements are short
    with pytest.raises(TraceError, match=r"reading .+ took longer than its budget"):
        nsys_sqlite.read(p)


def test_a_read_stopped_by_its_budget_names_the_table_it_was_reading(tmp_path, monkeypatch):
    p = copy(tmp_path)

    def no_adbc(*a, **k):
        raise RuntimeError("ADBC unavailable")  # every read through sqlite3, where the budget applies

    def expire_on_kernels(self):
        self.expired = K in self.sql
        return int(self.expired)

    monkeypatch.setattr(nsys_sqlite, "_Adbc", no_adbc)
    monkeypatch.setattr(nsys_sqlite._Budget, "progress", expire_on_kernels)
    monkeypatch.setattr(nsys_sqlite, "_PROGRESS_EVERY", 10)
    with pytest.raises(TraceError, match=f"reading {K} took longer than its budget"):
        nsys_sqlite.read(p)


def _kernel_count(p: Path) -> int:
    return sqlite3.connect(p).execute(f"SELECT count(*) FROM {K}").fetchone()[0]


def test_committed_rows_left_in_the_wal_are_not_silently_missed(tmp_path):
    p = copy(tmp_path)
    con = sqlite3.connect(p)
    con.execute("PRAGMA journal_mode=WAL")
    con.execute("PRAGMA wal_autocheckpoint=0")
    con.execute(f"INSERT INTO {K} SELECT * FROM {K} LIMIT 5")  # committed, but only in -wal
    con.commit()
    assert Path(str(p) + "-wal").stat().st_size > 32
    committed = _kernel_count(p)
    with pytest.raises(TraceError, match=r"WAL mode .*PRAGMA wal_checkpoint"):
        nsys_sqlite.read(p)
    # Once checkpointed (what the message says to do), every committed row is read.
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    con.close()
    assert nsys_sqlite.read(p).kernels.num_rows == committed


def test_uncommitted_rows_behind_a_hot_journal_are_not_read_as_committed(tmp_path):
    p = copy(tmp_path)
    committed = _kernel_count(p)
    # A writer killed mid-transaction, after its changed pages spilled into the file.
    code = (
        "import os, sqlite3, sys\n"
        "con = sqlite3.connect(sys.argv[1], isolation_level=None)\n"
        "con.execute('PRAGMA cache_size=1')\n"
        "con.execute('BEGIN')\n"
        f"con.execute('DELETE FROM {K}')\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", code, str(p)], check=True)
    journal = Path(str(p) + "-journal")
    assert journal.exists() and journal.stat().st_size > 0
    with pytest.raises(TraceError, match=r"hot rollback journal"):
        nsys_sqlite.read(p)
    # SQLite itself rolls the journal back when it opens the file for writing: all rows are there.
    assert _kernel_count(p) == committed
    assert nsys_sqlite.read(p).kernels.num_rows == committed


def test_one_huge_emit_nvtx_label_parses_in_linear_time(tmp_path):
    p = copy(tmp_path)
    con = sqlite3.connect(p)
    cols = {r[1] for r in con.execute("PRAGMA table_info(NVTX_EVENTS)")}
    label = "aten::mm, op_id = 5, " + "sizes = [" * 20_000 + "[1, 2]] x"
    start = con.execute("SELECT min(start) FROM NVTX_EVENTS").fetchone()[0]
    gtid = con.execute("SELECT globalTid FROM NVTX_EVENTS LIMIT 1").fetchone()[0]
    assert "text" in cols
    con.execute('INSERT INTO NVTX_EVENTS (start, "end", eventType, globalTid, text) VALUES (?, ?, 59, ?, ?)',
                [start, start + 10, gtid, label])
    con.commit()
    con.close()
    t = time.monotonic()
    ops = nsys_sqlite.read(p).ops
    assert time.monotonic() - t < 10  # 23 s for the label alone with the old regex
    row = [d for n, d in zip(ops.column("name").to_pylist(), ops.column("input_dims").to_pylist(), strict=True)
           if n == "aten::mm"]
    assert row == [None]  # `sizes = [sizes = ...` is not JSON: no shapes, as before


@pytest.mark.parametrize(("rest", "want"), [
    (", sizes = [[1, 2], [3]], input_op_ids = [1]", "[[1, 2], [3]]"),
    (", sizes = [[1, 2]]", "[[1, 2]]"),
    (", sizes = [[1]], [[2]], input_op_ids = [[3]]", "[[1]], [[2]]"),
    (", sizes = [[1]] trailing", None),
    (", no sizes", None),
])
def test_sizes_are_cut_where_the_old_pattern_cut_them(rest, want):
    import re

    old = re.compile(r"sizes = (\[.*?\]\])(?:, input_op_ids|$)", re.S).search(rest)
    assert (old.group(1) if old else None) == want
    assert nsys_sqlite._sizes(rest) == want


@pytest.mark.parametrize("special", ["/dev/zero", "/dev/urandom", "fifo"])
def test_devices_and_fifos_are_refused_without_reading(tmp_path, special):
    import os

    from tracekit.readers import read

    if special == "fifo":
        special = str(tmp_path / "pipe.json")
        os.mkfifo(special)
    elif not Path(special).exists():
        pytest.skip(f"{special} absent")
    with pytest.raises(TraceError, match="not a regular file"):
        read(Path(special))


def test_ctrl_c_stops_a_long_sqlite_statement(tmp_path):
    """SQLite runs a statement in C, where Python cannot deliver Ctrl-C; the reader's progress
    handler runs Python code, so the signal arrives there, stops the statement, and comes out as
    KeyboardInterrupt (not as one file's SQLite error)."""
    import os
    import signal
    import threading

    p = copy(tmp_path)
    budget = nsys_sqlite._Budget(p)
    con = sqlite3.connect(":memory:")
    con.set_progress_handler(budget.progress, nsys_sqlite._PROGRESS_EVERY)
    threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
    t = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        try:
            con.execute("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r) SELECT count(*) FROM r")
        except sqlite3.OperationalError as exc:
            raise nsys_sqlite._failed(p, exc, budget, "reading") from None
    assert time.monotonic() - t < 10
