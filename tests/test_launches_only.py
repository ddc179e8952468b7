"""`launches` holds the API calls that launched GPU work recorded in the trace, for every format
(enrich.links): a runtime or driver call is stored when a kernel, memcpy or memset row of the same
trace (a CUDA graph traced whole counts as one) has its correlation id in its process; the other
calls (synchronizations, queries, event records) are not stored. Expected rows come from reading
the files with sqlite3 / json here."""

from __future__ import annotations

import gzip
import json
import re
import sqlite3
from collections import Counter
from pathlib import Path

import pytest
from conftest import FIXTURES, KINETO_L2, NSYS_L2, shared_trace

import tracekit

VARIANTS = FIXTURES / "variants"
GPU_TABLES = ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET",
              "CUPTI_ACTIVITY_KIND_GRAPH_TRACE")


def _import(tmp_path: Path, trace: Path):
    db = tracekit.open(tmp_path / "t.duckdb")
    r = db.import_paths([trace])[0]
    assert r.status == "imported", r.error
    return db, r.run_id


def _stored(db, run_id: int) -> Counter:
    return Counter(db.con.execute(
        "SELECT name, start_ns, pid, correlation FROM launches WHERE run_id = ?", [run_id]).fetchall())


def _ids_dense_and_all_linked(db, run_id: int) -> None:
    ids = [i for (i,) in db.con.execute("SELECT launch_id FROM launches WHERE run_id = ? ORDER BY launch_id",
                                        [run_id]).fetchall()]
    assert ids == list(range(len(ids)))
    unlinked = db.con.execute(
        "SELECT count(*) FROM launches l WHERE l.run_id = ? "
        "AND NOT EXISTS (SELECT 1 FROM kernels k WHERE k.run_id = l.run_id AND k.launch_id = l.launch_id) "
        "AND NOT EXISTS (SELECT 1 FROM memops m WHERE m.run_id = l.run_id AND m.launch_id = l.launch_id)",
        [run_id]).fetchone()[0]
    assert unlinked == 0


def _nsys_expected(path: Path) -> tuple[Counter, int]:
    """Runtime/driver calls (good extents) whose (process, correlation id) a GPU row has; and how
    many calls the file holds."""
    con = sqlite3.connect(path)
    tables = {n for (n,) in con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    good = 'typeof(start) = \'integer\' AND typeof("end") = \'integer\' AND "end" >= start'
    gpu = set()
    for t in GPU_TABLES:
        if t in tables:
            cols = {r[1] for r in con.execute(f"PRAGMA table_info({t})")}
            pid = "globalPid >> 24 & 16777215" if "globalPid" in cols else "NULL"
            gpu |= set(con.execute(f"SELECT {pid}, correlationId FROM {t} WHERE {good}").fetchall())
    rows, calls = [], 0
    for t in ("CUPTI_ACTIVITY_KIND_RUNTIME", "CUPTI_ACTIVITY_KIND_DRIVER"):
        if t not in tables:
            continue
        calls += con.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
        rows += con.execute(
            f"SELECT coalesce(s.value, r.nameId), r.start, r.globalTid >> 24 & 16777215, r.correlationId "
            f"FROM {t} r LEFT JOIN StringIds s ON s.id = r.nameId WHERE {good.replace('start', 'r.start')}").fetchall()
    return Counter(r for r in rows if (r[2], r[3]) in gpu), calls


@pytest.mark.parametrize("trace", [
    NSYS_L2,
    VARIANTS / "nsys_cuda_graph_nodes.sqlite",   # cudaGraphLaunch kept through its kernels
    VARIANTS / "nsys_cuda_graph_whole.sqlite",   # ... through the graph's one row
    VARIANTS / "nsys_two_processes_two_gpus.sqlite",  # correlation ids repeat across processes
], ids=lambda p: p.stem)
def test_nsys_launches_are_the_calls_that_launched_gpu_work(tmp_path, trace):
    want, calls = _nsys_expected(trace)
    assert 0 < sum(want.values()) < calls  # the trace has calls that launch nothing
    db, rid = _import(tmp_path, trace)
    got = _stored(db, rid)
    # tracekit's memory operations carry no process: where processes reuse a memset's correlation
    # id and nothing else decides, it stays unlinked (runs.absent counts them), and so does its call.
    absent = " ".join(db.con.execute("SELECT absent FROM runs WHERE run_id = ?", [rid]).fetchone()[0])
    unlinked = sum(int(m.group(1)) for m in re.finditer(r"and (\d+) memory operations: their correlation", absent))
    assert not got - want
    missed = want - got
    assert sum(missed.values()) == unlinked and all(name.startswith("cudaMem") for name, *_ in missed)
    assert unlinked == (5 if "two_processes" in trace.name else 0)
    _ids_dense_and_all_linked(db, rid)


def _kineto_expected(path: Path) -> Counter:
    doc = json.loads(gzip.decompress(path.read_bytes()))
    events = [e for e in doc["traceEvents"] if isinstance(e, dict) and e.get("ph") == "X"]
    gpu = {e["args"]["correlation"] for e in events if e.get("cat") in ("kernel", "gpu_memcpy", "gpu_memset")}
    return Counter((e["name"], e["args"]["correlation"]) for e in events
                   if e.get("cat") in ("cuda_runtime", "cuda_driver") and e["args"].get("correlation") in gpu)


@pytest.mark.parametrize("trace", [KINETO_L2, "h200/llama3-8b-2L-cudagraph_unmarked_b1_i64_o16.pt.trace.json.gz"],
                         ids=["kineto_llama2", "kineto_cudagraph"])
def test_kineto_launches_are_the_calls_that_launched_gpu_work(tmp_path, trace):
    path = trace if isinstance(trace, Path) else shared_trace(trace)
    want = _kineto_expected(path)
    n_runtime = sum(1 for e in json.loads(gzip.decompress(path.read_bytes()))["traceEvents"]
                    if isinstance(e, dict) and e.get("cat") in ("cuda_runtime", "cuda_driver"))
    assert 0 < sum(want.values()) < n_runtime
    db, rid = _import(tmp_path, path)
    got = Counter(db.con.execute("SELECT name, correlation FROM launches WHERE run_id = ?", [rid]).fetchall())
    assert got == want
    _ids_dense_and_all_linked(db, rid)
