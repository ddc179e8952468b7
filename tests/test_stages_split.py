"""Stage split on traces tracekit was not built around: several processes, CUDA graphs traced whole,
host- vs GPU-side time, traces that are not generation, serving engines' step markers.

Every expected value is read here straight from the trace (sqlite3 / json), never from tracekit.
"""

from __future__ import annotations

import gzip
import json
import sqlite3
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest
from conftest import FIXTURES, shared_trace
from test_stages import _assign, nsys_truth

import tracekit
from tracekit.enrich.stages import PARTITION, engine_step

VARIANTS = FIXTURES / "variants"
TWO_PROCS = VARIANTS / "nsys_two_processes_two_gpus.sqlite"
GRAPH_WHOLE = VARIANTS / "nsys_cuda_graph_whole.sqlite"


def _ns(v) -> int:
    return int((Decimal(str(v)) * 1000).to_integral_value())


def _import(tmp_path: Path, *paths: Path) -> tracekit.Database:
    db = tracekit.open(tmp_path / "t.duckdb")
    for p in paths:
        r = db.import_paths([p])
        assert r[0].status == "imported", r[0].error
    return db


def _rid(db, path: Path) -> int:
    return db.con.execute("SELECT run_id FROM runs WHERE source_name = ?", [path.name]).fetchall()[0][0]


def _ratio(sums: dict) -> float:
    return sums["generation"] / (sums["summarization"] + sums["generation"])


# -- several processes / GPUs -------------------------------------------------------------------

def _per_process_truth(path: Path) -> dict[tuple[int, int], dict[str, int]]:
    """Kernel time per (process, device) and stage, markers numbered per process (test_stages)."""
    con = sqlite3.connect(path)
    dev = dict(con.execute("SELECT correlationId || ':' || (globalPid >> 24), deviceId "
                           "FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchall())
    pids = con.execute("SELECT correlationId, globalPid >> 24 FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchall()
    assert len({d for d in dev.values()}) == 2 and len({p for _, p in pids}) == 2
    out: dict = defaultdict(lambda: defaultdict(int))
    rows = nsys_truth(path)
    keys = con.execute(
        "SELECT (k.globalPid >> 24) & 16777215, k.deviceId FROM CUPTI_ACTIVITY_KIND_KERNEL k "
        "JOIN CUPTI_ACTIVITY_KIND_RUNTIME r ON r.correlationId = k.correlationId "
        "AND r.globalTid >> 24 = k.globalPid >> 24").fetchall()
    for (pid, device), (stage, *_rest) in zip(keys, rows, strict=True):
        out[(pid, device)][stage] += _rest[2]
    return out


def test_two_processes_each_have_their_own_measurement(tmp_path):
    truth = _per_process_truth(TWO_PROCS)
    assert sorted(round(_ratio(v), 3) for v in truth.values()) == [0.608, 0.634]
    db = _import(tmp_path, TWO_PROCS)
    rid = _rid(db, TWO_PROCS)
    rows = db.query("SELECT * FROM stage_ratio_by_process WHERE run_id = ?", [rid]).to_dicts()
    assert {(r["pid"], r["device"]): (r["summarization_ns"], r["generation_ns"], r["warmup_ns"]) for r in rows} == {
        k: (v["summarization"], v["generation"], v["warmup"]) for k, v in truth.items()}
    combined = db.query("SELECT * FROM stage_ratio WHERE run_id = ?", [rid]).row(0, named=True)
    s = sum(v["summarization"] for v in truth.values())
    g = sum(v["generation"] for v in truth.values())
    assert combined["gen_ratio"] == pytest.approx(g / (s + g), rel=1e-12)
    assert round(combined["gen_ratio"], 3) == 0.622 and combined["warmup_ns"] == 0
    # Each process's passes are numbered on their own: step 0 of iteration 0 in both.
    firsts = db.con.execute("SELECT pid, device, min(iteration), min(step) FROM passes WHERE run_id = ? "
                            "GROUP BY ALL ORDER BY 1", [rid]).fetchall()
    assert [(i, st) for _, _, i, st in firsts] == [(0, 0), (0, 0)]


def test_partition_is_one_constant_the_views_use(tmp_path):
    from tracekit.views import _with_partition

    assert _with_partition("{{partition}}") == ", ".join(PARTITION)
    db = _import(tmp_path, TWO_PROCS)
    cols = db.query("SELECT * FROM stage_ratio_by_process LIMIT 0").columns
    assert cols[1:1 + len(PARTITION)] == list(PARTITION)
    # The DuckDB 2.0.1 LEFT JOIN pitfall: a run_id filter must not change the sums.
    a = db.query("SELECT * FROM stage_ratio WHERE run_id = 1")
    b = db.query("SELECT * FROM stage_ratio").filter(a["run_id"][0] == db.query("SELECT * FROM stage_ratio")["run_id"])
    assert a.to_dicts() == b.to_dicts()


# -- CUDA graphs traced whole -------------------------------------------------------------------

def _graph_truth(path: Path) -> tuple[int, int, int]:
    """(generation ns of the graph executions, of generation kernels, summarization kernel ns) of
    the measured iteration: each GRAPH_TRACE row takes the NVTX marker around its cudaGraphLaunch."""
    con = sqlite3.connect(path)
    markers = []
    for start, end, gtid, text in con.execute(
            "SELECT n.start, n.end, n.globalTid, coalesce(n.text, s.value) FROM NVTX_EVENTS n "
            "LEFT JOIN StringIds s ON s.id = n.textId WHERE n.eventType = 59 AND n.end IS NOT NULL"):
        # The capture scripts' labels: `summarization` / `generation step K`, or `stage:<stage>`.
        if text in ("summarization", "stage:summarization"):
            markers.append(((gtid >> 24, gtid), start, end, "summarization", 0))
        elif (text or "").startswith("generation step ") or text == "stage:generation":
            markers.append(((gtid >> 24, gtid), start, end, "generation", 0))
    rows = con.execute(
        "SELECT 0, r.globalTid >> 24, r.globalTid, r.start, g.end - g.start FROM CUPTI_ACTIVITY_KIND_GRAPH_TRACE g "
        "JOIN CUPTI_ACTIVITY_KIND_RUNTIME r ON r.correlationId = g.correlationId "
        "AND r.globalTid >> 24 = g.globalPid >> 24").fetchall()
    graphs = _assign([(c, (p, g), t, d, None) for c, p, g, t, d in rows], markers)
    krows = con.execute(
        "SELECT k.correlationId, r.globalTid >> 24, r.globalTid, r.start, k.end - k.start "
        "FROM CUPTI_ACTIVITY_KIND_KERNEL k JOIN CUPTI_ACTIVITY_KIND_RUNTIME r ON r.correlationId = k.correlationId "
        "AND r.globalTid >> 24 = k.globalPid >> 24").fetchall()
    kern = _assign([(c, (p, g), t, d, None) for c, p, g, t, d in krows], markers)
    gen_graph = sum(d for s, _i, _st, d, _ in graphs if s == "generation")
    return (gen_graph, sum(d for s, _i, _st, d, _ in kern if s == "generation"),
            sum(d for s, _i, _st, d, _ in kern if s == "summarization"))


@pytest.mark.parametrize("path", [GRAPH_WHOLE, "h200/llama3-8b-2L-cudagraph-nsys-graph.sqlite"], ids=str)
def test_whole_graphs_take_the_stage_of_their_launch(tmp_path, path):
    path = path if isinstance(path, Path) else shared_trace(path)
    gen_graph, gen_kernels, summ = _graph_truth(path)
    assert gen_graph > 0
    db = _import(tmp_path, path)
    rid = _rid(db, path)
    row = db.query("SELECT * FROM stage_ratio WHERE run_id = ?", [rid]).row(0, named=True)
    assert (row["summarization_ns"], row["generation_ns"]) == (summ, gen_graph + gen_kernels)
    assert row["gen_ratio"] > 0 and row["unattributed_ns"] == 0
    conf, reason = db.con.execute("SELECT stage_confidence, stage_reason FROM runs WHERE run_id = ?",
                                  [rid]).fetchall()[0]
    assert conf == "medium" and "traced whole" in reason
    buckets = dict(db.con.execute("SELECT bucket, time_ns FROM composition WHERE run_id = ?", [rid]).fetchall())
    assert buckets["CUDA graph (whole)"] == gen_graph


def test_h200_graph_export_agrees_with_kineto_of_the_same_script(tmp_path):
    nsys = shared_trace("h200/llama3-8b-2L-cudagraph-nsys-graph.sqlite")
    kin = shared_trace("h200/llama3-8b-2L-cudagraph_marked_b1_i64_o16.pt.trace.json.gz")
    sums = _kineto_stage_sums(kin)
    db = _import(tmp_path, nsys)
    got = db.query("SELECT gen_ratio FROM stage_ratio WHERE run_id = ?", [_rid(db, nsys)])["gen_ratio"][0]
    assert round(_ratio(sums), 3) == 0.932
    assert got == pytest.approx(_ratio(sums), abs=0.01)   # was 0.416: decode graphs were missing


# -- host-side vs GPU-side time -----------------------------------------------------------------

def _kineto_events(path: Path) -> list[dict]:
    with gzip.open(path, "rt") as f:
        return json.load(f, parse_float=Decimal)["traceEvents"]


def _kineto_stage_kernels(path: Path) -> dict[str, list[tuple[int, int]]]:
    """(start, end) of each kernel by the stage:* annotation around its launch (last of each)."""
    ev = _kineto_events(path)
    launch = {e["args"]["correlation"]: e for e in ev
              if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    marks = sorted((_ns(e["ts"]), _ns(e["ts"]) + _ns(e["dur"]), e["name"].removeprefix("stage:"), e["tid"])
                    for e in ev if e.get("cat") == "user_annotation"
                    and e["name"] in ("stage:summarization", "stage:generation"))
    out: dict = defaultdict(list)
    for e in ev:
        if e.get("cat") != "kernel":
            continue
        lc = launch.get(e["args"].get("correlation"))
        if lc is None:
            continue
        t = _ns(lc["ts"])
        around = [m for m in marks if m[0] <= t <= m[1] and m[3] == lc["tid"]]
        if around:
            out[min(around, key=lambda m: m[1] - m[0])[2]].append((_ns(e["ts"]), _ns(e["ts"]) + _ns(e["dur"])))
    out["_marks"] = marks
    return out


def _kineto_stage_sums(path: Path) -> dict[str, int]:
    k = _kineto_stage_kernels(path)
    return {s: sum(e - b for b, e in k[s]) for s in ("summarization", "generation")}


def _union(iv: list[tuple[int, int]]) -> int:
    total, cur_s, cur_e = 0, None, None
    for s, e in sorted(iv):
        if cur_e is None or s > cur_e:
            total += 0 if cur_e is None else cur_e - cur_s
            cur_s, cur_e = s, e
        else:
            cur_e = max(cur_e, e)
    return total + (0 if cur_e is None else cur_e - cur_s)


@pytest.mark.parametrize("path", [FIXTURES / "h100" / "llama3-8b-2L_b1_i64_o8.pt.trace.json.gz",
                                  "h200/llama3-8b-2L-cudagraph_marked_b1_i64_o16.pt.trace.json.gz"], ids=str)
def test_host_and_gpu_side_time_per_stage(tmp_path, path):
    path = path if isinstance(path, Path) else shared_trace(path)
    k = _kineto_stage_kernels(path)
    marks = k["_marks"]
    gens = [m for m in marks if m[2] == "generation"]
    host_gen = max(m[1] for m in gens) - min(m[0] for m in gens)
    busy_gen, span_gen = _union(k["generation"]), max(e for _, e in k["generation"]) - min(s for s, _ in k["generation"])
    db = _import(tmp_path, path)
    row = db.query("SELECT * FROM stage_ratio WHERE run_id = ?", [_rid(db, path)]).row(0, named=True)
    assert (row["host_generation_ns"], row["gpu_busy_generation_ns"], row["gpu_span_generation_ns"]) == (
        host_gen, busy_gen, span_gen)
    assert row["gpu_idle_generation_ns"] == span_gen - busy_gen
    if "cudagraph" in path.name:
        # Graph replays: the host only launches (host_gen_ratio ~0.46) while the GPU runs 0.93 of the time.
        assert round(row["host_gen_ratio"], 2) == 0.46 and round(row["gen_ratio"], 2) == 0.93
        assert busy_gen > 0.8 * span_gen
    else:
        # HF eager decode is host-bound: the GPU is busy a small part of the decode span.
        assert busy_gen < 0.25 * host_gen and row["gpu_busy_generation_ns"] < 0.25 * row["gpu_span_generation_ns"]


# -- not generation: no ratio, a reason, whole-run composition ---------------------------------

def _kernel_total(path: Path) -> int:
    return sum(_ns(e["dur"]) for e in _kineto_events(path) if e.get("cat") in ("kernel", "Kernel"))


@pytest.mark.parametrize("rel,why", [
    ("external/tracelens/h100_gaunernst_bert-small-uncased__1016001.json.gz", "not autoregressive"),
    ("external/tracelens/h100_Qwen_Qwen1.5-0.5B-Chat__1016005.json.gz", "not autoregressive"),
    ("external/hta/trace_diff_control_control.json.gz", "training"),
    ("external/kineto/old_profiler_api_nw0_worker0.pt.trace.json.gz", "training"),
])
def test_traces_that_are_not_generation_get_no_ratio(tmp_path, rel, why):
    path = shared_trace(rel)
    ev = _kineto_events(path)
    names = [e["name"] for e in ev if e.get("cat") in ("kernel", "Kernel")]
    if why == "training":
        # cuDNN weight/data-gradient kernels, *_backward kernels: a training step.
        assert any(w in n.lower() for n in names for w in ("backward", "bwd", "wgrad", "dgrad"))
    else:
        # One profiler step, each decoder/encoder layer module entered once: one forward pass.
        mods = [e["name"] for e in ev if e.get("cat") == "python_function" and e["name"].startswith("nn.Module: ")
                and "Layer_0" in e["name"]]
        assert len(mods) <= 1
        assert [e["name"] for e in ev if e.get("cat") == "user_annotation"] == ["ProfilerStep#6"]
    db = _import(tmp_path, path)
    rid = _rid(db, path)
    method, conf, reason = db.con.execute("SELECT stage_method, stage_confidence, stage_reason FROM runs "
                                          "WHERE run_id = ?", [rid]).fetchall()[0]
    assert (method, conf) == ("none", "none") and why in reason
    row = db.query("SELECT * FROM stage_ratio WHERE run_id = ?", [rid]).row(0, named=True)
    assert row["gen_ratio"] is None
    comp = db.query("SELECT scope, time_ns, share FROM composition WHERE run_id = ?", [rid])
    assert set(comp["scope"]) == {"whole run"}
    assert comp["time_ns"].sum() == _kernel_total(path) and comp["share"].sum() == pytest.approx(1.0)


def test_stages_cli_says_why_there_is_no_split(tmp_path):
    from conftest import tk

    path = shared_trace("external/tracelens/h100_gaunernst_bert-small-uncased__1016001.json.gz")
    _import(tmp_path, path).close()
    out = tk("stages", "--db", str(tmp_path / "t.duckdb"), "--format", "csv")
    assert out.returncode == 0, out.stderr
    assert "not autoregressive generation" in out.stdout and ",none," in out.stdout


# -- serving engines' step markers --------------------------------------------------------------

@pytest.mark.parametrize("rel,engine", [
    ("external/tracelens/inference_vllm_decode_full_graph_execution.json.gz", "vllm"),
    ("external/tracelens/inference_sglang_decode_sglang_Qwen3-8B_decode.json.gz", "sglang"),
])
def test_engine_step_markers_on_real_traces(tmp_path, rel, engine):
    src = shared_trace(rel)
    ev = _kineto_events(src)
    labels = [e["name"] for e in ev if e.get("cat") == "user_annotation"]
    steps = [s for s in map(engine_step, labels) if s is not None]
    # The label's own numbers: context_0 ... generation_32(sq32...) / step[DECODE bs=32].
    assert steps and all(s.stage == "generation" and s.gen_tokens == 32 and s.ctx_tokens == 0 for s in steps)
    assert {s.engine for s in steps} >= {engine}
    db = _import(tmp_path, src)
    rid = _rid(db, src)
    method, conf = db.con.execute("SELECT stage_method, stage_confidence FROM runs WHERE run_id = ?",
                                  [rid]).fetchall()[0]
    assert method.startswith("markers:") and engine in method
    row = db.query("SELECT * FROM stage_ratio WHERE run_id = ?", [rid]).row(0, named=True)
    assert row["summarization_ns"] == 0 and row["gen_ratio"] == 1.0
    # A decode-only window: the ratio is the window's, and the reason says so.
    reason = db.con.execute("SELECT stage_reason FROM runs WHERE run_id = ?", [rid]).fetchall()[0][0]
    assert conf == "medium" and "decode steps only" in reason


@pytest.mark.parametrize("label,expect", [
    ("execute_32_context_0(sq0sk0sqsq0sqsk0)_generation_32(sq32sk55086sqsq32sqsk55086)",
     ("vllm", "generation", 0, 32)),
    ("execute_3_context_2(sq888sk888sqsq394272sqsk394272)_generation_1(sq32sk900sqsq32sqsk900)",
     ("vllm", "mixed", 888, 32)),
    ("execute_new_4_cached_0", ("vllm", "summarization", None, 0)),
    ("execute_new_0_cached_8", ("vllm", "generation", 0, 8)),
    ("step[EXTEND bs=4 toks=512]", ("sglang", "summarization", 512, 0)),
    ("step[DECODE bs=32]", ("sglang", "generation", 0, 32)),
    ("step[MIXED bs=8]", ("sglang", "mixed", None, None)),
    ("[Executor] _forward_step 12: 0 ctx reqs, 64 gen reqs", ("trtllm", "generation", 0, 64)),
    ("executeStep: 2 ctx reqs, 6 gen reqs", ("trtllm", "mixed", None, None)),
    ("step[IDLE bs=0]", None), ("execute_model", None), ("ProfilerStep#6", None),
])
def test_engine_grammars(label, expect):
    got = engine_step(label)
    assert (None if got is None else (got.engine, got.stage, got.ctx_tokens, got.gen_tokens)) == expect


def test_mixed_pass_splits_shared_kernels_by_tokens(tmp_path):
    """A vLLM-labelled mixed step (real H100 trace, its generation markers relabelled as one mixed
    engine step each): shared kernels are apportioned by the label's tokens."""
    src = FIXTURES / "shared" / "kineto_llama2-7b-4L_b1_i64_o8.pt.trace.json.gz"
    with gzip.open(src, "rt") as f:
        doc = json.load(f)
    for e in doc["traceEvents"]:
        if e.get("cat") == "user_annotation" and e["name"] in ("stage:summarization", "stage:generation"):
            e["name"] = "execute_2_context_1(sq60sk60sqsq3600sqsk3600)_generation_1(sq4sk70sqsq4sqsk70)"
    path = tmp_path / "mixed.pt.trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump(doc, f)
    total = sum(d for b, e in sum((v for k, v in _kineto_stage_kernels(src).items() if k != "_marks"), [])
                for d in [e - b])
    db = _import(tmp_path, path)
    rid = _rid(db, path)
    row = db.query("SELECT * FROM stage_ratio WHERE run_id = ?", [rid]).row(0, named=True)
    assert row["summarization_ns"] + row["generation_ns"] == pytest.approx(total, abs=2)
    assert row["gen_ratio"] == pytest.approx(4 / 64, rel=1e-6)
    ev = db.con.execute("SELECT DISTINCT stage, evidence FROM passes WHERE run_id = ?", [rid]).fetchall()
    assert ev == [("mixed", "split:tokens=60/4")]


@pytest.mark.parametrize("rel", ["external/tracelens/inference_vllm_decode_full_graph_execution.json.gz",
                                 "external/tracelens/inference_sglang_decode_sglang_Qwen3-8B_decode.json.gz"])
def test_serving_window_without_its_markers_gets_no_ratio(tmp_path, rel):
    """The same traces with the engines' step annotations removed: a decode window with no prompt
    pass, and per-layer kernels (`rotary_embedding_kernel`, 24 / 36 of them: once per layer) that
    must not become passes. No split, and the reason says why."""
    src = shared_trace(rel)
    ev = _kineto_events(src)
    rotary = sum(1 for e in ev if e.get("cat") == "kernel" and "rotary_embedding" in e["name"])
    assert rotary in (24, 36)
    path = tmp_path / src.name
    with gzip.open(src, "rt") as f:
        doc = json.load(f)
    doc["traceEvents"] = [e for e in doc["traceEvents"] if e.get("cat") != "user_annotation"]
    with gzip.open(path, "wt") as f:
        json.dump(doc, f)
    db = _import(tmp_path, path)
    rid = _rid(db, path)
    method, conf, reason = db.con.execute("SELECT stage_method, stage_confidence, stage_reason FROM runs "
                                          "WHERE run_id = ?", [rid]).fetchall()[0]
    assert (method, conf) == ("none", "none") and reason
    assert db.con.execute("SELECT count(*) FROM passes WHERE run_id = ?", [rid]).fetchall()[0][0] <= 1
    assert db.query("SELECT gen_ratio FROM stage_ratio WHERE run_id = ?", [rid])["gen_ratio"][0] is None


def test_unmarked_cuda_graph_trace_gets_the_marked_stages(tmp_path):
    """The same script recorded with and without markers: the unmarked run's inferred stage of
    each kernel (in launch order) is the one the marked trace's `stage:*` annotations give."""
    marked = shared_trace("h200/llama3-8b-2L-cudagraph_marked_b1_i64_o16.pt.trace.json.gz")
    unmarked = shared_trace("h200/llama3-8b-2L-cudagraph_unmarked_b1_i64_o16.pt.trace.json.gz")
    k = _kineto_stage_kernels(marked)
    stage_at = {}
    for st in ("summarization", "generation"):
        for b, _e in k[st]:
            stage_at[b] = st
    starts = sorted(_ns(e["ts"]) for e in _kineto_events(marked) if e.get("cat") == "kernel")
    expected = [stage_at.get(t, "other") for t in starts]
    names_m = [e["name"] for e in sorted((e for e in _kineto_events(marked) if e.get("cat") == "kernel"),
                                         key=lambda e: Decimal(str(e["ts"])))]
    names_u = [e["name"] for e in sorted((e for e in _kineto_events(unmarked) if e.get("cat") == "kernel"),
                                         key=lambda e: Decimal(str(e["ts"])))]
    assert names_m == names_u   # one kernel sequence: position i is the same kernel in both
    db = _import(tmp_path, unmarked)
    got = [s for (s,) in db.con.execute("SELECT stage FROM kernels WHERE run_id = ? ORDER BY start_ns, kernel_id",
                                        [_rid(db, unmarked)]).fetchall()]
    # Same number of kernels in each stage; a kernel may differ only at a pass boundary (the
    # marker opens before the position-ids kernel, inference at the embedding lookup after it).
    from collections import Counter

    assert Counter(got) == Counter(expected)
    diff = [i for i, (g, e) in enumerate(zip(got, expected, strict=True)) if g != e]
    assert len(diff) <= 3
    assert all(len(set(expected[max(i - 1, 0):i + 2])) > 1 for i in diff)
    assert db.con.execute("SELECT stage_method FROM runs").fetchall()[0][0].startswith("inferred:")


def test_read_only_open_of_a_database_without_the_new_columns(tmp_path):
    """A database written before runs.stage_confidence / passes.pid existed: read-only commands
    still work (NULL stand-ins); the next writable open adds the columns."""
    from conftest import tk

    db = _import(tmp_path, TWO_PROCS)
    for t, c in (("runs", "stage_confidence"), ("runs", "stage_reason"), ("passes", "pid"), ("passes", "device"),
                 ("passes", "grammar"), ("passes", "ctx_tokens"), ("passes", "gen_tokens"), ("passes", "evidence")):
        db.con.execute(f"ALTER TABLE {t} DROP COLUMN {c}")
    db.close()
    out = tk("stages", "--db", str(tmp_path / "t.duckdb"), "--format", "csv")
    assert out.returncode == 0 and "nsys_two_processes_two_gpus" in out.stdout, out.stderr
    db = tracekit.open(tmp_path / "t.duckdb")
    assert db.con.execute("SELECT count(*) FROM duckdb_columns() WHERE table_name = 'passes' "
                          "AND column_name = 'pid'").fetchall()[0][0] == 1


@pytest.mark.parametrize("rel", ["external/nsys/pipit_perlmutter-cloverleaf-cuda.sqlite",
                                 "external/nsys/pipit_saxpy-mpi-cuda_nsys_perlmutter0.sqlite",
                                 "external/nsys/extrap_con_kernel.sqlite"])
def test_hpc_traces_get_no_split_and_a_whole_run_composition(tmp_path, rel):
    path = shared_trace(rel)
    con = sqlite3.connect(path)
    cols = {r[1] for r in con.execute("PRAGMA table_info(CUPTI_ACTIVITY_KIND_KERNEL)")}
    name = "demangledName" if "demangledName" in cols else "shortName"
    names = [n for (n,) in con.execute(
        f"SELECT coalesce(s.value, k.{name}) FROM CUPTI_ACTIVITY_KIND_KERNEL k "
        f"LEFT JOIN StringIds s ON s.id = k.{name}")]
    total = con.execute("SELECT sum(\"end\" - start) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchall()[0][0]
    # Stencils, saxpy: no token-embedding lookup and no stage marker anywhere.
    assert not any(w in str(n).lower() for n in names for w in ("embedding", "index_select", "indexselect"))
    db = _import(tmp_path, path)
    rid = _rid(db, path)
    method, conf, reason = db.con.execute("SELECT stage_method, stage_confidence, stage_reason FROM runs "
                                          "WHERE run_id = ?", [rid]).fetchall()[0]
    assert (method, conf) == ("none", "none") and "no stage markers" in reason
    comp = db.query("SELECT scope, time_ns FROM composition WHERE run_id = ?", [rid])
    assert set(comp["scope"]) == {"whole run"} and comp["time_ns"].sum() == total


def test_stages_cli_by_process_and_steps_reason(tmp_path):
    from conftest import tk

    truth = _per_process_truth(TWO_PROCS)
    bert = shared_trace("external/tracelens/h100_gaunernst_bert-small-uncased__1016001.json.gz")
    _import(tmp_path, TWO_PROCS, bert).close()
    out = tk("stages", "--db", str(tmp_path / "t.duckdb"), "--by-process", "--run", "1", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert {(r["pid"], r["device"]): r["gen_ratio"] for r in rows} == {
        k: round(_ratio(v), 4) for k, v in truth.items()}
    out = tk("steps", "--db", str(tmp_path / "t.duckdb"), "--run", "2")
    assert out.returncode == 0 and "not autoregressive generation" in out.stderr
