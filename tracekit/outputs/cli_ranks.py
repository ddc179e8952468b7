"""`tracekit ranks`: multi-rank runs (tensor / pipeline parallel), per rank and for the whole run.

Prints the views of tracekit/views/ranks.sql and comm_ops.sql; times in milliseconds.
"""

from __future__ import annotations

import click

from tracekit.outputs.cli_analysis import _frame, _ms, _run_filter, format_option
from tracekit.outputs.cli_core import db_option
from tracekit.outputs.format import print_frame


@click.command("ranks")
@db_option
@click.option("--run", "run_id", type=int, default=None, help="Only this run.")
@click.option("--view", "what", type=click.Choice(["stages", "run", "composition", "comm", "clocks"]),
              default="stages", show_default=True,
              help="stages: stage split per rank; run: how the ranks combine; composition: buckets per rank; "
                   "comm: wait / transfer / exposed per rank and stage; clocks: each rank's source and clock offset.")
@format_option
def ranks_cmd(db_path: str, run_id: int | None, what: str, fmt: str) -> None:
    """Per-rank figures of runs with several ranks (one job's traces imported as one run).

    A collective's wait is the time a rank spent in it before the last rank arrived (ranks'
    clocks aligned on the collectives they share); transfer is the rest; exposed is COMM time
    with no compute kernel running on the same GPU. See README "Multi-rank runs".
    """
    where, params = _run_filter(run_id, "x.")
    if what == "stages":
        sql = f"""
            SELECT x.run_id, x.rank, {_ms('x.summarization_ns')}, {_ms('x.generation_ns')},
                   round(x.gen_ratio, 4) AS gen_ratio, {_ms('x.comm_ns')}, {_ms('x.comm_wait_ns')},
                   {_ms('x.comm_exposed_ns')}, {_ms('x.busy_ns')},
                   round(x.gen_ratio_no_wait, 4) AS gen_ratio_no_wait, x.critical
            FROM rank_stage_ratio x WHERE {where} ORDER BY x.run_id, x.rank"""
    elif what == "run":
        sql = f"""
            SELECT x.run_id, x.world_size, x.ranks, x.align, x.max_clock_offset_ns,
                   round(x.gen_ratio_summed, 4) AS gen_ratio_summed, round(x.gen_ratio_min, 4) AS gen_ratio_min,
                   round(x.gen_ratio_max, 4) AS gen_ratio_max, x.critical_rank,
                   round(x.gen_ratio_critical, 4) AS gen_ratio_critical, round(x.comm_share, 4) AS comm_share,
                   round(x.comm_wait_share, 4) AS comm_wait_share, round(x.comm_exposed_share, 4) AS comm_exposed_share
            FROM run_rank_summary x WHERE {where} ORDER BY x.run_id"""
    elif what == "composition":
        sql = f"""
            SELECT x.run_id, x.rank, x.bucket, {_ms('x.time_ns')}, round(x.share, 4) AS share
            FROM rank_composition x WHERE {where}"""
    elif what == "comm":
        sql = f"""
            SELECT x.run_id, x.rank, x.stage, x.op, count(*) AS n, round(sum(x.dur_ns) / 1e6, 3) AS time_ms,
                   round(sum(x.wait_ns) / 1e6, 3) AS wait_ms, round(sum(x.transfer_ns) / 1e6, 3) AS transfer_ms,
                   round(sum(x.exposed_ns) / 1e6, 3) AS exposed_ms, string_agg(DISTINCT x.wait_basis, ', ') AS wait_basis
            FROM comm_ops x WHERE {where} AND x.stage IN ('summarization', 'generation')
            GROUP BY ALL ORDER BY x.run_id, x.rank, x.stage DESC, x.op"""
    else:
        sql = f"""
            SELECT x.run_id, x.rank, x.device, x.pid, x.source_name, x.rank_source, x.clock_offset_ns,
                   x.align_method, x.align_events, x.align_spread_ns, x.stage_method
            FROM run_ranks x WHERE {where} ORDER BY x.run_id, x.rank"""
    df = _frame(db_path, sql, params, run_id)
    if df.is_empty():
        click.echo("tracekit: nothing to show: no multi-rank run" + (f" {run_id}" if run_id is not None else "") +
                   " with this view's data (the traces of one job import as one run: see README "
                   "\"Multi-rank runs\" and `tracekit import --group`)", err=True)
    print_frame(df, fmt)
