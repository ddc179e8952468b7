"""A Kineto trace holding two processes whose correlation ids overlap (built here from a real
trace): every kernel is linked to a launch of its own process, or left unlinked and counted;
never linked to the other process's launch."""

from __future__ import annotations

import copy
import gzip
import json
from pathlib import Path

from conftest import KINETO_L2

import tracekit

GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset", "gpu_user_annotation"}
PID_B = 4242


def two_processes(tmp_path: Path, shift_ids: bool) -> tuple[Path, int]:
    doc = json.loads(gzip.decompress(KINETO_L2.read_bytes()))
    events = doc["traceEvents"]
    corrs = [e["args"]["correlation"] for e in events if e.get("cat") == "kernel"]
    # Process B's ids overlap half of A's range (shift_ids) or all of it.
    off = (max(corrs) - min(corrs)) // 2 if shift_ids else 0
    gpu_pids = {e["pid"] for e in events if e.get("cat") in GPU_CATS}
    b = copy.deepcopy(events)
    for e in b:
        if not isinstance(e, dict):
            continue
        a = e.get("args") if isinstance(e.get("args"), dict) else {}
        if e.get("pid") in gpu_pids:
            e["pid"] = 1
            if "device" in a:
                a["device"] = 1
        else:
            e["pid"] = PID_B
        if "correlation" in a:
            a["correlation"] += off
        if e.get("cat") == "ac2g":
            e["id"] += off
    doc["traceEvents"] = events + b
    p = tmp_path / "two.json"
    p.write_text(json.dumps(doc))
    pid_a = next(e["pid"] for e in events if e.get("cat") == "cuda_runtime")
    return p, pid_a


def linked(tmp_path: Path, p: Path):
    db = tracekit.open(tmp_path / "t.duckdb")
    [r] = db.import_paths([p])
    assert r.status == "imported", r.error
    rows = db.con.execute(
        "SELECT k.device, k.correlation, k.pid, l.pid, l.correlation FROM kernels k "
        "LEFT JOIN launches l ON l.run_id = k.run_id AND l.launch_id = k.launch_id WHERE k.run_id = ?",
        [r.run_id]).fetchall()
    absent = db.con.execute("SELECT absent FROM runs WHERE run_id = ?", [r.run_id]).fetchone()[0]
    return rows, absent


def test_partly_shared_ids_link_each_kernel_to_its_own_process(tmp_path):
    p, pid_a = two_processes(tmp_path, shift_ids=True)
    rows, absent = linked(tmp_path, p)
    owner = {0: pid_a, 1: PID_B}  # device 0 is A's GPU row, device 1 B's: as the test built them
    assert len(rows) == 2 * sum(1 for e in json.loads(gzip.decompress(KINETO_L2.read_bytes()))["traceEvents"]
                                if e.get("cat") == "kernel")
    assert all(l_pid == owner[dev] and l_corr == corr for dev, corr, _, l_pid, l_corr in rows)
    assert all(k_pid == owner[dev] for dev, _, k_pid, _, _ in rows)  # the kernel's process is its launch's
    assert not any("several processes" in a for a in absent)


def test_fully_shared_ids_are_left_unlinked_and_said(tmp_path):
    p, pid_a = two_processes(tmp_path, shift_ids=False)
    rows, absent = linked(tmp_path, p)
    owner = {0: pid_a, 1: PID_B}
    wrong = [r for r in rows if r[3] is not None and r[3] != owner[r[0]]]
    assert wrong == []
    unlinked = sum(1 for r in rows if r[3] is None)
    assert unlinked
    assert any(f"launch of {unlinked} kernels" in a and "several processes" in a for a in absent), absent


def test_one_process_traces_are_unchanged(tmp_path):
    rows, absent = linked(tmp_path, KINETO_L2)
    assert all(r[3] is not None for r in rows)
    assert not any("several processes" in a for a in absent)
