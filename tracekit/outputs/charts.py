"""Altair charts of the analysis views: generation-share heat-map, composition bars, per-step
timeline, stage split, top kernels and run-to-run deltas.

Each chart has a `*_data(db)` function (a Polars frame read from the views, plus notes on what
could not be drawn) and a builder that turns that frame into an Altair chart, so tests can check
the data a chart shows against the database independently of the drawing.
"""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import zlib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import altair as alt
import polars as pl

# One colour per composition bucket / category, used by every chart so a colour always means the
# same thing. Stage-split GEMM/GEMV first (the study's Figure 7 buckets), then the categories of
# docs/DESIGN.md, then the unsplit GEMM/GEMV used where a chart has no stage (top kernels).
PALETTE: dict[str, str] = {
    "Sum GEMM": "#1f4e99",
    "Sum GEMV": "#c2571a",
    "Gen GEMM": "#6fa8dc",
    "Gen GEMV": "#f6b26b",
    "ATTN": "#b7312c",
    "NORM": "#6aa84f",
    "ACT": "#b6d7a8",
    "ELEMWISE": "#8e7cc3",
    "REDUCE": "#c27ba0",
    "EMBED": "#45818e",
    "SAMPLING": "#bf9000",
    "COMM": "#674ea7",
    "MEMCPY": "#a0785a",
    "MEMSET": "#e6c9a8",
    "OTHER": "#7f6000",
    "GEMM": "#3d85c6",
    "GEMV": "#e69138",
    "Unclassified": "#999999",
}
# For categories a user's rule pack adds: picked by a stable hash, so the same name gets the
# same colour in every chart and every run of the program.
EXTRA_COLORS = ["#4e79a7", "#59a14f", "#edc948", "#af7aa1", "#ff9da7", "#9c755f", "#76b7b2", "#d37295"]
STAGE_COLORS: dict[str, str] = {
    "summarization": PALETTE["Sum GEMM"],
    "generation": PALETTE["Gen GEMV"],
    "other": "#bbbbbb",
    "warmup": "#dddddd",
}
META_KEYS = ("model", "batch", "input_len", "output_len")
# Fields that make two runs of the same heat-map cell different experiments rather than repeats:
# runs that differ in one of them get cells of their own (see heatmap_data). run_info columns
# first, then run_meta keys a capture manifest writes.
CELL_FIELDS = ("layers", "dtype", "gpu_name")
CELL_META_KEYS = ("framework", "attn", "compile")

# Characters a renderer must never see: C0/C1 controls, surrogates, and the Unicode
# noncharacters (U+FDD0..U+FDEF, U+xFFFE/U+xFFFF of every plane). vl-convert's SVG/PNG path
# aborts the whole process (SIGABRT, not an exception) on the XML-invalid ones, and a browser
# shows none of them as anything readable.
_UNPRINTABLE = re.compile(
    r"[\x00-\x1f\x7f-\x9f\ud800-\udfff\ufdd0-\ufdef"
    + "".join(f"\\U00{p:02x}fffe\\U00{p:02x}ffff" for p in range(17)) + "]"
)


def _escape_char(m: re.Match) -> str:
    cp = ord(m.group())
    return f"\\x{cp:02x}" if cp < 0x100 else (f"\\u{cp:04x}" if cp < 0x10000 else f"\\U{cp:08x}")


def printable(text: str) -> str:
    """`text` with every control character, surrogate or noncharacter written as a visible escape
    (ESC -> `\\x1b`): how an untrusted name is shown in a chart, a page or a terminal."""
    return _UNPRINTABLE.sub(_escape_char, text)


def printable_spec(value: Any) -> Any:
    """A chart spec (or any JSON value) with every string passed through `printable`: the data,
    titles and labels drawn from trace names and metadata reach the renderer escaped. Vega
    expressions and field names never contain such characters, so they are unchanged."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(k) if isinstance(k, str) else k: printable_spec(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [printable_spec(v) for v in value]
    return value


class Queryable(Protocol):
    def query(self, sql: str, params: list | None = None) -> pl.DataFrame: ...


@dataclass
class ChartData:
    """What one chart shows, and why some runs are not in it."""

    frame: pl.DataFrame
    notes: list[str] = field(default_factory=list)  # one per run left out, starting "run N "
    hint: str = ""                                   # how to fix what the notes report
    # False where the notes are shown beside the chart (the report's page): the chart then does
    # not repeat them in its subtitle.
    notes_in_chart: bool = True

    def subtitle(self) -> list[str]:
        return [f"not shown: {n}" for n in self.notes] + ([self.hint] if self.hint else [])

    def chart_subtitle(self) -> list[str]:
        return self.subtitle() if self.notes_in_chart else []

    def empty_reason(self, default: str) -> list[str]:
        """Lines for a chart with nothing to draw."""
        if self.notes_in_chart:
            return self.subtitle() or [default]
        return ["see the notes above this chart"] if self.subtitle() else [default]


def _titled(chart: alt.TopLevelMixin, title: str, data: ChartData) -> alt.TopLevelMixin:
    sub = data.chart_subtitle()
    return chart.properties(title=alt.Title(title, subtitle=sub) if sub else title)


def color_of(bucket: str | None) -> str:
    if bucket is None:
        return PALETTE["Unclassified"]
    if bucket in PALETTE:
        return PALETTE[bucket]
    return EXTRA_COLORS[zlib.crc32(bucket.encode()) % len(EXTRA_COLORS)]


def bucket_order(bucket: str) -> int:
    keys = list(PALETTE)
    return keys.index(bucket) if bucket in PALETTE else len(keys) - 1  # unknown ones before Unclassified


def _color_scale(buckets: list[str]) -> alt.Scale:
    # Only the buckets present appear in the legend, in palette order, each with its fixed colour.
    present = sorted(set(buckets), key=lambda b: (bucket_order(b), b))
    return alt.Scale(domain=present, range=[color_of(b) for b in present])


def _run_label(frame: pl.DataFrame) -> pl.Expr:
    """`run 3 · llama2-7b · b64 · i64 · o8` with the metadata that is known, else
    `run 3 · <file name>`: runs that differ only in batch or length must not look alike."""
    cols = set(frame.columns)
    model = pl.col("model") if "model" in cols else pl.lit(None, pl.String)
    label = pl.lit("run ") + pl.col("run_id").cast(pl.String) + pl.lit(" · ") + pl.coalesce(
        model, pl.col("source_name").str.slice(0, 28))
    for col, prefix in (("batch", " · b"), ("input_len", " · i"), ("output_len", " · o")):
        if col in cols:
            v = pl.col(col)
            label = label + pl.when(v.is_not_null()).then(pl.lit(prefix) + v.cast(pl.String)).otherwise(pl.lit(""))
    return label


def query(db: Queryable, sql: str, params: list | None = None) -> pl.DataFrame:
    """Run a query with JSON-friendly column types: SUM over BIGINT gives DECIMAL/HUGEINT in
    DuckDB, which neither Vega-Lite specs nor Polars arithmetic with floats take as is."""
    frame = db.query(sql, params)
    casts = []
    for name, dtype in frame.schema.items():
        if isinstance(dtype, pl.Decimal):
            casts.append(pl.col(name).cast(pl.Float64))
        elif dtype == pl.Int128 or dtype == pl.UInt64:
            casts.append(pl.col(name).cast(pl.Float64))
    return frame.with_columns(casts) if casts else frame


def _runs(db: Queryable) -> pl.DataFrame:
    return query(
        db,
        "SELECT run_id, source_name, model, "
        "TRY_CAST(batch AS BIGINT) AS batch, TRY_CAST(input_len AS BIGINT) AS input_len, "
        "TRY_CAST(output_len AS BIGINT) AS output_len FROM run_info ORDER BY run_id"
    )


def _notice(title: str, lines: list[str]) -> alt.Chart:
    """A chart that says why there is nothing to draw, so a report still shows the reason."""
    text = pl.DataFrame({"i": list(range(len(lines))), "line": lines})
    return (
        alt.Chart(text, title=title)
        .mark_text(align="left", baseline="top", fontSize=13, dx=-190)
        .encode(y=alt.Y("i:O", axis=None), text="line:N")
        .properties(width=400, height=max(20, 20 * len(lines)))
        .configure_view(strokeWidth=0)
    )


# -- generation-share heat-map (Figure 6) --------------------------------------------------------

def _cell_fields(db: Queryable) -> pl.DataFrame:
    """run_id and the CELL_FIELDS / CELL_META_KEYS of each run (NULL where unknown)."""
    cols = set(query(db, "SELECT * FROM run_info LIMIT 0").columns)
    have = [c for c in CELL_FIELDS if c in cols]
    meta = ", ".join(f"max(value) FILTER (WHERE key = '{k}') AS \"{k}\"" for k in CELL_META_KEYS)
    frame = query(db, f"SELECT i.run_id{''.join(f', CAST(i.{c} AS VARCHAR) AS {c}' for c in have)}, m.* "
                      f"EXCLUDE (run_id) FROM run_info i LEFT JOIN (SELECT run_id, {meta} FROM run_meta "
                      "GROUP BY run_id) m USING (run_id)")
    return frame


def heatmap_data(db: Queryable) -> ChartData:
    """Mean generation share per (model, batch, input_len, output_len) and per every other field
    (layers, dtype, GPU, framework, attention, compile) to which runs of one such cell give
    different values: runs are averaged only when they are repeats of one experiment. The differing fields join
    the model in the panel label. Runs missing any of the four keys, or without stage times, are
    left out and named in the notes."""
    runs = _runs(db).join(
        query(db, "SELECT run_id, gen_ratio FROM stage_ratio"), on="run_id", how="left"
    ).join(_cell_fields(db), on="run_id", how="left")
    notes = []
    for row in runs.iter_rows(named=True):
        missing = [k for k in META_KEYS if row[k] is None]
        if missing:
            notes.append(f"run {row['run_id']} ({row['source_name']}): no {', '.join(missing)} metadata")
        elif row["gen_ratio"] is None:
            notes.append(f"run {row['run_id']} ({row['source_name']}): no summarization/generation time")
    complete = runs.drop_nulls([*META_KEYS, "gen_ratio"])
    extra = [c for c in (*CELL_FIELDS, *CELL_META_KEYS) if c in complete.columns]
    # A field splits cells when two runs of one cell give it different known values. A run that
    # does not say (NULL) is not split off on that field: the cell's tooltip lists the run ids.
    differ = [c for c in extra if not complete.is_empty() and complete.group_by(list(META_KEYS)).agg(
        pl.col(c).drop_nulls().n_unique().alias("n"))["n"].max() > 1]
    keys = [*META_KEYS, *differ]
    frame = (
        complete.group_by(keys)
        .agg(
            pl.col("gen_ratio").mean(),
            pl.len().alias("n_runs"),
            pl.col("run_id").sort().cast(pl.String).str.join(", ").alias("runs"),
        )
        .sort(keys, nulls_last=True)
    )
    label = pl.col("model")
    for c in differ:
        label = label + pl.lit(f" · {c} ") + pl.col(c).fill_null("?")
    frame = frame.with_columns(label.alias("panel"))
    hint = "set metadata with `tracekit import --meta key=value` or `tracekit meta RUN key=value`"
    return ChartData(frame, notes, hint if notes else "")


def heatmap_chart(data: ChartData) -> alt.TopLevelMixin:
    title = "Generation stage share of kernel time"
    if data.frame.is_empty():
        return _notice(title + ": nothing to draw", data.empty_reason("no runs"))
    x = alt.X("input_len:O", title="input length", sort="ascending", axis=alt.Axis(labelAngle=0))
    y = alt.Y("output_len:O", title="output length", sort="descending")
    # Cells of a fixed size, but panels no smaller than the axis titles: a sweep has many cells,
    # the fixtures one per panel.
    width = max(90, 52 * data.frame["input_len"].n_unique())
    height = max(100, 30 * data.frame["output_len"].n_unique())
    base = alt.Chart()
    rect = base.mark_rect(stroke="white").encode(
        x=x, y=y,
        color=alt.Color("gen_ratio:Q", title="generation share",
                        scale=alt.Scale(domain=[0, 1], scheme="blues"), legend=alt.Legend(format=".0%")),
        tooltip=[
            alt.Tooltip("model:N"), alt.Tooltip("batch:O"), alt.Tooltip("input_len:O"),
            alt.Tooltip("output_len:O"), alt.Tooltip("gen_ratio:Q", format=".1%"),
            *[alt.Tooltip(f"{c}:N") for c in (*CELL_FIELDS, *CELL_META_KEYS) if c in data.frame.columns],
            alt.Tooltip("n_runs:Q", title="runs averaged"), alt.Tooltip("runs:N", title="run ids"),
        ],
    )
    text = base.mark_text(fontSize=12).encode(
        x=x, y=y,
        text=alt.Text("gen_ratio:Q", format=".0%"),
        color=alt.condition("datum.gen_ratio > 0.55", alt.value("white"), alt.value("black")),
    )
    row = "panel" if "panel" in data.frame.columns else "model"
    return _titled(
        alt.layer(rect, text, data=data.frame)
        .properties(width=width, height=height)
        .facet(row=alt.Row(f"{row}:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left",
                                                                     labelFontWeight="bold")),
               column=alt.Column("batch:O", title=None, sort="ascending",
                                 header=alt.Header(labelExpr="'batch ' + datum.value", labelFontWeight="bold"))),
        title, data)


# -- composition bars (Figure 7) -----------------------------------------------------------------

def composition_data(db: Queryable) -> ChartData:
    comp = query(db, "SELECT run_id, bucket, time_ns, share FROM composition")
    runs = _runs(db)
    frame = comp.join(runs, on="run_id", how="inner")
    notes = [
        f"run {r['run_id']} ({r['source_name']}): no classified summarization/generation kernels"
        for r in runs.filter(~pl.col("run_id").is_in(comp["run_id"].unique().implode())).iter_rows(named=True)
    ]
    frame = frame.with_columns(
        _run_label(frame).alias("run"),
        pl.col("bucket").map_elements(bucket_order, return_dtype=pl.Int64).alias("bucket_order"),
        pl.when(pl.col("batch").is_null()).then(pl.lit("batch ?"))
        .otherwise(pl.lit("batch ") + pl.col("batch").cast(pl.String)).alias("batch_label"),
    ).sort(["batch", "model", "output_len", "run_id", "bucket_order"], nulls_last=True)
    return ChartData(frame, notes)


def composition_chart(data: ChartData) -> alt.TopLevelMixin:
    title = "Kernel time composition (summarization + generation)"
    if data.frame.is_empty():
        return _notice(title + ": nothing to draw", data.empty_reason("no runs"))
    order = data.frame.unique("run", maintain_order=True)["run"].to_list()
    bars = alt.Chart(data.frame).mark_bar().encode(
        x=alt.X("run:N", sort=order, title=None, axis=alt.Axis(labelAngle=-35, labelLimit=220)),
        y=alt.Y("share:Q", stack="normalize", title="share of kernel time", axis=alt.Axis(format="%")),
        color=alt.Color("bucket:N", scale=_color_scale(data.frame["bucket"].to_list()), title="bucket",
                        sort=alt.EncodingSortField("bucket_order")),
        order=alt.Order("bucket_order:Q"),
        tooltip=["run:N", "bucket:N", alt.Tooltip("share:Q", format=".1%"),
                 alt.Tooltip("time_ns:Q", format=",d", title="time (ns)")],
    ).properties(width=alt.Step(46), height=260)
    # Facets in numeric batch order (1, 8, 64), not as text (1, 64, 8); unknown batch last.
    facets = data.frame.unique("batch_label", maintain_order=True)["batch_label"].to_list()
    chart = bars.facet(column=alt.Column("batch_label:N", title=None, sort=facets)).resolve_scale(
        x="independent")
    return _titled(chart, title, data)


# -- per-step timeline ---------------------------------------------------------------------------

def steps_data(db: Queryable, run_ids: list[int] | None = None) -> ChartData:
    """Kernel time per forward pass and bucket, averaged over a run's iterations."""
    # Only the measured iterations: warm-up ones (stage 'warmup') would blur the average.
    where = "WHERE stage IN ('summarization', 'generation')"
    params: list[Any] = []
    if run_ids:
        where += f" AND run_id IN ({', '.join('?' for _ in run_ids)})"
        params = list(run_ids)
    raw = query(db, f"SELECT run_id, iteration, step, stage, category, time_ns, n_kernels FROM steps {where}",
                   params)
    runs = _runs(db)
    if run_ids:
        runs = runs.filter(pl.col("run_id").is_in(run_ids))
    notes = [
        f"run {r['run_id']} ({r['source_name']}): no forward passes found"
        for r in runs.filter(~pl.col("run_id").is_in(raw["run_id"].unique().implode())).iter_rows(named=True)
    ]
    split = pl.col("category").is_in(["GEMM", "GEMV"])
    prefix = pl.when(pl.col("stage") == "summarization").then(pl.lit("Sum ")).otherwise(pl.lit("Gen "))
    raw = raw.with_columns(
        pl.when(split).then(prefix + pl.col("category"))
        .otherwise(pl.col("category").fill_null("Unclassified")).alias("bucket"),
        pl.col("iteration").fill_null(-1),
    )
    n_iter = raw.group_by("run_id").agg(pl.col("iteration").n_unique().alias("n_iter"))
    frame = (
        raw.group_by(["run_id", "step", "stage", "bucket"])
        .agg(pl.col("time_ns").sum(), pl.col("n_kernels").sum())
        .join(n_iter, on="run_id")
        .with_columns(
            (pl.col("time_ns") / pl.col("n_iter") / 1e6).alias("time_ms"),
            (pl.col("n_kernels") / pl.col("n_iter")).alias("kernels"),
        )
        .join(runs, on="run_id")
    )
    frame = frame.with_columns(
        _run_label(frame).alias("run"),
        pl.col("bucket").map_elements(bucket_order, return_dtype=pl.Int64).alias("bucket_order"),
    ).sort(["run_id", "step", "bucket_order"])
    return ChartData(frame, notes)


def steps_chart(data: ChartData) -> alt.TopLevelMixin:
    title = "Kernel time per forward pass (step 0 = summarization; mean over iterations)"
    if data.frame.is_empty():
        return _notice("Per-step timeline: nothing to draw", data.empty_reason("no runs"))
    n_steps = data.frame["step"].n_unique()
    # Up to ~100 passes each gets its own labelled bar; beyond that a continuous axis reads better.
    x = alt.X("step:O", title="forward pass (step)") if n_steps <= 100 else \
        alt.X("step:Q", title="forward pass (step)")
    bars = alt.Chart(data.frame).mark_bar().encode(
        x=x,
        y=alt.Y("time_ms:Q", stack="zero", title="kernel time (ms)"),
        color=alt.Color("bucket:N", scale=_color_scale(data.frame["bucket"].to_list()), title="bucket",
                        sort=alt.EncodingSortField("bucket_order")),
        order=alt.Order("bucket_order:Q"),
        tooltip=["run:N", "step:Q", "stage:N", "bucket:N", alt.Tooltip("time_ms:Q", format=".3f"),
                 alt.Tooltip("kernels:Q", format=".0f")],
    ).properties(width=min(900, max(240, 14 * n_steps)), height=160)
    order = data.frame.unique("run", maintain_order=True)["run"].to_list()
    chart = bars.facet(row=alt.Row("run:N", sort=order, title=None)).resolve_scale(y="independent")
    return _titled(chart, title, data)


# -- per-pass kernel time against wall-clock time (step_totals view) -----------------------------

def passes_data(db: Queryable) -> ChartData:
    """Kernel time and wall-clock time of each forward pass of the measured iteration(s)."""
    # host_ns: the pass's marker extent on the CPU clock (step_totals; was wall_ns).
    raw = query(db, "SELECT run_id, iteration, step, stage, time_ns, host_ns AS wall_ns FROM step_totals "
                    "WHERE stage IN ('summarization', 'generation')")
    n_iter = raw.group_by("run_id").agg(pl.col("iteration").n_unique().alias("n_iter"))
    per = (
        raw.group_by(["run_id", "step"])
        .agg(pl.col("time_ns").sum(), pl.col("wall_ns").sum(), pl.col("wall_ns").null_count().alias("no_wall"))
        .join(n_iter, on="run_id")
    )
    long = per.select(
        "run_id", "step",
        (pl.col("time_ns") / pl.col("n_iter") / 1e6).alias("kernel time"),
        # Wall time exists only for marked passes; NULL rather than 0 when it is unknown.
        pl.when(pl.col("no_wall") == 0).then(pl.col("wall_ns") / pl.col("n_iter") / 1e6).alias("wall time"),
    ).unpivot(index=["run_id", "step"], variable_name="measure", value_name="ms").drop_nulls("ms")
    runs = _runs(db)
    notes = [
        f"run {r['run_id']} ({r['source_name']}): no forward passes found"
        for r in runs.filter(~pl.col("run_id").is_in(raw["run_id"].unique().implode())).iter_rows(named=True)
    ]
    frame = long.join(runs, on="run_id")
    frame = frame.with_columns(_run_label(frame).alias("run")).sort(["run_id", "measure", "step"])
    return ChartData(frame, notes)


def passes_chart(data: ChartData) -> alt.TopLevelMixin:
    title = "Kernel time and wall-clock time per forward pass (step 0 = summarization)"
    if data.frame.is_empty():
        return _notice("Per-pass times: nothing to draw", data.empty_reason("no runs"))
    lines = alt.Chart(data.frame).mark_line(point=True).encode(
        x=alt.X("step:Q", title="forward pass (step)", axis=alt.Axis(tickMinStep=1)),
        y=alt.Y("ms:Q", title="ms"),
        color=alt.Color("measure:N", title=None,
                        scale=alt.Scale(domain=["kernel time", "wall time"],
                                        range=[PALETTE["Sum GEMM"], "#555555"])),
        tooltip=["run:N", "step:Q", "measure:N", alt.Tooltip("ms:Q", format=".3f")],
    ).properties(width=420, height=140)
    order = data.frame.unique("run", maintain_order=True)["run"].to_list()
    chart = lines.facet(row=alt.Row("run:N", sort=order, title=None)).resolve_scale(y="independent")
    return _titled(chart, title, data)


# -- stage split (stage_ratio view) --------------------------------------------------------------

def stages_data(db: Queryable) -> ChartData:
    sr = query(db, "SELECT run_id, summarization_ns, generation_ns, other_ns, warmup_ns, gen_ratio "
                  "FROM stage_ratio")
    frame = sr.join(_runs(db), on="run_id")
    frame = frame.with_columns(_run_label(frame).alias("run"))
    long = frame.unpivot(
        index=["run_id", "run", "gen_ratio"],
        on=["summarization_ns", "generation_ns", "other_ns", "warmup_ns"],
        variable_name="stage", value_name="time_ns",
    ).with_columns(
        pl.col("stage").str.replace("_ns$", ""),
        (pl.col("time_ns").fill_null(0) / 1e6).alias("time_ms"),
    ).sort(["run_id", "stage"])
    return ChartData(long, [])


def stages_chart(data: ChartData) -> alt.TopLevelMixin:
    title = "Kernel time by stage"
    if data.frame.is_empty():
        return _notice(title + ": nothing to draw", ["no runs"])
    stages = list(STAGE_COLORS)
    return alt.Chart(data.frame, title=title).mark_bar().encode(
        y=alt.Y("run:N", title=None, sort=data.frame.unique("run", maintain_order=True)["run"].to_list(),
                axis=alt.Axis(labelLimit=260)),
        x=alt.X("time_ms:Q", title="kernel time (ms)"),
        color=alt.Color("stage:N", scale=alt.Scale(domain=stages, range=[STAGE_COLORS[s] for s in stages])),
        order=alt.Order("stage_order:Q"),
        tooltip=["run:N", "stage:N", alt.Tooltip("time_ms:Q", format=".3f"),
                 alt.Tooltip("gen_ratio:Q", format=".1%", title="generation share")],
    ).transform_calculate(
        stage_order=f"indexof({stages!r}, datum.stage)"
    ).properties(width=520)


# -- top kernels ---------------------------------------------------------------------------------

def top_kernels_data(db: Queryable, per_run: int = 10) -> ChartData:
    top = query(db,
        "SELECT run_id, short_name, category, n, time_ns, share FROM ("
        " SELECT *, row_number() OVER (PARTITION BY run_id ORDER BY time_ns DESC, short_name) AS rk"
        " FROM top_kernels) WHERE rk <= ? ORDER BY run_id, time_ns DESC",
        [per_run],
    )
    frame = top.join(_runs(db), on="run_id")
    frame = frame.with_columns(
        _run_label(frame).alias("run"),
        pl.col("category").fill_null("Unclassified").alias("bucket"),
        (pl.col("time_ns") / 1e6).alias("time_ms"),
    )
    return ChartData(frame, [])


def top_kernels_chart(data: ChartData) -> alt.TopLevelMixin:
    title = "Top kernels by time"
    if data.frame.is_empty():
        return _notice(title + ": nothing to draw", ["no kernels"])
    bars = alt.Chart(data.frame).mark_bar().encode(
        y=alt.Y("short_name:N", sort="-x", title=None, axis=alt.Axis(labelLimit=320)),
        x=alt.X("share:Q", title="share of run's kernel time", axis=alt.Axis(format="%")),
        color=alt.Color("bucket:N", scale=_color_scale(data.frame["bucket"].to_list()), title="category"),
        tooltip=["run:N", "short_name:N", "bucket:N", "n:Q", alt.Tooltip("share:Q", format=".1%"),
                 alt.Tooltip("time_ms:Q", format=".3f")],
    ).properties(width=420)
    order = data.frame.unique("run", maintain_order=True)["run"].to_list()
    chart = bars.facet(row=alt.Row("run:N", sort=order, title=None)).resolve_scale(y="independent")
    return _titled(chart, title, data)


# -- diff of two runs or groups ------------------------------------------------------------------

def diff_chart(buckets: pl.DataFrame, kernels: pl.DataFrame, label_a: str, label_b: str,
               top: int = 15) -> alt.TopLevelMixin:
    """Per-bucket share change (points) and the kernels whose mean time changed most."""
    title = f"B minus A, where A = {label_a}; B = {label_b}"
    b = buckets.with_columns(
        (pl.col("delta_share") * 100).alias("delta_pp"),
        pl.col("bucket").map_elements(bucket_order, return_dtype=pl.Int64).alias("bucket_order"),
    )
    left = alt.Chart(b, title="share change by bucket (percentage points)").mark_bar().encode(
        y=alt.Y("bucket:N", sort=alt.EncodingSortField("bucket_order"), title=None),
        x=alt.X("delta_pp:Q", title="Δ share (pp)"),
        color=alt.Color("bucket:N", scale=_color_scale(b["bucket"].to_list()), legend=None),
        tooltip=["bucket:N", alt.Tooltip("share_a:Q", format=".1%"), alt.Tooltip("share_b:Q", format=".1%"),
                 alt.Tooltip("delta_pp:Q", format="+.2f")],
    ).properties(width=300)
    k = kernels.head(top).with_columns(
        (pl.col("delta_ns") / 1e6).alias("delta_ms"),
        pl.col("category").fill_null("Unclassified").alias("bucket"),
    )
    right = alt.Chart(k, title=f"kernels with the largest time change (top {top})").mark_bar().encode(
        y=alt.Y("short_name:N", sort=alt.EncodingSortField("abs_delta", order="descending"), title=None,
                axis=alt.Axis(labelLimit=300)),
        x=alt.X("delta_ms:Q", title="Δ mean time per run (ms)"),
        color=alt.Color("bucket:N", scale=_color_scale(k["bucket"].to_list()), title="category"),
        tooltip=["short_name:N", "bucket:N", alt.Tooltip("delta_ms:Q", format="+.3f")],
    ).transform_calculate(abs_delta="abs(datum.delta_ms)").properties(width=300)
    return alt.hconcat(left, right, title=title).resolve_scale(color="independent")


# -- output --------------------------------------------------------------------------------------

CHARTS = {
    "heatmap": (heatmap_data, heatmap_chart),
    "composition": (composition_data, composition_chart),
    "steps": (steps_data, steps_chart),
    "passes": (passes_data, passes_chart),
    "stages": (stages_data, stages_chart),
    "top": (top_kernels_data, top_kernels_chart),
}


# Charts with one panel per run; a sweep of hundreds of runs would make them unreadably long.
PER_RUN_CHARTS = ("steps", "passes", "top")


def limit_runs(data: ChartData, max_runs: int, name: str) -> ChartData:
    """Keep the first max_runs runs of a per-run chart and say which were left out."""
    runs = data.frame["run_id"].unique().sort().to_list() if "run_id" in data.frame.columns else []
    if len(runs) <= max_runs:
        return data
    kept = runs[:max_runs]
    hint = (f"{len(runs) - max_runs} more runs not drawn here: "
            f"`tracekit chart {name} --out FILE`{' --run N' if name == 'steps' else ''} draws them")
    return replace(data, frame=data.frame.filter(pl.col("run_id").is_in(kept)),
                   hint="; ".join(h for h in (data.hint, hint) if h))


def build(db: Queryable, name: str, max_runs: int | None = None,
          notes_in_chart: bool = True) -> tuple[alt.TopLevelMixin, ChartData]:
    """The chart `name` of CHARTS and the data it shows. notes_in_chart=False leaves the notes on
    runs not shown out of the chart's subtitle, for a page that prints them beside it."""
    data_fn, chart_fn = CHARTS[name]
    data = data_fn(db)
    if max_runs is not None and name in PER_RUN_CHARTS:
        data = limit_runs(data, max_runs, name)
    data.notes_in_chart = notes_in_chart
    return chart_fn(data), data


def to_spec(chart: alt.TopLevelMixin) -> dict:
    """The chart's Vega-Lite spec with its data inline and every string made printable."""
    # Data is embedded in the spec; views are pre-aggregated, but a long sweep's step timeline
    # can pass Altair's 5000-row guard, which exists for notebooks, not for files.
    with alt.data_transformers.disable_max_rows():
        return printable_spec(chart.to_dict())


IMAGE_SUFFIXES = (".png", ".svg")
RENDER_TIMEOUT_S = 120.0  # per chart; the fixtures' charts take well under a second each


def _render_one(spec: dict, path: Path, scale: float) -> None:
    import vl_convert as vlc

    suffix = path.suffix.lower()
    if suffix == ".png":
        data = vlc.vegalite_to_png(spec, scale=scale)
    else:
        data = vlc.vegalite_to_svg(spec).encode("utf-8")
    # Written beside and renamed: a renderer that dies midway leaves no half-written image.
    tmp = path.with_name(path.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(path)


def _died(rc: int) -> str:
    if rc < 0:
        try:
            return f"the renderer was killed by {signal.Signals(-rc).name}"
        except ValueError:
            return f"the renderer was killed by signal {-rc}"
    return f"the renderer exited with status {rc}"


def render_images(jobs: list[tuple[dict, list[Path]]], scale: float = 2.0) -> dict[int, str]:
    """Render each job's spec to each of its paths (.png or .svg) with vl-convert, in a child
    process: vl-convert aborts the process (SIGABRT) on some inputs instead of raising, and an
    abort must cost one chart, not the program. Returns {job index: reason} for the jobs that
    failed; after a crash the child is restarted at the next job."""
    for _, paths in jobs:
        for p in paths:
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise ValueError(f"{p}: unsupported image type {p.suffix!r} (use .png or .svg)")
    failed: dict[int, str] = {}
    start = 0
    while start < len(jobs):
        todo = jobs[start:]
        payload = json.dumps({"scale": scale, "jobs": [
            {"spec": spec, "paths": [str(p) for p in paths]} for spec, paths in todo]})
        try:
            proc = subprocess.run([sys.executable, "-m", "tracekit.outputs.render"], input=payload,
                                  capture_output=True, text=True, timeout=RENDER_TIMEOUT_S * len(todo))
            out, rc, err = proc.stdout, proc.returncode, proc.stderr
        except subprocess.TimeoutExpired as exc:
            out = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            rc, err = None, ""
        reported = 0  # the child reports each job, in order, as `ok I` or `error I REASON`
        for line in out.splitlines():
            if line.startswith("ok "):
                reported += 1
            elif line.startswith("error "):
                i, _, reason = line[6:].partition(" ")
                failed[start + int(i)] = reason
                reported += 1
        if rc == 0:
            break
        # The job after the last one reported was being rendered when the child died.
        bad = start + reported
        if bad >= len(jobs):
            break
        last = err.strip().splitlines()[-1] if err.strip() else ""
        failed[bad] = ("did not finish within the time limit" if rc is None else _died(rc)) + (
            f" ({printable(last)[:200]})" if last else "")
        start = bad + 1
    return failed


def write_image(spec: dict, path: Path, scale: float = 2.0) -> None:
    """PNG or SVG by the file's suffix, rendered offline by vl-convert in a child process;
    a renderer failure raises TracekitError with the reason."""
    from tracekit.errors import TracekitError

    failed = render_images([(spec, [path])], scale=scale)
    if failed:
        raise TracekitError(f"{path}: could not render the chart: {failed[0]}")
