"""Charts drawn from real imported traces: the data each chart shows is checked against sums
computed here straight from the kernels table, and each chart is rendered by vl-convert."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import polars as pl
import pytest
from click.testing import CliRunner
from conftest import SHARED_META, SHARED_TRACES

import tracekit
from tracekit.errors import TracekitError
from tracekit.outputs import charts
from tracekit.outputs.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def stage_times(db) -> dict[int, dict[str, int]]:
    """Kernel time per run and stage, summed here from the kernels table."""
    out: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for run_id, stage, dur in db.con.execute("SELECT run_id, stage, dur_ns FROM kernels").fetchall():
        out[run_id][stage] += dur
    return out


def gen_ratio(times: dict[str, int]) -> float:
    return times["generation"] / (times["generation"] + times["summarization"])


def svg_text(svg: str) -> str:
    return " ".join(t for t in ET.fromstring(svg).itertext())


def render_svg(chart) -> str:
    import vl_convert as vlc

    return vlc.vegalite_to_svg(charts.to_spec(chart))


@pytest.fixture(scope="module")
def grid_db_path(tmp_path_factory) -> Path:
    """The four real traces imported as one model's 2 × 2 sweep (input 64/128 × output 8/16):
    the simplest honest grid the fixtures allow, one real run per cell."""
    path = tmp_path_factory.mktemp("grid") / "grid.duckdb"
    db = tracekit.open(path)
    cells = [(64, 8), (64, 16), (128, 8), (128, 16)]
    for trace, (i, o) in zip(SHARED_TRACES, cells, strict=True):
        meta = {"model": "m", "batch": "1", "input_len": str(i), "output_len": str(o)}
        assert db.import_paths([trace], meta=meta)[0].status == "imported"
    db.close()
    return path


def test_heatmap_cells_are_the_runs_generation_share(grid_db_path):
    db = tracekit.open(grid_db_path, read_only=True)
    times = stage_times(db)
    meta = {r: (int(i), int(o)) for r, i, o in db.con.execute(
        "SELECT run_id, max(value) FILTER (key = 'input_len'), max(value) FILTER (key = 'output_len') "
        "FROM run_meta GROUP BY run_id").fetchall()}
    expected = {meta[r]: gen_ratio(t) for r, t in times.items()}
    data = charts.heatmap_data(db)
    assert data.notes == []
    got = {(r["input_len"], r["output_len"]): r["gen_ratio"] for r in data.frame.iter_rows(named=True)}
    assert got.keys() == expected.keys() and len(got) == 4
    for cell, ratio in expected.items():
        assert got[cell] == pytest.approx(ratio, rel=1e-12)
    # The numbers are printed in the cells of the rendered chart.
    text = svg_text(render_svg(charts.heatmap_chart(data)))
    for ratio in expected.values():
        assert f"{ratio * 100:.0f}%" in text


def test_heatmap_panels_per_model_and_batch_and_averages_repeats(shared_db_path):
    db = tracekit.open(shared_db_path, read_only=True)
    times = stage_times(db)
    cells: dict[tuple, list[float]] = defaultdict(list)
    for trace in SHARED_TRACES:
        m = SHARED_META[trace.name]
        rid = db.con.execute("SELECT run_id FROM runs WHERE source_name = ?", [trace.name]).fetchall()[0][0]
        key = (m["model"], int(m["batch"]), int(m["input_len"]), int(m["output_len"]))
        cells[key].append(gen_ratio(times[rid]))
    data = charts.heatmap_data(db)
    got = {(r["model"], r["batch"], r["input_len"], r["output_len"]): (r["gen_ratio"], r["n_runs"])
           for r in data.frame.iter_rows(named=True)}
    assert got.keys() == cells.keys()
    for key, ratios in cells.items():
        assert got[key][0] == pytest.approx(sum(ratios) / len(ratios), rel=1e-12)
        assert got[key][1] == len(ratios)
    spec = charts.to_spec(charts.heatmap_chart(data))
    # One panel row per model (no run of a cell differs in layers, dtype or GPU here), one column per batch.
    assert spec["facet"]["row"]["field"] == "panel" and spec["facet"]["column"]["field"] == "batch"
    assert data.frame["panel"].to_list() == data.frame["model"].to_list()


def test_heatmap_names_missing_metadata_instead_of_failing(shared_db_copy):
    db = tracekit.open(shared_db_copy)
    victim = db.con.execute("SELECT min(run_id) FROM runs").fetchall()[0][0]
    db.con.execute("DELETE FROM run_meta WHERE run_id = ? AND key IN ('input_len', 'output_len')", [victim])
    data = charts.heatmap_data(db)
    assert any(n.startswith(f"run {victim} ") and "input_len, output_len" in n for n in data.notes)
    assert victim not in {int(x) for r in data.frame["runs"] for x in r.split(", ")}
    assert f"run {victim} " in svg_text(render_svg(charts.heatmap_chart(data)))
    # No run with the keys at all: the chart says so rather than raising.
    db.con.execute("DELETE FROM run_meta")
    empty = charts.heatmap_data(db)
    assert empty.frame.is_empty()
    assert "no model, batch, input_len, output_len metadata" in svg_text(render_svg(charts.heatmap_chart(empty)))


def test_composition_shares_match_kernels_and_use_the_palette(shared_db_path):
    db = tracekit.open(shared_db_path, read_only=True)
    # Independent bucketing of every measured kernel, as docs/DESIGN.md defines the buckets.
    sums: dict[int, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for run_id, stage, cat, dur in db.con.execute(
        "SELECT run_id, stage, category, dur_ns FROM kernels WHERE stage IN ('summarization', 'generation')"
    ).fetchall():
        if cat in ("GEMM", "GEMV"):
            bucket = ("Sum " if stage == "summarization" else "Gen ") + cat
        else:
            bucket = cat or "Unclassified"
        sums[run_id][bucket] += dur
    data = charts.composition_data(db)
    for run_id, buckets in sums.items():
        rows = data.frame.filter(data.frame["run_id"] == run_id)
        total = sum(buckets.values())
        got = {r["bucket"]: r["share"] for r in rows.iter_rows(named=True) if r["time_ns"] > 0}
        assert got.keys() == buckets.keys()
        for b, t in buckets.items():
            assert got[b] == pytest.approx(t / total, rel=1e-9)
    spec = charts.to_spec(charts.composition_chart(data))
    scale = spec["spec"]["encoding"]["color"]["scale"]
    assert scale["range"] == [charts.PALETTE.get(b) or charts.color_of(b) for b in scale["domain"]]
    # Domain in palette order: the study's buckets first, Unclassified last.
    assert scale["domain"] == sorted(scale["domain"], key=list(charts.PALETTE).index)
    batches = {f"batch {m['batch']}" for m in SHARED_META.values()}
    assert set(data.frame["batch_label"].unique()) == batches
    assert spec["facet"]["column"]["field"] == "batch_label"


def test_palette_is_fixed_per_bucket_across_charts():
    assert list(charts.PALETTE)[:5] == ["Sum GEMM", "Sum GEMV", "Gen GEMM", "Gen GEMV", "ATTN"]
    assert list(charts.PALETTE)[-1] == "Unclassified"
    assert len(set(charts.PALETTE.values())) == len(charts.PALETTE)
    # A category only a user's rules know still gets one colour, the same every time.
    assert charts.color_of("MOE_ROUTER") == charts.color_of("MOE_ROUTER") in charts.EXTRA_COLORS
    a = charts._color_scale(["Unclassified", "ATTN"])
    b = charts._color_scale(["ATTN", "Gen GEMV", "Unclassified"])
    assert dict(zip(a.domain, a.range, strict=True))["ATTN"] == dict(zip(b.domain, b.range, strict=True))["ATTN"]


def kernel_ns_per_step(db) -> tuple[dict[tuple[int, int], int], dict[int, set]]:
    """Independently from the kernels table: measured kernel ns per (run, step), and each run's iterations."""
    per_step: dict[tuple[int, int], int] = defaultdict(int)
    iters: dict[int, set] = defaultdict(set)
    for run_id, it, step, dur in db.con.execute(
        "SELECT run_id, iteration, step, dur_ns FROM kernels "
        "WHERE stage IN ('summarization', 'generation') AND step IS NOT NULL"
    ).fetchall():
        per_step[run_id, step] += dur
        iters[run_id].add(it)
    return per_step, iters


def test_steps_are_kernel_time_per_forward_pass(shared_db_path):
    db = tracekit.open(shared_db_path, read_only=True)
    per_step, iters = kernel_ns_per_step(db)
    data = charts.steps_data(db)
    got = data.frame.group_by(["run_id", "step"]).agg(pl.col("time_ms").sum().alias("ms"))
    got_d = {(r["run_id"], r["step"]): r["ms"] for r in got.iter_rows(named=True)}
    assert got_d.keys() == per_step.keys()
    for key, ns in per_step.items():
        assert got_d[key] == pytest.approx(ns / len(iters[key[0]]) / 1e6, rel=1e-9)
    assert set(data.frame.filter(data.frame["step"] == 0)["stage"]) == {"summarization"}
    assert not set(data.frame.filter(data.frame["step"] > 0)["stage"]) - {"generation"}
    # One run only, as `tracekit chart steps --run N` asks.
    one = charts.steps_data(db, [2])
    assert set(one.frame["run_id"]) == {2}


def test_passes_kernel_time_per_step_and_wall_time_only_when_marked(shared_db_path):
    db = tracekit.open(shared_db_path, read_only=True)
    per_step, iters = kernel_ns_per_step(db)
    data = charts.passes_data(db)
    kernel = data.frame.filter(pl.col("measure") == "kernel time")
    got = {(r["run_id"], r["step"]): r["ms"] for r in kernel.iter_rows(named=True)}
    assert got.keys() == per_step.keys()
    for key, ns in per_step.items():
        assert got[key] == pytest.approx(ns / len(iters[key[0]]) / 1e6, rel=1e-9)
    marked = {r for r, m in db.con.execute("SELECT run_id, stage_method FROM runs").fetchall()
              if m and m.startswith("markers")}
    walled = set(data.frame.filter(pl.col("measure") == "wall time")["run_id"])
    assert walled == marked
    assert ET.fromstring(render_svg(charts.passes_chart(data))).tag.endswith("svg")


def test_chart_command_writes_png_svg_html(shared_db_path, tmp_path):
    runner = CliRunner()
    for name, suffix in [("heatmap", "png"), ("composition", "svg"), ("steps", "html")]:
        out = tmp_path / f"{name}.{suffix}"
        res = runner.invoke(main, ["chart", name, "--db", str(shared_db_path), "--out", str(out)])
        assert res.exit_code == 0, res.output
        body = out.read_bytes()
        if suffix == "png":
            assert body.startswith(PNG_MAGIC) and len(body) > 10_000
        elif suffix == "svg":
            assert ET.fromstring(body).tag.endswith("svg")
        else:
            text = body.decode()
            assert "vegaEmbed" in text and "<script src" not in text
    res = runner.invoke(main, ["chart", "heatmap", "--db", str(shared_db_path), "--out", str(tmp_path / "x.gif")])
    assert res.exit_code == 2 and "x.gif" in res.output


def test_chart_command_bad_database_is_one_line(tmp_path):
    bad = tmp_path / "not.duckdb"
    bad.write_text("this is not a database")
    res = CliRunner().invoke(main, ["chart", "heatmap", "--db", str(bad), "--out", str(tmp_path / "h.png")])
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("tracekit: error: ") and str(bad) in lines[0]
    assert "Traceback" not in res.output


def test_diff_between_runs_and_groups(shared_db_path, tmp_path):
    db = tracekit.open(shared_db_path, read_only=True)
    # Group by metadata: which runs are llama2-7b comes from the fixtures' README, not the code.
    llama2 = sorted(
        db.con.execute("SELECT run_id FROM runs WHERE source_name = ?", [t.name]).fetchall()[0][0]
        for t in SHARED_TRACES if SHARED_META[t.name]["model"] == "llama2-7b"
    )
    from tracekit.outputs import diff

    assert diff.resolve(db, "model=llama2-7b").run_ids == llama2
    assert diff.resolve(db, "model=llama2-7b,batch=1").run_ids == llama2
    with pytest.raises(TracekitError, match="matches no run"):
        diff.resolve(db, "model=nope")
    a, b = diff.resolve(db, "model=llama2-7b"), diff.resolve(db, "model=llama3-8b")
    buckets = diff.bucket_deltas(db, a, b)
    shares: dict[int, dict[str, float]] = defaultdict(dict)
    for run_id, bucket, share in db.con.execute("SELECT run_id, bucket, share FROM composition").fetchall():
        shares[run_id][bucket] = share
    for row in buckets.iter_rows(named=True):
        mean_a = sum(shares[r].get(row["bucket"], 0.0) for r in a.run_ids) / len(a.run_ids)
        mean_b = sum(shares[r].get(row["bucket"], 0.0) for r in b.run_ids) / len(b.run_ids)
        assert row["delta_share"] == pytest.approx(mean_b - mean_a, abs=1e-12)
    assert abs(buckets["delta_share"].sum()) < 1e-9  # shares sum to 1 on both sides

    out = tmp_path / "diff.svg"
    res = CliRunner().invoke(main, ["diff", "--db", str(shared_db_path), "model=llama2-7b", "model=llama3-8b",
                                    "--format", "csv", "--out", str(out), "--top", "5"])
    assert res.exit_code == 0, res.output
    assert f"A = model=llama2-7b (runs {','.join(map(str, llama2))})" in res.output
    assert ET.fromstring(out.read_text()).tag.endswith("svg")
    res = CliRunner().invoke(main, ["diff", "--db", str(shared_db_path), "1", "2", "--top", "3"])
    assert res.exit_code == 0, res.output
    assert "delta pp" in res.output and "A = 1\nB = 2" in res.output
    res = CliRunner().invoke(main, ["diff", "--db", str(shared_db_path), "1", "999"])
    assert res.exit_code == 1 and "no run 999" in res.output


def test_spec_survives_hostile_names_as_data():
    # Kernel names are data in the spec, never markup: they must come back unchanged from JSON.
    name = '</script><script>alert(1)</script>"\'&'
    frame = pl.DataFrame({"run_id": [1], "run": ["run 1"], "short_name": [name], "category": ["GEMM"],
                          "bucket": ["GEMM"], "n": [1], "share": [1.0], "time_ms": [1.0]})
    spec = charts.to_spec(charts.top_kernels_chart(charts.ChartData(frame)))
    values = [v for ds in spec["datasets"].values() for v in ds]
    assert values[0]["short_name"] == name
    assert json.loads(json.dumps(spec))["datasets"] == spec["datasets"]


def test_per_run_charts_cap_the_runs_they_draw_and_say_so(shared_db_path):
    db = tracekit.open(shared_db_path, read_only=True)
    n_runs = db.con.execute("SELECT count(*) FROM runs").fetchall()[0][0]
    chart, data = charts.build(db, "steps", max_runs=2)
    assert sorted(set(data.frame["run_id"])) == sorted(
        r for (r,) in db.con.execute("SELECT run_id FROM runs ORDER BY run_id LIMIT 2").fetchall())
    assert f"{n_runs - 2} more runs not drawn here" in data.hint
    assert data.hint in svg_text(render_svg(chart))
    _, whole = charts.build(db, "steps", max_runs=n_runs)
    assert whole.hint == "" and whole.frame["run_id"].n_unique() == n_runs
