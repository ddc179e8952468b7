"""Issue 16: the example notebook runs (nbclient + ipykernel, the test extras) from the fixtures to
the study's two figures, and the Python API gives polars views and Altair charts. The heat-map's
numbers are checked against kernel sums computed here from a separate import of the same traces."""

from __future__ import annotations

import json
import re
from collections import defaultdict

import altair as alt
import nbclient
import nbformat
import polars as pl
import pytest
from conftest import FIXTURES, ROOT

import tracekit
from tracekit.errors import TracekitError

NOTEBOOK = ROOT / "docs" / "examples" / "study_figures.ipynb"
H100 = sorted((FIXTURES / "h100").glob("*.pt.trace.json.gz")) + sorted((FIXTURES / "h100").glob("*.sqlite"))


@pytest.fixture(scope="module")
def h100_db(tmp_path_factory):
    db = tracekit.open(tmp_path_factory.mktemp("nb") / "h.duckdb")
    for t in H100:
        assert db.import_paths([t])[0].status == "imported"
    return db


def expected_cells(db) -> dict[tuple, float]:
    """(model, batch, input_len, output_len) -> generation share, from the manifests and kernel sums."""
    t: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for src, stage, dur in db.con.execute(
            "SELECT r.source_name, k.stage, k.dur_ns FROM kernels k JOIN runs r USING (run_id)").fetchall():
        t[src][stage] += dur
    out = {}
    for trace in H100:
        m = json.loads((trace.parent / (trace.name.split(".")[0] + ".manifest.json")).read_text())
        s = t[trace.name]
        out[(m["model"], m["batch"], m["input_len"], m["output_len"])] = s["generation"] / (
            s["generation"] + s["summarization"])
    return out


def test_example_notebook_runs_to_both_figures(h100_db):
    nb = nbformat.read(NOTEBOOK, as_version=4)
    nbclient.NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(NOTEBOOK.parent)}}).execute()
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    charts_html = [o["data"]["text/html"] for o in outputs if "text/html" in o.get("data", {})
                   and "vegaEmbed" in o["data"]["text/html"]]
    assert len(charts_html) == 2  # Figure 6 and Figure 7, drawn inline
    fig6 = charts_html[0]
    got = sorted(round(float(x), 9) for x in re.findall(r'"gen_ratio":\s*([0-9.eE+-]+)', fig6))
    want = sorted(round(v, 9) for v in expected_cells(h100_db).values())
    assert got == want
    assert '"Gen GEMV"' in charts_html[1] and '"batch 64"' in charts_html[1]


def _rounded(row: tuple) -> str:
    return repr(tuple(float(f"{v:.12g}") if isinstance(v, float) else v for v in row))


def test_every_view_is_a_polars_frame_and_every_chart_altair(h100_db):
    from tracekit.outputs.notebook import chart_names, view_names

    # The H100 fixtures are single-GPU captures without a collective kernel: the views about
    # collectives and multi-rank runs have no rows there, every other view has some.
    assert not h100_db.con.execute("SELECT count(*) FROM kernels WHERE name ILIKE '%nccl%'").fetchall()[0][0]
    multi_rank = {"comm_ops", "rank_stage_ratio", "rank_composition", "run_rank_summary"}
    for name in view_names():
        frame = h100_db.view(name)
        assert isinstance(frame, pl.DataFrame) and (frame.height == 0) == (name in multi_rank), name
        # The same rows (views without ORDER BY may return them in another order, and a float sum
        # aggregated in parallel may differ in its last bits between two reads).
        assert sorted(map(_rounded, getattr(h100_db.views, name).rows())) == sorted(map(_rounded, frame.rows()))
    for name in chart_names():
        assert isinstance(h100_db.chart(name), alt.TopLevelMixin), name
    # A run filter, applied to the view's rows (checked against the unfiltered view).
    sr = h100_db.view("stage_ratio")
    one = h100_db.view("stage_ratio", run_id=2)
    assert one.to_dicts() == sr.filter(pl.col("run_id") == 2).to_dicts()
    with pytest.raises(TracekitError, match="no view 'nope'"):
        h100_db.view("nope")
    with pytest.raises(AttributeError):
        _ = h100_db.views.nope
    assert set(dir(h100_db.views)) == set(view_names())
