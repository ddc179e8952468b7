"""Hostile and broken input: each case is either one clear error line (nothing stored) or a
documented tolerance (docs/SUPPORTED.md) whose result is checked here."""

from __future__ import annotations

import gzip
import json
import shutil
import sqlite3
import struct
from pathlib import Path

import pytest
from robust_util import KINETO_FLOWS, NSYS_LEGACY, NSYS_REGISTERED, ROOT, error_lines, tk
from test_bad_input import snapshot

import tracekit
from tracekit.readers import kineto

K = "CUPTI_ACTIVITY_KIND_KERNEL"
BIG = 1 << 20


def kineto_obj() -> dict:
    return json.loads(gzip.decompress(KINETO_FLOWS.read_bytes()))


def write_json(p: Path, obj: object, **kw) -> Path:
    p.write_text(json.dumps(obj, **kw))
    return p


def nsys_copy(d: Path, name: str, *sql: str, src: Path = NSYS_REGISTERED) -> Path:
    p = d / name
    shutil.copy(src, p)
    con = sqlite3.connect(p)
    for s in sql:
        con.execute(s)
    con.commit()
    con.close()
    return p


def kernels_of(obj: dict) -> list[dict]:
    return [e for e in obj["traceEvents"] if e.get("cat") == "kernel"]


# ---- cases that must fail cleanly: (maker, words the one error line must contain) -------------

def corrupt_gzip_crc(d: Path) -> Path:
    raw = bytearray(KINETO_FLOWS.read_bytes())
    crc = struct.unpack("<I", raw[-8:-4])[0]
    raw[-8:-4] = struct.pack("<I", crc ^ 0xFFFFFFFF)
    p = d / "bad_crc.json.gz"
    p.write_bytes(bytes(raw))
    return p


def nan_timestamps(d: Path) -> Path:
    obj = kineto_obj()
    for e in kernels_of(obj):
        e["ts"] = float("nan")
    return write_json(d / "nan.json", obj)  # Python writes the non-JSON token NaN


def all_negative_durations(d: Path) -> Path:
    obj = kineto_obj()
    for e in kernels_of(obj):
        e["dur"] = -abs(e["dur"]) - 1
    return write_json(d / "negdur.json", obj)


def int_beyond_64_bits(d: Path) -> Path:
    obj = kineto_obj()
    kernels_of(obj)[0]["args"]["stream"] = 2**70
    return write_json(d / "overflow.json", obj)


def string_timestamp(d: Path) -> Path:
    obj = kineto_obj()
    kernels_of(obj)[0]["ts"] = "soon"
    return write_json(d / "strts.json", obj)


def empty_trace(d: Path) -> Path:
    return write_json(d / "empty_trace.json", {"traceEvents": []})


def no_events_key(d: Path) -> Path:
    return write_json(d / "no_events.json", {"schemaVersion": 1})


def whitespace_only(d: Path) -> Path:
    p = d / "blank.json"
    p.write_text("  \n\t ")
    return p


def right_tables_wrong_columns(d: Path) -> Path:
    p = d / "wrong_columns.sqlite"
    con = sqlite3.connect(p)
    con.execute(f"CREATE TABLE {K} (ts INTEGER, duration INTEGER, kernel TEXT)")
    con.execute(f"INSERT INTO {K} VALUES (1, 2, 'gemm')")
    con.execute("CREATE TABLE StringIds (id INTEGER PRIMARY KEY, value TEXT)")
    con.commit()
    con.close()
    return p


def nsys_all_tables_empty(d: Path) -> Path:
    return nsys_copy(d, "empty_export.sqlite", f"DELETE FROM {K}", "DELETE FROM CUPTI_ACTIVITY_KIND_RUNTIME")


def truncated_sqlite(d: Path) -> Path:
    p = d / "truncated.sqlite"
    p.write_bytes(NSYS_LEGACY.read_bytes()[:20000])
    return p


def names_without_stringids(d: Path) -> Path:
    return nsys_copy(d, "no_strings.sqlite", "DROP TABLE StringIds")


def all_kernel_extents_bad(d: Path) -> Path:
    return nsys_copy(d, "bad_extents.sqlite", f'UPDATE {K} SET "end" = "start" - 1')


ERRORS = {
    "gzip with a bad CRC": (corrupt_gzip_crc, "corrupt gzip"),
    "NaN timestamps": (nan_timestamps, "invalid JSON"),
    "only negative durations": (all_negative_durations, "no GPU kernels"),
    "empty traceEvents": (empty_trace, "no GPU kernels"),
    "JSON without traceEvents": (no_events_key, "no traceEvents"),
    "whitespace only": (whitespace_only, "unknown format"),
    "kernel table with wrong columns": (right_tables_wrong_columns, "lacks columns"),
    "nsys export with empty tables": (nsys_all_tables_empty, "no GPU kernels"),
    "truncated SQLite": (truncated_sqlite, "SQLite"),
    "kernel names without StringIds": (names_without_stringids, "StringIds"),
    "every kernel end before start": (all_kernel_extents_bad, "unusable start/end"),
}


def test_every_broken_file_is_one_line_and_changes_nothing(shared_db_copy, tmp_path):
    bad = {case: make(tmp_path) for case, (make, _) in ERRORS.items()}
    before = snapshot(shared_db_copy)
    proc = tk("import", *map(str, bad.values()), "--db", str(shared_db_copy))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    lines = error_lines(proc.stderr)
    assert len(lines) == len(ERRORS), proc.stderr
    for case, path in bad.items():
        [line] = [ln for ln in lines if f"{path}:" in ln]
        assert ERRORS[case][1] in line, (case, line)
    assert snapshot(shared_db_copy) == before


def make_bomb(d: Path) -> Path:
    bomb = d / "bomb.json.gz"
    with gzip.open(bomb, "wb", compresslevel=9) as f:
        f.write(b'{"traceEvents": [')
        for _ in range(256):
            f.write(b" " * (1 << 20))
    assert bomb.stat().st_size < (1 << 20)  # 256 MiB of JSON in well under 1 MiB
    return bomb


def test_zip_bomb_is_refused_while_inflating(tmp_path, monkeypatch):
    """Inflation stops at the cap (its floor lowered here to keep the test fast, so that the
    ratio, 200x the bomb's few hundred KB, decides; the mechanism is the same at the default):
    peak Python memory stays near the cap, far below the 256 MiB of output."""
    import tracemalloc

    bomb = make_bomb(tmp_path)
    monkeypatch.setattr(kineto, "MIN_ALLOWED", 8 << 20)
    assert kineto.inflate_limit(bomb.stat().st_size, whole_text=False) < 64 << 20
    tracemalloc.start()
    try:
        with pytest.raises(kineto.TraceError, match="zip bomb"):
            kineto.read(bomb)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 100 << 20, peak


def test_a_trace_past_the_whole_text_cap_streams(monkeypatch):
    """The absolute cap bounds only the whole-text read, which holds every byte; the streaming
    read holds a slice at a time, so a trace that inflates past it (a 10 GB Kineto trace is 800 MB
    gzipped) is read, while the whole-text read of the same file is refused. The cap is lowered
    below a real fixture's inflated size to show it."""
    path = ROOT / "fixtures" / "h100" / "gemma-2b-2L_b1_i64_o8.pt.trace.json.gz"
    inflated = len(gzip.decompress(path.read_bytes()))
    monkeypatch.setattr(kineto, "MAX_DECOMPRESSED", inflated // 2)
    monkeypatch.setattr(kineto, "MIN_ALLOWED", inflated // 2)
    assert kineto.inflate_limit(path.stat().st_size, whole_text=False) > inflated
    with pytest.raises(kineto.TraceError, match="read whole"):
        kineto._load_bytes(path)
    expected = sum(1 for e in json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
                   if e.get("cat") == "kernel" and e.get("ph") == "X")
    assert kineto.read(path).kernels.num_rows == expected


def test_a_plain_file_past_the_whole_text_cap_is_refused_before_reading(tmp_path, monkeypatch):
    """Plain JSON that cannot stream (here: one line, not Kineto's layout) is read whole, all of it
    held at once, so the same absolute cap refuses it, by its size, before a byte is read; below
    the cap the same file imports."""
    obj = kineto_obj()
    p = tmp_path / "one_line.json"
    p.write_text(json.dumps(obj, separators=(",", ":")))
    assert kineto.read(p).kernels.num_rows == len(kernels_of(obj))
    monkeypatch.setattr(kineto, "MAX_DECOMPRESSED", p.stat().st_size - 1)
    with pytest.raises(kineto.TraceError, match=r"one_line\.json.*must be read whole.*refusing"):
        kineto.read(p)
    # The whole-text read refuses it by its size alone, before taking a piece of it.
    monkeypatch.setattr(kineto, "_pieces", lambda *a, **k: pytest.fail("read past the cap"))
    with pytest.raises(kineto.TraceError, match="must be read whole"):
        kineto._load_bytes(p)


def test_concatenated_gzip_members_are_one_trace(tmp_path):
    raw = json.dumps(kineto_obj()).encode()
    p = tmp_path / "members.json.gz"
    cut = len(raw) // 2
    p.write_bytes(gzip.compress(raw[:cut]) + gzip.compress(raw[cut:]))
    assert kineto.read(p).kernels.num_rows == len(kernels_of(kineto_obj()))


# ---- tolerated: imported, with the documented treatment ----------------------------------------

def import_one(tmp_path: Path, path: Path):
    db = tracekit.open(tmp_path / "t.duckdb")
    [r] = db.import_paths([path])
    assert r.status == "imported", r.error
    return db, r.run_id


def test_invalid_utf8_in_kineto_names_is_replaced(tmp_path):
    obj = kineto_obj()
    target = kernels_of(obj)[0]["name"]
    raw = json.dumps(obj).encode().replace(target.encode(), target.encode() + b"\xff\xfe", 1)
    p = tmp_path / "bad_utf8.json"
    p.write_bytes(raw)
    db, rid = import_one(tmp_path, p)
    names = [n for (n,) in db.con.execute("SELECT name FROM kernels WHERE run_id = ? AND name LIKE ?",
                                          [rid, target + "%"]).fetchall()]
    assert target + "\ufffd\ufffd" in names
    absent = db.con.execute("SELECT absent FROM runs").fetchone()[0]
    assert any("invalid UTF-8" in a for a in absent)


def test_integer_beyond_64_bits_is_ignored_and_counted(tmp_path):
    # A kernel's stream beyond any column's range: that value is ignored (the stream then comes
    # from the GPU row, as when the arg is absent); every kernel is kept.
    p = int_beyond_64_bits(tmp_path)
    obj = json.loads(p.read_text())
    data = kineto.read(p)
    assert data.kernels.num_rows == len(kernels_of(obj))
    assert any("args.stream (integer out of range) on 1 kernel events" in a for a in data.absent), data.absent


def test_kernel_with_a_timestamp_of_the_wrong_type_is_skipped_and_counted(tmp_path):
    # A field tracekit needs, of the wrong type, on one kernel: that kernel cannot be placed on a
    # timeline, so it is skipped and counted (as a NaN or negative time is); the trace imports.
    p = string_timestamp(tmp_path)
    n = len(kernels_of(json.loads(p.read_text())))
    data = kineto.read(p)
    assert data.kernels.num_rows == n - 1
    assert any("ts (string) on 1 kernel events" in a for a in data.absent), data.absent
    assert any("1 events with missing, NaN or negative timestamps" in a for a in data.absent), data.absent


def test_invalid_utf8_in_nsys_strings_is_replaced(tmp_path):
    p = nsys_copy(tmp_path, "bad_utf8.sqlite",
                  f"UPDATE StringIds SET value = CAST(x'6b65726e656cff' AS TEXT) WHERE id = "
                  f"(SELECT demangledName FROM {K} ORDER BY start LIMIT 1)")
    db, rid = import_one(tmp_path, p)
    assert db.con.execute("SELECT name FROM kernels WHERE run_id = ? AND kernel_id = 0", [rid]).fetchone()[0] \
        == "kernel\ufffd"


@pytest.mark.parametrize("fmt", ["kineto", "nsys"])
def test_one_megabyte_kernel_name_is_stored_whole(tmp_path, fmt):
    name = "void big_kernel<" + "T" * BIG + ">(float*)"
    if fmt == "kineto":
        obj = kineto_obj()
        kernels_of(obj)[0]["name"] = name
        p = write_json(tmp_path / "bigname.json", obj)
    else:
        p = nsys_copy(tmp_path, "bigname.sqlite", f"INSERT INTO StringIds VALUES (99999999, '{name}')",
                      f"UPDATE {K} SET demangledName = 99999999, shortName = 99999999 WHERE rowid = 1")
    db, rid = import_one(tmp_path, p)
    got = db.con.execute("SELECT length(name), short_name FROM kernels WHERE run_id = ? AND length(name) > ?",
                         [rid, BIG]).fetchall()
    assert got[0][0] == len(name)
    if fmt == "kineto":  # nsys gives its own shortName, here the same big string
        assert got[0][1] == "big_kernel"


def test_some_negative_durations_are_skipped_and_counted(tmp_path):
    obj = kineto_obj()
    ks = kernels_of(obj)
    for e in ks[:5]:
        e["dur"] = -1.5
    db, rid = import_one(tmp_path, write_json(tmp_path / "fewneg.json", obj))
    assert db.con.execute("SELECT n_kernels FROM runs").fetchone()[0] == len(ks) - 5
    absent = db.con.execute("SELECT absent FROM runs").fetchone()[0]
    assert any(a.startswith("5 events with missing, NaN or negative") for a in absent), absent


def test_overlapping_kernels_on_one_stream_are_kept_as_recorded(tmp_path):
    """Overlap on one stream cannot happen on real hardware, but tracekit reports what the trace
    says rather than guess which event is wrong: every kernel keeps its own extent."""
    obj = kineto_obj()
    ks = kernels_of(obj)
    for e in ks[1:4]:
        e["ts"] = ks[0]["ts"]  # three kernels start together with the first on the same stream
    db, rid = import_one(tmp_path, write_json(tmp_path / "overlap.json", obj))
    expected = sorted(round(e["dur"] * 1000) for e in ks)
    assert sorted(d for (d,) in db.con.execute("SELECT dur_ns FROM kernels WHERE run_id = ?", [rid]).fetchall()) \
        == expected


def test_negative_timestamps_are_kept(tmp_path):
    obj = {"traceEvents": [
        {"ph": "X", "cat": "kernel", "name": "k", "pid": 0, "tid": 7, "ts": -5.5, "dur": 2.25, "args": {}},
    ]}
    data = kineto.read(write_json(tmp_path / "negts.json", obj))
    assert data.kernels.select(["start_ns", "end_ns", "dur_ns"]).to_pylist() == \
        [{"start_ns": -5500, "end_ns": -3250, "dur_ns": 2250}]


def test_nsys_rows_with_bad_extents_are_skipped_and_counted(tmp_path):
    con = sqlite3.connect(NSYS_REGISTERED)
    n = con.execute(f"SELECT count(*) FROM {K}").fetchone()[0]
    p = nsys_copy(tmp_path, "some_bad.sqlite",
                  f"UPDATE {K} SET \"end\" = \"start\" - 10 WHERE rowid IN (1, 2)",
                  f"UPDATE {K} SET \"start\" = 'late' WHERE rowid = 3",
                  f"UPDATE {K} SET gridX = 'wide', blockX = 1e300 WHERE rowid = 4")
    db, rid = import_one(tmp_path, p)
    assert db.con.execute("SELECT n_kernels FROM runs").fetchone()[0] == n - 3
    absent = db.con.execute("SELECT absent FROM runs").fetchone()[0]
    assert f"{K}: 3 kernels with missing, non-integer or negative extents (skipped)" in absent
    # The row with unusable grid/block values is kept, those two fields unknown.
    start4 = sqlite3.connect(p).execute(f"SELECT start FROM {K} WHERE rowid = 4").fetchone()[0]
    assert db.con.execute("SELECT grid_x, block_x, grid_y FROM kernels WHERE start_ns = ?", [start4]).fetchone()[:2] \
        == (None, None)


def test_optional_tables_with_wrong_columns_are_noted_not_fatal(tmp_path):
    p = nsys_copy(tmp_path, "odd_optional.sqlite",
                  "DROP TABLE NVTX_EVENTS", "CREATE TABLE NVTX_EVENTS (message TEXT)",
                  "DROP TABLE META_DATA_EXPORT", "CREATE TABLE META_DATA_EXPORT (k TEXT)",
                  "DROP TABLE TARGET_INFO_GPU", "CREATE TABLE TARGET_INFO_GPU (name BLOB)",
                  "INSERT INTO TARGET_INFO_GPU VALUES (x'ff00')")
    db, rid = import_one(tmp_path, p)
    gpu, absent = db.con.execute("SELECT gpu_name, absent FROM runs").fetchone()
    assert gpu is None
    assert "NVTX_EVENTS (unexpected columns)" in absent and "META_DATA_EXPORT" in absent
    assert db.con.execute("SELECT count(*) FROM ranges").fetchone()[0] == 0


def test_flow_cycles_and_duplicates_terminate_with_first_binding(tmp_path):
    """Flows that point back (kernel -> launch), repeat an id, or bind one event twice: the reader
    still ends, and each kernel links to the launch of the first flow that finishes on it."""
    def x(cat, name, pid, tid, ts, dur=1.0):
        return {"ph": "X", "cat": cat, "name": name, "pid": pid, "tid": tid, "ts": ts, "dur": dur, "args": {}}

    def flow(ph, fid, pid, tid, ts):
        return {"ph": ph, "cat": "ac2g", "name": "ac2g", "id": fid, "pid": pid, "tid": tid, "ts": ts}

    ev = [
        x("cuda_runtime", "cudaLaunchKernel", 1, 1, 10.0), x("cuda_runtime", "cudaLaunchKernel", 1, 1, 20.0),
        x("kernel", "k1", 0, 7, 100.0), x("kernel", "k2", 0, 7, 200.0),
        flow("s", 1, 1, 1, 10.0), flow("f", 1, 0, 7, 100.0),
        flow("s", 2, 1, 1, 20.0), flow("f", 2, 0, 7, 200.0),
        flow("s", 1, 0, 7, 100.0), flow("f", 1, 1, 1, 10.0),    # the same id back again: a cycle
        flow("f", 2, 0, 7, 100.0), flow("t", 2, 0, 7, 100.0),   # a second binding for k1, a step event
        flow("s", 3, 0, 7, 200.0), flow("f", 3, 0, 7, 200.0),   # a self-loop on k2
    ]
    p = write_json(tmp_path / "cycles.json", {"traceEvents": ev})
    db, rid = import_one(tmp_path, p)
    got = db.con.execute("SELECT k.name, l.start_ns FROM kernels k LEFT JOIN launches l USING (run_id, launch_id) "
                         "ORDER BY k.kernel_id").fetchall()
    assert got == [("k1", 10_000), ("k2", 20_000)]


def test_foreign_duckdb_database_is_one_line(tmp_path):
    """A DuckDB file of someone else's making, with a `runs` table of other columns: one line
    naming the database, and the foreign table is left as it was."""
    import duckdb

    db = tmp_path / "foreign.duckdb"
    con = duckdb.connect(str(db))
    con.execute("CREATE TABLE runs (who VARCHAR)")
    con.execute("INSERT INTO runs VALUES ('not tracekit')")
    con.close()
    proc = tk("import", str(NSYS_LEGACY), "--db", str(db))
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = error_lines(proc.stderr)
    assert str(db) in line and "not a tracekit database" in line
    con = duckdb.connect(str(db), read_only=True)
    assert con.execute("SELECT * FROM runs").fetchall() == [("not tracekit",)]
