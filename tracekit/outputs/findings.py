"""What the report says first: a few sentences per run and for the whole set, each naming the
table (report anchor / CSV) its figures come from.

Reads the views only. Columns that later versions of `stage_ratio` add (host_* instead of
wall_*, gpu_span_* / gpu_busy_* / gpu_idle_*, unattributed_ns) and `runs.stage_confidence` /
`stage_reason` are used when present; without them the sentences use what there is and say so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from tracekit.outputs.charts import Queryable, query

# A stage is host-bound when the GPU is busy for less than HOST_BOUND of the stage's elapsed time
# (it waits on the host for most of it); GPU-bound when the GPU's span outlasts the host-side
# extent (the host ran ahead and work queued up) or the GPU is busy for at least GPU_BOUND of it;
# otherwise the page says neither clearly bounds it.
GPU_BOUND = 0.8
HOST_BOUND = 0.5
MAX_RUN_BLOCKS = 30
STAGES = (("summarization", "Summarization"), ("generation", "Generation"))


@dataclass
class Item:
    text: str
    sources: list[str] = field(default_factory=list)  # table names: report anchors and CSV stems


@dataclass
class Block:
    title: str
    items: list[Item]


@dataclass
class Bound:
    """Whether the GPU or the host bounds one stage of one run."""

    verdict: str  # 'GPU-bound' | 'host-bound' | 'neither clearly' | 'unknown'
    text: str


def _ms(ns: float | None) -> str:
    return "?" if ns is None else f"{ns / 1e6:,.2f} ms"


def _col(row: dict, *names: str) -> float | None:
    for n in names:
        if row.get(n) is not None:
            return row[n]
    return None


def stage_bound(row: dict, stage: str) -> Bound:
    """GPU busy time against the stage's elapsed time (the longer of its host-side extent and its
    GPU span), and whether the GPU span outlasts the host-side extent. Without the gpu_busy_* column, summed kernel time stands for busy time (an upper
    bound where kernels overlap) and the wall/host marker extent for the elapsed time."""
    busy = _col(row, f"gpu_busy_{stage}_ns")
    measure = "GPU busy"
    if busy is None:
        busy, measure = _col(row, f"{stage}_ns"), "kernel time"
    host = _col(row, f"host_{stage}_ns", f"wall_{stage}_ns")
    span = _col(row, f"gpu_span_{stage}_ns")
    elapsed = max((v for v in (host, span) if v), default=None)
    if not busy or not elapsed:
        why = "no kernels in this stage" if not busy else "no host-side or GPU extent for this stage (stages inferred, not marked)"
        return Bound("unknown", f"cannot tell whether the GPU or the host bounds it: {why}")
    frac = busy / elapsed
    what = "host-side extent" if elapsed == host else "GPU span"
    detail = f"{measure} {_ms(busy)} of a {_ms(elapsed)} {what} ({min(frac, 1.0):.0%})"
    if frac < HOST_BOUND:
        return Bound("host-bound", f"host-bound, the GPU idles most of the stage: {detail}")
    if host and span and span > host:
        # The host finished issuing the stage before the GPU finished running it: work queued up.
        return Bound("GPU-bound", f"GPU-bound: {detail}; the host finished {_ms(span - host)} before the GPU")
    if frac >= GPU_BOUND:
        return Bound("GPU-bound", f"GPU-bound: {detail}")
    return Bound("neither clearly", f"neither the GPU nor the host clearly bounds it: {detail}")


def _label(r: dict) -> str:
    parts = [f"Run {r['run_id']}"]
    meta = [str(r["model"])] if r.get("model") else [str(r["source_name"])]
    for key, prefix in (("layers", ""), ("batch", "b"), ("input_len", "i"), ("output_len", "o")):
        if r.get(key) is not None:
            meta.append(f"{prefix}{r[key]}{'L' if key == 'layers' else ''}")
    return parts[0] + " (" + " · ".join(meta) + ")"


def _frames(db: Queryable) -> tuple[pl.DataFrame, pl.DataFrame]:
    info = query(db, "SELECT * FROM run_info ORDER BY run_id")
    sr = query(db, "SELECT * FROM stage_ratio ORDER BY run_id")
    run_cols = set(query(db, "SELECT * FROM runs LIMIT 0").columns)
    extra = [c for c in ("stage_confidence", "stage_reason") if c in run_cols]
    if extra:
        info = info.join(query(db, f"SELECT run_id, {', '.join(extra)} FROM runs"), on="run_id", how="left")
    rows = info.join(sr.drop([c for c in sr.columns if c in info.columns and c != "run_id"]),
                     on="run_id", how="left")
    comp = query(db, "SELECT run_id, bucket, time_ns, share FROM composition")
    return rows, comp


def _run_items(r: dict, comp: pl.DataFrame) -> tuple[list[Item], dict]:
    items: list[Item] = []
    facts: dict = {"gen_ratio": r.get("gen_ratio")}
    if r.get("gen_ratio") is not None:
        items.append(Item(
            f"Generation is {r['gen_ratio']:.1%} of the summarization + generation GPU kernel time "
            f"({_ms(r.get('summarization_ns'))} summarization, {_ms(r.get('generation_ns'))} generation).",
            ["stage_ratio"]))
    else:
        reason = r.get("stage_reason") or f"stage method {r.get('stage_method') or 'none'}"
        items.append(Item(f"No generation share: no kernel time was split into stages ({reason}).",
                          ["stage_ratio", "runs"]))
    if r.get("unattributed_ns"):
        items.append(Item(f"{_ms(r['unattributed_ns'])} of kernel time could not be attributed to a stage "
                          "and is in neither figure.", ["stage_ratio"]))
    c = comp.filter(pl.col("run_id") == r["run_id"], pl.col("time_ns") > 0).sort(
        ["time_ns", "bucket"], descending=[True, False])
    if not c.is_empty():
        top = c.row(0, named=True)
        facts["largest"] = top["bucket"]
        nxt = "; next " + ", ".join(f"{b['bucket']} {b['share']:.0%}" for b in c.slice(1, 2).iter_rows(named=True)) \
            if c.height > 1 else ""
        items.append(Item(f"Largest bucket: {top['bucket']}, {top['share']:.0%} of measured kernel time{nxt}.",
                          ["composition"]))
    for stage, name in STAGES:
        b = stage_bound(r, stage)
        facts[stage] = b.verdict
        items.append(Item(f"{name}: {b.text}.", ["stage_ratio"]))
    method = r.get("stage_method") or "none"
    conf = r.get("stage_confidence")
    conf_text = (f"confidence {conf}" + (f" ({r['stage_reason']})" if r.get("stage_reason") else "")) if conf \
        else "this database records no confidence for it"
    items.append(Item(f"Stages decided by {method}; {conf_text}.", ["runs"]))
    return items, facts


def _range(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:.1%}" if abs(hi - lo) < 0.0005 else f"{lo:.1%} to {hi:.1%}"


def _sweep_block(rows: pl.DataFrame, facts: dict[int, dict]) -> Block:
    n = rows.height
    items: list[Item] = []
    with_ratio = rows.filter(pl.col("gen_ratio").is_not_null()) if "gen_ratio" in rows.columns else rows.clear()
    if with_ratio.is_empty():
        items.append(Item("No run has a summarization/generation split.", ["stage_ratio"]))
    else:
        by_batch = []
        for (batch,), g in with_ratio.sort("batch", nulls_last=True).group_by("batch", maintain_order=True):
            label = "unknown batch" if batch is None else f"batch {batch}"
            by_batch.append(f"{_range(g['gen_ratio'].to_list())} at {label} ({g.height} run{'s' * (g.height > 1)})")
        items.append(Item("Generation share of kernel time: " + "; ".join(by_batch) + ".", ["stage_ratio"]))
        missing = n - with_ratio.height
        if missing:
            items.append(Item(f"{missing} of {n} runs have no stage split (see their own findings).", ["stage_ratio"]))
    largest = [f["largest"] for f in facts.values() if f.get("largest")]
    if largest:
        counts = pl.Series(largest).value_counts(sort=True)
        items.append(Item("Largest bucket: " + ", ".join(
            f"{b} in {c} run{'s' * (c > 1)}" for b, c in counts.iter_rows()) + ".", ["composition"]))
    for stage, name in STAGES:
        verdicts = pl.Series([f[stage] for f in facts.values()], dtype=pl.String)
        if verdicts.is_empty():
            continue
        counts = verdicts.value_counts(sort=True)
        items.append(Item(f"{name} stage: " + ", ".join(f"{v} in {c} of {n} runs" for v, c in counts.iter_rows())
                          + ".", ["stage_ratio"]))
    return Block(f"All {n} runs", items)


def findings(db: Queryable) -> list[Block]:
    """The blocks the report opens with: the whole set first, then up to MAX_RUN_BLOCKS runs."""
    rows, comp = _frames(db)
    if rows.is_empty():
        return [Block("No runs", [Item("This database has no runs: import traces with `tracekit import`.")])]
    blocks, facts = [], {}
    for r in rows.iter_rows(named=True):
        items, facts[r["run_id"]] = _run_items(r, comp)
        if len(blocks) < MAX_RUN_BLOCKS:
            blocks.append(Block(_label(r), items))
    if rows.height > MAX_RUN_BLOCKS:
        blocks.append(Block("More runs", [Item(f"{rows.height - MAX_RUN_BLOCKS} more runs are not described "
                                               "here; their figures are in the tables.", ["stage_ratio"])]))
    return [_sweep_block(rows, facts), *blocks]
