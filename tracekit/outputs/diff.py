"""Compare two runs or two groups of runs: per-bucket and per-kernel deltas (B minus A).

A side is either run ids (`3` or `3,5`) or metadata selectors (`model=llama2-7b,batch=1`): a run
is in the group when every selector matches a run_info column or, failing that, a run_meta key.
A group's value is the mean over its runs, a bucket or kernel absent from a run counting as 0.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from tracekit.errors import TracekitError
from tracekit.outputs.charts import Queryable, bucket_order, query


@dataclass
class Side:
    spec: str
    run_ids: list[int]

    @property
    def label(self) -> str:
        ids = ",".join(map(str, self.run_ids))
        return self.spec if self.spec == ids else f"{self.spec} (runs {ids})"


def resolve(db: Queryable, spec: str) -> Side:
    """Turn `3`, `3,5` or `key=value[,key=value]` into run ids; no match is an error."""
    parts = [p.strip() for p in spec.split(",") if p.strip()]
    if not parts:
        raise TracekitError(f"{spec!r}: empty run selector")
    known = set(query(db, "SELECT run_id FROM runs")["run_id"].to_list())
    if all(p.isdigit() for p in parts):
        ids = [int(p) for p in parts]
        missing = [i for i in ids if i not in known]
        if missing:
            raise TracekitError(f"{spec!r}: no run {', '.join(map(str, missing))}")
        return Side(spec, sorted(set(ids)))
    if not all("=" in p for p in parts):
        raise TracekitError(f"{spec!r}: expected run ids (3 or 3,5) or key=value selectors")
    info_cols = set(query(db, "SELECT * FROM run_info LIMIT 0").columns)
    ids = set(known)
    for part in parts:
        key, _, value = (x.strip() for x in part.partition("="))
        if key in info_cols:
            # Quoted identifier; the key is one of run_info's own column names, never free text.
            q = f'SELECT run_id FROM run_info WHERE CAST("{key}" AS VARCHAR) = ?'
        else:
            q = "SELECT run_id FROM run_meta WHERE key = ? AND value = ?"
        params = [value] if key in info_cols else [key, value]
        ids &= set(query(db, q, params)["run_id"].to_list())
    if not ids:
        raise TracekitError(f"{spec!r}: matches no run")
    return Side(spec, sorted(ids))


def _group_mean(frame: pl.DataFrame, ids: list[int], key: list[str], cols: list[str]) -> pl.DataFrame:
    sub = frame.filter(pl.col("run_id").is_in(ids))
    return sub.group_by(key).agg([(pl.col(c).sum() / len(ids)).alias(c) for c in cols])


def bucket_deltas(db: Queryable, a: Side, b: Side) -> pl.DataFrame:
    """bucket, share_a, share_b, delta_share, time_a_ns, time_b_ns, delta_ns (mean per run)."""
    comp = query(db, "SELECT run_id, bucket, time_ns, share FROM composition")
    ma = _group_mean(comp, a.run_ids, ["bucket"], ["share", "time_ns"])
    mb = _group_mean(comp, b.run_ids, ["bucket"], ["share", "time_ns"])
    out = ma.join(mb, on="bucket", how="full", coalesce=True, suffix="_b").rename(
        {"share": "share_a", "time_ns": "time_a_ns", "time_ns_b": "time_b_ns"}
    ).fill_null(0.0)
    out = out.with_columns(
        (pl.col("share_b") - pl.col("share_a")).alias("delta_share"),
        (pl.col("time_b_ns") - pl.col("time_a_ns")).alias("delta_ns"),
        pl.col("bucket").map_elements(bucket_order, return_dtype=pl.Int64).alias("_o"),
    )
    return out.sort(["_o", "bucket"]).select(
        "bucket", "share_a", "share_b", "delta_share", "time_a_ns", "time_b_ns", "delta_ns"
    )


def kernel_deltas(db: Queryable, a: Side, b: Side) -> pl.DataFrame:
    """short_name, category, time_a_ns, time_b_ns, delta_ns, share_a, share_b; largest |delta| first."""
    top = query(db, "SELECT run_id, short_name, category, time_ns, share FROM top_kernels")
    key = ["short_name", "category"]
    ka = _group_mean(top, a.run_ids, key, ["time_ns", "share"])
    kb = _group_mean(top, b.run_ids, key, ["time_ns", "share"])
    out = ka.join(kb, on=key, how="full", coalesce=True, suffix="_b", nulls_equal=True).rename(
        {"time_ns": "time_a_ns", "time_ns_b": "time_b_ns", "share": "share_a"}
    ).with_columns(pl.col("time_a_ns", "time_b_ns", "share_a", "share_b").fill_null(0.0))
    out = out.with_columns((pl.col("time_b_ns") - pl.col("time_a_ns")).alias("delta_ns"))
    return out.sort([pl.col("delta_ns").abs(), "short_name"], descending=[True, False]).select(
        "short_name", "category", "time_a_ns", "time_b_ns", "delta_ns", "share_a", "share_b"
    )
