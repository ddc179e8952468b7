"""Altair charts of the analysis views: generation-share heat-map, composition bars, per-step
timeline, stage split, top kernels and run-to-run deltas.

Each chart has a `*_data(db)` function (a Polars frame read from the views, plus notes on what
could not be drawn) and a builder that turns that frame into an Altair chart, so tests can check
the data a chart shows against the database independently of the drawing.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
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


class Queryable(Protocol):
    def query(self, sql: str, params: list | None = None) -> pl.DataFrame: ...


@dataclass
class ChartData:
    """What one chart shows, and why some runs are not in it."""

    frame: pl.DataFrame
    notes: list[str] = field(default_factory=list)  # one per run left out, starting "run N "
    hint: str = ""                                   # how to fix what the notes report

    def subtitle(self) -> list[str]:
        return [f"not shown: {n}" for n in self.notes] + ([self.hint] if self.hint else [])


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
    """`run 3 · llama2-7b · o8` when metadata is known, else `run 3 · <file name>`."""
    cols = set(frame.columns)
    model = pl.col("model") if "model" in cols else pl.lit(None, pl.String)
    out = pl.col("output_len") if "output_len" in cols else pl.lit(None, pl.Int64)
    return (
        pl.lit("run ") + pl.col("run_id").cast(pl.String) + pl.lit(" · ")
        + pl.coalesce(model, pl.col("source_name").str.slice(0, 28))
        + pl.when(out.is_not_null()).then(pl.lit(" · o") + out.cast(pl.String)).otherwise(pl.lit(""))
    )


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

def heatmap_data(db: Queryable) -> ChartData:
    """Mean generation share per (model, batch, input_len, output_len); runs missing any of
    those keys, or without stage times, are left out and named in the notes."""
    runs = _runs(db).join(
        query(db, "SELECT run_id, gen_ratio FROM stage_ratio"), on="run_id", how="left"
    )
    notes = []
    for row in runs.iter_rows(named=True):
        missing = [k for k in META_KEYS if row[k] is None]
        if missing:
            notes.append(f"run {row['run_id']} ({row['source_name']}): no {', '.join(missing)} metadata")
        elif row["gen_ratio"] is None:
            notes.append(f"run {row['run_id']} ({row['source_name']}): no summarization/generation time")
    complete = runs.drop_nulls([*META_KEYS, "gen_ratio"])
    frame = (
        complete.group_by(list(META_KEYS))
        .agg(
            pl.col("gen_ratio").mean(),
            pl.len().alias("n_runs"),
            pl.col("run_id").sort().cast(pl.String).str.join(", ").alias("runs"),
        )
        .sort(list(META_KEYS))
    )
    hint = "set metadata with `tracekit import --meta key=value` or `tracekit meta RUN key=value`"
    return ChartData(frame, notes, hint if notes else "")


def heatmap_chart(data: ChartData) -> alt.TopLevelMixin:
    title = "Generation stage share of kernel time"
    if data.frame.is_empty():
        return _notice(title + ": nothing to draw", data.subtitle() or ["no runs"])
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
            alt.Tooltip("n_runs:Q", title="runs averaged"), alt.Tooltip("runs:N", title="run ids"),
        ],
    )
    text = base.mark_text(fontSize=12).encode(
        x=x, y=y,
        text=alt.Text("gen_ratio:Q", format=".0%"),
        color=alt.condition("datum.gen_ratio > 0.55", alt.value("white"), alt.value("black")),
    )
    sub = data.subtitle()
    return (
        alt.layer(rect, text, data=data.frame)
        .properties(width=width, height=height)
        .facet(row=alt.Row("model:N", title=None, header=alt.Header(labelAngle=0, labelAlign="left",
                                                                    labelFontWeight="bold")),
               column=alt.Column("batch:O", title=None, header=alt.Header(labelExpr="'batch ' + datum.value",
                                                                         labelFontWeight="bold")))
        .properties(title=alt.Title(title, subtitle=sub) if sub else title)
    )


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
        return _notice(title + ": nothing to draw", data.subtitle() or ["no runs"])
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
    chart = bars.facet(column=alt.Column("batch_label:N", title=None)).resolve_scale(x="independent")
    return chart.properties(title=alt.Title(title, subtitle=data.subtitle())
                            if data.subtitle() else title)


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
        return _notice("Per-step timeline: nothing to draw", data.subtitle() or ["no runs"])
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
    return chart.properties(title=alt.Title(title, subtitle=data.subtitle())
                            if data.subtitle() else title)


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
        return _notice("Per-pass times: nothing to draw", data.subtitle() or ["no runs"])
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
    return chart.properties(title=alt.Title(title, subtitle=data.subtitle()) if data.subtitle() else title)


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
    return chart.properties(title=alt.Title(title, subtitle=data.subtitle()) if data.subtitle() else title)


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
    return ChartData(data.frame.filter(pl.col("run_id").is_in(kept)), data.notes,
                     "; ".join(h for h in (data.hint, hint) if h))


def build(db: Queryable, name: str, max_runs: int | None = None) -> tuple[alt.TopLevelMixin, ChartData]:
    data_fn, chart_fn = CHARTS[name]
    data = data_fn(db)
    if max_runs is not None and name in PER_RUN_CHARTS:
        data = limit_runs(data, max_runs, name)
    return chart_fn(data), data


def to_spec(chart: alt.TopLevelMixin) -> dict:
    # Data is embedded in the spec; views are pre-aggregated, but a long sweep's step timeline
    # can pass Altair's 5000-row guard, which exists for notebooks, not for files.
    with alt.data_transformers.disable_max_rows():
        return chart.to_dict()


def write_image(spec: dict, path: Path, scale: float = 2.0) -> None:
    """PNG or SVG by the file's suffix, rendered offline by vl-convert."""
    import vl_convert as vlc

    suffix = path.suffix.lower()
    if suffix == ".png":
        path.write_bytes(vlc.vegalite_to_png(spec, scale=scale))
    elif suffix == ".svg":
        path.write_text(vlc.vegalite_to_svg(spec), encoding="utf-8")
    else:
        raise ValueError(f"{path}: unsupported image type {suffix!r} (use .png or .svg)")
