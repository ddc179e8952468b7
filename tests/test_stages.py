"""Stage attribution on the real shared traces, checked against the markers read straight from the files.

The expected stage of every kernel is computed here without tracekit: from the nsys SQLite
tables (kernel -> CUDA API call by correlationId -> innermost `summarization` / `generation step K`
NVTX push/pop range on that thread) or from the Kineto JSON (kernel -> cuda_runtime/cuda_driver
event by correlation -> innermost `stage:*` user_annotation on that pid/tid).
"""

from __future__ import annotations

import functools
import gzip
import json
import re
import shutil
import sqlite3
from collections import Counter
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest
from conftest import KINETO_L2, KINETO_L3, NSYS_L2, NSYS_L3_SHAPES, SHARED_TRACES
from conftest import run_id_of as run_of

import tracekit
from tracekit.enrich.stages import StageConfig, attribute_stages

_GEN_STEP = re.compile(r"generation step (\d+)")


def _ns(v) -> int:
    return int((Decimal(str(v)) * 1000).to_integral_value())


def _label(marker_stage: str, it: int, last: int, step: int) -> tuple[str, int, int]:
    return ("warmup" if it < last else marker_stage, it, step)


def _assign(kernels, markers):
    """kernels: (key, thread, launch_t, dur, short); markers: (thread, start, end, stage, order_key),
    a thread being (process, thread id).

    Returns [(stage, iteration, step, dur, short)] with the innermost marker around each launch;
    iterations start at each summarization marker; the last iteration is the measurement.
    Iterations are numbered within each process (a thread is (process, thread)): several
    processes in one trace each run their own sequence, and each has its own measurement.
    """
    markers = sorted(markers, key=lambda m: (m[1], m[4]))
    info, last = {}, {}
    for proc in {m[0][0] for m in markers}:
        it, gen = -1, 0
        for m in (m for m in markers if m[0][0] == proc):
            if m[3] == "summarization":
                it, gen = it + 1, 0
                info[m] = ("summarization", it, 0)
            else:
                gen += 1
                info[m] = ("generation", it, gen)
        n_gen = Counter(i for m, (s, i, _) in info.items() if s == "generation" and m[0][0] == proc)
        last[proc] = max(i for i in range(it + 1) if n_gen[i] == max(n_gen.values()))
    out = []
    for _, thread, t, dur, short in kernels:
        around = [m for m in markers if m[0] == thread and m[1] <= t <= m[2]]
        if not around:
            out.append(("other", None, None, dur, short))
            continue
        stage, i, step = info[min(around, key=lambda m: m[2] - m[1])]
        out.append((*_label(stage, i, last[thread[0]], step), dur, short))
    return out


def nsys_truth(path: Path) -> list[tuple]:
    con = sqlite3.connect(path)
    markers = []
    for start, end, gtid, text in con.execute(
        "SELECT n.start, n.end, n.globalTid, coalesce(n.text, s.value) FROM NVTX_EVENTS n "
        "LEFT JOIN StringIds s ON s.id = n.textId WHERE n.eventType = 59 AND n.end IS NOT NULL"
    ):
        # Only the capture script's own NVTX labels; emit_nvtx's echoes of record_function are
        # not needed to know the pass.
        if text == "summarization":
            markers.append(((gtid >> 24, gtid), start, end, "summarization", 0))
        elif m := _GEN_STEP.fullmatch(text or ""):
            markers.append(((gtid >> 24, gtid), start, end, "generation", int(m.group(1))))
    kernels = con.execute(
        "SELECT k.correlationId, r.globalTid >> 24, r.globalTid, r.start, k.end - k.start, s.value "
        "FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN StringIds s ON s.id = k.shortName "
        "JOIN CUPTI_ACTIVITY_KIND_RUNTIME r ON r.correlationId = k.correlationId "
        "AND r.globalTid >> 24 = k.globalPid >> 24"
    ).fetchall()
    kernels = [(c, (p, g), t, d, n) for c, p, g, t, d, n in kernels]
    assert len(kernels) == con.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchall()[0][0]
    return _assign(kernels, markers)


def kineto_truth(path: Path) -> list[tuple]:
    with gzip.open(path, "rt") as f:
        events = json.load(f, parse_float=Decimal)["traceEvents"]
    launch = {e["args"]["correlation"]: e for e in events
              if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    markers = [((e["pid"], e["tid"]), _ns(e["ts"]), _ns(e["ts"]) + _ns(e["dur"]),
                e["name"].removeprefix("stage:"), 0)
               for e in events if e.get("cat") == "user_annotation"
               and e["name"] in ("stage:summarization", "stage:generation")]
    kernels = []
    for e in events:
        if e.get("cat") == "kernel":
            lc = launch[e["args"]["correlation"]]
            kernels.append((None, (lc["pid"], lc["tid"]), _ns(lc["ts"]), _ns(e["dur"]), None))
    return _assign(kernels, markers)


@functools.cache
def truth(path: Path) -> list[tuple]:
    return nsys_truth(path) if path.suffix == ".sqlite" else kineto_truth(path)


def counts(rows) -> Counter:
    return Counter((s, i, st) for s, i, st, *_ in rows)


def db_counts(con, run_id: int) -> Counter:
    return Counter({(s, i, st): n for s, i, st, n in con.execute(
        "SELECT stage, iteration, step, count(*) FROM kernels WHERE run_id = ? GROUP BY ALL", [run_id]
    ).fetchall()})



@pytest.mark.parametrize("path", SHARED_TRACES, ids=lambda p: p.name)
def test_stages_match_markers_in_trace_file(shared_db_path, path):
    expected = counts(truth(path))
    db = tracekit.open(shared_db_path, read_only=True)
    got = db_counts(db.con, run_of(db.con, path))
    assert got == expected
    # The traces are one summarization + 7 (or 15) generation passes per run.
    assert expected[("summarization", expected_last(expected), 0)] > 0


def expected_last(c: Counter) -> int:
    return max(i for (s, i, _) in c if s == "summarization")


@pytest.mark.parametrize("path,method,iterations,n_gen", [
    (NSYS_L2, "markers:nvtx", 2, 7), (NSYS_L3_SHAPES, "markers:nvtx", 2, 7),
    (KINETO_L2, "markers:annotation", 1, 7), (KINETO_L3, "markers:annotation", 1, 15),
], ids=lambda v: v.name if isinstance(v, Path) else None)
def test_method_iterations_and_passes(shared_db_path, path, method, iterations, n_gen):
    db = tracekit.open(shared_db_path, read_only=True)
    rid = run_of(db.con, path)
    assert db.con.execute("SELECT stage_method, iterations FROM runs WHERE run_id = ?", [rid]).fetchall()[0] == (
        method, iterations)
    # One pass per marker of the capture script, steps 0..n_gen in every iteration.
    steps = db.con.execute(
        "SELECT iteration, list(step ORDER BY step) FROM passes WHERE run_id = ? GROUP BY 1 ORDER BY 1", [rid]
    ).fetchall()
    assert steps == [(i, list(range(n_gen + 1))) for i in range(iterations)]


def test_emit_nvtx_echo_ranges_do_not_split_passes(shared_db_path):
    # Under emit_nvtx each measured pass has both `generation step K` and its record_function
    # echo `stage:generation` nested inside: still one pass each, and the echo is the pass.
    db = tracekit.open(shared_db_path, read_only=True)
    rid = run_of(db.con, NSYS_L3_SHAPES)
    names = db.con.execute(
        "SELECT iteration, list(DISTINCT name ORDER BY name) FROM passes WHERE run_id = ? GROUP BY 1 ORDER BY 1",
        [rid]).fetchall()
    assert names[0][1] == ["generation step 0", "generation step 1", "generation step 2", "generation step 3",
                           "generation step 4", "generation step 5", "generation step 6", "summarization"]
    assert names[1][1] == ["stage:generation", "stage:summarization"]


def _copy(src: Path, tmp_path: Path) -> duckdb.DuckDBPyConnection:
    dst = tmp_path / "work.duckdb"
    shutil.copy(src, dst)
    return duckdb.connect(str(dst))


@pytest.mark.parametrize("path", SHARED_TRACES, ids=lambda p: p.name)
def test_inferred_stages_agree_with_markers(shared_db_path, tmp_path, path):
    con = _copy(shared_db_path, tmp_path)
    rid = run_of(con, path)
    con.execute("CREATE TABLE marked AS SELECT kernel_id, stage, step, iteration FROM kernels WHERE run_id = ?",
                [rid])
    con.execute("DELETE FROM ranges WHERE run_id = ? AND regexp_matches(name, 'summarization|generation')", [rid])
    method = attribute_stages(con, rid)
    assert method == "inferred:embedding-anchor+kernel-mix"
    assert con.execute("SELECT stage_method FROM runs WHERE run_id = ?", [rid]).fetchall()[0][0] == method
    mismatched = con.execute(
        "SELECT count(*) FROM kernels k JOIN marked m USING (kernel_id) WHERE k.run_id = ? AND "
        "(k.stage IS DISTINCT FROM m.stage OR k.step IS DISTINCT FROM m.step "
        " OR k.iteration IS DISTINCT FROM m.iteration)", [rid]).fetchall()[0][0]
    assert mismatched == 0
    # ... and therefore with the trace file's own markers.
    assert db_counts(con, rid) == counts(truth(path))
    # Inferred passes have no marker range: no wall-clock extent to report.
    assert con.execute("SELECT count(*) FROM passes WHERE run_id = ? AND source <> 'inferred'",
                       [rid]).fetchall()[0][0] == 0


def test_iterations_all_keeps_warmup_stages(shared_db_path, tmp_path):
    con = _copy(shared_db_path, tmp_path)
    rid = run_of(con, NSYS_L2)
    attribute_stages(con, rid, StageConfig(iterations="all"))
    expected = Counter()
    for (stage, it, step), n in counts(truth(NSYS_L2)).items():
        if stage == "warmup":
            stage = "summarization" if step == 0 else "generation"
        expected[(stage, it, step)] += n
    assert db_counts(con, rid) == expected
    assert "warmup" not in {s for s, *_ in db_counts(con, rid)}


def test_rerun_replaces_previous_attribution(shared_db_path, tmp_path):
    con = _copy(shared_db_path, tmp_path)
    rid = run_of(con, NSYS_L2)
    before = con.execute("SELECT count(*) FROM passes WHERE run_id = ?", [rid]).fetchall()[0][0]
    attribute_stages(con, rid)
    attribute_stages(con, rid)
    assert con.execute("SELECT count(*) FROM passes WHERE run_id = ?", [rid]).fetchall()[0][0] == before == 16
    assert db_counts(con, rid) == counts(truth(NSYS_L2))


def test_no_markers_and_no_inference_is_none(shared_db_path, tmp_path):
    con = _copy(shared_db_path, tmp_path)
    rid = run_of(con, KINETO_L2)
    cfg = StageConfig(summarization_patterns=(), generation_patterns=(), infer=False)
    assert attribute_stages(con, rid, cfg) == "none"
    assert con.execute("SELECT list(DISTINCT stage), count(step), count(iteration) FROM kernels WHERE run_id = ?",
                       [rid]).fetchall()[0] == (["other"], 0, 0)
    assert con.execute("SELECT stage_method, iterations FROM runs WHERE run_id = ?", [rid]).fetchall()[0] == ("none", 0)


def test_custom_patterns_are_whole_label(shared_db_path, tmp_path):
    # A pattern that matches only part of a label must not make it a marker.
    con = _copy(shared_db_path, tmp_path)
    rid = run_of(con, NSYS_L2)
    cfg = StageConfig(summarization_patterns=("summ",), generation_patterns=("generation",), infer=False)
    assert attribute_stages(con, rid, cfg) == "none"
    cfg = StageConfig(summarization_patterns=("summ.*",), generation_patterns=(r"generation step \d+",))
    assert attribute_stages(con, rid, cfg) == "markers:nvtx"
    assert db_counts(con, rid) == counts(truth(NSYS_L2))


def test_nested_marker_of_other_stage_takes_its_kernels(shared_db_path, tmp_path):
    # A generation marker inside the measured summarization range: launches inside it go to the
    # inner marker, launches after it (still inside the outer range) back to summarization.
    con = _copy(shared_db_path, tmp_path)
    rid = run_of(con, NSYS_L2)
    s0, e0, pid, tid = con.execute(
        "SELECT start_ns, end_ns, pid, tid FROM ranges WHERE run_id = ? AND name = 'summarization' "
        "ORDER BY start_ns DESC LIMIT 1", [rid]).fetchall()[0]
    launches = [t for (t,) in con.execute(
        "SELECT l.start_ns FROM kernels k JOIN launches l ON l.run_id = k.run_id AND l.launch_id = k.launch_id "
        "WHERE k.run_id = ? AND l.start_ns BETWEEN ? AND ? ORDER BY 1", [rid, s0, e0]).fetchall()]
    a, b = launches[50] - 1, launches[100] - 1   # the inner range covers launches 50..99
    con.execute("INSERT INTO ranges (run_id, range_id, name, kind, start_ns, end_ns, dur_ns, pid, tid) "
                "VALUES (?, 999999, 'decode', 'nvtx', ?, ?, ?, ?, ?)", [rid, a, b, b - a, pid, tid])
    attribute_stages(con, rid)
    got = dict(con.execute(
        "SELECT step, count(*) FROM kernels WHERE run_id = ? AND iteration = 1 GROUP BY 1", [rid]).fetchall())
    assert got[0] == len(launches) - 50 and got[1] == 50
    assert got[2] == 203   # the old step 1 shifted up: the inner range counts as a generation pass


def test_inference_ignores_gathers_that_do_not_open_a_pass(shared_db_path, tmp_path):
    # Make the last kernel of every pass (the argmax) look like a sampling gather: it must not
    # split passes, since the few kernels it would open are no forward pass.
    con = _copy(shared_db_path, tmp_path)
    rid = run_of(con, KINETO_L2)
    con.execute("CREATE TABLE marked AS SELECT kernel_id, stage, step, iteration FROM kernels WHERE run_id = ?",
                [rid])
    con.execute("INSERT INTO kernel_names SELECT max(name_id) + 1, "
                "'void at::native::sampling_gather_kernel<16>(char*)', 'sampling_gather_kernel' FROM kernel_names")
    renamed = con.execute(
        "UPDATE kernel_rows SET name_id = (SELECT max(name_id) FROM kernel_names) "
        "WHERE run_id = ? AND kernel_id IN (SELECT arg_max(kernel_id, start_ns) FROM kernels "
        "WHERE run_id = ? AND step IS NOT NULL GROUP BY iteration, step)", [rid, rid]).fetchall()[0][0]
    assert renamed == 8
    con.execute("DELETE FROM ranges WHERE run_id = ?", [rid])
    assert attribute_stages(con, rid).startswith("inferred:")
    assert con.execute(
        "SELECT count(*) FROM kernels k JOIN marked m USING (kernel_id) WHERE k.run_id = ? AND "
        "(k.stage IS DISTINCT FROM m.stage OR k.step IS DISTINCT FROM m.step)", [rid]).fetchall()[0][0] == 0


def test_markers_without_launches_fall_back_to_inference(shared_db_path, tmp_path):
    con = _copy(shared_db_path, tmp_path)
    rid = run_of(con, NSYS_L2)
    con.execute("DELETE FROM launches WHERE run_id = ?", [rid])
    assert attribute_stages(con, rid).startswith("inferred:")
    assert db_counts(con, rid) == counts(truth(NSYS_L2))


@pytest.mark.parametrize("label,stage", [
    ("summarization", "summarization"), ("stage:summarization", "summarization"), ("Prefill", "summarization"),
    ("prefill phase", "summarization"), ("context", "summarization"), ("generation step 12", "generation"),
    ("stage:generation", "generation"), ("decode_step_3", "generation"), ("Decode", "generation"),
    ("generation", "generation"),
    ("aten::mm", None), ("decode_tokens_postprocess", None), ("context_attention", None),
    ("summarization_metrics", None), ("stage:summarization, op_id = 1", None), ("my prefill", None),
])
def test_default_marker_patterns_match_whole_labels(label, stage):
    from tracekit.enrich.stages import DEFAULT_GENERATION, DEFAULT_SUMMARIZATION, _alternation

    con = duckdb.connect()
    got = con.execute(
        "SELECT CASE WHEN regexp_full_match(?, ?) THEN 'summarization' "
        "WHEN regexp_full_match(?, ?) THEN 'generation' END",
        [label, _alternation(DEFAULT_SUMMARIZATION), label, _alternation(DEFAULT_GENERATION)]).fetchall()[0][0]
    assert got == stage


@pytest.mark.parametrize("path", [NSYS_L2, KINETO_L3], ids=lambda p: p.name)
def test_stages_planned_at_insert_match_attribution_after(tmp_path, path):
    """Stages decided while the kernel rows are written (insert_run(stages=enrich.stages), the importer's
    path) are those attribute_stages writes into stored rows: with markers, and by inference once
    the stage markers are gone."""
    import pyarrow.compute as pc

    from tracekit.enrich import stages as stages_module
    from tracekit.enrich.links import link
    from tracekit.readers import read
    from tracekit.store import connect, insert_run

    data = link(read(path))
    unmarked = data.ranges.filter(pc.invert(pc.match_substring_regex(
        data.ranges.column("name").cast("string"), "summarization|generation")))
    for ranges, method in ((data.ranges, "markers:"), (unmarked, "inferred:embedding-anchor+kernel-mix")):
        data.ranges = ranges
        got = []
        for planned in (True, False):
            con = connect(tmp_path / f"{planned}_{len(got)}_{ranges.num_rows}.duckdb")
            rid = insert_run(con, data, source_path="t", content_hash="h", importer_version="t", meta={},
                             stages=stages_module if planned else None)
            if not planned:
                attribute_stages(con, rid)
            got.append((
                con.execute("SELECT kernel_id, stage, step, iteration FROM kernel_rows ORDER BY 1").fetchall(),
                con.execute("SELECT * FROM passes ORDER BY ALL").fetchall(),
                con.execute("SELECT stage_method, iterations FROM runs").fetchall()))
        assert got[0] == got[1]
        rows, passes, ((stage_method, iterations),) = got[0]
        assert stage_method.startswith(method) and iterations >= 1 and len(passes) > 1
        assert {r[1] for r in rows} >= {"summarization", "generation"}


def test_kernels_placed_by_marker_in_slices_get_the_passes_of_one_placement(tmp_path, monkeypatch):
    """Marker passes place kernels by their launch one slice of kernel ids at a time
    (stages._KPASS_SLICE: the join to the launches and the ASOF's sort of every kernel at once were
    the import's peak at 3.75M kernels). Slices of 97 kernels give the passes and kernel stages
    that one slice gives."""
    import tracekit
    from tracekit.enrich import stages as stage_module

    def imported(name: str) -> dict:
        db = tracekit.open(tmp_path / name)
        [r] = db.import_paths([NSYS_L2])
        assert r.status == "imported", r.error
        out = {t: db.con.execute(f"SELECT * EXCLUDE (run_id) FROM {t} ORDER BY ALL").fetchall()
               for t in ("passes", "kernel_rows")}
        out["method"] = db.con.execute("SELECT stage_method, iterations, stage_reason FROM runs").fetchall()
        db.close()
        return out

    whole = imported("whole.duckdb")
    assert whole["method"][0][0].startswith("markers:") and len(whole["kernel_rows"]) > 10 * 97
    monkeypatch.setattr(stage_module, "_KPASS_SLICE", 97)
    assert imported("sliced.duckdb") == whole
