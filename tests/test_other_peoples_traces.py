"""Every trace in ../shared/traces/external and ../shared/traces/h200 either imports with the
kernels an independent reading of the file finds (count, total time, launch links), or is
refused with a true one-line reason. Expected values come from plain gzip/json/sqlite3 here."""

from __future__ import annotations

import gzip
import json
import sqlite3
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import SHARED_TRACES_DIR, shared_trace

import tracekit

KERNEL_CATS = {"kernel", "Kernel"}
LAUNCH_CATS = {"cuda_runtime", "cuda_driver", "Runtime"}

# The five traces that were rejected whole for one field of unexpected type on a non-kernel event.
ONCE_REJECTED = [
    "external/hta/amd_trace_mi250_minitoy_train_ROCm6_2_kineto.json.gz",  # string args.stream (hipMemcpy*)
    "external/hta/triton_example_triton_example.json.gz",  # string args.grid on a Triton launch op
    "external/tracelens/inference_sglang_decode_sglang_Qwen3-8B_decode.json.gz",  # string args.bytes
    "external/tracelens/inference_vllm_decode_full_graph_execution.json.gz",
    "external/tracelens/mi300_Qwen_Qwen1.5-0.5B-Chat__1016005.json.gz",
]


def _doc(path: Path) -> object:
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    # Decimal: the µs values as written, so that ns are exact without trusting float rounding.
    return json.loads(raw, parse_float=Decimal)


def _events(doc: object) -> list[dict]:
    ev = doc.get("traceEvents") if isinstance(doc, dict) else doc
    return [e for e in ev or [] if isinstance(e, dict)]


def _ns(us: object) -> int:
    return int(Decimal(us) * 1000)


def _kineto_kernels(path: Path) -> list[dict]:
    return [e for e in _events(_doc(path)) if e.get("ph") == "X" and e.get("cat") in KERNEL_CATS]


def _import(tmp_path: Path, path: Path):
    db = tracekit.open(tmp_path / "t.duckdb")
    [r] = db.import_paths([path])
    return db, r


@pytest.mark.parametrize("rel", ONCE_REJECTED, ids=lambda r: Path(r).name)
def test_traces_with_odd_fields_import_with_exact_kernels(tmp_path, rel):
    path = shared_trace(rel)
    kernels = _kineto_kernels(path)
    db, r = _import(tmp_path, path)
    assert r.status == "imported", r.error
    n, total = db.con.execute("SELECT count(*), sum(dur_ns) FROM kernels WHERE run_id = ?", [r.run_id]).fetchone()
    assert n == len(kernels)
    assert total == sum(_ns(e["dur"]) for e in kernels)
    absent = db.con.execute("SELECT absent FROM runs WHERE run_id = ?", [r.run_id]).fetchone()[0]
    # What was ignored is said, naming the field.
    assert any(a.startswith("fields of unexpected type, ignored: args.") for a in absent), absent


@pytest.mark.parametrize("rel", ONCE_REJECTED, ids=lambda r: Path(r).name)
def test_hip_and_cuda_launches_link_by_correlation(tmp_path, rel):
    """Each kernel links to the runtime call (hipLaunchKernel, hipExtModuleLaunchKernel,
    hipModuleLaunchKernel, hipGraphLaunch, cuLaunchKernel, ...) with its correlation id."""
    path = shared_trace(rel)
    events = _events(_doc(path))
    launch_by_corr = {}
    for e in events:
        a = e.get("args") or {}
        if e.get("ph") == "X" and e.get("cat") in LAUNCH_CATS and isinstance(a.get("correlation"), int):
            launch_by_corr[a["correlation"]] = e["name"]
    expected: dict[str, int] = {}
    for e in events:
        if e.get("ph") == "X" and e.get("cat") in KERNEL_CATS:
            name = launch_by_corr.get((e.get("args") or {}).get("correlation"))
            expected[name] = expected.get(name, 0) + 1
    db, r = _import(tmp_path, path)
    got = dict(db.con.execute(
        "SELECT l.name, count(*) FROM kernels k LEFT JOIN launches l ON l.run_id = k.run_id AND l.launch_id = k.launch_id "
        "WHERE k.run_id = ? GROUP BY 1", [r.run_id]).fetchall())
    assert got == expected


def test_graph_launches_own_their_kernels(tmp_path):
    """hipGraphLaunch (vLLM full-graph decode on MI300X) and cudaGraphLaunch (H200) both carry
    the graph's kernels by correlation."""
    for rel, launch in (("external/tracelens/inference_vllm_decode_full_graph_execution.json.gz", "hipGraphLaunch"),
                        ("h200/llama3-8b-2L-cudagraph_unmarked_b1_i64_o16.pt.trace.json.gz", "cudaGraphLaunch")):
        path = shared_trace(rel)
        events = _events(_doc(path))
        corrs = {(e.get("args") or {}).get("correlation") for e in events
                 if e.get("ph") == "X" and e.get("name") == launch}
        want = sum(1 for e in events if e.get("ph") == "X" and e.get("cat") in KERNEL_CATS
                   and (e.get("args") or {}).get("correlation") in corrs)
        assert want > 100
        (tmp_path / launch).mkdir()
        db, r = _import(tmp_path / launch, path)
        got = db.con.execute("SELECT count(*) FROM kernels k JOIN launches l USING (run_id, launch_id) "
                             "WHERE run_id = ? AND l.name = ?", [r.run_id, launch]).fetchone()[0]
        assert got == want


def _all_shared() -> list[str]:
    out = []
    for sub in ("external", "h200"):
        d = SHARED_TRACES_DIR / sub
        if d.exists():
            out += sorted(str(p.relative_to(SHARED_TRACES_DIR)) for p in d.rglob("*")
                          if p.is_file() and p.name.endswith((".json.gz", ".json", ".sqlite", ".nsys-rep"))
                          and not p.name.endswith(".manifest.json"))
    return out or ["external/missing.json.gz"]  # shared_trace then skips (or fails on CI)


@pytest.mark.parametrize("rel", _all_shared())
def test_every_shared_trace_imports_exactly_or_says_why_not(tmp_path, rel):
    path = shared_trace(rel)
    db, r = _import(tmp_path, path)
    if path.name.endswith(".nsys-rep"):
        if r.status == "failed":
            assert "no `nsys` was found" in r.error
            return
        expected = None  # exported by a real nsys: checked as the export would be
    elif path.name.endswith(".sqlite"):
        con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        has = con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'CUPTI_ACTIVITY_KIND_KERNEL'").fetchone()[0]
        expected = con.execute('SELECT count(*), sum("end" - "start") FROM CUPTI_ACTIVITY_KIND_KERNEL').fetchone() \
            if has else (0, None)
        # CUDA graphs traced whole: one kernel-like row per graph execution (docs/SUPPORTED.md).
        if con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'CUPTI_ACTIVITY_KIND_GRAPH_TRACE'").fetchone()[0]:
            g = con.execute('SELECT count(*), sum("end" - "start") FROM CUPTI_ACTIVITY_KIND_GRAPH_TRACE').fetchone()
            expected = (expected[0] + g[0], (expected[1] or 0) + (g[1] or 0) if expected[0] + g[0] else None)
        con.close()
    else:
        doc = _doc(path)
        if isinstance(doc, dict) and "traceEvents" not in doc:
            assert r.status == "failed" and "no traceEvents" in r.error and "not a Chrome/Kineto trace" in r.error
            if "nodes" in doc and "schema" in doc:
                assert "PyTorch execution trace" in r.error
            return
        kernels = [e for e in _events(doc) if e.get("ph") == "X" and e.get("cat") in KERNEL_CATS]
        expected = (len(kernels), sum(_ns(e["dur"]) for e in kernels) if kernels else None)
    if expected is not None and expected[0] == 0:
        assert r.status == "failed" and "no GPU kernels" in r.error, r.error
        return
    assert r.status == "imported", r.error
    got = db.con.execute("SELECT count(*), sum(dur_ns) FROM kernels WHERE run_id = ?", [r.run_id]).fetchone()
    if expected is not None:
        assert got == expected


@pytest.mark.parametrize("rel", [
    "external/tracelens/inference_sglang_decode_sglang_Qwen3-8B_decode.json.gz",
    "h200/llama3-8b-4L_tp2_rank0_b8_i64_o8.pt.trace.json.gz",
    "h200/llama3-8b-4L_tp2_rank1_b8_i64_o8.pt.trace.json.gz",
])
def test_trace_meta_keeps_distributed_info_and_device_properties(tmp_path, rel):
    """runs.trace_meta holds Kineto's distributedInfo (rank, world size, backend) and
    deviceProperties as the file has them: the multi-GPU and roofline views read them there."""
    path = shared_trace(rel)
    doc = _doc(path)
    db, r = _import(tmp_path, path)
    meta = db.con.execute("SELECT trace_meta FROM runs WHERE run_id = ?", [r.run_id]).fetchone()[0]
    meta = json.loads(meta) if isinstance(meta, str) else meta
    want = json.loads(json.dumps(doc, default=float))  # Decimal -> float, as stored
    for key in ("distributedInfo", "deviceProperties"):
        if key in doc:
            assert meta[key] == want[key], key
    assert "distributedInfo" in doc or "tp2" not in rel


def test_kernels_whose_launch_is_not_in_the_trace_are_counted(tmp_path):
    """TraceLens's test traces were trimmed of some CPU events: kernels whose correlation id no
    runtime event carries cannot be linked, and absent says how many."""
    path = shared_trace("external/tracelens/h100_Qwen_Qwen1.5-0.5B-Chat__1016005.json.gz")
    events = _events(_doc(path))
    have = {(e.get("args") or {}).get("correlation") for e in events
            if e.get("ph") == "X" and e.get("cat") in LAUNCH_CATS}
    n = sum(1 for e in events if e.get("ph") == "X" and e.get("cat") in KERNEL_CATS
            and (e.get("args") or {}).get("correlation") not in have)
    assert n > 0
    db, r = _import(tmp_path, path)
    absent = db.con.execute("SELECT absent FROM runs WHERE run_id = ?", [r.run_id]).fetchone()[0]
    assert f"launch of {n} kernels: no launch event with their correlation id in the trace" in " ".join(absent)


@pytest.mark.parametrize("rel", [
    "external/hta/amd_trace_mi250_minitoy_train_ROCm6_2_kineto.json.gz",
    "external/tracelens/inference_vllm_decode_full_graph_execution.json.gz",
])
def test_hip_memcpy_calls_link_to_their_copies(tmp_path, rel):
    """ROCm gpu_memcpy events link to their hipMemcpy* call by correlation, as the file says."""
    path = shared_trace(rel)
    events = _events(_doc(path))
    calls = {(e.get("args") or {}).get("correlation"): e["name"] for e in events
             if e.get("ph") == "X" and e.get("cat") in LAUNCH_CATS}
    want = sorted(calls.get((e.get("args") or {}).get("correlation")) or "" for e in events
                  if e.get("ph") == "X" and e.get("cat") in ("gpu_memcpy", "gpu_memset"))
    assert want and all(w.startswith("hipMemcpy") for w in want)
    db, r = _import(tmp_path, path)
    got = sorted(n or "" for (n,) in db.con.execute(
        "SELECT l.name FROM memops m LEFT JOIN launches l ON l.run_id = m.run_id AND l.launch_id = m.launch_id "
        "WHERE m.run_id = ?", [r.run_id]).fetchall())
    assert got == want
