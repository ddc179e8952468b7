"""The per-run rollups (kernel_totals, stage_spans, read through kernel_sums) that stage_ratio,
stage_ratio_by_process and composition read instead of every kernel.

Oracle: the views' per-kernel definitions as they were before the rollups
(tests/per_kernel_views.sql, names suffixed _oracle), run on the same connection. Both must give
the same rows on every fixture and shared trace (mixed passes with and without token counts, a
multi-rank job with measured COMM wait, CUDA graphs traced whole, runs without stages), with and
without a `WHERE run_id = ?` filter (DuckDB 2.0.1 misreads some views under that filter), after a
rules edit and re-classification, after a replace, on a database written before the rollups
(read-only: live rollups; writable: upgraded), and over the Parquet dataset and its attached copy.
"""

from __future__ import annotations

import ast
import gzip
import json
import shutil
from pathlib import Path

import duckdb
import pytest
from conftest import FIXTURES, ROOT, SHARED, SHARED_TRACES, shared_trace

import tracekit
from tracekit.views import _with_partition

ORACLE_SQL = (Path(__file__).parent / "per_kernel_views.sql").read_text()
VIEWS = {
    "stage_ratio": "run_id",
    "stage_ratio_by_process": "run_id, pid, device, rank",
    "composition": "run_id, scope, bucket",
}
# Mixed passes' shares are summed per pass (share x sum) instead of per kernel (sum of share x
# duration): the same number up to rounding, so those columns may differ by 1 ns.
ROUNDED = {"summarization_ns", "generation_ns", "gen_ratio"}


def _relabel(src: Path, dst: Path, label: str) -> Path:
    """The real H100 Kineto trace with its stage markers relabelled as engine steps `label`."""
    with gzip.open(src, "rt") as f:
        doc = json.load(f)
    for e in doc["traceEvents"]:
        if e.get("cat") == "user_annotation" and e["name"] in ("stage:summarization", "stage:generation"):
            e["name"] = label
    with gzip.open(dst, "wt") as f:
        json.dump(doc, f)
    return dst


def _inputs(tmp: Path) -> list[Path]:
    kineto = SHARED / "kineto_llama2-7b-4L_b1_i64_o8.pt.trace.json.gz"
    mixed = [
        # vLLM step with token counts: shared kernels split by tokens
        _relabel(kineto, tmp / "mixed_tokens.pt.trace.json.gz",
                 "execute_2_context_1(sq60sk60sqsq3600sqsk3600)_generation_1(sq4sk70sqsq4sqsk70)"),
        # SGLang mixed step without token counts: shared kernels unattributed
        _relabel(kineto, tmp / "mixed_unknown.pt.trace.json.gz", "step[MIXED bs=8]"),
    ]
    return [*SHARED_TRACES, *sorted((FIXTURES / "variants").glob("*.sqlite")),
            *sorted((FIXTURES / "variants").glob("*.json.gz")), *mixed]


def _shared_inputs() -> list[Path]:
    rels = ["h200/llama3-8b-4L_tp2_rank0_b8_i64_o8.pt.trace.json.gz",
            "h200/llama3-8b-4L_tp2_rank1_b8_i64_o8.pt.trace.json.gz",
            "h200/mixtral-8x7b-2L_b8_i64_o8.pt.trace.json.gz",
            "h200/llama3-8b-2L-cudagraph_marked_b1_i64_o16.pt.trace.json.gz",
            "h200/llama3-8b-2L-cudagraph-nsys-graph.sqlite",
            "external/tracelens/inference_vllm_decode_full_graph_execution.json.gz",
            "external/tracelens/h100_gaunernst_bert-small-uncased__1016001.json.gz"]
    return [shared_trace(r) for r in rels]


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("rollups")
    path = tmp / "study.duckdb"
    db = tracekit.open(path)
    results = db.import_paths([*_inputs(tmp), *_shared_inputs()])
    assert all(r.status == "imported" for r in results), [r.error for r in results if r.status != "imported"]
    db.close()
    return path


@pytest.fixture()
def study_copy(study, tmp_path) -> Path:
    dst = tmp_path / "copy.duckdb"
    shutil.copy(study, dst)
    return dst


def _rows(con: duckdb.DuckDBPyConnection, view: str, where: str = "", params: list | None = None) -> list[dict]:
    cur = con.execute(f"SELECT * FROM {view} {where} ORDER BY {VIEWS[view.removesuffix('_oracle')]}", params or [])
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]


def _same(new: list[dict], old: list[dict]) -> None:
    assert len(new) == len(old)
    for a, b in zip(new, old, strict=True):
        assert a.keys() == b.keys()
        for c in a:
            if c in ROUNDED and a[c] is not None and b[c] is not None:
                assert a[c] == pytest.approx(b[c], abs=1.0, rel=1e-9), (c, a, b)
            elif c == "share" and a[c] is not None and b[c] is not None:
                assert a[c] == pytest.approx(b[c], rel=1e-12), (c, a, b)
            else:
                assert a[c] == b[c], (c, a, b)


def _check_equal_to_oracle(con: duckdb.DuckDBPyConnection, each_run: bool = True) -> int:
    con.execute(_with_partition(ORACLE_SQL))
    for view in VIEWS:
        _same(_rows(con, view), _rows(con, f"{view}_oracle"))
    runs = [r[0] for r in con.execute("SELECT run_id FROM runs ORDER BY 1").fetchall()]
    if each_run:
        for run_id in runs:
            for view in VIEWS:
                new = _rows(con, view, "WHERE run_id = ?", [run_id])
                assert new, (view, run_id) if view != "stage_ratio_by_process" else None
                _same(new, _rows(con, f"{view}_oracle", "WHERE run_id = ?", [run_id]))
    return len(runs)


def test_views_equal_the_per_kernel_definitions(study):
    db = tracekit.open(study, read_only=True)
    n = _check_equal_to_oracle(db.con)
    assert n >= 15
    # The inputs cover what the rollups must carry: mixed passes split by tokens and unsplit,
    # COMM wait measured across ranks, whole CUDA graphs, runs measured over the whole run.
    con = db.con
    assert con.execute("SELECT count(*) FROM passes WHERE evidence LIKE 'split:tokens=%'").fetchall()[0][0] > 0
    assert con.execute("SELECT count(*) FROM passes WHERE evidence LIKE 'split:unknown%'").fetchall()[0][0] > 0
    assert con.execute("SELECT count(*) FROM composition WHERE bucket = 'COMM wait' AND time_ns > 0").fetchall()[0][0]
    assert con.execute("SELECT count(*) FROM composition WHERE bucket = 'CUDA graph (whole)'").fetchall()[0][0]
    assert con.execute("SELECT count(*) FROM composition WHERE scope = 'whole run'").fetchall()[0][0]
    assert con.execute("SELECT count(*) FROM kernel_rows WHERE follow_category IS NOT NULL").fetchall()[0][0]


def _fresh_totals(con: duckdb.DuckDBPyConnection) -> tuple[list, list, list, list]:
    """kernel_totals, kernel_sums and stage_spans recomputed here from kernel_rows / the kernels
    view (per kernel), independently of the store's rollup code."""
    totals = con.execute(
        "SELECT run_id, pid, device, rank, stage, CASE WHEN stage = 'mixed' THEN iteration END, "
        "CASE WHEN stage = 'mixed' THEN step END, ctx_id, name_id, "
        "count(*), sum(dur_ns) FROM kernel_rows GROUP BY ALL ORDER BY ALL").fetchall()
    follows = con.execute(
        "SELECT run_id, pid, device, rank, stage, CASE WHEN stage = 'mixed' THEN iteration END, "
        "CASE WHEN stage = 'mixed' THEN step END, ctx_id, name_id, follow_category, follow_evidence, "
        "count(*), sum(dur_ns) FROM kernel_rows WHERE follow_category IS NOT NULL OR follow_evidence IS NOT NULL "
        "GROUP BY ALL ORDER BY ALL").fetchall()
    spans = []
    rows = con.execute("SELECT run_id, pid, device, rank, iteration, stage, start_ns, end_ns FROM kernel_rows "
                       "WHERE stage IN ('summarization', 'generation') ORDER BY run_id, pid, device, rank, "
                       "iteration, stage, start_ns, end_ns").fetchall()
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault(r[:6], []).append(r[6:])
    for key, iv in groups.items():
        busy, reach = 0, None
        for s, e in iv:  # union of the intervals, in start order
            if reach is None or s >= reach:
                busy += e - s
                reach = e
            elif e > reach:
                busy += e - reach
                reach = e
        spans.append((*key, max(e for _, e in iv) - min(s for s, _ in iv), busy))
    sums = con.execute(
        "SELECT run_id, pid, device, rank, stage, CASE WHEN stage = 'mixed' THEN iteration END, "
        "CASE WHEN stage = 'mixed' THEN step END, short_name, category, evidence, count(*), sum(dur_ns) "
        "FROM kernels GROUP BY ALL ORDER BY ALL").fetchall()
    return totals, follows, sums, sorted(spans, key=repr)


def _stored_totals(con: duckdb.DuckDBPyConnection) -> tuple[list, list, list, list]:
    totals = con.execute("SELECT * FROM kernel_totals ORDER BY ALL").fetchall()
    follows = con.execute("SELECT * FROM follow_totals ORDER BY ALL").fetchall()
    sums = con.execute("SELECT * FROM kernel_sums ORDER BY ALL").fetchall()
    spans = con.execute("SELECT * FROM stage_spans").fetchall()
    return totals, follows, sums, sorted(spans, key=repr)


def test_stored_rollups_equal_a_plain_recount(study):
    db = tracekit.open(study, read_only=True)  # the kernels view, for the per-kernel recount
    assert _stored_totals(db.con) == _fresh_totals(db.con)


def test_rules_edit_and_reclassify_keep_the_views_right(study_copy, tmp_path):
    """Disabling the cuBLAS GEMM rules changes verdicts and the split-K reduces' per-kernel
    follow_* columns; the rollups follow (CLI `tracekit classify`, as a user runs it)."""
    from conftest import tk

    pack = tmp_path / "nocublas"
    pack.mkdir()
    (pack / "off.toml").write_text('[pack]\nname = "off"\ndisable = ["cublas.nvjet", "cublas.nvjet-skinny", '
                                   '"gemm.generic"]\n')
    with duckdb.connect(str(study_copy), read_only=True) as con:
        before = con.execute("SELECT * FROM follow_totals ORDER BY ALL").fetchall()
    r = tk("classify", "--db", str(study_copy), "--rules", str(pack))
    assert r.returncode == 0, r.stderr
    db = tracekit.open(study_copy, read_only=True)
    assert _stored_totals(db.con) == _fresh_totals(db.con)
    assert db.con.execute("SELECT * FROM follow_totals ORDER BY ALL").fetchall() != before  # follow_* changed
    _check_equal_to_oracle(db.con, each_run=False)
    db.close()
    # and back to the default rules
    assert tk("classify", "--db", str(study_copy)).returncode == 0
    db = tracekit.open(study_copy, read_only=True)
    _check_equal_to_oracle(db.con, each_run=False)
    assert _stored_totals(db.con) == _fresh_totals(db.con)


def test_an_edit_that_no_per_kernel_decision_reads_gives_a_full_refreshs_result(study_copy, tmp_path):
    """An edit that moves only categories no per-kernel decision reads (norm kernels) skips the
    per-kernel part and rewrites kernel_sums alone: the verdicts, follow_* columns and rollups must
    be what a full refresh of every run gives (a second copy, `refresh=True`)."""
    from tracekit.enrich.classify import classify
    from tracekit.enrich.rules import RuleSet

    pack = tmp_path / "nonorm"
    pack.mkdir()
    (pack / "off.toml").write_text('[pack]\nname = "off"\ndisable = ["pt.layer-norm", "pt.op-norm"]\n')
    full = tmp_path / "full.duckdb"
    shutil.copy(study_copy, full)
    rules = RuleSet.load([pack])
    state = []
    for path, refresh in ((study_copy, False), (full, True)):
        with duckdb.connect(str(path)) as con:
            con.execute("BEGIN")
            touched = classify(con, None, rules, refresh=refresh)
            con.execute("COMMIT")
            state.append([con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in (
                "kernel_verdicts", "follow_totals", "kernel_sums")]
                         + [con.execute("SELECT rowid, follow_category, follow_evidence FROM kernel_rows "
                                        "ORDER BY rowid").fetchall()])
            if not refresh:
                assert touched  # the edit changed verdicts somewhere
    assert state[0] == state[1]
    assert any(c is None for (_, _, c, *_) in state[0][0])  # norm kernels lost their class
    db = tracekit.open(study_copy, read_only=True)
    _check_equal_to_oracle(db.con, each_run=False)
    assert _stored_totals(db.con) == _fresh_totals(db.con)
    db.close()


def test_an_edit_rewrites_only_the_kernel_sums_rows_of_the_names_it_moved(study_copy, tmp_path):
    """After an edit that no per-kernel decision reads, kernel_sums rows of short names none of
    whose contexts the edit moved are left as they are (the same physical rows: a rewrite of every
    row of the run cost 0.4 s at 10M kernels); those of the moved names are rewritten."""
    from tracekit.enrich.classify import classify
    from tracekit.enrich.rules import RuleSet

    pack = tmp_path / "nonorm"
    pack.mkdir()
    (pack / "off.toml").write_text('[pack]\nname = "off"\ndisable = ["pt.layer-norm", "pt.op-norm"]\n')
    with duckdb.connect(str(study_copy)) as con:
        moved = {r for (r,) in con.execute(
            "SELECT DISTINCT n.short_name FROM kernel_verdicts v JOIN kernel_contexts c ON c.ctx_id = v.ctx_id "
            "JOIN kernel_names n ON n.name_id = c.name_id "
            "WHERE v.rule_id IN ('pt.layer-norm', 'pt.op-norm')").fetchall()}
        assert moved
        con.execute("BEGIN")
        rows = "SELECT rowid, * FROM kernel_sums ORDER BY rowid"
        before = con.execute(rows).fetchall()
        classify(con, None, RuleSet.load([pack]))
        after = con.execute(rows).fetchall()
        con.execute("COMMIT")
    kept = [r for r in before if r[8] not in moved]
    assert kept and [r for r in after if r[8] not in moved] == kept
    assert {r[0] for r in after if r[8] in moved}.isdisjoint(r[0] for r in before if r[8] in moved)


def test_replace_and_delete_leave_no_stale_rollups(study_copy):
    db = tracekit.open(study_copy)
    old = db.con.execute("SELECT run_id FROM runs WHERE source_name = ?", [SHARED_TRACES[0].name]).fetchall()[0][0]
    res = db.import_paths([SHARED_TRACES[0]], replace=True)
    assert res[0].status == "replaced"
    for t in ("kernel_totals", "stage_spans"):
        assert db.con.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", [old]).fetchall()[0][0] == 0
        assert db.con.execute(f"SELECT count(*) FROM {t} WHERE run_id = ?", [res[0].run_id]).fetchall()[0][0] > 0
    assert _stored_totals(db.con) == _fresh_totals(db.con)
    _check_equal_to_oracle(db.con, each_run=False)
    # A long list of runs (selected through a temp table, not an IN list) rewrites the same rows.
    from tracekit.store import refresh_follow_totals, refresh_rollups

    refresh_rollups(db.con, list(range(1, 100)))
    refresh_follow_totals(db.con, list(range(1, 100)))
    assert _stored_totals(db.con) == _fresh_totals(db.con)


def _as_written_before_rollups(path: Path) -> None:
    with duckdb.connect(str(path)) as con:
        con.execute("DROP TABLE follow_totals")
        con.execute("DROP TABLE kernel_sums")
        con.execute("DROP TABLE kernel_totals")
        con.execute("DROP TABLE stage_spans")


def test_database_written_before_the_rollups(study_copy):
    """Read-only: the views roll up `kernels` live (the same numbers); writable: the first open
    writes the rollups of every run."""
    _as_written_before_rollups(study_copy)
    ro = tracekit.open(study_copy, read_only=True)
    assert ro.con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'kernel_totals'").fetchall()[0][0] == 0
    _check_equal_to_oracle(ro.con, each_run=False)
    ro.close()
    rw = tracekit.open(study_copy)
    assert _stored_totals(rw.con) == _fresh_totals(rw.con)
    assert rw.con.execute("SELECT count(DISTINCT run_id) FROM kernel_totals").fetchall()[0][0] == \
        rw.con.execute("SELECT count(DISTINCT run_id) FROM kernel_rows").fetchall()[0][0]
    _check_equal_to_oracle(rw.con, each_run=False)


def test_dataset_and_its_copy_give_the_stores_numbers(tmp_path):
    from tracekit.dataset import attach, connect_dataset, import_to_dataset, run_dir, run_key
    from tracekit.importer import file_hash

    files = [*SHARED_TRACES, FIXTURES / "variants" / "nsys_two_processes_two_gpus.sqlite"]
    ds = tmp_path / "ds"
    assert all(r.status == "imported" for r in import_to_dataset(files, ds))
    for d in ds.glob("run_key=*"):
        assert (d / "kernel_sums.parquet").exists() and (d / "stage_spans.parquet").exists()
    store = tracekit.open(tmp_path / "store.duckdb")
    store.import_paths(files)

    def by_source(con, view: str) -> list:
        return sorted(con.execute(
            f"SELECT r.source_name, v.* EXCLUDE (run_id) FROM {view} v JOIN runs r USING (run_id)").fetchall(), key=repr)

    live = connect_dataset(ds)
    copy_path = tmp_path / "copy.duckdb"
    attach(ds, copy_path)
    copy = tracekit.open(copy_path, read_only=True).con
    for con in (live, copy):
        _check_equal_to_oracle(con)
        for view in VIEWS:
            assert by_source(con, view) == by_source(store.con, view), view
    # A dataset with a run written before the rollups (its files removed): the views roll up live.
    victim = run_dir(ds, run_key(file_hash(files[0])))
    (victim / "kernel_sums.parquet").unlink()
    (victim / "stage_spans.parquet").unlink()
    live2 = connect_dataset(ds)
    assert live2.execute("SELECT count(*) FROM duckdb_views() WHERE view_name = 'kernel_sums' AND temporary"
                         ).fetchall()[0][0] == 1
    for view in VIEWS:
        assert by_source(live2, view) == by_source(store.con, view), view


# --- the pipeline runs one way: readers -> store -> enrich -> views -> outputs ---------------------

_LAYERS = {"readers": 0, "store": 1, "enrich": 2, "views": 3, "outputs": 4}


def _layer(module: str) -> str | None:
    parts = module.split(".")
    if parts[0] != "tracekit" or len(parts) < 2:
        return None
    return {"readers": "readers", "store": "store", "enrich": "enrich", "views": "views",
            "outputs": "outputs"}.get(parts[1])


def _imports(path: Path) -> set[str]:
    """Every tracekit module `path` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {m for m in found if m.startswith("tracekit")}


@pytest.mark.parametrize("layer", ["readers", "store", "enrich", "views"])
def test_no_module_imports_a_later_stage_of_the_pipeline(layer):
    pkg = ROOT / "tracekit"
    files = [pkg / "store.py"] if layer == "store" else sorted((pkg / layer).glob("*.py"))
    for f in files:
        later = {m for m in _imports(f) if (lay := _layer(m)) and _LAYERS[lay] > _LAYERS[layer]}
        later |= {m for m in _imports(f) if m.startswith(("tracekit.importer", "tracekit.api"))}
        assert not later, f"{f.relative_to(ROOT)} imports {sorted(later)}"


def test_store_imports_nothing_of_enrich():
    assert not {m for m in _imports(ROOT / "tracekit" / "store.py") if m.startswith("tracekit.enrich")}
    assert not {m for m in _imports(ROOT / "tracekit" / "store.py")
                if m.startswith(("tracekit.views", "tracekit.outputs", "tracekit.importer"))}
