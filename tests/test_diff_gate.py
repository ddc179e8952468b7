"""Issue 16: `tracekit diff BASE NEW --fail-if ...` as a CI gate, on real fixture pairs. Expected
values are summed here with plain SQL over the stored kernels (not through the views or diff.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FIXTURES, KINETO_L2, NSYS_L2, SHARED_META, tk

import tracekit
from tracekit.outputs import diff

B1 = FIXTURES / "h100" / "llama3-8b-2L_b1_i64_o8.pt.trace.json.gz"
B64 = FIXTURES / "h100" / "llama3-8b-2L_b64_i64_o8.pt.trace.json.gz"


@pytest.fixture(scope="module")
def pair_db(tmp_path_factory) -> tuple[Path, dict[str, int]]:
    path = tmp_path_factory.mktemp("gate") / "g.duckdb"
    db = tracekit.open(path)
    ids = {}
    for t, meta in ((B1, None), (B64, None), (KINETO_L2, SHARED_META[KINETO_L2.name]),
                    (NSYS_L2, SHARED_META[NSYS_L2.name])):
        res = db.import_paths([t], meta=meta)[0]
        assert res.status == "imported"
        ids[t.name] = db.con.execute("SELECT run_id FROM runs WHERE source_name = ?", [t.name]).fetchall()[0][0]
    db.close()
    return path, ids


def sums(db_path: Path, run_id: int, where: str = "TRUE") -> dict[str, int]:
    con = tracekit.open(db_path, read_only=True).con
    rows = con.execute(f"SELECT stage, sum(dur_ns) FROM kernels WHERE run_id = ? AND ({where}) GROUP BY 1",
                       [run_id]).fetchall()
    return {s: int(t) for s, t in rows}


def gen_ratio(db_path: Path, run_id: int) -> float:
    t = sums(db_path, run_id)
    return t["generation"] / (t["generation"] + t["summarization"])


def measured(db_path: Path, run_id: int, where: str) -> int:
    t = sums(db_path, run_id, where)
    return t.get("summarization", 0) + t.get("generation", 0)


def test_gate_fails_with_one_line_per_breach_and_passes_below(pair_db, tmp_path):
    path, ids = pair_db
    a, b = ids[B1.name], ids[B64.name]
    ra, rb = gen_ratio(path, a), gen_ratio(path, b)
    drop = rb - ra
    assert drop < -0.2  # batch 64 spends far less of its time generating (study, Figure 6)
    nv_a = measured(path, a, "short_name LIKE 'nvjet%'")
    nv_b = measured(path, b, "short_name LIKE 'nvjet%'")
    rel = (nv_b - nv_a) / nv_a
    md = tmp_path / "diff.md"
    # Two thresholds just inside the measured change (breached), one just outside (passes).
    res = tk("diff", str(a), str(b), "--db", str(path), "--markdown", str(md),
             "--fail-if", f"gen_ratio<{drop * 100 + 1:+.2f}pp",
             "--fail-if", f"kernel:nvjet*:time>{rel * 100 - 1:+.1f}%",
             "--fail-if", f"gen_ratio>{drop + 0.01:+.4f}")
    assert res.returncode == 1, res.stderr
    lines = [x for x in res.stderr.splitlines() if x.startswith("tracekit: threshold breached:")]
    assert len(lines) == 2
    assert f"from {ra:.2%} to {rb:.2%}" in lines[0]
    assert f"from {nv_a / 1e6:,.3f} ms to {nv_b / 1e6:,.3f} ms" in lines[1]
    text = md.read_text()
    assert "**FAILED**: 2 of 3 thresholds breached" in text
    assert text.count("❌ breached") == 2 and text.count("✅ ok") == 1
    # Thresholds outside the change: the gate passes, exit 0.
    ok = tk("diff", str(a), str(b), "--db", str(path), "--fail-if", f"gen_ratio<{drop * 100 - 1:+.2f}pp",
            "--fail-if", f"kernel:nvjet*:time>{rel * 100 + 1:+.1f}%")
    assert ok.returncode == 0, ok.stderr
    assert "all 2 thresholds passed" in ok.stderr


def test_same_workload_two_profilers_passes_a_tight_gate(pair_db):
    """The shared Kineto and nsys traces of one llama2-7b run configuration: no regression."""
    path, ids = pair_db
    a, b = ids[KINETO_L2.name], ids[NSYS_L2.name]
    assert abs(gen_ratio(path, b) - gen_ratio(path, a)) < 0.01
    res = tk("diff", str(a), str(b), "--db", str(path), "--fail-if", "gen_ratio>+1pp", "--fail-if", "gen_ratio<-1pp")
    assert res.returncode == 0, res.stderr


def test_bucket_time_gate_against_kernel_sums(pair_db):
    path, ids = pair_db
    a, b = ids[B1.name], ids[B64.name]
    ta = measured(path, a, "category = 'ATTN'")
    tb = measured(path, b, "category = 'ATTN'")
    assert tb > ta
    limit_ms = (tb - ta) / 1e6
    hit = tk("diff", str(a), str(b), "--db", str(path), "--fail-if", f"bucket:ATTN:time>+{limit_ms * 0.9:.4f}ms")
    miss = tk("diff", str(a), str(b), "--db", str(path), "--fail-if", f"bucket:ATTN:time>+{limit_ms * 1.1:.4f}ms")
    assert hit.returncode == 1 and miss.returncode == 0


def test_gate_grammar_errors_are_clear(pair_db):
    path, ids = pair_db
    a, b = ids[B1.name], ids[B64.name]
    for bad, word in (("gen_ratio=0.1", "expected METRIC"), ("bucket:ATTN:time>+5", "needs a unit"),
                      ("gen_ratio>+5ms", "time unit"), ("cycles:x:time>1%", "the metric is")):
        with pytest.raises(ValueError, match=word):
            diff.parse_gate(bad)
        res = tk("diff", str(a), str(b), "--db", str(path), "--fail-if", bad)
        assert res.returncode == 2 and word in res.stderr
    typo = tk("diff", str(a), str(b), "--db", str(path), "--fail-if", "bucket:Gen GEMMM:share>+1pp")
    assert typo.returncode == 1 and "no bucket 'Gen GEMMM' in either group" in typo.stderr
    # Kernel names with '::' and '<...>' parse: the operator is the last < or >.
    g = diff.parse_gate("kernel:void at::native::<foo>*:time>+5%")
    assert (g.name, g.op, g.limit, g.relative) == ("void at::native::<foo>*", ">", 0.05, True)
