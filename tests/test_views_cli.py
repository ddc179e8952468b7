"""The `stages`, `composition`, `steps` and `top` commands, and the shared output formatter."""

from __future__ import annotations

import io
import json

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import NSYS_L2, SHARED_TRACES
from test_stages import truth

from tracekit.outputs.cli import main
from tracekit.outputs.format import print_frame


def invoke(*args: str):
    return CliRunner().invoke(main, list(args))


def test_stages_csv_matches_trace(shared_db_path):
    r = invoke("stages", "--db", str(shared_db_path), "--format", "csv")
    assert r.exit_code == 0, r.output
    df = pl.read_csv(io.StringIO(r.stdout))
    assert df["source_name"].to_list() == [p.name for p in SHARED_TRACES]
    for path, got in zip(SHARED_TRACES, df["gen_ratio"], strict=True):
        s = sum(d for st, *_, d, _ in truth(path) if st == "summarization")
        g = sum(d for st, *_, d, _ in truth(path) if st == "generation")
        assert got == pytest.approx(round(g / (s + g), 4))
    assert df["model"].to_list() == ["llama2-7b", "llama3-8b", "llama2-7b", "llama3-8b"]


def test_stages_one_run_json(shared_db_path):
    r = invoke("stages", "--db", str(shared_db_path), "--run", "3", "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert [row["run_id"] for row in rows] == [3]
    assert rows[0]["stage_method"] == "markers:nvtx" and rows[0]["iterations"] == 2


def test_top_n_per_run(shared_db_path):
    r = invoke("top", "--db", str(shared_db_path), "-n", "3", "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    per_run = {}
    for row in rows:
        per_run.setdefault(row["run_id"], []).append(row["time_ms"])
    assert sorted(per_run) == [1, 2, 3, 4]
    assert all(len(v) == 3 and v == sorted(v, reverse=True) for v in per_run.values())


def test_steps_table_lists_every_pass(shared_db_path):
    r = invoke("steps", "--db", str(shared_db_path), "--run", "3", "--format", "csv")
    assert r.exit_code == 0, r.output
    df = pl.read_csv(io.StringIO(r.stdout))
    assert df.height == 16
    assert df["stage"].to_list() == ["warmup"] * 8 + ["summarization"] + ["generation"] * 7
    n = sum(1 for st, it, *_ in truth(NSYS_L2) if st == "summarization")
    assert df.filter(pl.col("stage") == "summarization")["n_kernels"].to_list() == [n]


def test_composition_markdown(shared_db_path):
    r = invoke("composition", "--db", str(shared_db_path), "--run", "1", "--format", "markdown")
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    assert header == ["run_id", "source_name", "scope", "bucket", "time_ms", "share"]
    rows = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert {row[2] for row in rows} == {"measured stages"}
    assert [row[3] for row in rows[:5]] == ["Sum GEMM", "Sum GEMV", "Gen GEMM", "Gen GEMV", "ATTN"]
    assert sum(float(row[5]) for row in rows) == pytest.approx(1.0, abs=1e-3)


def test_unknown_run_is_one_line_error(shared_db_path):
    r = invoke("steps", "--db", str(shared_db_path), "--run", "99")
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [f"tracekit: error: {shared_db_path}: no run 99 (see `tracekit runs`)"]


def test_missing_database_is_one_line_error(tmp_path):
    r = invoke("stages", "--db", str(tmp_path / "none.duckdb"))
    assert r.exit_code == 1
    assert len(r.stderr.strip().splitlines()) == 1 and "none.duckdb" in r.stderr
    assert not (tmp_path / "none.duckdb").exists()


@pytest.mark.parametrize("fmt", ["table", "csv", "json", "markdown"])
def test_print_frame_formats(capsys, fmt):
    df = pl.DataFrame({"kernel": ["a_very_long_kernel_name_" * 8, "b"], "time_ms": [1.5, 2.0]})
    print_frame(df, fmt)
    out = capsys.readouterr().out
    if fmt == "csv":
        assert pl.read_csv(io.StringIO(out)).equals(df)
    elif fmt == "json":
        assert json.loads(out) == df.to_dicts()
    else:
        # Whole names, never elided or wrapped over lines.
        assert df["kernel"][0] in out
        assert (out.splitlines()[0].startswith("| kernel")) == (fmt == "markdown")


def test_print_frame_rejects_unknown_format():
    with pytest.raises(ValueError, match="unknown output format"):
        print_frame(pl.DataFrame({"a": [1]}), "xml")


def test_foreign_duckdb_file_is_one_line_error(tmp_path):
    import duckdb

    path = tmp_path / "other.duckdb"
    duckdb.connect(str(path)).execute("CREATE TABLE t (a INTEGER)").close()
    r = invoke("top", "--db", str(path))
    assert r.exit_code == 1
    assert r.stderr.strip().splitlines() == [
        f"tracekit: error: {path}: not a tracekit database (missing tables: runs, run_meta, kernels)"]
