"""Two writers on one database, and an import killed with SIGKILL in the middle of a file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from robust_util import KINETO_TORCH1, NSYS_LEGACY, NSYS_REGISTERED, ROOT, error_lines, tk

import tracekit
from tracekit.errors import TracekitError

# A writer that imports one file, says so through a marker file, then keeps the database open
# until the release file appears (or the given seconds pass).
HOLDER = """
import sys, time
from pathlib import Path
import tracekit
db = tracekit.open(sys.argv[1])
[r] = db.import_paths([sys.argv[2]])
assert r.status == "imported", r.error
Path(sys.argv[3]).touch()
deadline = time.monotonic() + float(sys.argv[4])
while time.monotonic() < deadline and not Path(sys.argv[3] + ".release").exists():
    time.sleep(0.05)
db.close()
"""

# An import that commits one file, then stops inside the second file's transaction (after its
# rows are inserted, during enrichment) and waits to be killed.
HANG_IN_TRANSACTION = """
import sys, time
from pathlib import Path
import tracekit
from tracekit import importer
real = importer._enrich
def stuck(con, run_id, *rest):
    real(con, run_id, *rest)
    if con.execute("SELECT count(*) FROM runs").fetchone()[0] == 2:
        Path(sys.argv[4]).touch()
        time.sleep(600)
importer._enrich = stuck
db = tracekit.open(sys.argv[1])
db.import_paths([sys.argv[2], sys.argv[3]])
"""


def wait_for(marker: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"helper exited early: {proc.stderr.read() if proc.stderr else ''}")
        if time.monotonic() > deadline:
            raise AssertionError("helper never got there")
        time.sleep(0.05)


def counts(db_path: Path) -> dict[str, int]:
    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return dict(con.execute("SELECT source_name, n_kernels FROM runs").fetchall()) | {
            "kernels": con.execute("SELECT count(*) FROM kernels").fetchone()[0]}
    finally:
        con.close()


def kernels_in(path: Path) -> int:
    import sqlite3

    return sqlite3.connect(path).execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]


def test_second_import_waits_for_the_first_and_both_runs_land(tmp_path):
    db = tmp_path / "shared.duckdb"
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(NSYS_LEGACY), str(ready), "60"],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready, holder)
        second = subprocess.Popen([sys.executable, "-m", "tracekit.outputs.cli", "import", str(NSYS_REGISTERED),
                                   "--db", str(db)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        # Release the first writer only once the second has said it is waiting for it.
        first_line = second.stderr.readline()
        Path(str(ready) + ".release").touch()
        rest = second.communicate(timeout=120)[1]
    finally:
        Path(str(ready) + ".release").touch()
        holder.wait(timeout=60)
    assert holder.returncode == 0
    assert second.returncode == 0, first_line + rest
    assert "locked by another tracekit process; waiting" in first_line
    got = counts(db)
    assert got[NSYS_LEGACY.name] == kernels_in(NSYS_LEGACY)
    assert got[NSYS_REGISTERED.name] == kernels_in(NSYS_REGISTERED)
    assert got["kernels"] == kernels_in(NSYS_LEGACY) + kernels_in(NSYS_REGISTERED)


def test_waiting_gives_up_with_a_clear_error(tmp_path):
    db = tmp_path / "busy.duckdb"
    ready = tmp_path / "ready"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(db), str(NSYS_LEGACY), str(ready), "20"],
                              cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(ready, holder)
        with pytest.raises(TracekitError, match="locked by another process"):
            tracekit.open(db, wait_s=0.5)
    finally:
        holder.kill()
        holder.wait()


def test_same_files_imported_twice_at_once_make_one_run_each(tmp_path):
    db = tmp_path / "race.duckdb"
    cmd = [sys.executable, "-m", "tracekit.outputs.cli", "import", str(NSYS_LEGACY), str(KINETO_TORCH1), "--db", str(db)]
    procs = [subprocess.Popen(cmd, cwd=ROOT, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    # The process that got the lock second finds both files there and skips them.
    assert sorted(o.count("already imported") for o in outs) == [0, 2], outs
    con = duckdb.connect(str(db), read_only=True)
    assert sorted(r[0] for r in con.execute("SELECT source_name FROM runs").fetchall()) == \
        sorted([NSYS_LEGACY.name, KINETO_TORCH1.name])


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL")
def test_sigkill_mid_file_leaves_a_consistent_database_and_the_file_reimports(tmp_path):
    db = tmp_path / "killed.duckdb"
    inside = tmp_path / "inside"
    proc = subprocess.Popen([sys.executable, "-c", HANG_IN_TRANSACTION, str(db), str(NSYS_LEGACY),
                             str(NSYS_REGISTERED), str(inside)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(inside, proc)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    # The committed first file is whole; nothing of the second file's transaction survived.
    assert counts(db) == {NSYS_LEGACY.name: kernels_in(NSYS_LEGACY), "kernels": kernels_in(NSYS_LEGACY)}
    again = tk("import", str(NSYS_LEGACY), str(NSYS_REGISTERED), "--db", str(db))
    assert again.returncode == 0 and not error_lines(again.stderr), again.stderr
    assert "already imported" in again.stderr
    got = counts(db)
    assert got[NSYS_REGISTERED.name] == kernels_in(NSYS_REGISTERED)
    assert got["kernels"] == kernels_in(NSYS_LEGACY) + kernels_in(NSYS_REGISTERED)


def test_a_parser_process_killed_mid_import_fails_its_files_cleanly(tmp_path, monkeypatch):
    """With -j, a parser process that dies (the OOM killer's SIGKILL) breaks the pool: every file
    not yet stored is reported failed, nothing half-stored, no exception escapes."""
    import multiprocessing

    from tracekit import importer

    if multiprocessing.get_start_method() != "fork":
        pytest.skip("the crash is injected into forked workers")
    real = importer._parse

    def dying(path, nsys):
        if path == KINETO_TORCH1:
            os.kill(os.getpid(), signal.SIGKILL)
        return real(path, nsys)

    monkeypatch.setattr(importer, "_parse", dying)
    db = tracekit.open(tmp_path / "pool.duckdb")
    files = [NSYS_LEGACY, KINETO_TORCH1, NSYS_REGISTERED]
    results = db.import_paths(files, jobs=2)
    assert sorted(r.path for r in results) == sorted(map(str, files))
    by_path = {r.path: r for r in results}
    assert by_path[str(KINETO_TORCH1)].status == "failed"
    assert "parser process died" in by_path[str(KINETO_TORCH1)].error
    stored = {r.path for r in results if r.status == "imported"}
    rows = db.con.execute("SELECT source_path, n_kernels, (SELECT count(*) FROM kernels k WHERE k.run_id = r.run_id) "
                          "FROM runs r").fetchall()
    assert {p for p, _, _ in rows} == stored
    assert all(n == k for _, n, k in rows)
    db.close()
