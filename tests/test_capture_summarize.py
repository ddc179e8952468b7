"""Summaries of timing-only sweeps: stage shares computed from the manifests' stage times."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

# tracekit/capture/ is a top-level folder of the source tree, not part of the installed package
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracekit.capture.manifest import write_json_atomic  # noqa: E402
from tracekit.capture.summarize import main  # noqa: E402


def manifest(d: Path, name: str, **fields) -> None:
    write_json_atomic(d / f"{name}.manifest.json", {"trace_file": None, "layers": 32, **fields})


def test_csv_shares_and_rows(tmp_path, capsys):
    d = tmp_path / "sweep"
    manifest(d, "a_b1_i1_o4", model="a", batch=1, input_len=1, output_len=4,
             kernel_summarization_ms=2.0, kernel_generation_ms=6.0)
    manifest(d, "a_b8_i1_o4", model="a", batch=8, input_len=1, output_len=4,
             kernel_summarization_ms=3.0, kernel_generation_ms=1.0, summarization_ms=30.0, generation_ms=90.0)
    manifest(d, "a_b1_i1_o8", model="a", batch=1, input_len=1, output_len=8)  # a trace run: no stage times
    out = tmp_path / "s.csv"
    assert main([str(d), "--csv", str(out)]) == 0
    rows = list(csv.DictReader(out.open()))
    assert [(r["batch"], r["kernel_gen_ratio"], r["wall_gen_ratio"]) for r in rows] == \
        [("1", "0.75", ""), ("8", "0.25", "0.75")]
    assert "2 runs" in capsys.readouterr().out


def test_nothing_to_summarize_is_an_error(tmp_path, capsys):
    assert main([str(tmp_path), "--csv", str(tmp_path / "x.csv")]) == 1
    assert main([str(tmp_path / "missing"), "--csv", str(tmp_path / "x.csv")]) == 1
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2 and all(e.startswith("tracekit: error: ") for e in err)


def test_recorded_h100_summary_is_consistent():
    # results/h100_stage_share.csv was written by this module from the H100 sweep: every share
    # must be its own stage times' ratio, and the grid complete for each model.
    path = Path(__file__).resolve().parents[1] / "results" / "h100_stage_share.csv"
    rows = list(csv.DictReader(path.open()))
    for r in rows:
        s, g = float(r["kernel_summarization_ms"]), float(r["kernel_generation_ms"])
        assert abs(float(r["kernel_gen_ratio"]) - g / (s + g)) < 1e-3
    per_model = {m: {(r["batch"], r["input_len"], r["output_len"]) for r in rows if r["model"] == m}
                 for m in {r["model"] for r in rows}}
    assert sorted(per_model) == ["gemma-2b", "gemma-7b", "llama2-7b", "llama3-8b"]
    fig6 = {(b, i, o) for b in ("1", "8") for i in ("1", "16", "64", "256") for o in ("4", "16", "64", "256")}
    assert all(fig6 <= cells for cells in per_model.values())
