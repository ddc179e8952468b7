"""The offline HTML report: `index.html` with every table and chart, plus each chart as PNG and SVG
and each table as CSV.

The page opens with what the data says (`findings`: per run and for the whole set, with links
to the tables each figure comes from), then the tables and charts, then any later sections
(`SECTION_PROVIDERS`: roofline, ranks, ... plug in there).

Kernel names and metadata come from untrusted trace files, so the page never trusts them: the
HTML is a jinja2 template with autoescaping, control characters are shown as escapes
(`charts.printable`), chart specs sit in JSON script blocks with every `<`, `>` and `&` written
as a JSON unicode escape (no `</script>` can end the block), and a Content-Security-Policy lets
only the page's own scripts (by hash) run and forbids every network request. Images are drawn
in a child process, so a renderer that aborts costs that chart, not the report; CSV cells that a
spreadsheet would run as a formula are written as text.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import importlib
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import altair as alt
import jinja2
import polars as pl

from tracekit.outputs import charts
from tracekit.outputs.charts import ChartData, Queryable, printable, query

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
    spec: dict            # drawn on the page; the notes on runs not shown are printed beside it
    data: ChartData
    file_spec: dict | None = None  # for the PNG/SVG files: the same chart with the notes in it
    render_error: str = ""         # why its PNG/SVG could not be drawn, if so


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
              "kernel time no stage could be given (see stage_confidence / stage_reason)."),
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
    """Lists, structs and other nested columns as JSON text (CSV has no nested values), and text
    cells that a spreadsheet would run as a formula prefixed with `'` (format.csv_safe's rule; the
    report's CSVs keep other characters as the trace has them)."""
    nested = [c for c, t in frame.schema.items() if t.is_nested() or t == pl.Object]
    if nested:
        frame = frame.with_columns(
            pl.col(c).map_elements(_json_text, return_dtype=pl.String, skip_nulls=True) for c in nested
        )
    text = [c for c, t in frame.schema.items() if t == pl.String]
    if text:
        from tracekit.outputs.format import FORMULA_START

        starts = "^[" + re.escape("".join(FORMULA_START)) + "]"
        frame = frame.with_columns(
            pl.when(pl.col(c).str.contains(starts)).then(pl.lit("'") + pl.col(c)).otherwise(pl.col(c)).alias(c)
            for c in text
        )
    return frame


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
        return printable(json.dumps(value))
    return printable(str(value))


def _header(col: str) -> str:
    return col[:-3] + " (ms)" if col.endswith("_ns") else col


def composition_wide(comp: pl.DataFrame) -> pl.DataFrame:
    """One row per run, one column per bucket (palette order): easier to read than the long form.
    Column names are the bucket names alone (the table's note says they are shares), so that a
    dozen buckets still fit a 1280-px page."""
    if comp.is_empty():
        return comp
    order = sorted(comp["bucket"].unique().to_list(), key=lambda b: (charts.bucket_order(b), b))
    wide = comp.pivot(on="bucket", index="run_id", values="share").sort("run_id")
    return wide.select("run_id", *[pl.col(b).fill_null(0.0).alias(f"{b} share") for b in order])


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
        chart, data = charts.build(db, name, max_runs=MAX_RUNS_PER_CHART, notes_in_chart=False)
        file_chart, _ = charts.build(db, name, max_runs=MAX_RUNS_PER_CHART) if data.subtitle() else (chart, data)
        out.append(Figure(name, title, charts.to_spec(chart), data, charts.to_spec(file_chart)))
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
       max-width: 1280px; padding: 0 16px; color: #222; box-sizing: border-box; }
h1 { font-size: 1.5em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; padding-bottom: 4px; }
nav a { margin-right: 1em; }
.scroll { max-width: 100%; overflow-x: auto; }
table { border-collapse: collapse; font-size: 12px; margin: 8px 0; }
th, td { border: 1px solid #ddd; padding: 3px 6px; text-align: left; vertical-align: top;
         max-width: 520px; overflow-wrap: anywhere; }
th { background: #f3f3f3; } td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
.note { color: #555; font-size: 13px; } .empty { color: #888; }
.chart { margin: 12px 0; overflow-x: auto; } .files { font-size: 12px; }
ul.missing { color: #8a4b00; font-size: 13px; } .error { color: #a00; font-size: 13px; }
section.findings li { margin: 4px 0; } section.findings .src { font-size: 12px; }
"""


def _sha256(script: str) -> str:
    return "'sha256-" + base64.b64encode(hashlib.sha256(script.encode()).digest()).decode() + "'"


_ENV = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
                          lstrip_blocks=True)
_ENV.filters["cell"] = lambda value, col: _fmt(col, value)
_ENV.filters["header"] = _header
_ENV.filters["printable"] = lambda value: printable(str(value))
_ENV.filters["spec_json"] = lambda spec: jinja2.utils.markupsafe.Markup(_json_for_script(spec))

PAGE = _ENV.from_string("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="{{ csp }}">
<title>{{ title | printable }}</title>
<style>{{ css | safe }}</style>
</head><body>
{{ body }}
{% for s in scripts %}<script>{{ s | safe }}</script>
{% endfor %}</body></html>
""")

TABLE = _ENV.from_string("""{% if frame.is_empty() %}<p class="empty">(none)</p>{% else %}
<div class="scroll"><table><thead><tr>{% for c in frame.columns %}<th>{{ c | header }}</th>{% endfor %}</tr></thead>
<tbody>{% for row in frame.iter_rows() %}<tr>{% for v in row %}{% set c = frame.columns[loop.index0] %}
<td{% if numeric[loop.index0] %} class="num"{% endif %}>{{ v | cell(c) }}</td>{% endfor %}</tr>
{% endfor %}</tbody></table></div>{% endif %}""")

FIGURE = _ENV.from_string("""<h2 id="fig-{{ fig.name }}">{{ fig.title | printable }}</h2>
{% if fig.data.subtitle() %}<ul class="missing">{% for n in fig.data.subtitle() %}<li>{{ n | printable }}</li>{% endfor %}</ul>
{% endif %}
<div class="chart" id="chart-{{ fig.name }}"></div>
<script type="application/json" data-chart="chart-{{ fig.name }}">{{ fig.spec | spec_json }}</script>
{% if files %}{% if fig.render_error %}<p class="error">PNG/SVG not drawn: {{ fig.render_error | printable }}</p>
{% else %}<p class="files">files: <a href="{{ fig.name }}.png">PNG</a> · <a href="{{ fig.name }}.svg">SVG</a></p>
{% endif %}{% endif %}""")

TABLE_SECTION = _ENV.from_string("""<h2 id="tab-{{ t.name }}">{{ t.title | printable }}</h2>
{% if t.note %}<p class="note">{{ t.note | printable }}</p>{% endif %}
{{ table }}
<p class="files">file: <a href="{{ t.name }}.csv">{{ t.name }}.csv</a></p>""")

FINDINGS = _ENV.from_string("""<section class="findings" id="findings">
<h2>What this data says</h2>
{% for block in blocks %}
<h3>{{ block.title | printable }}</h3>
<ul>{% for item in block.items %}<li>{{ item.text | printable }}{% if item.sources %}
<span class="src">({% for name in item.sources %}<a href="#tab-{{ name }}">{{ name }}</a>{% if not loop.last %}, {% endif %}{% endfor %})</span>{% endif %}</li>
{% endfor %}</ul>
{% endfor %}
</section>""")

REPORT = _ENV.from_string("""<h1>{{ title | printable }}</h1>
<p class="note">{{ summary | printable }}</p>
<nav><a href="#findings">Findings</a>{% for anchor, label in links %} <a href="#{{ anchor }}">{{ label | printable }}</a>{% endfor %}</nav>
{{ findings }}
{% for part in parts %}{{ part }}
{% endfor %}""")


def page(title: str, body: str, scripts: list[str]) -> str:
    """A complete HTML document; `scripts` are the only code allowed to run (CSP hashes).
    `body` is HTML (a Markup string from the templates here, or escaped by the caller)."""
    # 'unsafe-eval': Vega compiles chart expressions with Function(); its interpreter that avoids
    # this is not exported by vl-convert's bundle.
    csp = ("default-src 'none'; script-src " + " ".join(_sha256(s) for s in scripts)
           + " 'unsafe-eval'; style-src 'unsafe-inline'; img-src data:; font-src data:")
    return PAGE.render(csp=csp, title=title, css=CSS, body=jinja2.utils.markupsafe.Markup(body),
                       scripts=scripts)


def table_html(frame: pl.DataFrame) -> str:
    numeric = [frame.schema[c].is_numeric() for c in frame.columns]
    return TABLE.render(frame=frame, numeric=numeric)


def _figure_html(fig: Figure, files: bool) -> str:
    return FIGURE.render(fig=fig, files=files)


def chart_page(spec: dict, title: str) -> str:
    """One chart as a standalone offline HTML page (`tracekit chart ... --out x.html`)."""
    fig = Figure("chart", title, spec, ChartData(pl.DataFrame()))
    body = _ENV.from_string("<h1>{{ t | printable }}</h1>\n").render(t=title) + _figure_html(fig, files=False)
    return page(title, body, [js_bundle(), EMBED_JS])


# -- sections --------------------------------------------------------------------------------------

SECTIONS = [("table", "runs"), ("table", "stage_ratio"), ("figure", "heatmap"), ("figure", "stages"),
            ("table", "composition"), ("figure", "composition"), ("figure", "steps"), ("figure", "passes"),
            ("table", "top_kernels"), ("figure", "top"), ("table", "unclassified")]


@dataclass
class Section:
    """A later part of the report (roofline, ranks, ...): its tables and figures, in order."""

    name: str
    title: str
    tables: list[Table] = field(default_factory=list)
    figures: list[Figure] = field(default_factory=list)
    error: str = ""  # the provider failed: the report says so and goes on


@dataclass
class SectionProvider:
    """Where a feature plugs into the report: `tables(db)` and `figures(db)` return lists of
    Table / Figure, or {name: polars frame} / {name: altair chart}; either may be None."""

    name: str
    title: str
    tables: Callable[[Queryable], object] | None = None
    figures: Callable[[Queryable], object] | None = None


def _lazy(module: str, attr: str) -> Callable[[Queryable], object]:
    """`module.attr(db)`, imported when the report is made, so a feature's module loads only then."""
    def call(db: Queryable) -> object:
        return getattr(importlib.import_module(module), attr)(db)
    return call


# Later sections, in page order. A provider that raises costs its own section (the page says
# why), never the report.
SECTION_PROVIDERS: list[SectionProvider] = [
    SectionProvider("roofline", "Roofline", _lazy("tracekit.outputs.charts_roofline", "roofline_tables"),
                    _lazy("tracekit.outputs.charts_roofline", "roofline_figures")),
    SectionProvider("ranks", "Ranks and communication", _lazy("tracekit.outputs.charts_ranks", "rank_tables"),
                    _lazy("tracekit.outputs.charts_ranks", "rank_figures")),
]


def _as_tables(value: object) -> list[Table]:
    if value is None:
        return []
    if isinstance(value, dict):
        return [Table(name, name.replace("_", " ").capitalize(), frame) for name, frame in value.items()]
    return [v if isinstance(v, Table) else Table(v[0], v[0], v[1]) for v in value]  # type: ignore[index]


def _as_figures(value: object) -> list[Figure]:
    if value is None:
        return []
    items = value.items() if isinstance(value, dict) else [(f.name, f) for f in value]  # type: ignore[attr-defined]
    out = []
    for name, v in items:
        if isinstance(v, Figure):
            out.append(v)
            continue
        chart, data = v if isinstance(v, tuple) else (v, ChartData(pl.DataFrame()))
        spec = charts.to_spec(chart)
        out.append(Figure(name, name.replace("_", " ").capitalize(), spec, data, spec))
    return out


def provided_sections(db: Queryable, providers: list[SectionProvider] | None = None) -> list[Section]:
    out = []
    for p in SECTION_PROVIDERS if providers is None else providers:
        sec = Section(p.name, p.title)
        try:
            sec.tables = _as_tables(p.tables(db) if p.tables else None)
            sec.figures = _as_figures(p.figures(db) if p.figures else None)
        except Exception as exc:  # a broken section must not take the report with it
            sec.tables, sec.figures = [], []
            sec.error = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        out.append(sec)
    return out


def _table_html(t: Table) -> str:
    shown = composition_wide(t.frame) if t.name == "composition" else t.frame
    if t.name == "composition" and not shown.is_empty():
        shown = shown.rename({c: c.removesuffix(" share") for c in shown.columns})
    return TABLE_SECTION.render(t=t, table=jinja2.utils.markupsafe.Markup(table_html(shown)))


def report_html(title: str, summary: str, figs: list[Figure], tabs: list[Table],
                findings_blocks: list | None = None, sections: list[Section] | None = None) -> str:
    items = {("table", t.name): t for t in tabs} | {("figure", f.name): f for f in figs}
    links, parts = [], []
    Markup = jinja2.utils.markupsafe.Markup
    for kind, name in SECTIONS:
        item = items.get((kind, name))
        if item is None:
            continue
        links.append((("tab-" if kind == "table" else "fig-") + name, item.title))
        parts.append(Markup(_table_html(item) if isinstance(item, Table) else _figure_html(item, files=True)))
    for sec in sections or []:
        links.append((f"sec-{sec.name}", sec.title))
        head = _ENV.from_string('<h2 id="sec-{{ s.name }}">{{ s.title | printable }}</h2>'
                                '{% if s.error %}<p class="error">This section could not be made: '
                                '{{ s.error | printable }}</p>{% endif %}').render(s=sec)
        parts.append(Markup(head))
        parts += [Markup(_table_html(t)) for t in sec.tables]
        parts += [Markup(_figure_html(f, files=True)) for f in sec.figures]
    findings_html = Markup(FINDINGS.render(blocks=findings_blocks or []))
    body = REPORT.render(title=title, summary=summary, links=links, findings=findings_html, parts=parts)
    return page(title, body, [js_bundle(), EMBED_JS])


def write_report(db: Queryable, out_dir: Path, title: str = "tracekit report", images: bool = True,
                 providers: list[SectionProvider] | None = None) -> Path:
    """Write index.html, <chart>.png/.svg (unless images=False) and <table>.csv into out_dir;
    return index.html's path. A chart whose image cannot be drawn is named on the page."""
    from tracekit.outputs import findings

    out_dir.mkdir(parents=True, exist_ok=True)
    tabs = tables(db)
    figs = figures(db)
    sections = provided_sections(db, providers)
    all_tabs = tabs + [t for s in sections for t in s.tables]
    all_figs = figs + [f for s in sections for f in s.figures]
    for t in all_tabs:
        for name, frame in {t.name: t.frame, **t.extra}.items():
            csv_ready(frame).write_csv(out_dir / f"{name}.csv")
    if images:
        jobs = [(f.file_spec or f.spec, [out_dir / f"{f.name}.png", out_dir / f"{f.name}.svg"]) for f in all_figs]
        for i, reason in charts.render_images(jobs).items():
            all_figs[i].render_error = reason
    n_runs = tabs[0].frame.height
    summary = f"{n_runs} run(s); generated {datetime.now(UTC):%Y-%m-%d %H:%M} UTC by tracekit."
    index = out_dir / "index.html"
    index.write_text(report_html(title, summary, figs, tabs, findings.findings(db), sections), encoding="utf-8")
    return index
