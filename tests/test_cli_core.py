"""`meta`, `query` and the analysis commands as a user runs them (real CLI, real DuckDB files)."""

from __future__ import annotations

import csv
import io
import json

import duckdb
import pytest
from conftest import KINETO_L2, tk

import tracekit
from tracekit.outputs.format import csv_safe, terminal_safe


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tracekit: error:")]


# ---- meta (issue 11: `meta RUN` crashed on duckdb 2 with an unfinished result) -----------------

def test_meta_shows_then_sets_a_runs_metadata(shared_db_copy):
    run = 1
    want = duckdb.connect(str(shared_db_copy), read_only=True).execute(
        "SELECT key, value FROM run_meta WHERE run_id = ? ORDER BY key", [run]).fetchall()
    assert want  # the shared database is imported with --meta-like metadata
    show = tk("meta", str(run), "--db", str(shared_db_copy))
    assert show.returncode == 0, show.stderr
    assert "Traceback" not in show.stderr
    for key, value in want:
        assert any(key in line and value in line for line in show.stdout.splitlines()), (key, value)

    put = tk("meta", str(run), "gpu_clock=1980", "model=renamed", "--db", str(shared_db_copy))
    assert put.returncode == 0, put.stderr
    assert "renamed" in put.stdout and "1980" in put.stdout
    con = duckdb.connect(str(shared_db_copy), read_only=True)
    got = dict(con.execute("SELECT key, value FROM run_meta WHERE run_id = ?", [run]).fetchall())
    sources = dict(con.execute("SELECT key, source FROM run_meta WHERE run_id = ?", [run]).fetchall())
    con.close()
    assert got["model"] == "renamed" and got["gpu_clock"] == "1980"
    assert sources["model"] == "cli"


def test_meta_of_a_missing_run_is_one_line(shared_db_path):
    proc = tk("meta", "99", "--db", str(shared_db_path))
    assert proc.returncode == 1
    assert _errors(proc.stderr) == [f"tracekit: error: {shared_db_path}: no run 99"]


# ---- an empty database (issue 11) ----------------------------------------------------------------

@pytest.mark.parametrize("args", [["stages"], ["composition"], ["top"], ["steps", "--run", "1"],
                                  ["chart", "composition", "--out", "c.svg"], ["diff", "1", "2"]])
def test_analysis_of_a_database_without_runs_says_so(tmp_path, args):
    db = tmp_path / "empty.duckdb"
    tracekit.open(db).close()
    proc = tk(*args, "--db", str(db))
    assert proc.returncode == 1, proc.stdout
    assert _errors(proc.stderr) == [f"tracekit: error: {db}: no runs in the database: import traces first "
                                    f"(tracekit import TRACE... --db {db})"]
    assert proc.stdout == ""


def test_report_of_a_database_without_runs_says_so(tmp_path):
    db = tmp_path / "empty.duckdb"
    tracekit.open(db).close()
    proc = tk("report", "--db", str(db), "--out", str(tmp_path / "r"))
    assert proc.returncode == 1
    assert len(_errors(proc.stderr)) == 1 and "no runs in the database" in proc.stderr


# ---- query: every result prints in every format (issue 17) -------------------------------------

QUERIES = {
    "duplicate names": ("SELECT * FROM runs a JOIN runs b USING (run_id) WHERE a.run_id = 1", None),
    "interval": ("SELECT INTERVAL 3 DAY AS i, INTERVAL '1 month 2 hours' AS j", ["3 days", "1 month 02:00:00"]),
    "list": ("SELECT [1, 2, 3] AS l, ['x', 'y'] AS s, {'a': 1, 'b': [2]} AS st", ["[1, 2, 3]", "[x, y]"]),
    "infinity": ("SELECT 'infinity'::TIMESTAMP AS t, '-infinity'::DATE AS d", ["infinity", "-infinity"]),
    "union": ("SELECT union_value(num := 2)::UNION(num INTEGER, str VARCHAR) AS u", ["2"]),
    "map and array": ("SELECT MAP {'k': 1} AS m, [1, 2]::INTEGER[2] AS a", ["{k=1}", "[1, 2]"]),
    "blob, uuid, enum, time": ("SELECT 'ab'::BLOB AS b, '00000000-0000-0000-0000-000000000001'::UUID AS u, "
                               "'x'::ENUM('x', 'y') AS e, TIME '12:00:00' AS t", ["ab", "x", "12:00:00"]),
    "huge sums": ("SELECT sum(dur_ns) AS s, 123456789012345678901234::HUGEINT AS h FROM kernels", None),
    "NULL and NaN": ("SELECT NULL AS n, 'nan'::DOUBLE AS x, 'inf'::DOUBLE AS y", None),
    "no rows": ("SELECT run_id FROM runs WHERE false", None),
    "a pragma": ("PRAGMA version", None),
}


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "markdown"])
@pytest.mark.parametrize("name", list(QUERIES))
def test_query_prints_any_result_in_every_format(shared_db_path, name, fmt):
    sql, shown = QUERIES[name]
    proc = tk("query", "--db", str(shared_db_path), "--format", fmt, sql)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "panicked" not in proc.stderr
    for text in shown or []:
        assert text in proc.stdout, (text, proc.stdout)
    if fmt == "json":
        json.loads(proc.stdout)
    if fmt == "csv" and name != "no rows":
        rows = list(csv.reader(io.StringIO(proc.stdout)))
        assert len(rows) >= 2 and len(set(rows[0])) == len(rows[0])  # header names unique


def test_query_duplicate_columns_keep_every_value(shared_db_path):
    proc = tk("query", "--db", str(shared_db_path), "--format", "json",
              "SELECT 1 AS a, 2 AS a, 3 AS a")
    assert proc.returncode == 0, proc.stderr
    [row] = json.loads(proc.stdout)
    assert sorted(row.values()) == [1, 2, 3] and "a" in row


@pytest.mark.parametrize("sql", ["", "   ", "/* only a comment */"])
def test_query_without_a_result_is_one_line(shared_db_path, sql):
    proc = tk("query", "--db", str(shared_db_path), sql)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert len(_errors(proc.stderr)) == 1


def test_query_interrupted_exits_130_without_a_traceback(shared_db_path):
    import signal
    import subprocess
    import sys
    import time

    from conftest import ROOT

    proc = subprocess.Popen(
        [sys.executable, "-m", "tracekit.outputs.cli", "query", "--db", str(shared_db_path),
         "SELECT sum(hash(range)) FROM range(1000000000000)"],  # hours: nothing folds it away
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    time.sleep(4)  # started, and inside DuckDB
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()  # the query ran on: the test fails, and leaves nothing running
        out, err = proc.communicate()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert _errors(err) == ["tracekit: error: query: interrupted"]


# ---- strings from a trace on a terminal and in CSV (issue 17) -----------------------------------

def test_terminal_and_csv_escaping_rules():
    assert terminal_safe("a\x1b[2Jb\x07\n\t\x9b\u202e") == "a\\x1b[2Jb\\x07\\n\\t\\x9b\\u202e"
    assert terminal_safe("plain ümlaut – ok") == "plain ümlaut – ok"
    for formula in ("=HYPERLINK(\"http://x\")", "+1+2", "-2+3", "@SUM(A1)"):
        assert csv_safe(formula) == "'" + formula
    assert csv_safe("a\nb\tc") == "a\nb\tc"  # CSV quotes these; they stay data
    assert csv_safe("x\x1by") == "x\\x1by"
    assert csv_safe("gemm=1") == "gemm=1"


def test_hostile_metadata_is_escaped_on_the_terminal_and_neutral_in_csv(tmp_path):
    db = tmp_path / "h.duckdb"
    hostile = "\x1b]0;pwned\x07\x1b[2J=HYPERLINK(\"http://evil\")"
    proc = tk("import", str(KINETO_L2), "--db", str(db), "--meta", f"model={hostile}")
    assert proc.returncode == 0, proc.stderr
    sql = "SELECT value FROM run_meta WHERE key = 'model'"
    table = tk("query", "--db", str(db), sql)
    assert table.returncode == 0 and "\x1b" not in table.stdout and "\x07" not in table.stdout
    assert "\\x1b]0;pwned\\x07" in table.stdout
    got = tk("query", "--db", str(db), "--format", "csv", "SELECT value, 'ok' AS b FROM run_meta WHERE key = 'model'")
    [header, row] = list(csv.reader(io.StringIO(got.stdout)))
    assert header == ["value", "b"] and "\x1b" not in row[0] and row[1] == "ok"
    # The cell does not start a formula (it starts with the escaped ESC); a bare formula gets a quote.
    bare = tk("query", "--db", str(db), "--format", "csv", "SELECT '=1+1' AS f")
    assert list(csv.reader(io.StringIO(bare.stdout)))[1] == ["'=1+1"]
    # JSON keeps the value, as JSON escapes it.
    js = tk("query", "--db", str(db), "--format", "json", sql)
    assert json.loads(js.stdout) == [{"value": hostile}] and "\x1b" not in js.stdout
