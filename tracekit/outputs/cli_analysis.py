"""Analysis commands: stage split, kernel composition, per-pass times, top kernels.

Each command prints one of the views in tracekit/views; times are shown in milliseconds
(`*_ms`), the views themselves keep integer nanoseconds for SQL users.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from tracekit.outputs.cli_core import db_option, fail, open_db, require_runs
from tracekit.outputs.format import print_frame

if TYPE_CHECKING:
    import polars as pl

FORMATS = ("table", "csv", "json", "markdown")

format_option = click.option(
    "--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
    help="Output format.",
)


def _ms(col: str) -> str:
    """`x.foo_ns` -> `round(x.foo_ns / 1e6, 3) AS foo_ms`."""
    name = col.rsplit(".", 1)[-1].removesuffix("_ns")
    return f"round({col} / 1e6, 3) AS {name}_ms"


def _frame(db_path: str, sql: str, params: list, run_id: int | None) -> pl.DataFrame:
    # Here, not at the top: registering the commands for `tracekit --help` or `tracekit import`
    # must not pay for duckdb before a command runs.
    import duckdb

    db = open_db(db_path, read_only=True)
    require_runs(db, db_path)
    try:
        if run_id is not None and not db.arrow("SELECT run_id FROM runs WHERE run_id = ?", [run_id]).num_rows:
            fail(f"{db_path}: no run {run_id} (see `tracekit runs`)")
        return db.query(sql, params)
    except duckdb.Error as exc:
        fail(f"{db_path}: {str(exc).splitlines()[0]}")
    finally:
        db.close()


def _run_filter(run_id: int | None, alias: str = "") -> tuple[str, list]:
    if run_id is None:
        return "true", []
    return f"{alias}run_id = ?", [run_id]


@click.command("stages")
@db_option
@click.option("--run", "run_id", type=int, default=None, help="Only this run.")
@click.option("--by-process", is_flag=True,
              help="One row per process and GPU (stage_ratio_by_process) instead of per run.")
@format_option
def stages_cmd(db_path: str, run_id: int | None, by_process: bool, fmt: str) -> None:
    """Summarization vs generation time per run: the study's generation-stage share.

    gen_ratio is on GPU kernel time of the measured iteration(s) of every process and GPU
    together (--by-process: each on its own row). unattributed_ms is kernel time that could not
    be placed in a stage. host_* are the stage markers' CPU-side extents (empty when inferred);
    gpu_span_* the stages' extents on the GPU, gpu_busy_* the time a kernel ran inside them: busy
    far below span means the GPU waited on the host. stage_method says how stages were decided,
    stage_confidence how sure that is and stage_reason why (and why there is no split, for
    'none'). See `tracekit.enrich.stages`.
    """
    where, params = _run_filter(run_id, "i.")
    view, keys = ("stage_ratio_by_process", "s.pid, s.device, ") if by_process else ("stage_ratio", "")
    sql = f"""
        SELECT i.run_id, {keys}i.source_name, i.model, i.batch, i.input_len, i.output_len,
               i.stage_method, i.iterations, r.stage_confidence, r.stage_reason,
               {_ms('s.summarization_ns')}, {_ms('s.generation_ns')}, {_ms('s.other_ns')},
               {_ms('s.warmup_ns')}, {_ms('s.unattributed_ns')}, round(s.gen_ratio, 4) AS gen_ratio,
               {_ms('s.host_summarization_ns')}, {_ms('s.host_generation_ns')},
               round(s.host_gen_ratio, 4) AS host_gen_ratio,
               {_ms('s.gpu_span_summarization_ns')}, {_ms('s.gpu_span_generation_ns')},
               {_ms('s.gpu_busy_summarization_ns')}, {_ms('s.gpu_busy_generation_ns')},
               {_ms('s.gpu_idle_summarization_ns')}, {_ms('s.gpu_idle_generation_ns')},
               round(s.gpu_span_gen_ratio, 4) AS gpu_span_gen_ratio
        FROM run_info i JOIN {view} s USING (run_id) JOIN runs r USING (run_id)
        WHERE {where} ORDER BY i.run_id{", s.pid, s.device" if by_process else ""}"""
    print_frame(_frame(db_path, sql, params, run_id), fmt)


@click.command("composition")
@db_option
@click.option("--run", "run_id", type=int, default=None, help="Only this run.")
@format_option
def composition_cmd(db_path: str, run_id: int | None, fmt: str) -> None:
    """Kernel time by the study's buckets (Sum/Gen GEMM, Sum/Gen GEMV, ATTN) and other categories.

    scope 'measured stages': over the measured summarization + generation (+ mixed) kernels.
    scope 'whole run': a run whose stages could not be decided (see `tracekit stages`), over all
    its kernels. Shares sum to 1 per run.
    """
    where, params = _run_filter(run_id, "c.")
    sql = f"""
        SELECT c.run_id, i.source_name, c.scope, c.bucket, {_ms('c.time_ns')}, round(c.share, 4) AS share
        FROM composition c JOIN run_info i USING (run_id)
        WHERE {where}"""
    print_frame(_frame(db_path, sql, params, run_id), fmt)


@click.command("steps")
@db_option
@click.option("--run", "run_id", type=int, required=True, help="The run.")
@click.option("--by-category", is_flag=True, help="One row per pass and kernel category.")
@format_option
def steps_cmd(db_path: str, run_id: int, by_category: bool, fmt: str) -> None:
    """Time of every forward pass (step 0 = summarization, k = k-th generation pass).

    Warm-up iterations are listed too, with stage 'warmup'. host_ms is the pass's marker range on
    the CPU clock (empty when inferred); gpu_span_ms its kernels' extent on the GPU and
    gpu_busy_ms the time one of them ran. One row per process and GPU (pid, device).
    """
    if by_category:
        sql = f"""
            SELECT pid, device, iteration, step, stage, category, {_ms('time_ns')}, n_kernels
            FROM steps WHERE run_id = ? ORDER BY pid, device, iteration, step, time_ns DESC, category"""
    else:
        sql = f"""
            SELECT pid, device, iteration, step, stage, {_ms('time_ns')}, {_ms('host_ns')}, {_ms('gpu_span_ns')},
                   {_ms('gpu_busy_ns')}, n_kernels
            FROM step_totals WHERE run_id = ? ORDER BY pid, device, iteration, step"""
    df = _frame(db_path, sql, [run_id], run_id)
    if df.is_empty():
        # Not an error: the trace simply had neither stage markers nor recognisable passes.
        why = _frame(db_path, "SELECT stage_reason FROM runs WHERE run_id = ?", [run_id], run_id)
        reason = why["stage_reason"][0] if why.height and why["stage_reason"][0] else "see `tracekit stages`"
        click.echo(f"tracekit: run {run_id}: no forward passes found: {reason}", err=True)
    print_frame(df, fmt)


@click.command("top")
@db_option
@click.option("--run", "run_id", type=int, default=None, help="Only this run.")
@click.option("-n", "n", type=click.IntRange(1), default=20, show_default=True, help="Kernels per run.")
@format_option
def top_cmd(db_path: str, run_id: int | None, n: int, fmt: str) -> None:
    """The kernels that take the most time, per run (measured summarization + generation kernels)."""
    where, params = _run_filter(run_id)
    sql = f"""
        SELECT run_id, short_name, category, n, {_ms('time_ns')}, round(share, 4) AS share
        FROM top_kernels WHERE {where}
        QUALIFY row_number() OVER (PARTITION BY run_id ORDER BY time_ns DESC, short_name) <= ?
        ORDER BY run_id, time_ns DESC, short_name"""
    print_frame(_frame(db_path, sql, [*params, n], run_id), fmt)
