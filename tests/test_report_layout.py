"""Issue 11's report bullets, on the H100 fixtures (batch 1, 8 and 64 with their capture
manifests) and the shared traces: facet order, a page that fits 1280 px, notes said once, run
labels that tell batches apart, heat-map cells that never average different experiments."""

from __future__ import annotations

import json
import re
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import pytest
from browser.cdp import file_url, find_chromium, load_page
from conftest import FIXTURES, KINETO_L2, SHARED_META

import tracekit
from tracekit.outputs import charts
from tracekit.outputs.report import write_report

H100 = sorted((FIXTURES / "h100").glob("*.pt.trace.json.gz")) + sorted((FIXTURES / "h100").glob("*.sqlite"))


def manifest(trace: Path) -> dict:
    stem = trace.name.split(".")[0]
    return json.loads((trace.parent / f"{stem}.manifest.json").read_text())


@pytest.fixture(scope="module")
def h100_db(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("h100") / "h100.duckdb"
    db = tracekit.open(path)
    for trace in H100:
        assert db.import_paths([trace])[0].status == "imported"
    db.close()
    return path


@pytest.fixture(scope="module")
def h100_report(h100_db, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("h100report")
    write_report(tracekit.open(h100_db, read_only=True), out, images=False)
    return out


def test_composition_facets_in_numeric_batch_order(h100_db):
    batches = sorted({int(manifest(t)["batch"]) for t in H100})
    assert batches == [1, 8, 64]  # the fixtures' README: three batch sizes
    db = tracekit.open(h100_db, read_only=True)
    spec = charts.to_spec(charts.composition_chart(charts.composition_data(db)))
    assert spec["facet"]["column"]["sort"] == [f"batch {b}" for b in batches]
    svg = charts.vl_svg(spec) if hasattr(charts, "vl_svg") else None
    if svg is None:
        import vl_convert as vlc

        svg = vlc.vegalite_to_svg(spec)
    text = [t.strip() for t in ET.fromstring(svg).itertext() if t.strip().startswith("batch ")]
    assert text == [f"batch {b}" for b in batches]  # headers drawn left to right in that order


def test_stage_chart_labels_tell_batches_apart(h100_db):
    db = tracekit.open(h100_db, read_only=True)
    data = charts.stages_data(db)
    labels = dict(data.frame.select("run_id", "run").unique().iter_rows())
    src = dict(db.con.execute("SELECT run_id, source_path FROM runs").fetchall())
    for run_id, label in labels.items():
        m = manifest(Path(src[run_id]))
        assert f"{m['model']} · b{m['batch']} · i{m['input_len']} · o{m['output_len']}" in label
    # llama3-8b b1 and b64 (same model, input and output) have different labels.
    assert len(set(labels.values())) == len(labels) == len(H100)


def test_heatmap_never_averages_different_layer_counts(tmp_path):
    """llama2-7b batch 1, input 64, output 8 recorded twice: with 2 layers (H100 fixture, manifest)
    and with 4 layers (shared Kineto trace): two cells, each its own run's share."""
    two = FIXTURES / "h100" / "llama2-7b-2L_b1_i64_o8.pt.trace.json.gz"
    db = tracekit.open(tmp_path / "l.duckdb")
    assert db.import_paths([two])[0].status == "imported"
    assert db.import_paths([KINETO_L2], meta=SHARED_META[KINETO_L2.name])[0].status == "imported"
    layers = {two.name: str(manifest(two)["layers"]), KINETO_L2.name: SHARED_META[KINETO_L2.name]["layers"]}
    assert layers == {two.name: "2", KINETO_L2.name: "4"}
    times: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for name, stage, dur in db.con.execute(
            "SELECT r.source_name, k.stage, k.dur_ns FROM kernels k JOIN runs r USING (run_id)").fetchall():
        times[name][stage] += dur
    data = charts.heatmap_data(db)
    assert data.frame.height == 2 and set(data.frame["n_runs"]) == {1}
    got = {r["layers"]: r["gen_ratio"] for r in data.frame.iter_rows(named=True)}
    for name, n in layers.items():
        t = times[name]
        assert got[n] == pytest.approx(t["generation"] / (t["generation"] + t["summarization"]), rel=1e-12)
    assert sorted(data.frame["panel"]) == ["llama2-7b · layers 2", "llama2-7b · layers 4"]


def test_not_shown_notes_appear_once_per_chart(shared_db_copy, tmp_path):
    db = tracekit.open(shared_db_copy)
    victim = db.con.execute("SELECT min(run_id) FROM runs").fetchall()[0][0]
    db.con.execute("DELETE FROM run_meta WHERE run_id = ?", [victim])
    index = write_report(db, tmp_path / "out", images=False)
    html_text = index.read_text()
    blocks = re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', html_text, re.S)
    spec_text = " ".join(json.dumps(json.loads(b)) for b in blocks)
    notes = set(re.findall(r"not shown: run \d+ \([^)]*\)[^<\"]*", html_text))
    assert notes, "the heat-map has a note on the run without metadata"
    for note in notes:
        assert html_text.count(note) == 1 and note not in spec_text


@pytest.mark.skipif(find_chromium() is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_fits_a_1280_px_page(h100_report):
    expr = ("document.body && document.body.getAttribute('data-charts-rendered') !== null && ["
            "document.documentElement.scrollWidth, window.innerWidth, "
            "(function () { var t = document.querySelector('#tab-composition ~ .scroll table');"
            " var w = t.parentElement; return [t.getBoundingClientRect().width, w.clientWidth,"
            " t.querySelectorAll('thead th').length]; })()]")
    page = load_page(file_url(h100_report / "index.html"), expr, timeout=90, width=1280)
    assert page.errors == []
    scroll_w, inner_w, (table_w, box_w, n_cols) = page.value
    assert inner_w == 1280 and scroll_w <= 1280
    assert n_cols >= 12  # run_id and a dozen buckets: the case that overflowed
    assert table_w <= box_w  # the composition table fits without a scroll bar
