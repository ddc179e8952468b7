"""`tracekit roofline`: how close each stage and category comes to the GPU's limits.

Prints the `roofline` view (per run, stage and category: time, work, achieved and roof
throughput, time at the roof) or, with `--decode`, the `decode_ideal` view (each decode pass
against the HBM limit); `--chart FILE` also draws the roofline chart. The roofs come from the
GPU peaks table (tracekit/data/gpu_peaks.toml) chosen by the run's GPU name, or from
`--peak-tflops` / `--peak-tbps` / `--peaks FILE`. What kept kernels from having a work count
(no op shapes, no dtypes) is said on stderr.
"""

from __future__ import annotations

from pathlib import Path

import click

from tracekit.outputs.cli_core import db_option, fail, open_db
from tracekit.outputs.format import FORMATS, print_frame

_HOW = ("record op shapes: Kineto `torch.profiler.profile(record_shapes=True)`, or nsys with "
        "`torch.autograd.profiler.emit_nvtx(record_shapes=True)` (and `--meta dtype=bfloat16`: nsys ranges "
        "carry sizes, not dtypes)")


@click.command("roofline")
@db_option
@click.option("--run", "run_id", type=int, default=None, help="Only this run.")
@click.option("--stage", default="measured", show_default=True,
              type=click.Choice(["measured", "all", "summarization", "generation", "warmup", "other"]),
              help="Which stages ('measured' = summarization and generation).")
@click.option("--decode", is_flag=True, help="Each decode pass against its HBM limit (view decode_ideal).")
@click.option("--peak-tflops", type=float, default=None, help="Tensor-core FLOP/s roof (TFLOP/s) for every run.")
@click.option("--peak-tbps", type=float, default=None, help="Memory bandwidth roof (TB/s) for every run.")
@click.option("--peaks", "peaks_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="TOML with [[gpu]] entries (tried before the built-in ones) and/or tensor_tflops / hbm_tbps.")
@click.option("--chart", "chart_out", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the roofline chart (.png, .svg, .html, .json).")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="Output format.")
def roofline_cmd(db_path: str, run_id: int | None, stage: str, decode: bool, peak_tflops: float | None,
                 peak_tbps: float | None, peaks_file: Path | None, chart_out: Path | None, fmt: str) -> None:
    """FLOPs, bytes and the roofline per stage and category, and the decode-pass HBM limit.

    achieved_tbps / peak_tbps is how close memory-bound work (Gen GEMV) comes to the memory
    bandwidth, tflops_share how close compute-bound work (Sum GEMM) comes to the tensor peak;
    bound_ms is what the work would take at the roof, roof_share = bound / measured.
    """
    import duckdb

    from tracekit import peaks
    from tracekit.errors import TracekitError
    from tracekit.outputs import charts_roofline as cr

    db = open_db(db_path, read_only=True)
    try:
        if run_id is not None and not db.con.execute("SELECT 1 FROM runs WHERE run_id = ?", [run_id]).fetchall():
            fail(f"{db_path}: no run {run_id} (see `tracekit runs`)")
        try:
            peaks.override(db.con, str(peaks_file) if peaks_file else None, peak_tflops, peak_tbps)
        except TracekitError as exc:
            fail(str(exc))
        frame = cr.decode_frame(db, run_id) if decode else cr.roofline_frame(db, run_id, stage)
        print_frame(frame, fmt)
        _say_what_is_missing(db, run_id)
        if chart_out is not None:
            _write_chart(db, run_id, chart_out)
    except duckdb.Error as exc:
        fail(f"{db_path}: {str(exc).splitlines()[0]}")
    finally:
        db.close()


def _say_what_is_missing(db, run_id: int | None) -> None:
    from tracekit.outputs.charts_roofline import missing_frame

    for rid, n, n_without, share, reason in missing_frame(db, run_id).iter_rows():
        if n_without:
            click.echo(f"tracekit: run {rid}: {n_without} of {n} kernels ({100 * (share or 0):.0f}% of their time) "
                       f"have no work count, mostly: {reason}", err=True)
            if n_without == n:
                click.echo(f"tracekit: run {rid}: to count work, {_HOW}", err=True)
    unknown = db.con.execute("SELECT run_id, gpu_name FROM run_peaks WHERE bytes_per_s IS NULL"
                             + (" AND run_id = ?" if run_id is not None else ""),
                             [run_id] if run_id is not None else []).fetchall()
    for rid, gpu in unknown:
        click.echo(f"tracekit: run {rid}: no peak figures for GPU {gpu!r}: give --peak-tflops / --peak-tbps "
                   "or --peaks FILE", err=True)


def _write_chart(db, run_id: int | None, out: Path) -> None:
    from tracekit.outputs.charts import to_spec, write_image
    from tracekit.outputs.charts_roofline import roofline_chart, roofline_chart_data

    chart = roofline_chart(roofline_chart_data(db, [run_id] if run_id is not None else None))
    suffix = out.suffix.lower()
    try:
        if suffix in (".png", ".svg"):
            write_image(to_spec(chart), out)
        elif suffix == ".html":
            chart.save(str(out), inline=True)
        elif suffix == ".json":
            import json
            out.write_text(json.dumps(to_spec(chart)), encoding="utf-8")
        else:
            fail(f"{out}: unsupported chart type {suffix!r} (use .png, .svg, .html or .json)")
    except OSError as exc:
        fail(f"{out}: {exc.strerror or exc}")
    click.echo(f"wrote {out}", err=True)
