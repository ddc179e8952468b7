"""nsys SQLite export variants (fixtures/variants): each imports, and matches an independent
reading of the same file with plain SQL."""

from __future__ import annotations

import shutil
import sqlite3
from collections import Counter

import pytest
from conftest import run_id_of as run_id
from robust_util import (
    NSYS_GRAPH_NODES,
    NSYS_GRAPH_WHOLE,
    NSYS_LEGACY,
    NSYS_MULTI,
    NSYS_REGISTERED,
    gtid_pid,
    tk,
)

import tracekit

NSYS_VARIANTS = [NSYS_LEGACY, NSYS_REGISTERED, NSYS_MULTI, NSYS_GRAPH_NODES, NSYS_GRAPH_WHOLE]


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    d = tracekit.open(tmp_path_factory.mktemp("nsysvar") / "v.duckdb")
    for path in NSYS_VARIANTS:
        [r] = d.import_paths([path])
        assert r.status == "imported", r.error
    yield d
    d.close()



def _names_sql(con: sqlite3.Connection) -> str:
    # Inline TEXT names in old exports, StringIds references in new ones.
    cols = {r[1]: r[2] for r in con.execute("PRAGMA table_info(CUPTI_ACTIVITY_KIND_KERNEL)")}
    if cols["demangledName"].upper() == "TEXT":
        return "SELECT k.demangledName, k.start, k.end FROM CUPTI_ACTIVITY_KIND_KERNEL k"
    return ("SELECT s.value, k.start, k.end FROM CUPTI_ACTIVITY_KIND_KERNEL k "
            "JOIN StringIds s ON s.id = k.demangledName")


@pytest.mark.parametrize("path", NSYS_VARIANTS, ids=lambda p: p.name)
def test_kernels_match_plain_sql(db, path):
    con = sqlite3.connect(path)
    rows = con.execute(_names_sql(con)).fetchall()
    expected = Counter()
    for name, s, e in rows:
        expected[name] += e - s
    # A CUDA graph traced whole is one kernel-like row per execution (GRAPH_TRACE), checked apart.
    graphs = con.execute("SELECT graphId, graphExecId, end - start FROM CUPTI_ACTIVITY_KIND_GRAPH_TRACE").fetchall() \
        if path == NSYS_GRAPH_WHOLE else []
    for gid, xid, d in graphs:
        expected[f"CUDA graph {gid} (exec {xid}): kernels not traced"] += d
    got = dict(db.con.execute("SELECT name, sum(dur_ns)::BIGINT FROM kernels WHERE run_id = ? GROUP BY 1",
                              [run_id(db, path)]).fetchall())
    assert got == dict(expected)
    assert db.con.execute("SELECT count(*) FROM kernels WHERE run_id = ?", [run_id(db, path)]).fetchone()[0] == \
        len(rows) + len(graphs)


def test_legacy_inline_metadata_and_absent(db):
    rid = run_id(db, NSYS_LEGACY)
    gpu, versions, absent = db.con.execute(
        "SELECT gpu_name, tool_versions->>'nsys', absent FROM runs WHERE run_id = ?", [rid]).fetchone()
    meta = dict(sqlite3.connect(NSYS_LEGACY).execute("SELECT name, value FROM EXPORT_META_DATA"))
    assert gpu is None and "TARGET_INFO_GPU" in absent
    assert versions == meta["EXPORT_PRODUCT_VERSION"]
    assert "CUPTI_ACTIVITY_KIND_KERNEL.globalPid" in absent
    # Launch names were inline text too: every kernel's launch carries the runtime row's name.
    con = sqlite3.connect(NSYS_LEGACY)
    expected = Counter(n for (n,) in con.execute(
        "SELECT r.name FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN CUPTI_ACTIVITY_KIND_RUNTIME r USING (correlationId)"))
    got = Counter(n for (n,) in db.con.execute(
        "SELECT l.name FROM kernels k JOIN launches l USING (run_id, launch_id) WHERE k.run_id = ?", [rid]).fetchall())
    assert got == expected


def test_registered_nvtx_strings_resolve_with_domain(db):
    con = sqlite3.connect(NSYS_REGISTERED)
    expected = Counter(v for (v,) in con.execute(
        "SELECT s.value FROM NVTX_EVENTS n JOIN StringIds s ON s.id = n.textId WHERE n.eventType = 59"))
    domain = con.execute("SELECT text FROM NVTX_EVENTS WHERE eventType = 75").fetchone()[0]
    rows = db.con.execute("SELECT name, domain FROM ranges WHERE run_id = ?", [run_id(db, NSYS_REGISTERED)]).fetchall()
    assert Counter(n for n, _ in rows) == expected
    assert {d for _, d in rows} == {domain}
    assert con.execute("SELECT count(*) FROM NVTX_EVENTS WHERE text IS NOT NULL AND eventType = 59").fetchone()[0] == 0


def test_two_processes_link_within_their_own_process(db):
    con = sqlite3.connect(NSYS_MULTI)
    runtime = {}
    for corr, gtid, name in con.execute(
        "SELECT r.correlationId, r.globalTid, s.value FROM CUPTI_ACTIVITY_KIND_RUNTIME r "
        "JOIN StringIds s ON s.id = r.nameId"
    ):
        runtime[(gtid_pid(gtid), corr)] = name
    kernels = con.execute("SELECT start, globalPid, correlationId, deviceId FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchall()
    # The fixture is only a real test if correlation ids collide across the two processes.
    by_corr = Counter(c for _, _, c, _ in kernels)
    pids_per_corr = {c: {gtid_pid(p) for _, p, cc, _ in kernels if cc == c} for c in list(by_corr)[:50]}
    assert any(len(p) == 2 for p in pids_per_corr.values())
    expected = sorted((s, gtid_pid(p), d, runtime[(gtid_pid(p), c)]) for s, p, c, d in kernels)
    got = db.con.execute(
        "SELECT k.start_ns, k.pid, k.device, l.name, l.pid FROM kernels k JOIN launches l USING (run_id, launch_id) "
        "WHERE k.run_id = ? ORDER BY 1, 2", [run_id(db, NSYS_MULTI)]).fetchall()
    assert [(s, p, d, n) for s, p, d, n, _ in got] == expected
    assert all(kp == lp for _, kp, _, _, lp in got)
    assert db.con.execute("SELECT count(DISTINCT device), count(DISTINCT pid) FROM kernels WHERE run_id = ?",
                          [run_id(db, NSYS_MULTI)]).fetchone() == (2, 2)


def test_two_gpus_are_named(db):
    names = sorted({n for (n,) in sqlite3.connect(NSYS_MULTI).execute("SELECT name FROM TARGET_INFO_GPU")})
    assert db.con.execute("SELECT gpu_name FROM runs WHERE run_id = ?", [run_id(db, NSYS_MULTI)]).fetchone()[0] \
        == ", ".join(names)


def test_cuda_graph_kernels_keep_node_ids_and_share_the_graph_launch(db):
    con = sqlite3.connect(NSYS_GRAPH_NODES)
    expected = con.execute("SELECT start, graphNodeId FROM CUPTI_ACTIVITY_KIND_KERNEL ORDER BY start, end").fetchall()
    rid = run_id(db, NSYS_GRAPH_NODES)
    got = db.con.execute("SELECT start_ns, graph_node_id FROM kernels WHERE run_id = ? ORDER BY kernel_id",
                         [rid]).fetchall()
    assert got == expected
    graph = db.con.execute(
        "SELECT l.name, count(DISTINCT k.launch_id), count(*) FROM kernels k JOIN launches l USING (run_id, launch_id) "
        "WHERE k.run_id = ? AND k.graph_node_id IS NOT NULL GROUP BY 1", [rid]).fetchall()
    n_graph = con.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL WHERE graphNodeId IS NOT NULL").fetchone()[0]
    assert graph == [("cudaGraphLaunch_v10000", 2, n_graph)]


def test_whole_graph_tracing_is_reported(db):
    absent = db.con.execute("SELECT absent FROM runs WHERE run_id = ?", [run_id(db, NSYS_GRAPH_WHOLE)]).fetchone()[0]
    n = sqlite3.connect(NSYS_GRAPH_WHOLE).execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_GRAPH_TRACE").fetchone()[0]
    assert any(f"{n} CUDA graph launches traced as whole graphs" in a for a in absent)


def test_only_whole_graphs_imports_the_graph_executions(tmp_path):
    # Whole-graph executions are GPU activity: a trace with nothing else still imports, one row
    # per execution, each linked to its cudaGraphLaunch and so to the stage that launched it.
    p = tmp_path / "graphs_only.sqlite"
    shutil.copy(NSYS_GRAPH_WHOLE, p)
    con = sqlite3.connect(p)
    con.execute("DELETE FROM CUPTI_ACTIVITY_KIND_KERNEL")
    con.commit()
    n = con.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_GRAPH_TRACE").fetchone()[0]
    con.close()
    dbp = tmp_path / "g.duckdb"
    proc = tk("import", str(p), "--db", str(dbp))
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    import tracekit

    db = tracekit.open(dbp, read_only=True)
    assert db.con.execute("SELECT count(*), count(launch_id), list(DISTINCT stage) FROM kernels").fetchall()[0] == (
        n, n, ["generation"])


def test_unknown_future_column_is_ignored(db):
    # The extra column must neither fail the import nor leak into the canonical tables.
    cols = {r[0] for r in db.con.execute("DESCRIBE kernels").fetchall()}
    assert "futureColumn2025" not in cols
    assert db.con.execute("SELECT n_kernels FROM runs WHERE run_id = ?", [run_id(db, NSYS_REGISTERED)]).fetchone()[0] \
        == sqlite3.connect(NSYS_REGISTERED).execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]


def test_gpu_name_from_target_info_cuda_gpu_when_target_info_gpu_is_missing(tmp_path):
    p = tmp_path / "cuda_gpu.sqlite"
    shutil.copy(NSYS_LEGACY, p)
    con = sqlite3.connect(p)
    con.execute("CREATE TABLE TARGET_INFO_CUDA_GPU (id INTEGER, name TEXT)")
    con.execute("INSERT INTO TARGET_INFO_CUDA_GPU VALUES (0, 'NVIDIA A100-SXM4-80GB')")
    con.commit()
    con.close()
    from tracekit.readers import read

    assert read(p).gpu_name == "NVIDIA A100-SXM4-80GB"
