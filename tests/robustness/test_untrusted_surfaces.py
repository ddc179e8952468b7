"""Surfaces that take untrusted text: rule files (data, bounded regexes), the HTML report
(escaping trace-supplied strings), and `tracekit query` (read-only)."""

from __future__ import annotations

import gzip
import json
import time
from pathlib import Path

import pytest
from robust_util import KINETO_FLOWS, error_lines, tk
from test_bad_input import snapshot

import tracekit

rules = pytest.importorskip("tracekit.enrich.rules")

HOSTILE_NAME = '<script>alert("kernel")</script><img src=x onerror=alert(1)>'
HOSTILE_META = '"><svg onload=alert(2)>'


# ---- rules --------------------------------------------------------------------------------------

@pytest.mark.parametrize("pattern", [r"(a+)+$", r"(x|y+)*z", r"\w+_\w+_\w+z", r"(\w|\w\w)*Q", r"(a|aa)*b"])
def test_backtracking_prone_patterns_match_in_linear_time(pattern):
    """Rule regexes are RE2: patterns that backtrack exponentially in Python's re are harmless."""
    compiled = rules.compile_regex(pattern)
    started = time.perf_counter()
    assert compiled.search("a" * 100_000 + "!") is None
    assert time.perf_counter() - started < 1.0


@pytest.mark.parametrize("pattern", [r"^(\w+)\1", r"(?=gemm)", r"(?<=x)y"])
def test_patterns_outside_re2_are_refused(pattern):
    with pytest.raises(rules.RegexError):
        rules.compile_regex(pattern)


@pytest.mark.parametrize("pattern", [r"^nvjet_sm90_tst_\d+x\d+", r"gemv", r"^triton_\w*?_fused_\w*?rsqrt"])
def test_ordinary_patterns_compile(pattern):
    assert rules.compile_regex(pattern).pattern == pattern


def test_rule_dir_is_data_not_code(tmp_path):
    """A rules directory holding Python next to TOML: nothing is imported or executed, and a
    TOML pack with a pattern outside RE2 is a load error naming the file."""
    marker = tmp_path / "executed"
    d = tmp_path / "rules"
    d.mkdir()
    (d / "evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (d / "__init__.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    (d / "10-evil.toml").write_text(
        '[pack]\nname = "evil"\n\n[[rule]]\nid = "evil.slow"\nregex = \'(?=a)a\'\ncategory = "GEMM"\n'
        f'explain = "__import__(\'os\').system(\'touch {marker}\')"\nexamples = [\'aaa\']\n'
    )
    with pytest.raises(rules.RuleError) as err:
        rules.RuleSet.load([d], include_user=False)
    assert "10-evil.toml" in str(err.value) and "RE2" in str(err.value)
    lenient = rules.RuleSet.load([d], include_user=False, strict=False)
    assert "evil.slow" not in lenient.by_id
    assert not marker.exists()


def test_huge_names_are_matched_whole_in_linear_time(tmp_path):
    """RE2 is linear in the text, so a 1 MB name needs no cut: the rule sees all of it."""
    d = tmp_path / "rules"
    d.mkdir()
    (d / "10-t.toml").write_text('[pack]\nname = "t"\n\n[[rule]]\nid = "t.nvjet"\nregex = \'(\\w|\\w\\w)*nvjet_\'\n'
                                 'category = "GEMM"\nexplain = "test"\nexamples = [\'nvjet_sm90\']\n')
    rs = rules.RuleSet.load([d], include_user=False, include_builtin=False)
    started = time.perf_counter()
    assert rs.decide(rules.KernelContext(name="x" * (1 << 20) + "nvjet_")).rule_id == "t.nvjet"
    assert rs.decide(rules.KernelContext(name="x" * (1 << 20))).rule_id is None
    assert time.perf_counter() - started < 5


# ---- report -------------------------------------------------------------------------------------

def hostile_trace(tmp_path: Path) -> Path:
    obj = json.loads(gzip.decompress(KINETO_FLOWS.read_bytes()))
    ks = [e for e in obj["traceEvents"] if e.get("cat") == "kernel"]
    # The kernel with the most total time, so every "top" table and chart shows it.
    totals: dict[str, float] = {}
    for e in ks:
        totals[e["name"]] = totals.get(e["name"], 0) + e["dur"]
    top = max(totals, key=totals.get)
    for e in ks:
        if e["name"] == top:
            e["name"] = HOSTILE_NAME
    for e in obj["traceEvents"]:
        if e.get("cat") == "user_annotation":
            e["name"] = e["name"] + "<b>"
    p = tmp_path / "hostile.json"
    p.write_text(json.dumps(obj))
    return p


def test_report_escapes_trace_and_metadata_strings(tmp_path):
    cli = tk("--help")
    if " report " not in cli.stdout:
        pytest.skip("tracekit report is not wired yet")
    db = tmp_path / "h.duckdb"
    with tracekit.open(db) as d:
        [r] = d.import_paths([hostile_trace(tmp_path)], meta={"model": HOSTILE_META})
    assert r.status == "imported", r.error
    out = tmp_path / "report"
    proc = tk("report", "--db", str(db), "--out", str(out), "--title", "<i>t</i>")
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr
    pages = [p for p in out.rglob("*") if p.suffix in (".html", ".svg")]
    assert pages
    text = "\n".join(p.read_text(errors="replace") for p in pages)
    for raw in ("<script>alert", "<img src=x", "<svg onload", "<i>t</i>"):
        assert raw not in text, raw
    # ... and the strings are still there, escaped, for the reader to see.
    assert "&lt;script&gt;alert" in text or "&lt;script>alert" in text


# ---- query --------------------------------------------------------------------------------------

# DELETE is covered by tests/test_bad_input.py.
@pytest.mark.parametrize("sql", [
    "UPDATE runs SET gpu_name = 'x'",
    "DROP TABLE kernels",
    "SELECT 1; DELETE FROM kernels",
])
def test_query_cannot_change_the_database(shared_db_copy, sql):
    before = snapshot(shared_db_copy)
    proc = tk("query", "--db", str(shared_db_copy), sql)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(error_lines(proc.stderr)) == 1
    assert snapshot(shared_db_copy) == before


def test_query_on_a_non_database_file_is_one_line(tmp_path):
    p = tmp_path / "not.duckdb"
    p.write_bytes(b"this is not a database" * 100)
    proc = tk("query", "--db", str(p), "SELECT 1")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    [line] = error_lines(proc.stderr)
    assert str(p) in line
