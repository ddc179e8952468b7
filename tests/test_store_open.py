"""Opening a database: what every command pays before its own work (issue 15, start-up).

The expected column types come from a database made from schema.sql by DuckDB itself; the
on-demand (roofline) views must give what they give when made on open."""

from __future__ import annotations

import duckdb
import pytest
from click.testing import CliRunner
from conftest import NSYS_L2, ROOT

import tracekit
from tracekit import store
from tracekit.outputs.cli import main
from tracekit.views import create_views, on_demand_names, view_names

ROOFLINE = ("run_peaks", "op_work", "kernel_work", "roofline", "decode_ideal", "memop_work")


def _temp_objects(con: duckdb.DuckDBPyConnection) -> set[str]:
    return {r[0] for r in con.execute(
        "SELECT view_name FROM duckdb_views() WHERE temporary "
        "UNION ALL SELECT table_name FROM duckdb_tables() WHERE temporary").fetchall()}


def test_expected_columns_read_from_the_schema_text_are_duckdbs():
    scratch = duckdb.connect(":memory:")
    scratch.execute((ROOT / "tracekit" / "schema.sql").read_text())
    views = {r[0] for r in scratch.execute("SELECT view_name FROM duckdb_views() WHERE NOT internal").fetchall()}
    made: dict[str, dict[str, str]] = {}
    for table, column, dtype in scratch.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() WHERE NOT internal").fetchall():
        if table not in views:
            made.setdefault(table, {})[column] = dtype
    assert "kernel_rows" in made and "runs" in made
    assert store._expected_columns() == made


def test_on_demand_names_are_the_roofline_views_and_their_peak_tables():
    assert set(on_demand_names()) == {*ROOFLINE, "gpu_peaks", "peak_override"}
    assert set(ROOFLINE) <= set(view_names())


def test_open_leaves_the_roofline_views_until_a_query_names_one(shared_db_path):
    db = tracekit.open(shared_db_path, read_only=True)
    try:
        con = db.connection_for("SELECT count(*) FROM runs")
        made = _temp_objects(con)
        assert {"stage_ratio", "composition", "steps", "top_kernels", "comm_ops", "kernels"} <= made
        assert not made & set(on_demand_names())
        # Named in any case, the views (and the peak tables they read) are there when the query runs.
        lazily = db.arrow("SELECT * FROM Roofline ORDER BY ALL")
        assert set(on_demand_names()) <= _temp_objects(con)
    finally:
        db.close()
    # The same rows as a connection that made every view on open.
    con = store.connect(shared_db_path, read_only=True)
    try:
        create_views(con)
        eager = con.sql("SELECT * FROM roofline ORDER BY ALL").to_arrow_table()
    finally:
        con.close()
    assert lazily.num_rows > 0
    assert lazily.schema == eager.schema
    # Sums of doubles may differ in their last bits with the order DuckDB's threads add them.
    for got, want in zip(lazily.to_pylist(), eager.to_pylist(), strict=True):
        assert got.keys() == want.keys()
        for key, value in got.items():
            assert value == pytest.approx(want[key], rel=1e-9) if isinstance(value, float) else value == want[key]


def test_the_connection_handed_out_has_every_view(shared_db_path):
    with tracekit.open(shared_db_path, read_only=True) as db:
        made = _temp_objects(db.con)
        assert set(view_names()) <= made
        assert db.con.execute("SELECT count(*) FROM gpu_peaks").fetchall()[0][0] > 0


@pytest.mark.parametrize("sql", ["SELECT count(*) AS n FROM kernel_work", "select count(*) as n from DECODE_IDEAL"])
def test_cli_query_reaches_an_on_demand_view(shared_db_path, sql):
    out = CliRunner().invoke(main, ["query", "--db", str(shared_db_path), "--format", "csv", sql])
    assert out.exit_code == 0, out.output
    assert out.output.splitlines()[0] == "n"
    assert int(out.output.splitlines()[1]) > 0


def test_a_new_database_makes_its_views_when_sql_first_names_one(tmp_path):
    db = tracekit.open(tmp_path / "new.duckdb")
    try:
        # Nothing to check in a database this open made, and an import reads no view.
        assert not _temp_objects(db.connection_for("SELECT 1")) & set(view_names())
        [result] = db.import_paths([NSYS_L2])
        assert result.status == "imported", result.error
        assert not _temp_objects(db.connection_for("SELECT 1")) & set(view_names())
        ratio = db.arrow("SELECT run_id, gen_ratio FROM stage_ratio").to_pylist()
        assert set(view_names()) <= _temp_objects(db.connection_for("SELECT 1"))
    finally:
        db.close()
    with tracekit.open(tmp_path / "new.duckdb", read_only=True) as again:
        assert again.arrow("SELECT run_id, gen_ratio FROM stage_ratio").to_pylist() == ratio
    assert ratio[0]["gen_ratio"] > 0


def test_an_on_demand_view_that_cannot_bind_is_one_line_when_first_used(shared_db_copy):
    # A column only the roofline reads, gone: the other commands still read the database, and the
    # roofline says why it cannot in one line, as an open did when every view was made on open.
    con = duckdb.connect(str(shared_db_copy))
    con.execute("ALTER TABLE memops DROP COLUMN copy_kind")
    con.close()
    runner = CliRunner()
    stages = runner.invoke(main, ["stages", "--db", str(shared_db_copy), "--format", "csv"])
    assert stages.exit_code == 0, stages.output
    roofline = runner.invoke(main, ["roofline", "--db", str(shared_db_copy)])
    assert roofline.exit_code == 1
    [line] = roofline.stderr.strip().splitlines()
    assert line.startswith(f"tracekit: error: {shared_db_copy}: not a tracekit database, or one from an "
                           "incompatible version (") and "copy_kind" in line


def test_long_run_filters_hold_whatever_is_asked_after():
    """store.run_filter puts a long list of runs in a temp table; a second long list must not
    change what the first condition selects (classify builds several before using them)."""
    con = duckdb.connect(":memory:")
    con.execute("CREATE TABLE t AS SELECT range::INTEGER AS run_id FROM range(1000)")
    first, second = list(range(0, 400, 2)), list(range(500, 900, 3))
    where_first = store.run_filter(con, first)
    where_second = store.run_filter(con, second)
    assert store.run_filter(con, list(reversed(first))) == where_first  # same runs, same table
    ids = lambda where: sorted(r[0] for r in con.execute(f"SELECT run_id FROM t WHERE {where}").fetchall())  # noqa: E731
    assert ids(where_first) == first
    assert ids(where_second) == second
    assert ids(store.run_filter(con, [3, 7, 7])) == [3, 7]
