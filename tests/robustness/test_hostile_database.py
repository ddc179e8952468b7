"""A database someone sent you (issue 17): opening it cannot read other files, load extensions or
reach the network, and what it stores cannot replace tracekit's own views, tables or functions."""

from __future__ import annotations

import hashlib
import shutil

import duckdb
import pytest
from conftest import KINETO_L2, NSYS_L2
from robust_util import error_lines, tk

import tracekit

MARK = "TOPSECRET-4242-not-for-tracekit"


@pytest.fixture()
def secret(tmp_path):
    path = tmp_path / "secret.txt"
    path.write_text(MARK + "\n")
    return path


def _tamper(db, sql: str) -> None:
    """Edit the file as an attacker would: with a plain DuckDB, full access."""
    con = duckdb.connect(str(db))
    con.execute(sql)
    con.close()


def _leaky_kernels_view(db, secret) -> None:
    # The stored `kernels` view, same columns, with the secret file in every kernel's name.
    con = duckdb.connect(str(db))
    body = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'kernels' AND NOT temporary"
                       ).fetchall()[0][0]
    inner = body.split(" AS ", 1)[1].rstrip().rstrip(";")
    con.execute(f"CREATE OR REPLACE VIEW kernels AS SELECT * REPLACE ("
                f"(SELECT content FROM read_text('{secret}')) AS short_name, "
                f"(SELECT content FROM read_text('{secret}')) AS name) FROM ({inner})")
    # The attacker's view works for the attacker: the secret is really reachable through it.
    assert MARK in con.execute("SELECT any_value(short_name) FROM kernels").fetchall()[0][0]
    con.close()


@pytest.mark.parametrize("args", [
    ["top"], ["stages"], ["composition"], ["diff", "1", "2"], ["rules", "coverage"], ["runs"],
    ["query", "SELECT short_name, name FROM kernels LIMIT 5"], ["steps", "--run", "1"],
])
def test_a_stored_kernels_view_cannot_leak_a_file(shared_db_copy, secret, args):
    _leaky_kernels_view(shared_db_copy, secret)
    proc = tk(*args, "--db", str(shared_db_copy))
    assert MARK not in proc.stdout and MARK not in proc.stderr
    assert "Traceback" not in proc.stderr
    # tracekit reads its own definition of `kernels`: the command works as on an untouched copy.
    assert proc.returncode == 0, proc.stderr


def test_a_stored_kernels_view_cannot_leak_into_the_report(shared_db_copy, secret, tmp_path):
    _leaky_kernels_view(shared_db_copy, secret)
    out = tmp_path / "report"
    proc = tk("report", "--db", str(shared_db_copy), "--out", str(out), timeout=300)
    assert proc.returncode == 0, proc.stderr
    for f in out.rglob("*"):
        if f.is_file():
            assert MARK.encode() not in f.read_bytes(), f


def test_the_api_reads_tracekits_kernels_and_cannot_read_files(shared_db_copy, secret):
    clean = tracekit.open(shared_db_copy, read_only=True)
    before = clean.query("SELECT kernel_id, short_name FROM kernels ORDER BY run_id, kernel_id").rows()
    clean.close()
    _leaky_kernels_view(shared_db_copy, secret)
    _tamper(shared_db_copy, f"CREATE VIEW leak AS SELECT content FROM read_text('{secret}')")
    with tracekit.open(shared_db_copy) as db:  # writable: the importer's connection too
        assert db.query("SELECT kernel_id, short_name FROM kernels ORDER BY run_id, kernel_id").rows() == before
        with pytest.raises(duckdb.Error) as err:
            db.query("SELECT * FROM leak")
        assert MARK not in str(err.value)
        with pytest.raises(duckdb.Error):
            db.con.execute("SET enable_external_access = true")  # locked
        with pytest.raises(duckdb.Error):
            db.con.execute(f"COPY (SELECT 1) TO '{secret.parent / 'written.csv'}'")
    assert not (secret.parent / "written.csv").exists()


def test_importing_into_a_tampered_database_stores_through_tracekits_view(shared_db_copy, secret):
    _leaky_kernels_view(shared_db_copy, secret)
    proc = tk("import", str(KINETO_L2), "--replace", "--db", str(shared_db_copy))
    assert proc.returncode == 0, proc.stderr
    proc = tk("query", "--db", str(shared_db_copy), "SELECT count(*) FILTER (WHERE short_name LIKE '%TOPSECRET%') FROM kernels")
    assert proc.returncode == 0 and MARK not in proc.stdout


@pytest.mark.parametrize("tamper, says", [
    ("DROP TABLE runs; CREATE VIEW runs AS SELECT * FROM read_text('SECRET')", "`runs` is a view, not a table"),
    ("DROP TABLE kernel_rows; CREATE VIEW kernel_rows AS SELECT 1 AS run_id", "`kernel_rows` is a view, not a table"),
    ("CREATE MACRO sum(x) AS 99", "stored SQL macros (sum)"),
    ("CREATE MACRO round(x, y) AS 0", "stored SQL macros (round)"),
    ("ALTER TABLE runs ALTER COLUMN kernel_time_ns TYPE VARCHAR", "runs.kernel_time_ns is VARCHAR, expected BIGINT"),
])
def test_stored_objects_that_would_change_results_are_refused(shared_db_copy, secret, tamper, says):
    _tamper(shared_db_copy, tamper.replace("SECRET", str(secret)))
    before = hashlib.sha256(shared_db_copy.read_bytes()).hexdigest()
    for args in (["stages"], ["runs"], ["import", str(KINETO_L2)]):
        proc = tk(*args, "--db", str(shared_db_copy))
        assert proc.returncode == 1, (args, proc.stdout)
        assert "Traceback" not in proc.stderr and MARK not in proc.stderr
        [line] = error_lines(proc.stderr)
        assert line.startswith(f"tracekit: error: {shared_db_copy}: ") and says in line, line
    assert hashlib.sha256(shared_db_copy.read_bytes()).hexdigest() == before  # nothing written


@pytest.mark.parametrize("trace, kind", [(NSYS_L2, "an SQLite file"), (KINETO_L2, "a gzip file")])
@pytest.mark.parametrize("args", [["runs"], ["stages"], ["import", str(KINETO_L2)], ["query", "SELECT 1"]])
def test_a_trace_given_as_the_database_is_refused_untouched(tmp_path, trace, kind, args):
    copy = tmp_path / trace.name
    shutil.copy(trace, copy)
    before = hashlib.sha256(copy.read_bytes()).hexdigest()
    proc = tk(*args, "--db", str(copy))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [
        f"tracekit: error: {copy}: this is a trace ({kind}{' (an nsys export?)' if 'SQLite' in kind else ''}), "
        f"not a database: import it (tracekit import {copy} --db study.duckdb)"]
    assert hashlib.sha256(copy.read_bytes()).hexdigest() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [copy.name]  # no .wal, no extension files


def test_a_json_trace_given_as_the_database_is_refused(tmp_path):
    p = tmp_path / "trace.json"
    p.write_text('\ufeff {"traceEvents": []}')
    proc = tk("runs", "--db", str(p))
    assert proc.returncode == 1
    assert "this is a trace (a JSON file" in error_lines(proc.stderr)[0]


def test_a_directory_as_the_database_is_one_line(tmp_path):
    proc = tk("import", str(KINETO_L2), "--db", str(tmp_path))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert error_lines(proc.stderr) == [f"tracekit: error: {tmp_path}: not a database file"]


def test_every_connection_is_opened_without_external_access(shared_db_path):
    for read_only in (True, False):
        db = tracekit.open(shared_db_path if read_only else shared_db_path.parent / "w.duckdb", read_only=read_only)
        got = dict(db.con.execute(
            "SELECT name, value FROM duckdb_settings() WHERE name IN ('enable_external_access', "
            "'autoinstall_known_extensions', 'autoload_known_extensions', 'lock_configuration')").fetchall())
        db.close()
        assert got == {"enable_external_access": "false", "autoinstall_known_extensions": "false",
                       "autoload_known_extensions": "false", "lock_configuration": "true"}


def test_a_database_whose_checksum_starts_like_a_trace_is_still_a_database(tmp_path):
    """A DuckDB file starts with an 8-byte checksum (any bytes: it was '{' for a test database once)
    and then `DUCK`: only a file without that magic is looked at as a possible trace."""
    from tracekit.store import _trace_kind

    db = tmp_path / "real.duckdb"
    tracekit.open(db).close()
    head = bytearray(db.read_bytes()[:4096])
    assert head[8:12] == b"DUCK"
    for first in (b"{", b"[", b"\x1f\x8b", b"SQLite format 3\x00"[:8]):
        probe = tmp_path / "probe.duckdb"
        probe.write_bytes(bytes(first) + bytes(head[len(first):]))
        assert _trace_kind(str(probe)) is None, first


def test_an_older_database_read_only_still_gets_tracekits_kernels_view(shared_db_copy):
    """A database from before multi-rank runs (no kernel_rows.rank) opened read-only: `kernels` is
    this code's definition over a NULL rank stand-in, never the view the file stores (here one
    that inflates every duration a thousandfold)."""
    con = duckdb.connect(str(shared_db_copy))
    truth = con.execute("SELECT run_id, count(*), sum(dur_ns) FROM kernel_rows GROUP BY 1 ORDER BY 1").fetchall()
    body = con.execute("SELECT sql FROM duckdb_views() WHERE view_name = 'kernels' AND NOT temporary").fetchall()
    inner = body[0][0].split(" AS ", 1)[1].rstrip().rstrip(";").replace("r.rank,", "")
    con.execute("DROP VIEW kernels")
    con.execute("ALTER TABLE kernel_rows DROP COLUMN rank")
    con.execute(f"CREATE VIEW kernels AS SELECT * REPLACE (dur_ns * 1000 AS dur_ns) FROM ({inner})")
    assert con.execute("SELECT sum(dur_ns) FROM kernels").fetchall()[0][0] == 1000 * sum(t[2] for t in truth)
    con.close()
    with tracekit.open(shared_db_copy, read_only=True) as db:
        got = db.con.execute("SELECT run_id, count(*), sum(dur_ns) FROM kernels GROUP BY 1 ORDER BY 1").fetchall()
        assert got == truth
        assert db.con.execute("SELECT count(*) FROM kernels WHERE rank IS NOT NULL").fetchall()[0][0] == 0
