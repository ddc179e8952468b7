"""The Parquet dataset (tracekit/dataset.py): real traces imported on a local Dask cluster of
several worker processes, read back through DuckDB views, compared with the DuckDB store."""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import sqlite3
from decimal import Decimal
from pathlib import Path

import duckdb
import pyarrow.parquet as pq
import pytest
from conftest import FIXTURES, KINETO_L2, NSYS_L2, SHARED_TRACES, tk

import tracekit
from tracekit.dataset import attach, connect_dataset, import_to_dataset

pytest.importorskip("distributed")  # the [dist] extra; CI installs it with [test]

# The shared traces (two Kineto, two nsys) and two H100 traces with capture manifests (metadata).
TRACES = [*SHARED_TRACES, FIXTURES / "h100" / "gemma-2b-2L_b8_i64_o8.sqlite",
          FIXTURES / "h100" / "llama3-8b-2L_b1_i64_o8.pt.trace.json.gz"]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    """(DuckDB store path, dataset dir, import results) for the same traces."""
    root = tmp_path_factory.mktemp("stores")
    db = tracekit.open(root / "store.duckdb")
    assert all(r.status == "imported" for r in db.import_paths(TRACES))
    db.close()
    results = import_to_dataset(TRACES, root / "ds", workers=3)
    return root / "store.duckdb", root / "ds", results


def by_hash(con, view: str, order: str) -> list[tuple]:
    """A view's rows keyed by the run's content hash instead of its run_id, in a stable order."""
    cols = [d[0] for d in con.execute(f"SELECT * FROM {view} LIMIT 0").description if d[0] != "run_id"]
    listed = ", ".join(f"v.{c}" for c in cols)
    return con.execute(f"SELECT r.content_hash, {listed} FROM {view} v JOIN runs r USING (run_id) "
                       f"ORDER BY r.content_hash, {order}").fetchall()


def test_every_trace_imported_once_per_content_hash(stores):
    _, ds, results = stores
    assert sorted(r.status for r in results) == ["imported"] * len(TRACES)
    dirs = sorted(p.name for p in ds.iterdir() if p.name != "_schemas")
    assert dirs == sorted(f"run_key={sha256(t)[:13]}" for t in TRACES)  # nothing else (no temp dirs)
    assert len(list((ds / "_schemas").iterdir())) == 1  # one table layout: views read files by position
    for t in TRACES:
        runs = pq.read_table(ds / f"run_key={sha256(t)[:13]}" / "runs.parquet").to_pylist()
        assert len(runs) == 1
        assert runs[0]["content_hash"] == sha256(t)
        assert runs[0]["run_id"] == int(sha256(t)[:13], 16)
        assert runs[0]["source_path"] == str(t)  # as given, though the worker read it by its absolute path


@pytest.mark.parametrize("view,order", [
    ("stage_ratio", "1"),
    ("composition", "v.bucket"),
    ("top_kernels", "v.short_name, v.category"),
    ("steps", "v.iteration, v.step, v.category"),
    ("run_info", "1"),
])
def test_same_numbers_from_either_store(stores, view, order):
    store, ds, _ = stores
    a = tracekit.open(store, read_only=True)
    b = connect_dataset(ds)
    try:
        got_store, got_ds = by_hash(a.con, view, order), by_hash(b, view, order)
    finally:
        a.close()
        b.close()
    if view == "run_info":  # where the file was read and when differ by design
        drop = {"imported_at", "source_path"}
        cols = ["content_hash", *[c for c in _cols(store, view) if c != "run_id"]]
        keep = [i for i, c in enumerate(cols) if c not in drop]
        got_store = [tuple(r[i] for i in keep) for r in got_store]
        got_ds = [tuple(r[i] for i in keep) for r in got_ds]
    assert len({r[0] for r in got_ds}) == len(TRACES)
    assert got_ds == got_store


def _cols(store: Path, view: str) -> list[str]:
    db = tracekit.open(store, read_only=True)
    try:
        return [d[0] for d in db.con.execute(f"SELECT * FROM {view} LIMIT 0").description]
    finally:
        db.close()


def test_dataset_kernels_match_the_traces_read_independently(stores):
    _, ds, _ = stores
    con = connect_dataset(ds)
    s = sqlite3.connect(NSYS_L2)
    want_nsys = s.execute('SELECT count(*), sum("end" - "start") FROM CUPTI_ACTIVITY_KIND_KERNEL').fetchone()
    with gzip.open(KINETO_L2, "rt") as f:
        ev = [e for e in json.load(f, parse_float=Decimal)["traceEvents"]
              if e.get("ph") == "X" and e.get("cat") == "kernel"]
    want_kineto = (len(ev), sum(int((Decimal(str(e["dur"])) * 1000).to_integral_value()) for e in ev))
    for path, want in ((NSYS_L2, want_nsys), (KINETO_L2, want_kineto)):
        got = con.execute("SELECT count(*), sum(dur_ns) FROM kernels WHERE run_id = ?",
                          [int(sha256(path)[:13], 16)]).fetchone()
        assert got == want, path.name
    # the manifest beside an H100 trace is its metadata, as in the DuckDB store
    manifest = json.loads((FIXTURES / "h100" / "gemma-2b-2L_b8_i64_o8.manifest.json").read_text())
    model = con.execute("SELECT m.value FROM run_meta m JOIN runs r USING (run_id) WHERE key = 'model' "
                        "AND r.source_name = 'gemma-2b-2L_b8_i64_o8.sqlite'").fetchall()
    assert model and model[0][0] in json.dumps(manifest)
    con.close()


def test_views_filtered_by_run_id_agree_with_unfiltered(stores):
    # DuckDB 2.0.1 gave wrong sums for a LEFT JOIN to an empty side inside a view under a run_id filter.
    _, ds, _ = stores
    con = connect_dataset(ds)
    for view in ("stage_ratio", "composition", "top_kernels"):
        for (rid,) in con.execute("SELECT run_id FROM runs").fetchall():
            whole = con.execute(f"SELECT * FROM (SELECT * FROM {view}) WHERE run_id = {rid} ORDER BY ALL").fetchall()
            assert con.execute(f"SELECT * FROM {view} WHERE run_id = ? ORDER BY ALL", [rid]).fetchall() == whole
    con.close()


def test_reimport_skips_runs_already_present(stores):
    _, ds, _ = stores
    before = {p: p.stat().st_mtime_ns for p in ds.rglob("*")}
    again = import_to_dataset(TRACES[:3], ds, workers=1)
    assert [r.status for r in again] == ["skipped"] * 3
    assert {p: p.stat().st_mtime_ns for p in ds.rglob("*")} == before


def test_bad_file_fails_alone_and_leaves_nothing(tmp_path):
    bad = tmp_path / "broken.pt.trace.json.gz"
    bad.write_bytes(gzip.compress(b'{"traceEvents": [{"ph": "X", "cat": "kernel", "name": "k", "ts": '))
    ds = tmp_path / "ds"
    r = tk("dataset", "import", str(bad), str(KINETO_L2), "--to", str(ds), "--workers", "2")
    assert r.returncode == 1
    errors = [line for line in r.stderr.splitlines() if line.startswith("tracekit: error:")]
    assert len(errors) == 1 and errors[0].startswith(f"tracekit: error: {bad}: ")
    assert sorted(p.name for p in ds.iterdir()) == ["_schemas", f"run_key={sha256(KINETO_L2)[:13]}"]


def test_run_key_collision_is_refused(tmp_path):
    # A real run directory placed under the key of another trace: that trace must not be stored
    # under the first one's id, nor replace it.
    ds = tmp_path / "ds"
    assert import_to_dataset([KINETO_L2], ds)[0].status == "imported"
    os.rename(ds / f"run_key={sha256(KINETO_L2)[:13]}", ds / f"run_key={sha256(NSYS_L2)[:13]}")
    r = import_to_dataset([NSYS_L2], ds)[0]
    assert r.status == "failed" and "is taken by another trace" in r.error
    runs = pq.read_table(ds / f"run_key={sha256(NSYS_L2)[:13]}" / "runs.parquet").to_pylist()
    assert runs[0]["content_hash"] == sha256(KINETO_L2)
    assert len(list(ds.glob("run_key=*"))) == 1


def test_the_dataset_directory_as_db_is_read_in_place_and_nothing_else(stores, tmp_path):
    store, ds, _ = stores
    rid = int(sha256(NSYS_L2)[:13], 16)
    out = tk("stages", "--db", str(ds), "--run", str(rid), "--format", "csv")
    assert out.returncode == 0, out.stderr
    db = tracekit.open(store, read_only=True)
    want = db.con.execute("SELECT round(generation_ns / 1e6, 3) FROM stage_ratio s JOIN runs r USING (run_id) "
                          "WHERE r.content_hash = ?", [sha256(NSYS_L2)]).fetchone()[0]
    db.close()
    header, row = out.stdout.splitlines()[:2]
    assert float(dict(zip(header.split(","), row.split(","), strict=True))["generation_ms"]) == want
    # runs added later are seen without anything written beside the dataset
    extra = FIXTURES / "variants" / "nsys_cuda_graph_nodes.sqlite"
    ds2 = tmp_path / "ds2"
    shutil.copytree(ds, ds2)
    import_to_dataset([extra], ds2)
    with tracekit.open(ds2, read_only=True) as d:
        assert d.con.execute("SELECT count(*) FROM runs").fetchone()[0] == len(TRACES) + 1
        # it reads the dataset's own files, and no other file
        outside = tmp_path / "secret.txt"
        outside.write_text("secret")
        with pytest.raises(duckdb.Error, match="[Pp]ermission|disabled"):
            d.con.execute(f"SELECT * FROM read_text('{outside}')").fetchall()
    # a dataset is never written: import and meta refuse it in one line
    r = tk("import", str(extra), "--db", str(ds2))
    assert r.returncode == 1 and "read-only" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert len(list(ds2.glob("run_key=*"))) == len(TRACES) + 1


def test_attach_refuses_a_store_and_an_empty_dir(stores, tmp_path):
    store, _, _ = stores
    copy = tmp_path / "store.duckdb"
    shutil.copy(store, copy)
    r = tk("dataset", "attach", str(tmp_path), "--db", str(copy))
    assert r.returncode == 1 and r.stderr.startswith("tracekit: error: ") and len(r.stderr.splitlines()) == 1
    empty = tmp_path / "empty"
    empty.mkdir()
    r = tk("dataset", "attach", str(empty), "--db", str(tmp_path / "v.duckdb"))
    assert r.returncode == 1 and "no tracekit runs here" in r.stderr


def test_attach_copy_gives_the_same_numbers_and_copies_only_new_runs(stores, tmp_path):
    store, ds, _ = stores
    ds2 = tmp_path / "ds"
    shutil.copytree(ds, ds2)
    copy_db = tmp_path / "copy.duckdb"
    assert attach(ds2, copy_db)[1] == len(TRACES)
    a = tracekit.open(store, read_only=True)
    b = tracekit.open(copy_db, read_only=True)
    try:
        for view, order in (("stage_ratio", "1"), ("composition", "v.bucket"), ("top_kernels", "v.short_name, v.category")):
            assert by_hash(b.con, view, order) == by_hash(a.con, view, order)
    finally:
        a.close()
        b.close()
    extra = FIXTURES / "variants" / "nsys_cuda_graph_nodes.sqlite"
    import_to_dataset([extra], ds2)
    assert attach(ds2, copy_db)[1] == 1
    assert attach(ds2, copy_db)[1] == 0
    con = duckdb.connect(str(copy_db), read_only=True)
    assert con.execute("SELECT count(*), count(DISTINCT content_hash) FROM runs").fetchone() == (len(TRACES) + 1,) * 2
    want = sqlite3.connect(extra).execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]
    assert con.execute("SELECT count(*) FROM kernels WHERE run_id = ?", [int(sha256(extra)[:13], 16)]).fetchone()[0] == want
    con.close()
    # a copy of one dataset is not fed from another
    r = tk("dataset", "attach", str(ds), "--db", str(copy_db))
    assert r.returncode == 1 and "attach to a new file" in r.stderr


def test_runs_of_two_table_layouts_are_read_by_column_name(stores, tmp_path):
    # A run written by a tracekit whose schema had one more column (tables only ever gain columns):
    # the views must still read every run, the older ones with that column NULL.
    _, ds, _ = stores
    ds2 = tmp_path / "ds"
    shutil.copytree(ds, ds2)
    src = next(ds2.glob("run_key=*"))
    newer = ds2 / "run_key=0000000000001"
    shutil.copytree(src, newer)
    con = duckdb.connect()
    for f in newer.glob("*.parquet"):
        con.execute(f"COPY (SELECT * REPLACE (1 AS run_id), 'x' AS added_later FROM read_parquet('{f}')) TO '{f}.new' (FORMAT parquet)")
        os.replace(f"{f}.new", f)
    con.close()
    (ds2 / "_schemas" / "another-layout").touch()
    c = connect_dataset(ds2)
    assert c.execute("SELECT count(*) FROM runs").fetchone()[0] == len(TRACES) + 1
    assert c.execute("SELECT count(*) FILTER (WHERE added_later = 'x') FROM kernels WHERE run_id = 1").fetchone()[0] > 0
    assert {r[0] for r in c.execute("SELECT run_id FROM stage_ratio").fetchall()} >= {1}
    c.close()


def test_same_content_imported_at_once_by_several_workers_is_one_run(tmp_path):
    # Three names for one content, parsed at the same time by three workers: whoever renames its
    # run directory into place first owns the run; the others report it skipped, leaving nothing.
    names = []
    for i in range(3):
        f = tmp_path / f"copy{i}.sqlite"
        shutil.copy(NSYS_L2, f)
        names.append(f)
    ds = tmp_path / "ds"
    results = import_to_dataset(names, ds, workers=3)
    assert sorted(r.status for r in results) == ["imported", "skipped", "skipped"]
    assert sorted(p.name for p in ds.iterdir()) == ["_schemas", f"run_key={sha256(NSYS_L2)[:13]}"]
    con = connect_dataset(ds)
    assert con.execute("SELECT count(*) FROM runs").fetchone()[0] == 1
    con.close()


def test_cli_import_on_a_running_scheduler(tmp_path):
    # As against a real cluster: a scheduler and two worker processes already running, and the CLI
    # (another process) given only the scheduler's address.
    import logging

    from dask.distributed import LocalCluster

    ds = tmp_path / "ds"
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                      silence_logs=logging.ERROR) as cluster:
        r = tk("dataset", "import", str(NSYS_L2), str(KINETO_L2), "--to", str(ds),
               "--scheduler", cluster.scheduler_address)
    assert r.returncode == 0, r.stderr
    assert "2 imported" in r.stderr
    assert sorted(p.name for p in ds.glob("run_key=*")) == sorted(f"run_key={sha256(t)[:13]}" for t in (NSYS_L2, KINETO_L2))
