"""Issue 16: `tracekit export perfetto RUN -o FILE` on every fixture run.

What is checked, and how:
- the file is a Chrome JSON trace (what ui.perfetto.dev and Perfetto's trace processor open): read
  here with plain json/gzip, its kernel slices are counted against the ORIGINAL trace read with
  plain json (Kineto: events of category `kernel`) or sqlite3 (nsys: rows of
  CUPTI_ACTIVITY_KIND_KERNEL), and every kernel slice carries tracekit's stage and category args;
- importing the export back into tracekit gives identical counts of kernels, launches, ranges,
  operators and memory operations, and identical (stage, step, iteration, category, rule,
  evidence) groups with the same kernel counts and times, for every run.
Perfetto's trace processor cannot run here (its Python package downloads the binary on first
use, and these machines are offline); the protobuf form is checked with Perfetto's own proto
classes in test_export_perfetto_proto (when that format is built).
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from pathlib import Path

import pytest
from conftest import FIXTURES, tk

import tracekit

RUNS = sorted((FIXTURES / "h100").glob("*.pt.trace.json.gz")) + sorted((FIXTURES / "h100").glob("*.sqlite")) \
    + sorted((FIXTURES / "shared").glob("*.json.gz")) + sorted((FIXTURES / "shared").glob("*.sqlite")) \
    + sorted((FIXTURES / "variants").glob("*.json.gz")) + sorted((FIXTURES / "variants").glob("*.sqlite"))
TABLES = ("kernels", "launches", "ranges", "ops", "memops")
GROUPS = ("SELECT stage, step, iteration, category, rule_id, evidence, count(*) AS n, sum(dur_ns) AS t "
          "FROM kernels WHERE run_id = ? GROUP BY ALL ORDER BY ALL")


def original_kernel_count(trace: Path) -> int:
    """Kernels in the trace file itself, read without tracekit. An nsys trace of whole CUDA graphs
    (`--cuda-graph-trace=graph`) has one GPU activity row per graph execution, which tracekit
    keeps as one kernel row."""
    if trace.suffix == ".sqlite":
        con = sqlite3.connect(f"file:{trace}?mode=ro", uri=True)
        try:
            n = con.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchall()[0][0]
            if con.execute("SELECT count(*) FROM sqlite_master WHERE name = 'CUPTI_ACTIVITY_KIND_GRAPH_TRACE'"
                           ).fetchall()[0][0]:
                n += con.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_GRAPH_TRACE").fetchall()[0][0]
            return n
        finally:
            con.close()
    events = json.loads(gzip.decompress(trace.read_bytes()))["traceEvents"]
    return sum(1 for e in events if e.get("cat") in ("kernel", "Kernel") and e.get("ph") == "X")


@pytest.fixture(scope="module")
def fixture_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("pf") / "orig.duckdb"
    db = tracekit.open(path)
    for trace in RUNS:
        assert db.import_paths([trace])[0].status == "imported", trace
    db.close()
    return path


@pytest.mark.parametrize("trace", RUNS, ids=lambda p: p.name)
def test_export_reads_back_with_identical_counts_stages_and_categories(fixture_db, trace, tmp_path):
    db = tracekit.open(fixture_db, read_only=True)
    run_id = db.con.execute("SELECT run_id FROM runs WHERE source_name = ?", [trace.name]).fetchall()[0][0]
    out = tmp_path / f"{trace.name.split('.')[0]}.perfetto.json.gz"
    res = tk("export", "perfetto", str(run_id), "--db", str(fixture_db), "-o", str(out))
    assert res.returncode == 0, res.stderr
    doc = json.loads(gzip.decompress(out.read_bytes()))
    kernels = [e for e in doc["traceEvents"] if e.get("cat") == "kernel"]
    assert len(kernels) == original_kernel_count(trace)
    assert all("tracekit.stage" in e["args"] and "tracekit.evidence" in e["args"] for e in kernels)
    # The decision tracks: one category slice per kernel, named by its category.
    decided = [e for e in doc["traceEvents"] if e.get("cat") == "tracekit" and e["tid"] != 0]
    assert sorted(e["name"] for e in decided) == sorted(e["args"].get("tracekit.category") or "Unclassified"
                                                       for e in kernels)
    # The passes track: a slice per forward pass, for every stage that has passes.
    in_passes = {e["args"]["tracekit.stage"] for e in kernels if e["args"].get("tracekit.step") is not None}
    passes = [e for e in doc["traceEvents"] if e.get("cat") == "tracekit" and e["tid"] == 0]
    assert {p["args"]["stage"] for p in passes} == in_passes

    back = tracekit.open(tmp_path / "back.duckdb")
    assert back.import_paths([out])[0].status == "imported"
    new_id = back.con.execute("SELECT run_id FROM runs").fetchall()[0][0]
    # The metadata came back through the manifest written beside the export.
    meta = "SELECT key, value FROM run_meta WHERE run_id = ? ORDER BY key"
    before = dict(db.con.execute(meta, [run_id]).fetchall())
    after = dict(back.con.execute(meta, [new_id]).fetchall())
    assert {k: after.get(k) for k in before} == before
    for table in TABLES:
        q = f"SELECT count(*) FROM {table} WHERE run_id = ?"
        assert back.con.execute(q, [new_id]).fetchall()[0] == db.con.execute(q, [run_id]).fetchall()[0], table
    assert back.con.execute(GROUPS, [new_id]).fetchall() == db.con.execute(GROUPS, [run_id]).fetchall()


def test_export_of_a_missing_run_is_one_line(fixture_db, tmp_path):
    res = tk("export", "perfetto", "999", "--db", str(fixture_db), "-o", str(tmp_path / "x.json"))
    assert res.returncode == 1 and res.stderr.strip().count("\n") == 0
    assert "no run 999" in res.stderr and not (tmp_path / "x.json").exists()


@pytest.mark.parametrize("trace", RUNS, ids=lambda p: p.name)
def test_proto_export_parses_with_perfettos_own_protos(fixture_db, trace, tmp_path):
    """The protobuf form, checked with the perfetto package's generated proto classes (the
    schema Perfetto's trace processor reads): it parses; packets are on one sequence whose state
    is cleared first, in time order; every slice is on a declared track; rebuilt by begin/end
    nesting per track, the slices are exactly the JSON export's (category, name, start,
    duration), so no slice was cut or mis-nested; kernels carry tracekit's stage and category;
    every kernel's incoming flow starts at a launch."""
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace, TrackEvent

    from tracekit.outputs import perfetto

    db = tracekit.open(fixture_db, read_only=True)
    run_id = db.con.execute("SELECT run_id FROM runs WHERE source_name = ?", [trace.name]).fetchall()[0][0]
    out = tmp_path / "run.pftrace"
    res = tk("export", "perfetto", str(run_id), "--db", str(fixture_db), "-o", str(out))
    assert res.returncode == 0, res.stderr
    parsed = Trace.FromString(out.read_bytes())
    declared: set[int] = set()
    stacks: dict[int, list] = {}
    slices = []
    last = -1
    first_event = True
    flows_out, flows_in = set(), set()
    for p in parsed.packet:
        assert p.trusted_packet_sequence_id == 1
        if p.HasField("track_descriptor"):
            declared.add(p.track_descriptor.uuid)
            continue
        te = p.track_event
        if first_event:
            assert p.sequence_flags & 1  # SEQ_INCREMENTAL_STATE_CLEARED
            first_event = False
        assert p.timestamp >= last and te.track_uuid in declared
        last = p.timestamp
        if te.type == TrackEvent.TYPE_SLICE_BEGIN:
            args = {a.name: a for a in te.debug_annotations}
            stacks.setdefault(te.track_uuid, []).append((p.timestamp, te.name, list(te.categories), args))
            flows_out.update(te.flow_ids)
            flows_in.update(te.terminating_flow_ids)
        else:
            assert te.type == TrackEvent.TYPE_SLICE_END and stacks.get(te.track_uuid)
            start, name, cats, args = stacks[te.track_uuid].pop()
            slices.append((cats[0], name, start, p.timestamp - start, args))
    assert not any(stacks.values())
    doc = perfetto.trace_events(db, run_id)
    want = sorted((e["cat"], e["name"], round(e["ts"] * 1000), round(e["dur"] * 1000))
                  for e in doc["traceEvents"] if e["ph"] == "X")
    assert sorted(s[:4] for s in slices) == want
    kernels = [s for s in slices if s[0] == "kernel"]
    assert len(kernels) == original_kernel_count(trace)
    stored = sorted(db.con.execute("SELECT coalesce(stage, ''), coalesce(category, '') FROM kernels "
                                   "WHERE run_id = ?", [run_id]).fetchall())
    got = sorted((a["tracekit.stage"].string_value if "tracekit.stage" in a else "",
                  a["tracekit.category"].string_value if "tracekit.category" in a else "")
                 for *_, a in kernels)
    assert got == stored
    assert flows_in <= flows_out
