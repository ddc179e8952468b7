"""The offline HTML report: `index.html` with every table and chart, plus each chart as PNG and SVG
and each table as CSV.

Kernel names and metadata come from untrusted trace files, so the page never trusts them: table
cells are HTML-escaped, chart specs sit in JSON script blocks with every `<`, `>` and `&` written
as a JSON unicode escape (no `</script>` can end the block), and a Content-Security-Policy lets
only the page's own scripts (by hash) run and forbids every network request.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import html
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import altair as alt
import polars as pl

from tracekit.outputs import charts
from tracekit.outputs.charts import ChartData, Queryable, query

TOP_PER_RUN = 10
# The columns of run_info worth a glance; the rest (hashes, JSON blobs) go to runs_full.csv.
RUN_COLUMNS = ["run_id", "source_name", "format", "gpu_name", "model", "batch", "input_len", "output_len",
               "dtype", "profiler", "layers", "stage_method", "iterations", "n_kernels", "kernel_time_ns"]
UNCLASSIFIED_PER_RUN = 20
MAX_RUNS_PER_CHART = 12


@dataclass
class Table:
    name: str          # file stem of the CSV and the section anchor
    title: str
    frame: pl.DataFrame  # written to CSV as is (ns, fractions)
    note: str = ""
    extra: dict[str, pl.DataFrame] = field(default_factory=dict)  # more CSVs, not shown


@dataclass
class Figure:
    name: str
    title: str
    spec: dict
    data: ChartData


# -- tables ----------------------------------------------------------------------------------------

def _top_per_run(db: Queryable, columns: str, where: str, n: int) -> pl.DataFrame:
    return query(
        db,
        f"SELECT {columns} FROM (SELECT *, row_number() OVER (PARTITION BY run_id "
        f"ORDER BY time_ns DESC, short_name) AS rk FROM top_kernels WHERE {where}) "
        "WHERE rk <= ? ORDER BY run_id, time_ns DESC, short_name",
        [n],
    )


def tables(db: Queryable) -> list[Table]:
    info = query(db, "SELECT * FROM run_info ORDER BY run_id")
    # Manifests carry whole model configs and command lines, too long for a table cell: the page
    # shows the keys the charts use (columns of run_info); every key=value is in run_meta.csv.
    all_meta = query(db, "SELECT run_id, key, value, source FROM run_meta ORDER BY run_id, key")
    runs = info.select([c for c in RUN_COLUMNS if c in info.columns])
    stage = query(db, "SELECT s.*, r.stage_method, r.stage_confidence, r.stage_reason "
                      "FROM stage_ratio s JOIN runs r USING (run_id) ORDER BY run_id")
    comp = query(db, "SELECT run_id, bucket, time_ns, share FROM composition ORDER BY run_id")
    comp = comp.with_columns(
        pl.col("bucket").map_elements(charts.bucket_order, return_dtype=pl.Int64).alias("_o")
    ).sort(["run_id", "_o", "bucket"]).drop("_o")
    top = _top_per_run(db, "run_id, short_name, category, n, time_ns, share", "TRUE", TOP_PER_RUN)
    uncl = _top_per_run(db, "run_id, short_name, n, time_ns, share",
                        "category IS NULL OR category = 'Unclassified'", UNCLASSIFIED_PER_RUN)
    return [
        Table("runs", "Runs", runs, "Run metadata comes from `--meta`, a capture manifest or the trace; "
              "every key=value is in `run_meta.csv`, and `runs_full.csv` has every column.",
              extra={"runs_full": info, "run_meta": all_meta}),
        Table("stage_ratio", "Stage ratios", stage,
              "Kernel time per stage; gen_ratio = generation / (summarization + generation). "
              "host_* use the stage markers' CPU-side extents; gpu_span_* / gpu_busy_* / gpu_idle_* the "
              "stages' extent on the GPU, the time a kernel ran in it and the rest; unattributed_ns is "
              "kernel time no stage could be given (see stage_confidence / stage_reason in Runs)."),
        Table("composition", "Composition", comp,
              "Share of summarization + generation kernel time per bucket (shares sum to 1 per run)."),
        Table("top_kernels", "Top kernels", top, f"The {TOP_PER_RUN} kernels with the most time in each run."),
        Table("unclassified", "Unclassified kernels", uncl,
              f"Up to {UNCLASSIFIED_PER_RUN} kernels per run that no rule matched; "
              "add a rule for them (see `tracekit rules`)."),
    ]


def _json_text(value: object) -> str:
    if isinstance(value, pl.Series):
        value = value.to_list()
    return json.dumps(value, default=str)


def csv_ready(frame: pl.DataFrame) -> pl.DataFrame:
    """Lists, structs and other nested columns as JSON text: CSV has no nested values."""
    nested = [c for c, t in frame.schema.items() if t.is_nested() or t == pl.Object]
    return frame.with_columns(
        pl.col(c).map_elements(_json_text, return_dtype=pl.String, skip_nulls=True)
        for c in nested
    ) if nested else frame


def _fmt(col: str, value: object) -> str:
    if value is None:
        return "—"
    if col.endswith("_ns") and isinstance(value, int | float):
        return f"{value / 1e6:,.3f}"
    if col.endswith(("share", "ratio")) and isinstance(value, float):
        return f"{value:.1%}"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _header(col: str) -> str:
    return col[:-3] + " (ms)" if col.endswith("_ns") else col


def table_html(frame: pl.DataFrame) -> str:
    if frame.is_empty():
        return '<p class="empty">(none)</p>'
    e = html.escape
    head = "".join(f"<th>{e(_header(c))}</th>" for c in frame.columns)
    numeric = [frame.schema[c].is_numeric() for c in frame.columns]
    rows = []
    for row in frame.iter_rows():
        cells = "".join(
            f'<td class="num">{e(_fmt(c, v))}</td>' if num else f"<td>{e(_fmt(c, v))}</td>"
            for c, v, num in zip(frame.columns, row, numeric, strict=True)
        )
        rows.append(f"<tr>{cells}</tr>")
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def composition_wide(comp: pl.DataFrame) -> pl.DataFrame:
    """One row per run, one column per bucket (palette order): easier to read than the long form."""
    if comp.is_empty():
        return comp
    order = sorted(comp["bucket"].unique().to_list(), key=lambda b: (charts.bucket_order(b), b))
    wide = comp.pivot(on="bucket", index="run_id", values="share").sort("run_id")
    return wide.select("run_id", *[pl.col(b).alias(f"{b} share").fill_null(0.0) for b in order])


# -- charts ----------------------------------------------------------------------------------------

FIGURES = [
    ("heatmap", "Generation share heat-map"),
    ("stages", "Stage split"),
    ("composition", "Composition chart"),
    ("steps", "Per-step timeline"),
    ("passes", "Kernel vs wall-clock time per pass"),
    ("top", "Top kernels chart"),
]


def figures(db: Queryable) -> list[Figure]:
    out = []
    for name, title in FIGURES:
        chart, data = charts.build(db, name, max_runs=MAX_RUNS_PER_CHART)
        out.append(Figure(name, title, charts.to_spec(chart), data))
    return out


def _json_for_script(spec: dict) -> str:
    # Inside <script type="application/json"> only `</script` (any case) or `<!--` can break out;
    # escaping every `<` (and `>`, `&` for good measure) as \u00XX keeps the JSON identical.
    text = json.dumps(spec, ensure_ascii=True, separators=(",", ":"))
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


@functools.cache
def js_bundle() -> str:
    """Vega, Vega-Lite and vega-embed in one script, matching the Vega-Lite version Altair writes."""
    import vl_convert as vlc

    want = ".".join(alt.SCHEMA_VERSION.lstrip("v").split(".")[:2])
    version = want if want in vlc.get_vegalite_versions() else None
    js = vlc.javascript_bundle(vl_version=version) if version else vlc.javascript_bundle()
    # The bundle has no `</script` today; should a future one have it in a string, `<\/` is the
    # same string to JavaScript and cannot close the tag.
    return re.sub(r"</(script)", r"<\\/\1", js, flags=re.IGNORECASE)


EMBED_JS = """
(function () {
  var blocks = document.querySelectorAll('script[type="application/json"][data-chart]');
  var jobs = [], done = 0, failed = 0;
  blocks.forEach(function (block) {
    var target = document.getElementById(block.getAttribute('data-chart'));
    var spec = JSON.parse(block.textContent);
    jobs.push(vegaEmbed(target, spec, {actions: false, renderer: 'svg'})
      .then(function () { done += 1; })
      .catch(function (err) {
        failed += 1;
        target.textContent = 'This chart could not be drawn: ' + err;
        console.error(err);
      }));
  });
  Promise.all(jobs).then(function () {
    document.body.setAttribute('data-charts-rendered', String(done));
    document.body.setAttribute('data-charts-failed', String(failed));
  });
})();
"""

CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; margin: 24px auto;
       max-width: 1280px; padding: 0 16px; color: #222; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top;
         max-width: 520px; overflow-wrap: anywhere; }
th { background: #f3f3f3; white-space: nowrap; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.note { color: #555; font-size: 13px; } .empty { color: #888; }
.chart { margin: 12px 0; overflow-x: auto; } .files { font-size: 12px; }
ul.missing { color: #8a4b00; font-size: 13px; }
"""


def _sha256(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


def page(title: str, body: str, scripts: list[str]) -> str:
    """A complete HTML document; `scripts` are the only code allowed to run (CSP hashes)."""
    # 'unsafe-eval': Vega compiles chart expressions with Function(); its interpreter that avoids
    # this is not exported by vl-convert's bundle.
    csp = ("default-src 'none'; script-src " + " ".join(_sha256(s) for s in scripts)
           + " 'unsafe-eval'; style-src 'unsafe-inline'; img-src data:; font-src data:")
    tags = "".join(f"<script>{s}</script>\n" for s in scripts)
    return (
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\n"
        f'<meta http-equiv="Content-Security-Policy" content="{html.escape(csp)}">\n'
        f"<title>{html.escape(title)}</title>\n<style>{CSS}</style>\n"
        f"</head><body>\n{body}\n{tags}</body></html>\n"
    )


def _figure_html(fig: Figure, files: bool) -> str:
    e = html.escape
    parts = [f'<h2 id="fig-{e(fig.name)}">{e(fig.title)}</h2>']
    if fig.data.subtitle():
        parts.append('<ul class="missing">' + "".join(f"<li>{e(n)}</li>" for n in fig.data.subtitle()) + "</ul>")
    parts.append(f'<div class="chart" id="chart-{e(fig.name)}"></div>')
    parts.append(f'<script type="application/json" data-chart="chart-{e(fig.name)}">'
                 f"{_json_for_script(fig.spec)}</script>")
    if files:
        parts.append(f'<p class="files">files: <a href="{e(fig.name)}.png">PNG</a> · '
                     f'<a href="{e(fig.name)}.svg">SVG</a></p>')
    return "\n".join(parts)


def chart_page(spec: dict, title: str) -> str:
    """One chart as a standalone offline HTML page (`tracekit chart ... --out x.html`)."""
    fig = Figure("chart", title, spec, ChartData(pl.DataFrame()))
    body = f"<h1>{html.escape(title)}</h1>\n" + _figure_html(fig, files=False)
    return page(title, body, [js_bundle(), EMBED_JS])


SECTIONS = [("table", "runs"), ("table", "stage_ratio"), ("figure", "heatmap"), ("figure", "stages"),
            ("table", "composition"), ("figure", "composition"), ("figure", "steps"), ("figure", "passes"),
            ("table", "top_kernels"), ("figure", "top"), ("table", "unclassified")]


def _table_html(t: Table) -> str:
    e = html.escape
    shown = composition_wide(t.frame) if t.name == "composition" else t.frame
    parts = [f'<h2 id="tab-{e(t.name)}">{e(t.title)}</h2>']
    if t.note:
        parts.append(f'<p class="note">{e(t.note)}</p>')
    parts.append(table_html(shown))
    parts.append(f'<p class="files">file: <a href="{e(t.name)}.csv">{e(t.name)}.csv</a></p>')
    return "\n".join(parts)


def report_html(title: str, summary: str, figs: list[Figure], tabs: list[Table]) -> str:
    e = html.escape
    items = {("table", t.name): t for t in tabs} | {("figure", f.name): f for f in figs}
    links = []
    for kind, name in SECTIONS:
        if (kind, name) in items:
            anchor = ("tab-" if kind == "table" else "fig-") + name
            links.append(f'<a href="#{e(anchor)}">{e(items[kind, name].title)}</a>')
    parts = [f"<h1>{e(title)}</h1>", f'<p class="note">{e(summary)}</p>', f"<nav>{' '.join(links)}</nav>"]
    for kind, name in SECTIONS:
        item = items.get((kind, name))
        if isinstance(item, Table):
            parts.append(_table_html(item))
        elif isinstance(item, Figure):
            parts.append(_figure_html(item, files=True))
    return page(title, "\n".join(parts), [js_bundle(), EMBED_JS])


def write_report(db: Queryable, out_dir: Path, title: str = "tracekit report", images: bool = True) -> Path:
    """Write index.html, <chart>.png/.svg (unless images=False) and <table>.csv into out_dir;
    return index.html's path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    tabs = tables(db)
    figs = figures(db)
    for t in tabs:
        for name, frame in {t.name: t.frame, **t.extra}.items():
            csv_ready(frame).write_csv(out_dir / f"{name}.csv")
    for f in figs if images else []:
        charts.write_image(f.spec, out_dir / f"{f.name}.png")
        charts.write_image(f.spec, out_dir / f"{f.name}.svg")
    n_runs = tabs[0].frame.height
    summary = f"{n_runs} run(s); generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by tracekit."
    index = out_dir / "index.html"
    index.write_text(report_html(title, summary, figs, tabs), encoding="utf-8")
    return index
