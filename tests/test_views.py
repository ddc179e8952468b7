"""The analysis views on the real shared traces, against sums computed straight from the trace files."""

from __future__ import annotations

import gzip
import json
import re
import shutil
import sqlite3
from collections import Counter, defaultdict
from decimal import Decimal

import pytest
from conftest import KINETO_L2, KINETO_L3, NSYS_L2, NSYS_L3_SHAPES, SHARED_TRACES
from test_stages import nsys_truth, run_of, truth

import tracekit
from tracekit.views import create_views, sql_files, view_names

_GEN_STEP = re.compile(r"generation step (\d+)")


def _ns(v) -> int:
    return int((Decimal(str(v)) * 1000).to_integral_value())


@pytest.fixture()
def copy_db(shared_db_path, tmp_path):
    dst = tmp_path / "views.duckdb"
    shutil.copy(shared_db_path, dst)
    db = tracekit.open(dst)
    yield db
    db.close()


def stage_sums(rows) -> dict[str, int]:
    sums: dict[str, int] = defaultdict(int)
    for stage, _it, _step, dur, _short in rows:
        sums[stage] += dur
    return sums


@pytest.mark.parametrize("path", SHARED_TRACES, ids=lambda p: p.name)
def test_stage_ratio_kernel_time(shared_db_path, path):
    sums = stage_sums(truth(path))
    db = tracekit.open(shared_db_path, read_only=True)
    row = db.query("SELECT * FROM stage_ratio WHERE run_id = ?", [run_of(db.con, path)]).row(0, named=True)
    assert (row["summarization_ns"], row["generation_ns"], row["other_ns"], row["warmup_ns"]) == (
        sums["summarization"], sums["generation"], sums["other"], sums["warmup"])
    s, g = sums["summarization"], sums["generation"]
    assert row["gen_ratio"] == pytest.approx(g / (s + g), rel=1e-12)
    # Every kernel is in exactly one of the four.
    total = db.con.execute("SELECT kernel_time_ns FROM runs WHERE run_id = ?", [row["run_id"]]).fetchall()[0][0]
    assert s + g + sums["other"] + sums["warmup"] == total


def _nsys_measured_markers(path):
    """(summarization extent, [generation extents]) of the last iteration, from NVTX_EVENTS."""
    con = sqlite3.connect(path)
    rows = con.execute(
        "SELECT n.start, n.end, coalesce(n.text, s.value) FROM NVTX_EVENTS n LEFT JOIN StringIds s "
        "ON s.id = n.textId WHERE n.eventType = 59 AND n.end IS NOT NULL ORDER BY n.start").fetchall()
    summ = [r for r in rows if r[2] == "summarization"][-1]
    gens = [r for r in rows if _GEN_STEP.fullmatch(r[2] or "") and r[0] > summ[0]]
    return summ, gens


def test_stage_ratio_wall_from_nvtx(shared_db_path):
    summ, gens = _nsys_measured_markers(NSYS_L2)
    db = tracekit.open(shared_db_path, read_only=True)
    row = db.query("SELECT * FROM stage_ratio WHERE run_id = ?", [run_of(db.con, NSYS_L2)]).row(0, named=True)
    ws, wg = summ[1] - summ[0], gens[-1][1] - gens[0][0]
    assert (row["host_summarization_ns"], row["host_generation_ns"]) == (ws, wg)
    assert row["host_gen_ratio"] == pytest.approx(wg / (ws + wg), rel=1e-12)


def test_stage_ratio_wall_from_annotations(shared_db_path):
    with gzip.open(KINETO_L3, "rt") as f:
        ann = [e for e in json.load(f, parse_float=Decimal)["traceEvents"] if e.get("cat") == "user_annotation"]
    summ = [e for e in ann if e["name"] == "stage:summarization"]
    gens = sorted((e for e in ann if e["name"] == "stage:generation"), key=lambda e: e["ts"])
    assert len(summ) == 1 and len(gens) == 15
    ws = _ns(summ[0]["dur"])
    wg = _ns(gens[-1]["ts"]) + _ns(gens[-1]["dur"]) - _ns(gens[0]["ts"])
    db = tracekit.open(shared_db_path, read_only=True)
    row = db.query("SELECT * FROM stage_ratio WHERE run_id = ?", [run_of(db.con, KINETO_L3)]).row(0, named=True)
    assert (row["host_summarization_ns"], row["host_generation_ns"]) == (ws, wg)


def test_wall_is_null_when_inferred(copy_db):
    from tracekit.enrich.stages import attribute_stages

    rid = run_of(copy_db.con, NSYS_L2)
    copy_db.con.execute("DELETE FROM ranges WHERE run_id = ?", [rid])
    attribute_stages(copy_db.con, rid)
    row = copy_db.query("SELECT * FROM stage_ratio WHERE run_id = ?", [rid]).row(0, named=True)
    assert row["host_summarization_ns"] is None and row["host_gen_ratio"] is None
    assert row["gen_ratio"] is not None
    walls = copy_db.query("SELECT host_ns FROM step_totals WHERE run_id = ?", [rid])["host_ns"]
    assert len(walls) == 16 and walls.null_count() == 16


# Stand-in categories (the classifier is another module): by nsys shortName.
def _category(short: str, stage: str) -> str | None:
    if short.startswith("nvjet"):
        return "GEMM" if stage == "summarization" else "GEMV"
    if short == "splitKreduce_kernel":
        return "GEMM"
    if "sdpa" in short:
        return "ATTN"
    if short == "reduce_kernel":
        return "REDUCE"
    return None


# Categories set per kernel by the test, not the rules (kernel_rows.follow_category is the
# per-kernel override the `kernels` view applies), so the views' arithmetic is checked on its own.
_SET_CATEGORIES = """
UPDATE kernel_verdicts SET category = NULL;
UPDATE kernel_rows SET follow_category = CASE
    WHEN n.short_name LIKE 'nvjet%' THEN CASE WHEN stage = 'summarization' THEN 'GEMM' ELSE 'GEMV' END
    WHEN n.short_name = 'splitKreduce_kernel' THEN 'GEMM'
    WHEN n.short_name LIKE '%sdpa%' THEN 'ATTN'
    WHEN n.short_name = 'reduce_kernel' THEN 'REDUCE'
    ELSE NULL END
FROM kernel_names n WHERE n.name_id = kernel_rows.name_id
"""
_CLEAR_CATEGORIES = "UPDATE kernel_verdicts SET category = NULL; UPDATE kernel_rows SET follow_category = NULL"


def _by_hand(db, sql: str, params: list | None = None) -> None:
    """Edit kernel rows / verdicts in SQL, then rewrite the per-run rollups the views read (what
    tracekit's own writers do for what they change)."""
    from tracekit.store import refresh_rollups

    db.con.execute(sql, params or [])
    refresh_rollups(db.con)


def test_composition_unclassified_is_visible(copy_db):
    _by_hand(copy_db, _CLEAR_CATEGORIES)
    df = copy_db.query("SELECT * FROM composition")
    for rid in range(1, 5):
        part = df.filter(df["run_id"] == rid)
        assert part["bucket"].to_list() == ["Sum GEMM", "Sum GEMV", "Gen GEMM", "Gen GEMV", "ATTN", "Unclassified"]
        assert part["share"].to_list() == [0, 0, 0, 0, 0, 1]


def test_composition_buckets_against_trace(copy_db):
    _by_hand(copy_db, _SET_CATEGORIES)
    expected: dict[str, int] = defaultdict(int)
    for stage, _it, _step, dur, short in nsys_truth(NSYS_L2):
        if stage not in ("summarization", "generation"):
            continue
        cat = _category(short, stage)
        bucket = ("Unclassified" if cat is None else
                  ("Sum " if stage == "summarization" else "Gen ") + cat if cat in ("GEMM", "GEMV") else cat)
        expected[bucket] += dur
    rid = run_of(copy_db.con, NSYS_L2)
    df = copy_db.query("SELECT bucket, time_ns, share FROM composition WHERE run_id = ?", [rid])
    assert dict(zip(df["bucket"], df["time_ns"], strict=True)) == {**{"Sum GEMV": 0}, **expected}
    assert df["bucket"].to_list()[:5] == ["Sum GEMM", "Sum GEMV", "Gen GEMM", "Gen GEMV", "ATTN"]
    assert df["bucket"].to_list()[-1] == "Unclassified"
    assert df["share"].sum() == pytest.approx(1.0)
    total = sum(expected.values())
    for _bucket, t, s in df.iter_rows():
        assert s == pytest.approx(t / total)


def test_composition_shares_sum_to_one_every_run(shared_db_path):
    db = tracekit.open(shared_db_path, read_only=True)
    sums = db.query("SELECT run_id, sum(share) AS s, sum(time_ns) AS t FROM composition GROUP BY 1 ORDER BY 1")
    assert sums["s"].to_list() == pytest.approx([1.0] * 4)
    ratio = db.query("SELECT summarization_ns + generation_ns AS t FROM stage_ratio ORDER BY run_id")
    assert sums["t"].to_list() == ratio["t"].to_list()


@pytest.mark.parametrize("path", [NSYS_L2, KINETO_L3], ids=lambda p: p.name)
def test_step_totals_against_trace(shared_db_path, path):
    expected_n, expected_t = Counter(), Counter()
    for stage, it, step, dur, _ in truth(path):
        if step is not None:
            expected_n[(it, step, stage)] += 1
            expected_t[(it, step, stage)] += dur
    db = tracekit.open(shared_db_path, read_only=True)
    rid = run_of(db.con, path)
    rows = db.con.execute("SELECT iteration, step, stage, time_ns, n_kernels FROM step_totals WHERE run_id = ?",
                          [rid]).fetchall()
    assert {(i, s, st): n for i, s, st, _, n in rows} == dict(expected_n)
    assert {(i, s, st): t for i, s, st, t, _ in rows} == dict(expected_t)
    # steps breaks the same totals down by category.
    by_cat = dict(db.con.execute(
        "SELECT iteration * 1000 + step, sum(time_ns) FROM steps WHERE run_id = ? GROUP BY 1", [rid]).fetchall())
    assert by_cat == {i * 1000 + s: t for i, s, _, t, _ in rows}


def test_step_totals_wall_is_marker_duration(shared_db_path):
    summ, gens = _nsys_measured_markers(NSYS_L2)
    db = tracekit.open(shared_db_path, read_only=True)
    walls = db.con.execute("SELECT host_ns FROM step_totals WHERE run_id = ? AND iteration = 1 ORDER BY step",
                           [run_of(db.con, NSYS_L2)]).fetchall()
    assert [w for (w,) in walls] == [summ[1] - summ[0]] + [e - s for s, e, _ in gens]


def test_top_kernels_against_trace(copy_db):
    _by_hand(copy_db, _CLEAR_CATEGORIES)
    n, t = Counter(), Counter()
    for stage, _it, _step, dur, short in nsys_truth(NSYS_L3_SHAPES):
        if stage in ("summarization", "generation"):
            n[short] += 1
            t[short] += dur
    rid = run_of(copy_db.con, NSYS_L3_SHAPES)
    df = copy_db.query("SELECT * FROM top_kernels WHERE run_id = ?", [rid])
    assert set(df["category"]) == {"Unclassified"}
    assert dict(zip(df["short_name"], df["n"], strict=True)) == dict(n)
    assert dict(zip(df["short_name"], df["time_ns"], strict=True)) == dict(t)
    assert df["time_ns"].to_list() == sorted(t.values(), reverse=True)
    assert df["share"].sum() == pytest.approx(1.0)


def test_top_kernels_without_stages_uses_all_kernels(copy_db):
    rid = run_of(copy_db.con, KINETO_L2)
    _by_hand(copy_db, "UPDATE kernel_rows SET stage = 'other', step = NULL, iteration = NULL WHERE run_id = ?", [rid])
    got = copy_db.con.execute("SELECT sum(n), sum(time_ns) FROM top_kernels WHERE run_id = ?", [rid]).fetchall()[0]
    with gzip.open(KINETO_L2, "rt") as f:
        ks = [e for e in json.load(f, parse_float=Decimal)["traceEvents"] if e.get("cat") == "kernel"]
    assert got == (len(ks), sum(_ns(e["dur"]) for e in ks))


def test_run_info_meta_types(copy_db):
    rid = run_of(copy_db.con, KINETO_L3)
    row = copy_db.query("SELECT * FROM run_info WHERE run_id = ?", [rid]).row(0, named=True)
    assert (row["model"], row["batch"], row["input_len"], row["output_len"], row["layers"]) == (
        "llama3-8b", 8, 128, 16, 2)
    assert (row["stage_method"], row["iterations"]) == ("markers:annotation", 1)
    copy_db.con.execute("UPDATE run_meta SET value = 'eight' WHERE run_id = ? AND key = 'batch'", [rid])
    assert copy_db.con.execute("SELECT batch FROM run_info WHERE run_id = ?", [rid]).fetchall()[0] == (None,)
    assert copy_db.con.execute("SELECT count(*) FROM run_info").fetchall()[0][0] == 4


def test_views_work_read_only_without_passes_table(shared_db_path, tmp_path):
    dst = tmp_path / "old.duckdb"
    shutil.copy(shared_db_path, dst)
    with tracekit.open(dst) as db:
        db.con.execute("DROP TABLE passes")
    db = tracekit.open(dst, read_only=True)
    assert db.query("SELECT * FROM step_totals").is_empty()
    ratio = db.query("SELECT * FROM stage_ratio ORDER BY run_id")
    assert ratio["host_generation_ns"].null_count() == 4 and ratio["gen_ratio"].null_count() == 0


def _documented_columns(sql: str) -> dict[str, list[str]]:
    doc: dict[str, list[str]] = {}
    view = None
    for line in sql.splitlines():
        if line.startswith("-- @view "):
            view = line.split()[2]
            doc[view] = []
        elif line.startswith("-- @column ") and view:
            names = re.split(r"\s{2,}", line.removeprefix("-- @column ").strip())[0]
            doc[view] += [n.strip() for n in names.split(",")]
    return doc


def test_every_view_documents_exactly_its_columns(shared_db_path):
    from importlib import resources

    db = tracekit.open(shared_db_path, read_only=True)
    names = view_names()
    assert set(names) >= {"run_info", "stage_ratio", "composition", "steps", "step_totals", "top_kernels"}
    for f in sql_files():
        for view, cols in _documented_columns(resources.files("tracekit.views").joinpath(f).read_text()).items():
            actual = [r[0] for r in db.con.execute(f"DESCRIBE {view}").fetchall()]
            assert cols == actual, view


def test_create_views_is_repeatable(shared_db_path):
    db = tracekit.open(shared_db_path, read_only=True)
    create_views(db.con)
    create_views(db.con)
    assert db.con.execute("SELECT count(*) FROM stage_ratio").fetchall()[0][0] == 4
