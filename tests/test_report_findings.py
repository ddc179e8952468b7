"""Issue 16: the report leads with what it found, each figure linked to the table it comes from;
later sections (roofline, ranks) plug in through SECTION_PROVIDERS. Expected values are summed here
from the kernels table and the traces' capture manifests."""

from __future__ import annotations

import json
import re
from collections import defaultdict
from html.parser import HTMLParser
from pathlib import Path

import polars as pl
import pytest
from conftest import FIXTURES

import tracekit
from tracekit.outputs import findings, report
from tracekit.outputs.report import SectionProvider, write_report

LLAMA3_B64 = FIXTURES / "h100" / "llama3-8b-2L_b64_i64_o8.pt.trace.json.gz"
LLAMA3_B1 = FIXTURES / "h100" / "llama3-8b-2L_b1_i64_o8.pt.trace.json.gz"


@pytest.fixture(scope="module")
def db_path(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("find") / "f.duckdb"
    db = tracekit.open(path)
    for t in (LLAMA3_B1, LLAMA3_B64):
        assert db.import_paths([t])[0].status == "imported"
    db.close()
    return path


def _expected(db) -> dict[str, dict]:
    """Per source file: generation share and largest study bucket, from the kernels table."""
    out: dict[str, dict] = {}
    rows = db.con.execute("SELECT r.source_name, k.stage, k.category, k.dur_ns FROM kernels k "
                          "JOIN runs r USING (run_id)").fetchall()
    stage: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    bucket: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, st, cat, dur in rows:
        stage[name][st] += dur
        if st in ("summarization", "generation"):
            b = cat or "Unclassified"
            if cat in ("GEMM", "GEMV"):
                b = ("Sum " if st == "summarization" else "Gen ") + cat
            bucket[name][b] += dur
    for name in stage:
        s, g = stage[name]["summarization"], stage[name]["generation"]
        out[name] = {"gen": g / (s + g), "largest": max(bucket[name].items(), key=lambda kv: kv[1])[0]}
    return out


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.h2: list[str] = []
        self.ids: set[str] = set()
        self.hrefs: list[str] = []
        self._in_h2 = False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href", "").startswith("#"):
            self.hrefs.append(a["href"][1:])
        self._in_h2 = tag == "h2"

    def handle_data(self, data):
        if self._in_h2:
            self.h2.append(data)
            self._in_h2 = False


def test_report_leads_with_findings_linked_to_tables(db_path, tmp_path):
    db = tracekit.open(db_path, read_only=True)
    expected = _expected(db)
    index = write_report(db, tmp_path / "out", images=False)
    html_text = index.read_text()
    p = _Text()
    p.feed(html_text)
    assert p.h2[0] == "What this data says"  # before every table and chart
    assert not set(p.hrefs) - p.ids  # every link (findings' sources included) has its anchor
    blocks = findings.findings(db)
    by_title = {b.title: b for b in blocks}
    for trace in (LLAMA3_B1, LLAMA3_B64):
        m = json.loads((trace.parent / (trace.name.split(".")[0] + ".manifest.json")).read_text())
        block = next(b for t, b in by_title.items() if f"b{m['batch']} · i{m['input_len']}" in t)
        text = " ".join(i.text for i in block.items)
        assert f"Generation is {expected[trace.name]['gen']:.1%}" in text
        assert f"Largest bucket: {expected[trace.name]['largest']}," in text
        assert "Summarization: " in text and "Generation: " in text and "Stages decided by markers" in text
        assert all(set(i.sources) <= {"stage_ratio", "composition", "runs"} for i in block.items)
        assert f"Generation is {expected[trace.name]['gen']:.1%}" in html_text
    # The whole set: one sentence per batch with that batch's share.
    first = blocks[0]
    assert first.title == "All 2 runs"
    shares = first.items[0].text
    for trace in (LLAMA3_B1, LLAMA3_B64):
        assert f"{expected[trace.name]['gen']:.1%} at batch" in shares


def test_stage_bound_reads_the_gpu_and_host_columns():
    # The stages helper's columns (gpu_busy_*, gpu_span_*, host_*) take precedence when present.
    row = {"generation_ns": 5_000_000, "gpu_busy_generation_ns": 4_000_000, "gpu_span_generation_ns": 40_000_000,
           "host_generation_ns": 43_000_000, "summarization_ns": 7_600_000,
           "gpu_busy_summarization_ns": 7_500_000, "gpu_span_summarization_ns": 8_000_000,
           "host_summarization_ns": 7_100_000}
    assert findings.stage_bound(row, "generation").verdict == "host-bound"
    assert "of a 43.00 ms host-side extent" in findings.stage_bound(row, "generation").text
    s = findings.stage_bound(row, "summarization")
    assert s.verdict == "GPU-bound" and "GPU busy 7.50 ms of a 8.00 ms GPU span" in s.text
    # Busy under GPU_BOUND of the span, but the span outlasts the host's extent: the host ran ahead.
    ahead = {"gpu_busy_summarization_ns": 7_600_000, "gpu_span_summarization_ns": 9_660_000,
             "host_summarization_ns": 7_110_000}
    a = findings.stage_bound(ahead, "summarization")
    assert a.verdict == "GPU-bound" and "the host finished 2.55 ms before the GPU" in a.text
    mid = {"gpu_busy_summarization_ns": 6_000_000, "gpu_span_summarization_ns": 9_000_000,
           "host_summarization_ns": 10_000_000}
    assert findings.stage_bound(mid, "summarization").verdict == "neither clearly"
    # Today's columns: kernel time against the wall (marker) extent; none at all: unknown, said why.
    assert findings.stage_bound({"generation_ns": 5, "wall_generation_ns": 50}, "generation").verdict == "host-bound"
    unknown = findings.stage_bound({"generation_ns": 5}, "generation")
    assert unknown.verdict == "unknown" and "no host-side or GPU extent" in unknown.text


def test_section_providers_plug_in_and_a_failing_one_costs_its_section(db_path, tmp_path):
    db = tracekit.open(db_path, read_only=True)

    def kernel_counts(d):
        return {"kernel_counts": d.query("SELECT run_id, count(*) AS n FROM kernels GROUP BY 1 ORDER BY 1")}

    def broken(d):
        raise RuntimeError("no peaks measured")

    providers = [SectionProvider("extra", "Extra section", tables=kernel_counts),
                 SectionProvider("roofline", "Roofline", tables=broken)]
    index = write_report(db, tmp_path / "out", images=False, providers=providers)
    html_text = index.read_text()
    assert 'id="sec-extra"' in html_text and 'id="tab-kernel_counts"' in html_text
    counts = pl.read_csv(tmp_path / "out" / "kernel_counts.csv")
    truth = dict(db.con.execute("SELECT run_id, count(*) FROM kernels GROUP BY 1").fetchall())
    assert dict(counts.iter_rows()) == truth
    assert re.search(r'id="sec-roofline".*could not be made: RuntimeError: no peaks measured', html_text, re.S)
    assert [p.name for p in report.SECTION_PROVIDERS] == ["roofline", "ranks"]  # untouched by passing providers


def test_the_roofline_section_is_in_the_default_report(db_path, tmp_path):
    db = tracekit.open(db_path, read_only=True)
    index = write_report(db, tmp_path / "out", images=False)
    html_text = index.read_text()
    assert 'id="sec-roofline"' in html_text and "could not be made" not in html_text
    assert 'id="tab-roofline"' in html_text and (tmp_path / "out" / "roofline.csv").exists()


def test_csv_cells_that_spreadsheets_run_are_text(db_path, tmp_path):
    """Issue 17 (low): a kernel name like `=HYPERLINK(...)` is written so a spreadsheet shows it."""
    frame = pl.DataFrame({"short_name": ["=HYPERLINK(\"http://x\")", "+1", "@SUM(A1)", "-2", "ok", None],
                          "n": [1, 2, 3, 4, 5, 6]})
    out = report.csv_ready(frame)
    assert out["short_name"].to_list() == ["'=HYPERLINK(\"http://x\")", "'+1", "'@SUM(A1)", "'-2", "ok", None]
    assert out["n"].to_list() == [1, 2, 3, 4, 5, 6]
