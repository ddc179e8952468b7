"""Charts and report tables of multi-rank runs (tracekit.ranks, views comm_ops / ranks.sql).

- per-rank bars side by side: each rank's kernel time by bucket (rank_composition), in ms, so the
  ranks of one run compare in absolute time and 'COMM wait' shows who waits for whom;
- the communication split per stage: each rank's COMM time split two ways, wait / transfer (who
  was late) and exposed / hidden (what compute on the GPU did not cover).

For the report: `rank_tables(db)` and `rank_figures(db)` return the report's Table / Figure
objects (empty lists when no run has several ranks), so the report adds a section without
knowing the views.
"""

from __future__ import annotations

import altair as alt
import polars as pl

from tracekit.outputs.charts import ChartData, Queryable, _notice, bucket_order, color_of, query

PART_COLORS = {
    "wait": "#d9d2e9",       # waiting for the slowest rank
    "transfer": "#674ea7",   # moving data (COMM's own colour)
    "not measured": "#b4a7d6",
    "exposed": "#cc0000",    # no compute on the GPU meanwhile
    "hidden": "#93c47d",     # overlapped by compute
}


def _multi_rank_runs(db: Queryable) -> pl.DataFrame:
    return query(db, "SELECT r.run_id, r.source_name, r.world_size, r.ranks FROM runs r "
                     "WHERE r.world_size IS NOT NULL ORDER BY r.run_id")


def _bucket_scale(buckets: list[str]) -> alt.Scale:
    # composition's colours, and the wait in the light shade of COMM's colour
    present = sorted(set(buckets), key=lambda b: (bucket_order(b), b))
    return alt.Scale(domain=present, range=[PART_COLORS["wait"] if b == "COMM wait" else color_of(b) for b in present])


def _label(frame: pl.DataFrame) -> pl.Expr:
    return pl.lit("run ") + pl.col("run_id").cast(pl.String) + pl.lit(" · ") + pl.col("source_name").str.slice(0, 40)


# -- per-rank bars -------------------------------------------------------------------------------

def rank_bars_data(db: Queryable) -> ChartData:
    comp = query(db, "SELECT run_id, rank, bucket, time_ns, share FROM rank_composition")
    runs = _multi_rank_runs(db)
    frame = comp.join(runs, on="run_id", how="inner")
    notes = [f"run {r['run_id']} ({r['source_name']}): no summarization/generation kernels"
             for r in runs.filter(~pl.col("run_id").is_in(comp["run_id"].unique().implode())).iter_rows(named=True)]
    frame = frame.with_columns(
        _label(frame).alias("run"),
        (pl.lit("rank ") + pl.col("rank").cast(pl.String)).alias("rank_label"),
        (pl.col("time_ns") / 1e6).alias("time_ms"),
        pl.col("bucket").map_elements(bucket_order, return_dtype=pl.Int64).alias("bucket_order"),
    ).sort(["run_id", "rank", "bucket_order"])
    return ChartData(frame, notes)


def rank_bars_chart(data: ChartData) -> alt.TopLevelMixin:
    title = "Kernel time per rank (summarization + generation)"
    if data.frame.is_empty():
        return _notice(title + ": no multi-rank run", data.subtitle() or ["no run has several ranks"])
    bars = alt.Chart(data.frame).mark_bar().encode(
        x=alt.X("rank_label:N", title=None),
        y=alt.Y("time_ms:Q", stack="zero", title="kernel time (ms)"),
        color=alt.Color("bucket:N", scale=_bucket_scale(data.frame["bucket"].to_list()), title="bucket",
                        sort=alt.EncodingSortField("bucket_order")),
        order=alt.Order("bucket_order:Q"),
        tooltip=["run:N", "rank_label:N", "bucket:N", alt.Tooltip("time_ms:Q", format=",.3f"),
                 alt.Tooltip("share:Q", format=".1%")],
    ).properties(width=alt.Step(90), height=260)
    chart = bars.facet(column=alt.Column("run:N", title=None, header=alt.Header(labelLimit=170, labelFontSize=10))
                       ).resolve_scale(x="independent")
    subtitle = data.subtitle()
    return chart.properties(title=alt.Title(title, subtitle=subtitle) if subtitle else title)


# -- wait / transfer / exposed per stage ---------------------------------------------------------

def comm_split_data(db: Queryable) -> ChartData:
    """Per run, rank and stage: COMM time as wait + transfer (or 'not measured') and as exposed + hidden."""
    split = query(db, """
        SELECT run_id, rank, stage,
               sum(wait_ns) AS wait, sum(transfer_ns) AS transfer,
               sum(dur_ns) FILTER (WHERE wait_ns IS NULL) AS not_measured,
               sum(exposed_ns) AS exposed, sum(dur_ns - exposed_ns) AS hidden,
               string_agg(DISTINCT wait_basis, ', ') AS basis
        FROM comm_ops WHERE rank IS NOT NULL AND stage IN ('summarization', 'generation')
        GROUP BY ALL""")
    runs = _multi_rank_runs(db)
    notes = [f"run {r['run_id']} ({r['source_name']}): no communication kernels"
             for r in runs.filter(~pl.col("run_id").is_in(split["run_id"].unique().implode())).iter_rows(named=True)]
    long = split.unpivot(index=["run_id", "rank", "stage", "basis"],
                         on=["wait", "transfer", "not_measured", "exposed", "hidden"],
                         variable_name="part", value_name="time_ns")
    long = long.with_columns(pl.col("part").str.replace("_", " "), pl.col("time_ns").fill_null(0))
    long = long.join(runs, on="run_id", how="inner").with_columns(
        _label(long.join(runs, on="run_id", how="inner")).alias("run"),
        (pl.lit("rank ") + pl.col("rank").cast(pl.String)).alias("rank_label"),
        pl.when(pl.col("part").is_in(["exposed", "hidden"])).then(pl.lit("exposed / hidden"))
        .otherwise(pl.lit("wait / transfer")).alias("split"),
        (pl.col("time_ns") / 1e6).alias("time_ms"),
        pl.col("part").replace_strict(list(PART_COLORS), list(range(len(PART_COLORS))),
                                      return_dtype=pl.Int64).alias("part_order"),
    ).sort(["run_id", "rank", "stage", "part_order"])
    return ChartData(long, notes)


def comm_split_chart(data: ChartData) -> alt.TopLevelMixin:
    title = "Communication per stage: wait / transfer, and exposed / hidden"
    if data.frame.is_empty():
        return _notice(title + ": no multi-rank run", data.subtitle() or ["no collective kernels in a multi-rank run"])
    parts = [p for p in PART_COLORS if p in set(data.frame["part"].to_list())]
    bars = alt.Chart(data.frame).mark_bar().encode(
        x=alt.X("stage:N", title=None, sort=["summarization", "generation"]),
        xOffset=alt.XOffset("split:N", sort=["wait / transfer", "exposed / hidden"]),
        y=alt.Y("time_ms:Q", stack="zero", title="COMM kernel time (ms)"),
        color=alt.Color("part:N", scale=alt.Scale(domain=parts, range=[PART_COLORS[p] for p in parts]),
                        title="part"),
        order=alt.Order("part_order:Q"),
        tooltip=["run:N", "rank_label:N", "stage:N", "split:N", "part:N",
                 alt.Tooltip("time_ms:Q", format=",.3f"), "basis:N"],
    ).properties(width=alt.Step(40), height=240)
    chart = bars.facet(column=alt.Column("rank_label:N", title=None),
                       row=alt.Row("run:N", title=None, header=alt.Header(labelLimit=200, labelFontSize=10)))
    subtitle = data.subtitle() + ["left bar: wait for the slowest rank + transfer; right bar: the same time, "
                                  "exposed (no compute on the GPU) + hidden"]
    return chart.properties(title=alt.Title(title, subtitle=subtitle))


# -- what the report needs -----------------------------------------------------------------------

def rank_tables(db: Queryable) -> list:
    """The report's tables of multi-rank runs (report.Table), none when no run has several ranks."""
    from tracekit.outputs.report import Table

    if _multi_rank_runs(db).is_empty():
        return []
    summary = query(db, "SELECT * FROM run_rank_summary ORDER BY run_id")
    per_rank = query(db, "SELECT * FROM rank_stage_ratio ORDER BY run_id, rank")
    clocks = query(db, "SELECT run_id, rank, device, source_name, rank_source, clock_offset_ns, align_method, "
                       "align_events, align_spread_ns, stage_method FROM run_ranks ORDER BY run_id, rank")
    comp = query(db, "SELECT * FROM rank_composition ORDER BY run_id, rank")
    return [
        Table("ranks", "Multi-rank runs", summary,
              "How the ranks of each run combine: gen_ratio_summed over the GPU-seconds of all ranks, "
              "min/max over ranks, and the critical (slowest) rank, whose gen_ratio_no_wait leaves its "
              "waiting out. comm_wait_share: waiting for the slowest rank inside collectives.",
              extra={"rank_clocks": clocks, "rank_composition": comp}),
        Table("rank_stage_ratio", "Stage ratios per rank", per_rank,
              "Each rank's own stage split; comm_wait_ns is NULL where the wait cannot be measured "
              "(a rank missing, clocks not aligned)."),
    ]


def rank_figures(db: Queryable) -> list:
    """The report's figures of multi-rank runs (report.Figure), none when no run has several ranks."""
    from tracekit.outputs.charts import to_spec
    from tracekit.outputs.report import Figure

    if _multi_rank_runs(db).is_empty():
        return []
    bars, split = rank_bars_data(db), comm_split_data(db)
    return [
        Figure("rank_bars", "Kernel time per rank", to_spec(rank_bars_chart(bars)), bars),
        Figure("comm_split", "Communication: wait / transfer / exposed", to_spec(comm_split_chart(split)), split),
    ]
