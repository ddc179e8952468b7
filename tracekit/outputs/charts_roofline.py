"""The roofline: what the roofline views say, as tables and an Altair chart.

- `roofline_tables(db)`: the frames a report section shows (`roofline`: per run, stage and
  category, in ms / TFLOP/s / TB/s with the shares of the roofs; `decode_ideal`: each decode pass
  against its HBM limit; `missing`: per run, what kept kernels from having a work count).
- `roofline_chart_data(db, run_ids)` / `roofline_chart(data)`: arithmetic intensity against
  achieved FLOP/s, log-log, one point per kernel coloured by category, one panel per stage, with
  the run's roofs (memory bandwidth slope, dense bf16 tensor and fp32 vector ceilings).
- `roofline_figures(db)`: one chart per GPU peak set, ready for a report.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tracekit.outputs.charts import ChartData, Queryable, _color_scale, _notice, query

if TYPE_CHECKING:
    import altair as alt
    import polars as pl

STAGES = ("summarization", "generation")


def _stage_filter(stage: str | None) -> tuple[str, list]:
    if stage in (None, "measured"):
        return "r.stage IN ('summarization', 'generation')", []
    if stage == "all":
        return "true", []
    return "r.stage = ?", [stage]


def roofline_frame(db: Queryable, run_id: int | None = None, stage: str | None = None) -> pl.DataFrame:
    """The `roofline` view in display units, with the shares of each roof."""
    cond, params = _stage_filter(stage)
    where = [cond]
    if run_id is not None:
        where.append("r.run_id = ?")
        params.append(run_id)
    sql = f"""
        SELECT r.run_id, i.source_name, i.gpu_name, r.stage, r.category, r.n_kernels,
               round(r.time_ns / 1e6, 4) AS time_ms,
               round(r.time_with_work_ns / 1e6, 4) AS work_time_ms,
               round(r.flops / 1e9, 3) AS gflop, round(r.bytes / 1e9, 4) AS gbytes,
               round(r.intensity, 2) AS intensity,
               round(r.achieved_flops_per_s / 1e12, 2) AS achieved_tflops,
               round(r.achieved_bytes_per_s / 1e12, 3) AS achieved_tbps,
               round(r.peak_flops_per_s / 1e12, 1) AS peak_tflops,
               round(r.peak_bytes_per_s / 1e12, 3) AS peak_tbps,
               round(r.achieved_flops_per_s / r.peak_flops_per_s, 3) AS tflops_share,
               round(r.hbm_bytes / nullif(r.time_with_work_ns * 1e-9, 0) / r.peak_bytes_per_s, 3) AS hbm_share,
               round(r.bound_ns / 1e6, 4) AS bound_ms,
               round(r.roof_share, 3) AS roof_share, r.limit_by
        FROM roofline r JOIN run_info i USING (run_id)
        WHERE {' AND '.join(where)}
        ORDER BY r.run_id, CASE r.stage WHEN 'summarization' THEN 0 WHEN 'generation' THEN 1 ELSE 2 END,
                 r.time_ns DESC, r.category"""
    return query(db, sql, params or None)


def decode_frame(db: Queryable, run_id: int | None = None) -> pl.DataFrame:
    """Each decode pass: bytes it must read over HBM bandwidth, against its kernel, GPU-span and host time."""
    where, params = ("d.run_id = ?", [run_id]) if run_id is not None else ("true", [])
    sql = f"""
        SELECT d.run_id, i.source_name, i.model, i.batch, d.iteration, d.step,
               round(d.weight_bytes / 1e9, 4) AS weight_gb, round(d.kv_bytes / 1e6, 3) AS kv_mb,
               round(d.ideal_ns / 1e6, 4) AS ideal_ms, round(d.time_ns / 1e6, 4) AS kernel_ms,
               round(d.gpu_span_ns / 1e6, 4) AS gpu_span_ms, round(d.host_ns / 1e6, 4) AS host_ms,
               round(d.kernel_hbm_share, 3) AS hbm_share, round(d.span_hbm_share, 3) AS span_hbm_share,
               round(d.host_hbm_share, 3) AS host_hbm_share,
               d.n_missing
        FROM decode_ideal d JOIN run_info i USING (run_id)
        WHERE {where}
        ORDER BY d.run_id, d.iteration, d.step"""
    return query(db, sql, params or None)


def missing_frame(db: Queryable, run_id: int | None = None) -> pl.DataFrame:
    """Per run: kernels of the measured stages without a work count, and the commonest reason."""
    where, params = ("k.run_id = ?", [run_id]) if run_id is not None else ("true", [])
    sql = f"""
        SELECT k.run_id, count(*) AS n_kernels, count(*) FILTER (WHERE k.bytes IS NULL) AS n_without_work,
               coalesce(sum(k.dur_ns) FILTER (WHERE k.bytes IS NULL), 0) / sum(k.dur_ns) AS time_share_without,
               mode(regexp_replace(k.evidence, '^[^:]*: ', '')) FILTER (WHERE k.bytes IS NULL) AS reason
        FROM kernel_work k
        WHERE {where} AND k.stage IN ('summarization', 'generation')
        GROUP BY k.run_id ORDER BY k.run_id"""
    return query(db, sql, params or None)


def roofline_tables(db: Queryable) -> dict[str, pl.DataFrame]:
    """What a report section on the roofline shows, one frame per table."""
    return {"roofline": roofline_frame(db), "decode_ideal": decode_frame(db), "missing": missing_frame(db)}


# -- the chart ------------------------------------------------------------------------------------

def roofline_chart_data(db: Queryable, run_ids: list[int] | None = None) -> ChartData:
    """Kernels of the measured stages with work, and the roofs of their runs' GPU."""
    import polars as pl

    rid = "" if not run_ids else f"AND k.run_id IN ({', '.join(str(int(r)) for r in run_ids)})"
    frame = query(db, f"""
        SELECT k.run_id, k.stage, coalesce(k.category, 'Unclassified') AS category, k.short_name, k.op_name,
               k.dur_ns, k.intensity, k.achieved_flops_per_s, k.achieved_bytes_per_s, k.evidence,
               p.peak_gpu, p.bf16_flops_per_s, p.fp32_flops_per_s, p.bytes_per_s
        FROM kernel_work k JOIN run_peaks p USING (run_id)
        WHERE k.stage IN ('summarization', 'generation') AND k.flops > 0 AND k.bytes > 0 {rid}
        ORDER BY k.run_id, k.kernel_id""")
    notes = []
    runs = query(db, "SELECT run_id FROM runs ORDER BY run_id")["run_id"].to_list()
    shown = set(frame["run_id"].unique().to_list()) if frame.height else set()
    for r in runs:
        if (not run_ids or r in run_ids) and r not in shown:
            notes.append(f"run {r} has no kernel with a work count (no op shapes: see `tracekit roofline`)")
    if frame.height:
        frame = frame.with_columns(pl.col("intensity").cast(pl.Float64), pl.col("achieved_flops_per_s").cast(pl.Float64))
    return ChartData(frame, notes, "")


def _roof_lines(frame: pl.DataFrame) -> pl.DataFrame:
    import polars as pl

    lo = max(min(frame["intensity"].min(), 1.0) / 4, 1e-3)
    hi = max(frame["intensity"].max() * 4, 1000.0)
    peaks = frame.select("peak_gpu", "bf16_flops_per_s", "fp32_flops_per_s", "bytes_per_s").unique()
    rows = []
    n = 60
    for gpu, bf16, fp32, bw in peaks.iter_rows():
        if bw is None:
            continue
        for name, peak in (("dense bf16 tensor", bf16), ("fp32 vector", fp32)):
            if peak is None:
                continue
            for j in range(n + 1):
                x = lo * (hi / lo) ** (j / n)
                rows.append({"roof": f"{gpu or '?'}: {name}", "intensity": x, "flops_per_s": min(x * bw, peak)})
    return pl.DataFrame(rows, schema={"roof": pl.String, "intensity": pl.Float64, "flops_per_s": pl.Float64})


def roofline_chart(data: ChartData, title: str = "Roofline: kernels against the GPU's roofs") -> alt.TopLevelMixin:
    import altair as alt

    frame = data.frame
    if frame.height == 0:
        return _notice(title, ["no kernel has a work count"] + data.subtitle())
    roofs = _roof_lines(frame)
    x = alt.X("intensity:Q", scale=alt.Scale(type="log"), title="arithmetic intensity (FLOP / byte)")
    y = alt.Y("flops_per_s:Q", scale=alt.Scale(type="log"), title="achieved FLOP/s", axis=alt.Axis(format="~s"))
    color = alt.Color("category:N", scale=_color_scale(frame["category"].unique().to_list()), title="category")
    panels = []
    for stage in STAGES:
        part = frame.filter(frame["stage"] == stage).rename({"achieved_flops_per_s": "flops_per_s"})
        if part.height == 0:
            continue
        points = alt.Chart(part.drop("evidence")).mark_circle(size=28, opacity=0.6).encode(
            x=x, y=y, color=color,
            tooltip=["run_id:Q", "short_name:N", "op_name:N", "category:N", "dur_ns:Q",
                     alt.Tooltip("intensity:Q", format=".3g"), alt.Tooltip("flops_per_s:Q", format=".3s")])
        lines = alt.Chart(roofs).mark_line(color="black", strokeWidth=1.2).encode(
            x=x, y=y, strokeDash=alt.StrokeDash("roof:N", title="roof"))
        panels.append(alt.layer(lines, points).properties(title=stage, width=360, height=300))
    chart = alt.hconcat(*panels) if len(panels) > 1 else panels[0]
    subtitle = ["intensity = FLOPs / bytes each kernel must move; points above the memory slope were served "
                "in part by the L2 cache (kernel_work.hbm_bytes)"] + data.subtitle()
    return chart.properties(title=alt.Title(title, subtitle=subtitle)).resolve_scale(x="shared", y="shared")


def roofline_figures(db: Queryable, max_points: int = 20000) -> dict[str, alt.TopLevelMixin]:
    """One roofline chart per GPU peak set in the database (runs of one GPU share a chart)."""
    groups = query(db, "SELECT coalesce(peak_gpu, gpu_name, 'unknown GPU') AS gpu, list(run_id ORDER BY run_id) AS runs "
                       "FROM run_peaks GROUP BY 1 ORDER BY 1")
    figures = {}
    for gpu, runs in groups.iter_rows():
        data = roofline_chart_data(db, list(runs))
        if data.frame.height > max_points:  # keep the longest kernels: they are what the time is
            data = ChartData(data.frame.sort("dur_ns", descending=True).head(max_points), data.notes,
                             f"the {max_points} longest kernels of {data.frame.height}")
        key = "roofline_" + "".join(c if c.isalnum() else "_" for c in gpu).strip("_").lower()
        figures[key] = roofline_chart(data, title=f"Roofline on {gpu}")
    return figures
