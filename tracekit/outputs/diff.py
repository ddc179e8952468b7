"""Compare two runs or two groups of runs: per-bucket and per-kernel deltas (B minus A).

A side is either run ids (`3` or `3,5`) or metadata selectors (`model=llama2-7b,batch=1`): a run
is in the group when every selector matches a run_info column or, failing that, a run_meta key.
A group's value is the mean over its runs, a bucket or kernel absent from a run counting as 0.

As a CI gate, `--fail-if` thresholds (grammar: GATE_GRAMMAR) are checked on the change from A to B,
and the whole diff can be written as markdown for a pull-request comment.
"""

from __future__ import annotations

import fnmatch
import re
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


# -- CI gate: --fail-if thresholds -------------------------------------------------------------

GATE_GRAMMAR = """\
A threshold is METRIC OP CHANGE, on the change from A (base) to B (new):
  METRIC  gen_ratio                      the generation share of kernel time (mean over the group)
          bucket:NAME:share | :time      a composition bucket, e.g. bucket:Gen GEMV:time
          kernel:GLOB:time  | :share     kernels whose short name matches GLOB (fnmatch: * ? [...]),
                                         summed, e.g. kernel:nvjet*:time
  OP      >  fails when the change is larger than CHANGE;  <  fails when it is smaller
  CHANGE  a signed number and a unit:
          %                      relative to A: +10% = B more than 10% above A
          pp                     percentage points (ratios and shares): +2pp
          ns, us, ms, s          absolute time (times only): +0.5ms
          no unit                absolute, in the metric's own unit: a fraction for ratios and
                                 shares (+0.02 = two points); times need a unit
Examples: 'gen_ratio>+0.02'  'bucket:Gen GEMV:time>+10%'  'kernel:nvjet*:time>+5%'  'bucket:ATTN:share<-3pp'"""

_TIME_UNITS = {"ns": 1, "us": 1e3, "ms": 1e6, "s": 1e9}
_GATE = re.compile(r"^(?P<metric>.*)(?P<op>[<>])\s*(?P<num>[+-]?(?:\d+(?:\.\d*)?|\.\d+))\s*"
                   r"(?P<unit>%|pp|ns|us|ms|s)?\s*$")


@dataclass
class Gate:
    text: str           # as the user wrote it
    kind: str           # 'gen_ratio' | 'bucket' | 'kernel'
    name: str           # bucket name or kernel glob ('' for gen_ratio)
    measure: str        # 'ratio' | 'share' | 'time'
    op: str             # '>' | '<'
    limit: float        # in the metric's unit (fraction, ns) or, when relative, a fraction of A
    relative: bool


@dataclass
class GateResult:
    gate: Gate
    a: float
    b: float
    change: float       # B - A (absolute) or (B - A) / A (relative; inf when A is 0 < B)
    breached: bool

    def describe(self) -> str:
        g = self.gate
        what = "gen_ratio" if g.kind == "gen_ratio" else f"{g.kind} {g.name!r} {g.measure}"
        return (f"{what} went from {_fmt_value(g, self.a)} to {_fmt_value(g, self.b)} "
                f"({_fmt_change(g, self.change)}; threshold {g.op}{_fmt_change(g, g.limit)})")


def _fmt_value(g: Gate, v: float) -> str:
    return f"{v / 1e6:,.3f} ms" if g.measure == "time" else f"{v:.2%}"


def _fmt_change(g: Gate, v: float) -> str:
    if g.relative:
        return "+inf%" if v == float("inf") else f"{v:+.1%}"
    return f"{v / 1e6:+,.3f} ms" if g.measure == "time" else f"{v * 100:+.2f} pp"


def parse_gate(text: str) -> Gate:
    """Parse one --fail-if expression (grammar: GATE_GRAMMAR); ValueError says what is wrong."""
    m = _GATE.match(text.strip())
    if not m:
        raise ValueError(f"{text!r}: expected METRIC>CHANGE or METRIC<CHANGE, e.g. 'gen_ratio>+0.02'")
    metric, op, num, unit = m["metric"].strip(), m["op"], float(m["num"]), m["unit"]
    if metric == "gen_ratio":
        kind, name, measure = "gen_ratio", "", "ratio"
    else:
        kind, _, rest = metric.partition(":")
        name, _, measure = rest.rpartition(":")
        if kind not in ("bucket", "kernel") or not name or measure not in ("share", "time"):
            raise ValueError(f"{text!r}: the metric is gen_ratio, bucket:NAME:share|time or kernel:GLOB:time|share")
    if unit == "%":
        return Gate(text, kind, name, measure, op, num / 100, True)
    if measure == "time":
        if unit not in _TIME_UNITS:
            raise ValueError(f"{text!r}: a time change needs a unit (ns, us, ms, s) or % (relative)")
        return Gate(text, kind, name, measure, op, num * _TIME_UNITS[unit], False)
    if unit in _TIME_UNITS:
        raise ValueError(f"{text!r}: {unit} is a time unit; a {measure} changes by a fraction, pp or %")
    return Gate(text, kind, name, measure, op, num / 100 if unit == "pp" else num, False)


def _gen_ratio(db: Queryable, side: Side) -> float:
    sr = query(db, "SELECT run_id, gen_ratio FROM stage_ratio").filter(pl.col("run_id").is_in(side.run_ids))
    missing = sr.filter(pl.col("gen_ratio").is_null())["run_id"].to_list()
    if missing or sr.is_empty():
        raise TracekitError(f"gen_ratio: run {', '.join(map(str, missing or side.run_ids))} of {side.label} "
                            "has no summarization/generation split")
    return float(sr["gen_ratio"].mean())


def evaluate_gates(db: Queryable, a: Side, b: Side, gates: list[Gate],
                   buckets: pl.DataFrame, kernels: pl.DataFrame) -> list[GateResult]:
    """Each gate's A and B values and whether B breaches it. A bucket or kernel pattern found in
    neither group is an error (a typo must not pass the gate silently)."""
    out = []
    for g in gates:
        if g.kind == "gen_ratio":
            va, vb = _gen_ratio(db, a), _gen_ratio(db, b)
        else:
            if g.kind == "bucket":
                rows = buckets.filter(pl.col("bucket") == g.name)
            else:
                rows = kernels.filter(pl.col("short_name").map_elements(
                    lambda n, pat=g.name: fnmatch.fnmatchcase(n or "", pat), return_dtype=pl.Boolean))
            if rows.is_empty():
                raise TracekitError(f"--fail-if {g.text!r}: no {g.kind} {g.name!r} in either group")
            col = "time_{}_ns" if g.measure == "time" else "share_{}"
            va, vb = float(rows[col.format("a")].sum()), float(rows[col.format("b")].sum())
        if g.relative:
            change = (vb - va) / va if va else (0.0 if vb == va else float("inf") if vb > va else float("-inf"))
        else:
            change = vb - va
        breached = change > g.limit if g.op == ">" else change < g.limit
        out.append(GateResult(g, va, vb, change, breached))
    return out


def _md_table(frame: pl.DataFrame) -> str:
    def cell(v: object) -> str:
        return "" if v is None else str(v).replace("|", "\\|").replace("\n", " ")
    head = "| " + " | ".join(frame.columns) + " |\n| " + " | ".join("---" for _ in frame.columns) + " |\n"
    return head + "".join("| " + " | ".join(cell(v) for v in row) + " |\n" for row in frame.iter_rows())


def markdown(a: Side, b: Side, buckets: pl.DataFrame, kernels: pl.DataFrame,
             results: list[GateResult], top: int = 15) -> str:
    """The diff as GitHub-flavoured markdown for a pull-request comment."""
    from tracekit.outputs.charts import printable

    lines = ["## tracekit diff", "", f"- **A (base)**: {printable(a.label)}", f"- **B (new)**: {printable(b.label)}", ""]
    if results:
        failed = sum(r.breached for r in results)
        lines.append(f"**{'FAILED' if failed else 'passed'}**: {failed} of {len(results)} thresholds breached")
        lines.append("")
        lines.append(_md_table(pl.DataFrame({
            "threshold": [f"`{printable(r.gate.text)}`" for r in results],
            "A": [_fmt_value(r.gate, r.a) for r in results],
            "B": [_fmt_value(r.gate, r.b) for r in results],
            "change": [_fmt_change(r.gate, r.change) for r in results],
            "result": ["❌ breached" if r.breached else "✅ ok" for r in results],
        })))
    lines += ["### Buckets (mean per run; B − A)", ""]
    lines.append(_md_table(buckets.select(
        pl.col("bucket").map_elements(printable, return_dtype=pl.String),
        *[(pl.col(c) * 100).round(2).cast(pl.String).alias(n) for c, n in
          (("share_a", "A %"), ("share_b", "B %"), ("delta_share", "Δ pp"))],
        *[(pl.col(c) / 1e6).round(3).cast(pl.String).alias(n) for c, n in
          (("time_a_ns", "A ms"), ("time_b_ns", "B ms"), ("delta_ns", "Δ ms"))],
    )))
    lines += [f"### Kernels with the largest change (top {top})", ""]
    lines.append(_md_table(kernels.head(top).select(
        pl.col("short_name").map_elements(lambda s: f"`{printable(s)}`", return_dtype=pl.String),
        pl.col("category").fill_null("Unclassified"),
        *[(pl.col(c) / 1e6).round(3).cast(pl.String).alias(n) for c, n in
          (("time_a_ns", "A ms"), ("time_b_ns", "B ms"), ("delta_ns", "Δ ms"))],
    )))
    return "\n".join(lines)
