"""Multi-rank runs (issue 13): the traces of one job as one run, clocks aligned, communication split.

Every expected value is read from the raw traces here with json / gzip / sqlite3 (the profiler's
own events and markers), never from tracekit's output.
"""

from __future__ import annotations

import gzip
import json
import re
import shutil
import sqlite3
import statistics
from pathlib import Path

import pytest
from conftest import ROOT, shared_trace, tk

import tracekit

TP = "h200/llama3-8b-4L_tp2_rank{}_b8_i64_o8.pt.trace.json.gz"
TWO_PROC = ROOT / "fixtures" / "variants" / "nsys_two_processes_two_gpus.sqlite"


def _ns(us: float) -> int:
    return round(us * 1000)  # Kineto: microseconds with 3 decimals


def _raw(path: Path) -> dict:
    with gzip.open(path) as f:
        return json.load(f)


def _op(name: str) -> str:
    return re.search(r"ncclDevKernel_([A-Za-z]+)", name).group(1)


def _raw_collectives(path: Path) -> dict[tuple[str, int], dict]:
    """(operation, k) -> the k-th NCCL kernel of that operation, in start order (raw clock)."""
    ev = sorted((e for e in _raw(path)["traceEvents"] if e.get("cat") == "kernel" and "nccl" in e["name"]),
                key=lambda e: e["ts"])
    out, n = {}, {}
    for e in ev:
        op = _op(e["name"])
        out[(op, n.get(op, 0))] = {"start": _ns(e["ts"]), "end": _ns(e["ts"]) + _ns(e["dur"]), "dur": _ns(e["dur"])}
        n[op] = n.get(op, 0) + 1
    return out


def _raw_stage_times(path: Path) -> dict[str, int]:
    """Kernel time per stage, from the trace's own markers: a kernel belongs to the
    `stage:summarization` / `stage:generation` annotation around its launch on the launching thread."""
    ev = _raw(path)["traceEvents"]
    marks = [e for e in ev if e.get("cat") == "user_annotation" and e["name"].startswith("stage:")]
    launches = {e["args"]["correlation"]: e for e in ev
                if e.get("cat") in ("cuda_runtime", "cuda_driver") and "correlation" in e.get("args", {})}
    out = {"summarization": 0, "generation": 0, "other": 0}
    for k in (e for e in ev if e.get("cat") == "kernel"):
        launch = launches.get(k["args"].get("correlation"))
        stage = "other"
        if launch is not None:
            for m in marks:
                if m["tid"] == launch["tid"] and m["ts"] <= launch["ts"] <= m["ts"] + m["dur"]:
                    stage = m["name"].split(":", 1)[1]
        out[stage] += _ns(k["dur"])
    return out


@pytest.fixture(scope="module")
def tp_db(tmp_path_factory):
    paths = [shared_trace(TP.format(r)) for r in (0, 1)]
    d = tmp_path_factory.mktemp("tp")
    for p in paths:  # a directory of the two rank files, as a user has them
        shutil.copy(p, d / p.name)
    db = tracekit.open(d / "tp.duckdb")
    results = db.import_paths([d])
    assert [r.status for r in results] == ["imported"], results
    yield db, paths
    db.close()


def test_two_rank_traces_are_one_run_of_world_size_two(tp_db):
    db, paths = tp_db
    runs = db.con.execute("SELECT run_id, world_size, ranks, n_kernels FROM runs").fetchall()
    raw = [_raw(p) for p in paths]
    assert [d["distributedInfo"]["world_size"] for d in raw] == [2, 2]
    n_kernels = sum(sum(e.get("cat") == "kernel" for e in d["traceEvents"]) for d in raw)
    assert runs == [(1, 2, "0,1", n_kernels)]
    got = db.con.execute("SELECT rank, device, count(*) FROM kernels GROUP BY ALL ORDER BY 1").fetchall()
    want = [(d["distributedInfo"]["rank"], {e["args"]["device"] for e in d["traceEvents"] if e.get("cat") == "kernel"}.pop(),
             sum(e.get("cat") == "kernel" for e in d["traceEvents"])) for d in raw]
    assert got == want
    # every event table carries the rank
    for table in ("launches", "ranges", "ops"):
        assert db.con.execute(f"SELECT count(DISTINCT rank), count(*) FILTER (WHERE rank IS NULL) FROM {table}").fetchall() == [(2, 0)]


def test_clock_offset_is_the_median_end_difference_of_shared_collectives(tp_db):
    db, paths = tp_db
    c0, c1 = (_raw_collectives(p) for p in paths)
    assert c0.keys() == c1.keys() and len(c0) == 72  # 64 all-reduce + 8 all-gather on each rank
    diffs = [c0[k]["end"] - c1[k]["end"] for k in c0]
    want = int(statistics.median(diffs))
    got = db.con.execute("SELECT rank, clock_offset_ns, align_method, align_events FROM run_ranks ORDER BY rank").fetchall()
    assert got[0] == (0, 0, "reference", 72)
    assert got[1][1:] == (want, "collective-end", 72)
    # The ends of one collective coincide across ranks; its starts do not (rank 1 arrives early).
    assert abs(want) < 1000 and statistics.median(abs(c0[k]["start"] - c1[k]["start"]) for k in c0) > 10_000


def test_wait_and_transfer_of_every_collective_match_the_raw_events(tp_db):
    db, paths = tp_db
    raw = [_raw_collectives(p) for p in paths]
    offset = db.con.execute("SELECT clock_offset_ns FROM run_ranks WHERE rank = 1").fetchall()[0][0]
    rows = db.con.execute("SELECT rank, op, seq, dur_ns, wait_ns, transfer_ns, wait_basis FROM comm_ops "
                          "WHERE run_id = 1 ORDER BY rank, op, seq").fetchall()
    assert len(rows) == 144 and {r[6] for r in rows} == {"measured"}
    names = {"allreduce": "AllReduce", "allgather": "AllGather"}
    for rank, op, seq, dur, wait, transfer, _ in rows:
        starts = [raw[0][(names[op], seq)]["start"], raw[1][(names[op], seq)]["start"] + offset]
        mine = raw[rank][(names[op], seq)]
        want = min(max(starts) - starts[rank], mine["dur"])
        assert dur == mine["dur"]
        assert wait == want and transfer == dur - want
    # Issue 13's figures: COMM is ~61% of rank 0's and ~79% of rank 1's kernel time, mostly waiting.
    for rank in (0, 1):
        total = sum(_ns(e["dur"]) for e in _raw(paths[rank])["traceEvents"] if e.get("cat") == "kernel")
        comm = sum(c["dur"] for c in raw[rank].values())
        got = db.con.execute("SELECT sum(dur_ns), sum(wait_ns) FROM comm_ops WHERE rank = ?", [rank]).fetchall()[0]
        assert got[0] == comm
        assert round(comm / total, 2) == (0.60, 0.78)[rank]
        assert got[1] > 0.9 * comm  # the all-reduces are >90% waiting on both ranks: host launch skew


def test_exposed_is_comm_time_with_no_compute_on_the_same_gpu(tp_db):
    db, paths = tp_db
    for rank, p in enumerate(paths):
        ks = [e for e in _raw(p)["traceEvents"] if e.get("cat") == "kernel"]
        compute = sorted((_ns(e["ts"]), _ns(e["ts"]) + _ns(e["dur"])) for e in ks if "nccl" not in e["name"])
        want = 0
        for e in (e for e in ks if "nccl" in e["name"]):
            s, t = _ns(e["ts"]), _ns(e["ts"]) + _ns(e["dur"])
            covered, cur = 0, s
            for a, b in compute:  # union of compute intervals inside [s, t]
                a, b = max(a, cur), min(b, t)
                if b > a:
                    covered += b - a
                    cur = b
            want += (t - s) - covered
        got = db.con.execute("SELECT sum(exposed_ns) FROM comm_ops WHERE rank = ?", [rank]).fetchall()[0][0]
        assert got == want


def test_stages_are_per_rank_and_the_run_sums_the_ranks(tp_db):
    db, paths = tp_db
    want = [_raw_stage_times(p) for p in paths]
    got = db.con.execute("SELECT rank, summarization_ns, generation_ns FROM rank_stage_ratio WHERE run_id = 1 "
                         "ORDER BY rank").fetchall()
    assert got == [(r, w["summarization"], w["generation"]) for r, w in enumerate(want)]
    s = sum(w["summarization"] for w in want)
    g = sum(w["generation"] for w in want)
    assert db.con.execute("SELECT gen_ratio FROM stage_ratio WHERE run_id = 1").fetchall()[0][0] == pytest.approx(g / (s + g))
    assert db.con.execute("SELECT gen_ratio_summed FROM run_rank_summary WHERE run_id = 1").fetchall()[0][0] == \
        pytest.approx(g / (s + g))


def test_composition_separates_wait_from_transfer(tp_db):
    db, _ = tp_db
    comp = dict(db.con.execute("SELECT bucket, time_ns FROM composition WHERE run_id = 1").fetchall())
    wait, transfer = db.con.execute(
        "SELECT sum(wait_ns), sum(transfer_ns) FROM comm_ops WHERE stage IN ('summarization', 'generation')").fetchall()[0]
    assert comp["COMM wait"] == wait and comp["COMM"] == transfer
    shares = db.con.execute("SELECT rank, sum(share) FROM rank_composition GROUP BY rank ORDER BY rank").fetchall()
    assert [round(s, 9) for _, s in shares] == [1.0, 1.0]


def test_two_process_nsys_export_is_one_run_with_per_process_stages(tmp_path):
    """Issue 11 / 13: per process gen_ratio 0.634 and 0.608, 0.622 combined, read from the raw export."""
    con = sqlite3.connect(TWO_PROC)
    marks = con.execute("SELECT start, end, globalTid, coalesce(text, (SELECT value FROM StringIds WHERE id = textId)) "
                        "FROM NVTX_EVENTS WHERE end IS NOT NULL").fetchall()
    marks = [(s, e, t, n) for s, e, t, n in marks if n == "summarization" or n.startswith("generation step")]
    launches = {(c, t >> 24 & 0xFFFFFF): (s, t) for s, t, c in
                con.execute("SELECT start, globalTid, correlationId FROM CUPTI_ACTIVITY_KIND_RUNTIME")}
    per: dict[int, dict[str, int]] = {}
    for dev, gpid, corr, dur in con.execute("SELECT deviceId, globalPid, correlationId, end - start "
                                            "FROM CUPTI_ACTIVITY_KIND_KERNEL"):
        ls, lt = launches[(corr, gpid >> 24 & 0xFFFFFF)]
        inside = [n for s, e, t, n in marks if t == lt and s <= ls <= e]
        stage = "other" if not inside else ("summarization" if inside[-1] == "summarization" else "generation")
        per.setdefault(dev, {"summarization": 0, "generation": 0, "other": 0})[stage] += dur
    want = [per[d]["generation"] / (per[d]["generation"] + per[d]["summarization"]) for d in sorted(per)]
    assert [round(w, 3) for w in want] == [0.634, 0.608]

    db = tracekit.open(tmp_path / "n.duckdb")
    assert db.import_paths([TWO_PROC])[0].status == "imported"
    assert db.con.execute("SELECT world_size, ranks FROM runs").fetchall() == [(2, "0,1")]
    got = db.con.execute("SELECT rank, gen_ratio FROM rank_stage_ratio ORDER BY rank").fetchall()
    assert [r for r, _ in got] == [0, 1] and [g for _, g in got] == pytest.approx(want)
    assert db.con.execute("SELECT align_method FROM run_ranks ORDER BY rank").fetchall() == [("reference",), ("shared-clock",)]
    combined = db.con.execute("SELECT gen_ratio FROM stage_ratio").fetchall()[0][0]
    s = sum(per[d]["summarization"] for d in per)
    g = sum(per[d]["generation"] for d in per)
    assert round(combined, 3) == 0.622 and combined == pytest.approx(g / (g + s))
    db.close()


def test_a_missing_rank_is_reported_and_no_wait_is_guessed(tmp_path):
    rank1 = shared_trace(TP.format(1))
    db = tracekit.open(tmp_path / "one.duckdb")
    assert db.import_paths([rank1])[0].status == "imported"
    assert db.con.execute("SELECT world_size, ranks FROM runs").fetchall() == [(2, "1 (missing 0)")]
    assert any("ranks 0 of world size 2" in a for a in db.con.execute("SELECT absent FROM runs").fetchall()[0][0])
    basis = db.con.execute("SELECT DISTINCT wait_basis, count(wait_ns) FROM comm_ops GROUP BY 1").fetchall()
    assert basis == [("ranks missing", 0)]
    assert db.con.execute("SELECT critical, comm_wait_ns FROM rank_stage_ratio").fetchall() == [(None, None)]
    assert db.con.execute("SELECT count(*) FROM composition WHERE bucket = 'COMM wait'").fetchall() == [(0,)]
    db.close()


def test_group_option_and_a_bad_member_stores_nothing(tmp_path):
    r0, r1 = (shared_trace(TP.format(r)) for r in (0, 1))
    a, b = tmp_path / "worker_a.json.gz", tmp_path / "worker_b.json.gz"
    shutil.copy(r0, a)
    shutil.copy(r1, b)
    bad = tmp_path / "worker_c.json.gz"
    bad.write_bytes(b"\x1f\x8b not gzip")
    db_path = tmp_path / "g.duckdb"
    r = tk("import", str(a), str(b), str(bad), "--group", "tp2", "--db", str(db_path))
    assert r.returncode == 1
    assert r.stderr.count("tracekit: error:") == 1 and "worker_c.json.gz" in r.stderr
    r = tk("query", "--db", str(db_path), "--format", "csv", "SELECT count(*) AS n FROM runs")
    assert r.stdout.split() == ["n", "0"]
    r = tk("import", str(a), str(b), "--group", "tp2", "--db", str(db_path))
    assert r.returncode == 0, r.stderr
    r = tk("query", "--db", str(db_path), "--format", "csv", "SELECT source_name, world_size, ranks FROM runs")
    assert r.stdout.splitlines()[1] == "tp2,2,\"0,1\""
    # the same job again is the same run
    r = tk("import", str(b), str(a), "--group", "tp2", "--db", str(db_path))
    assert "already imported as run 1" in r.stderr


def test_group_member_without_a_rank_is_refused(tmp_path):
    plain = ROOT / "fixtures" / "shared" / "kineto_llama2-7b-4L_b1_i64_o8.pt.trace.json.gz"
    r0 = shared_trace(TP.format(0))
    db = tracekit.open(tmp_path / "x.duckdb")
    res = db.import_paths([r0, plain], group="job")
    assert [x.status for x in res] == ["failed"]
    assert "no rank in the trace" in res[0].error and plain.name in res[0].error
    assert db.con.execute("SELECT count(*) FROM kernel_rows").fetchall() == [(0,)]
    db.close()


def test_views_with_a_run_filter_beside_one_rank_runs(tp_db, tmp_path):
    """DuckDB 2.0.1 once mis-summed views over empty side tables under a run_id filter: the rank views
    must give the same rows filtered and unfiltered, also in a database with one-rank runs only."""
    db, _ = tp_db
    for view in ("comm_ops", "rank_stage_ratio", "rank_composition", "run_rank_summary", "composition"):
        all_rows = db.con.execute(f"SELECT * FROM {view} WHERE run_id = 1").fetchall()
        assert all_rows == [r for r in db.con.execute(f"SELECT * FROM {view}").fetchall() if r[0] == 1]
    one = tracekit.open(tmp_path / "single.duckdb")
    one.import_paths([ROOT / "fixtures" / "shared" / "kineto_llama2-7b-4L_b1_i64_o8.pt.trace.json.gz"])
    assert one.con.execute("SELECT count(*) FROM run_ranks").fetchall() == [(0,)]
    assert one.con.execute("SELECT count(*) FROM rank_stage_ratio WHERE run_id = 1").fetchall() == [(0,)]
    assert one.con.execute("SELECT sum(share) FROM composition WHERE run_id = 1").fetchall()[0][0] == pytest.approx(1)
    one.close()


def _raw_waits(paths: list[Path], offset: int) -> list[int]:
    """Total wait per rank from the raw collectives (rank 1's clock moved by `offset`)."""
    raw = [_raw_collectives(p) for p in paths]
    out = [0, 0]
    for key in raw[0]:
        starts = [raw[0][key]["start"], raw[1][key]["start"] + offset]
        for r in (0, 1):
            out[r] += min(max(starts) - starts[r], raw[r][key]["dur"])
    return out


def test_ranks_cli_and_chart_data_show_the_raw_figures(tp_db, tmp_path):
    db, paths = tp_db
    offset = db.con.execute("SELECT clock_offset_ns FROM run_ranks WHERE rank = 1").fetchall()[0][0]
    waits = _raw_waits(paths, offset)
    cli_db = str(tmp_path / "cli.duckdb")  # the CLI in its own process, on its own database
    assert tk("import", *map(str, paths), "--db", cli_db).returncode == 0
    r = tk("ranks", "--db", cli_db, "--view", "comm", "--format", "json")
    assert r.returncode == 0, r.stderr
    rows = json.loads(r.stdout)
    for rank in (0, 1):
        assert sum(x["wait_ms"] for x in rows if x["rank"] == rank) == pytest.approx(waits[rank] / 1e6, abs=0.003)
    r = tk("ranks", "--db", cli_db, "--view", "run", "--format", "json")
    summary = json.loads(r.stdout)[0]
    assert (summary["world_size"], summary["ranks"], summary["critical_rank"]) == (2, "0,1", waits.index(min(waits)))

    from tracekit.outputs import charts_ranks

    stages = [_raw_stage_times(p) for p in paths]
    bars = charts_ranks.rank_bars_data(db).frame
    for rank in (0, 1):
        assert bars.filter(bars["rank"] == rank)["time_ns"].sum() == stages[rank]["summarization"] + stages[rank]["generation"]
    split = charts_ranks.comm_split_data(db).frame
    for rank in (0, 1):
        mine = split.filter((split["rank"] == rank) & (split["part"] == "wait"))
        assert mine["time_ns"].sum() == waits[rank]  # every collective of this trace is inside a stage
    figs = charts_ranks.rank_figures(db)
    assert [f.name for f in figs] == ["rank_bars", "comm_split"] and all("$schema" in f.spec for f in figs)
    assert [t.name for t in charts_ranks.rank_tables(db)] == ["ranks", "rank_stage_ratio"]


def test_no_multi_rank_run_means_no_rank_section(tmp_path):
    from tracekit.outputs import charts_ranks

    db = tracekit.open(tmp_path / "s.duckdb")
    db.import_paths([ROOT / "fixtures" / "shared" / "kineto_llama2-7b-4L_b1_i64_o8.pt.trace.json.gz"])
    assert charts_ranks.rank_tables(db) == [] and charts_ranks.rank_figures(db) == []
    db.close()
    r = tk("ranks", "--db", str(tmp_path / "s.duckdb"))
    assert r.returncode == 0 and "no multi-rank run" in r.stderr


def test_database_written_before_ranks_reads_read_only_and_upgrades_on_write(tmp_path):
    """A database of the schema before multi-rank runs: no rank / world_size columns, no run_ranks."""
    import duckdb

    path = tmp_path / "old.duckdb"
    db = tracekit.open(path)
    db.import_paths([ROOT / "fixtures" / "shared" / "kineto_llama2-7b-4L_b1_i64_o8.pt.trace.json.gz"])
    want = db.con.execute("SELECT * FROM stage_ratio").fetchall()
    db.close()
    con = duckdb.connect(str(path))  # make it the older shape, as tracekit 0.1's schema 2 wrote it
    view = (ROOT / "tracekit" / "schema.sql").read_text().split("CREATE OR REPLACE VIEW kernels AS", 1)[1].split(";", 1)[0]
    con.execute("CREATE OR REPLACE VIEW kernels AS" + view.replace("r.rank,", ""))
    for table, col in (("kernel_rows", "rank"), ("runs", "world_size"), ("runs", "ranks"), ("launches", "rank"),
                       ("ranges", "rank"), ("ops", "rank"), ("memops", "rank")):
        con.execute(f"ALTER TABLE {table} DROP COLUMN {col}")
    con.execute("DROP TABLE run_ranks")
    con.close()
    ro = tracekit.open(path, read_only=True)
    assert ro.con.execute("SELECT * FROM stage_ratio").fetchall() == want
    assert ro.con.execute("SELECT count(*) FROM rank_stage_ratio").fetchall() == [(0,)]
    assert ro.runs()["world_size"].to_list() == [None]
    ro.close()
    rw = tracekit.open(path)
    cols = {r[0] for r in rw.con.execute("SELECT column_name FROM duckdb_columns() WHERE table_name = 'kernel_rows'").fetchall()}
    assert "rank" in cols and rw.con.execute("SELECT * FROM stage_ratio").fetchall() == want
    rw.close()
