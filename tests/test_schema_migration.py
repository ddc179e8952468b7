"""The narrow kernel tables: databases of tracekit 0.1 (one wide `kernels` table) are upgraded in
place, and verdicts kept per (run, context) give what a fresh import gives after any rules edit."""

from __future__ import annotations

import duckdb
from conftest import SHARED_META, SHARED_TRACES, tk
from test_classify import RULES_FIXTURES

import tracekit
from tracekit.enrich.classify import classify
from tracekit.enrich.rules import RuleSet

ALL = "SELECT * FROM kernels ORDER BY run_id, kernel_id"


def _make_v1(path) -> list[tuple]:
    """Rewrite a database into tracekit 0.1's layout: `kernels` a table with the view's columns."""
    con = duckdb.connect(str(path))
    rows = con.execute(ALL).fetchall()
    con.execute("CREATE TABLE kernels_v1 AS SELECT * FROM kernels")
    con.execute("DROP VIEW kernels")
    for t in ("kernel_rows", "kernel_verdicts", "kernel_contexts", "kernel_names"):
        con.execute(f"DROP TABLE {t}")
    con.execute("ALTER TABLE kernels_v1 RENAME TO kernels")
    con.close()
    return rows


def test_a_v1_database_is_read_as_is_and_upgraded_on_write(shared_db_copy):
    before = _make_v1(shared_db_copy)
    assert len(before) > 5000
    # Read-only: no upgrade (it would need a write); the views read the old table.
    ro = tracekit.open(shared_db_copy, read_only=True)
    assert ro.con.execute("SELECT count(*) FROM composition").fetchall()[0][0] > 0
    ro.close()
    proc = tk("runs", "--db", str(shared_db_copy))  # read-only command: still the old layout
    assert proc.returncode == 0, proc.stderr
    con = duckdb.connect(str(shared_db_copy), read_only=True)
    assert con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'kernels'"
                       ).fetchall() == [("BASE TABLE",)]
    con.close()

    proc = tk("classify", "--db", str(shared_db_copy))  # writes: upgrades first, in one transaction
    assert proc.returncode == 0, proc.stderr
    assert "upgraded" in proc.stderr and "4 run(s)" in proc.stderr
    con = duckdb.connect(str(shared_db_copy), read_only=True)
    assert con.execute("SELECT table_type FROM information_schema.tables WHERE table_name = 'kernels'"
                       ).fetchall() == [("VIEW",)]
    assert con.execute(ALL).fetchall() == before  # every column of every kernel, enrichment included
    # Each long name is stored once.
    n_names, n_distinct = con.execute(
        "SELECT (SELECT count(*) FROM kernel_names), (SELECT count(DISTINCT (name, short_name)) FROM kernels)"
    ).fetchall()[0]
    assert n_names == n_distinct
    con.close()


def test_reclassifying_after_rules_edits_equals_a_fresh_import(shared_db_copy, tmp_path):
    """Verdicts are rewritten only where they change; whatever the history of rules edits, the
    kernels end up as classifying a fresh import once with the final rules leaves them (split-K
    reduces included)."""
    extra = RuleSet.load([RULES_FIXTURES / "extra"], include_user=False)
    no_skinny = RuleSet.load(include_user=False)
    no_skinny.rules = [r for r in no_skinny.rules if r.id != "cublas.nvjet-skinny"]
    final = RuleSet.load(include_user=False).with_gemv_max_m(0)

    db = tracekit.open(shared_db_copy)
    history = []
    for rules in (extra, no_skinny, final):
        db.con.execute("BEGIN TRANSACTION")
        classify(db.con, None, rules)
        db.con.execute("COMMIT")
        history.append(db.con.execute("SELECT category, count(*) FROM kernels GROUP BY 1 ORDER BY 1").fetchall())
    assert history[0] != history[1] != history[2]  # each edit changed something
    got = db.con.execute(ALL).fetchall()
    db.close()

    fresh = tracekit.open(tmp_path / "fresh.duckdb")
    for trace in SHARED_TRACES:  # the same run ids and metadata (a decode pass's batch decides), in order
        assert fresh.import_paths([trace], meta=SHARED_META[trace.name])[0].status == "imported"
    fresh.con.execute("BEGIN TRANSACTION")
    classify(fresh.con, None, final)
    fresh.con.execute("COMMIT")
    assert fresh.con.execute(ALL).fetchall() == got
    fresh.close()
