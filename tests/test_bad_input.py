"""Bad files: one clear line naming the file, non-zero exit, nothing of the file stored, others still import."""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest
from conftest import KINETO_L2, NSYS_L2, NSYS_REP, tk

TABLES = ("runs", "run_meta", "kernels", "launches", "ranges", "ops", "memops")


def snapshot(db_path: Path) -> dict:
    import duckdb

    con = duckdb.connect(str(db_path), read_only=True)
    try:
        return {t: con.execute(f"SELECT count(*), hash(string_agg(t::VARCHAR, '|' ORDER BY t::VARCHAR)) FROM {t} t")
                .fetchone() for t in TABLES}
    finally:
        con.close()



def make_truncated_gzip(d: Path) -> Path:
    p = d / "truncated.pt.trace.json.gz"
    raw = KINETO_L2.read_bytes()
    p.write_bytes(raw[: len(raw) // 2])
    return p


def make_invalid_json(d: Path) -> Path:
    p = d / "invalid.json"
    text = gzip.decompress(KINETO_L2.read_bytes()).decode()
    p.write_text(text[:5000] + "}}}garbage")
    return p


def make_not_nsys_sqlite(d: Path) -> Path:
    p = d / "other.sqlite"
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE customers (id INTEGER, name TEXT)")
    con.execute("INSERT INTO customers VALUES (1, 'x')")
    con.commit()
    con.close()
    return p


def make_no_kernels_kineto(d: Path) -> Path:
    # The real trace with every GPU kernel removed: a CPU-only profile.
    obj = json.loads(gzip.decompress(KINETO_L2.read_bytes()))
    obj["traceEvents"] = [e for e in obj["traceEvents"] if e.get("cat") != "kernel"]
    p = d / "cpu_only.pt.trace.json.gz"
    p.write_bytes(gzip.compress(json.dumps(obj).encode()))
    return p


def make_no_kernels_nsys(d: Path) -> Path:
    p = d / "no_kernels.sqlite"
    src = sqlite3.connect(NSYS_L2)
    dst = sqlite3.connect(p)
    src.backup(dst)
    dst.execute("DELETE FROM CUPTI_ACTIVITY_KIND_KERNEL")
    dst.commit()
    dst.close()
    return p


def make_empty(d: Path) -> Path:
    p = d / "empty.json"
    p.write_bytes(b"")
    return p


BAD = {
    "truncated gzip": (make_truncated_gzip, "truncated gzip"),
    "invalid json": (make_invalid_json, "invalid JSON"),
    "sqlite not nsys": (make_not_nsys_sqlite, "not an Nsight Systems export"),
    "kineto without kernels": (make_no_kernels_kineto, "no GPU kernels"),
    "nsys without kernels": (make_no_kernels_nsys, "no GPU kernels"),
    "empty file": (make_empty, "empty file"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_file_is_one_line_and_changes_nothing(case, shared_db_copy, tmp_path):
    make, problem = BAD[case]
    bad = make(tmp_path)
    before = snapshot(shared_db_copy)
    proc = tk("import", str(bad), "--db", str(shared_db_copy))
    assert proc.returncode == 1
    errors = [line for line in proc.stderr.splitlines() if line.startswith("tracekit: error:")]
    assert len(errors) == 1, proc.stderr
    assert str(bad) in errors[0] and problem in errors[0]
    assert "Traceback" not in proc.stderr
    assert snapshot(shared_db_copy) == before


def test_bad_files_do_not_stop_good_ones(tmp_path):
    bads = [make(tmp_path) for make, _ in BAD.values()]
    db = tmp_path / "mixed.duckdb"
    proc = tk("import", *map(str, bads[:3]), str(NSYS_L2), *map(str, bads[3:]), "--db", str(db))
    assert proc.returncode == 1
    assert len([ln for ln in proc.stderr.splitlines() if ln.startswith("tracekit: error:")]) == len(bads)
    import duckdb

    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT source_name FROM runs").fetchall() == [(NSYS_L2.name,)]
    assert con.execute("SELECT count(*) FROM kernels").fetchone()[0] == sqlite3.connect(NSYS_L2).execute(
        "SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]


def test_failure_inside_the_transaction_rolls_back(shared_db_copy, monkeypatch):
    """A failure after rows were inserted (here: in enrichment) must leave no trace of the file."""
    import tracekit
    from tracekit import importer

    def boom(*a, **k):
        raise ValueError("enrichment failed")

    monkeypatch.setattr(importer, "_enrich", boom)
    before = snapshot(shared_db_copy)
    db = tracekit.open(shared_db_copy)
    [r] = db.import_paths([KINETO_L2], replace=True)
    db.close()
    assert r.status == "failed" and "enrichment failed" in r.error
    assert snapshot(shared_db_copy) == before


def test_nsys_rep_without_nsys_says_how_to_export(tmp_path):
    env = {"PATH": "/nonexistent", "HOME": str(tmp_path)}
    proc = tk("import", str(NSYS_REP), "--db", str(tmp_path / "r.duckdb"), env=env)
    assert proc.returncode == 1
    assert "nsys export --type sqlite" in proc.stderr and str(NSYS_REP) in proc.stderr


def test_query_is_read_only(shared_db_copy):
    before = snapshot(shared_db_copy)
    proc = tk("query", "--db", str(shared_db_copy), "DELETE FROM kernels")
    assert proc.returncode == 1
    assert proc.stderr.startswith("tracekit: error: query:")
    assert snapshot(shared_db_copy) == before


def test_query_csv_output(shared_db_path):
    proc = tk("query", "--db", str(shared_db_path), "--format", "csv",
              "SELECT count(*) AS n FROM kernels WHERE run_id = 1")
    assert proc.returncode == 0, proc.stderr
    n = sum(1 for e in json.loads(gzip.decompress(KINETO_L2.read_bytes()))["traceEvents"] if e.get("cat") == "kernel")
    assert proc.stdout.splitlines() == ["n", str(n)]


def test_missing_database_for_reading_is_clear(tmp_path):
    proc = tk("runs", "--db", str(tmp_path / "nope.duckdb"))
    assert proc.returncode == 1 and "no such database" in proc.stderr


def test_query_cannot_write_or_read_other_files(shared_db_path, tmp_path):
    target = tmp_path / "leak.csv"
    proc = tk("query", "--db", str(shared_db_path), f"COPY (SELECT 1) TO '{target}'")
    assert proc.returncode == 1 and not target.exists()
    proc = tk("query", "--db", str(shared_db_path), "SET enable_external_access = true")
    assert proc.returncode == 1
    proc = tk("query", "--db", str(shared_db_path), f"SELECT * FROM read_csv('{NSYS_L2}')")
    assert proc.returncode == 1 and proc.stderr.startswith("tracekit: error: query:")


def test_gzip_bomb_refused_by_ratio_at_default_limits(tmp_path):
    """At the default limits a file may inflate to 200x its size (at least 256 MiB): a 300 MiB
    bomb in a few hundred KB is refused long before the 8 GiB cap of the whole-text read."""
    from tracekit.readers import kineto

    bomb = tmp_path / "bomb.json.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write(b'{"traceEvents": [')
        for _ in range(300):
            f.write(b" " * (1 << 20))
    assert kineto.inflate_limit(bomb.stat().st_size, whole_text=False) == 256 << 20
    db = tmp_path / "b.duckdb"
    proc = tk("import", str(bomb), "--db", str(db))
    assert proc.returncode == 1
    assert "zip bomb" in proc.stderr and "200x" in proc.stderr and str(bomb) in proc.stderr


def test_real_traces_are_far_inside_the_inflate_limit():
    from tracekit.readers import kineto

    for p in (KINETO_L2,):
        for whole_text in (True, False):
            assert len(gzip.decompress(p.read_bytes())) < kineto.inflate_limit(p.stat().st_size, whole_text) / 5


def test_wrong_typed_value_past_the_first_batch_falls_back_to_guarded_reads(tmp_path):
    """The Arrow fast path takes a column's type from its first rows; a text value in an integer
    column after 65,536 good rows must still give the guarded result, not an error."""
    import tracekit

    p = tmp_path / "big_hostile.sqlite"
    src = sqlite3.connect(NSYS_L2)
    dst = sqlite3.connect(p)
    src.backup(dst)
    n0 = dst.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]
    span = dst.execute('SELECT max("end") - min(start) + 1 FROM CUPTI_ACTIVITY_KIND_KERNEL').fetchone()[0]
    cols = [r[1] for r in dst.execute("PRAGMA table_info(CUPTI_ACTIVITY_KIND_KERNEL)")]
    copies = 70_000 // n0 + 1
    for i in range(1, copies):
        sel = ", ".join(f'"{c}" + {i * span}' if c in ("start", "end") else f'"{c}"' for c in cols)
        dst.execute(f"INSERT INTO CUPTI_ACTIVITY_KIND_KERNEL SELECT {sel} "
                    f"FROM (SELECT * FROM CUPTI_ACTIVITY_KIND_KERNEL LIMIT {n0})")
    last = dst.execute('SELECT max(rowid) FROM CUPTI_ACTIVITY_KIND_KERNEL').fetchone()[0]
    dst.execute(f"UPDATE CUPTI_ACTIVITY_KIND_KERNEL SET gridX = 'not a number' WHERE rowid = {last}")
    dst.commit()
    total, bad_start = dst.execute(
        "SELECT count(*), max(start) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()
    dst.close()
    assert total > 65_536
    db = tracekit.open(tmp_path / "h.duckdb")
    [r] = db.import_paths([p])
    assert r.status == "imported", r.error
    assert db.con.execute("SELECT count(*) FROM kernels").fetchone()[0] == total
    assert db.con.execute("SELECT grid_x FROM kernels WHERE start_ns = ?", [bad_start]).fetchall()[0] == (None,)
    assert db.con.execute("SELECT count(grid_x) FROM kernels").fetchone()[0] == total - 1
