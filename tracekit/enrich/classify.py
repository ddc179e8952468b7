"""Apply kernel classification rules: verdicts per (run, kernel context), not per kernel.

A kernel context (`kernel_contexts`, made at import) is everything a rule can look at: the names,
the linked op's name and input dims, the launch dims. A database of millions of kernels has
thousands of contexts, so the rules run in Python once per distinct context as the rules see it,
and a rules edit rewrites only the `kernel_verdicts` rows whose verdict changed; the `kernels`
view joins verdicts back onto the kernels. What a context cannot decide is decided per kernel
(`kernel_rows.follow_*`: shapeless GEMMs by their pass, split-K reduces by the GEMM they complete,
shapeless softmaxes by their place), redone only for runs where a changed verdict can move it.

Runs inside the caller's transaction (the importer's, or the CLI's); never begins or commits one.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb
import pyarrow as pa

from tracekit.enrich.rules import (
    GEMM_FAMILY,
    Decision,
    KernelContext,
    RuleSet,
    groups_from_dims,
    last_dim_from_dims,
    m_from_dims,
)
from tracekit.readers.common import demangle
from tracekit.store import DIM_COLS, refresh_follow_totals, refresh_kernel_sums, run_filter

_PENDING = "prev_gemm?"  # verdict evidence of kernels that take the preceding GEMM's class
_PASS = "pass?"          # a GEMM-family kernel without shapes: its pass gives M
_MOE = "moe?"            # an expert GEMM without shapes: its pass and the MoE metadata give tokens/expert
_PLACE = "place?"        # + category: a softmax without shapes, that category when no GEMM follows in its pass
# Categories the per-kernel decisions read of other kernels: a reduce follows the last GEMM-family
# kernel, a softmax looks for the next GEMM, embedding or sampling kernel (_resolve_by_place).
_PER_KERNEL_INPUTS = GEMM_FAMILY | {"EMBED", "SAMPLING"}
_PER_KERNEL_INPUTS_SQL = ", ".join(f"'{c}'" for c in sorted(_PER_KERNEL_INPUTS))
_MARKERS = (_PENDING, _PASS, _MOE)
# One GPU work queue: a stream of one device in one process (NULLs compare as equal here).
_QUEUE = ("coalesce(r.pid, -1) AS pid, coalesce(r.device, -1) AS device, "
          "coalesce(r.stream, -1) AS stream")
# What every per-kernel step's temp table holds of its kernels besides the answer: where the
# kernel ran (its queue and start), so a later step reads earlier answers without joining
# kernel_rows again by rowid (that join took longer than the split-K ASOF join itself).
_PLACED = f"r.rowid AS rid, r.run_id, {_QUEUE}, r.start_ns"


def _pending_evidence(d: Decision, rules: RuleSet) -> str:
    """The verdict's evidence, or a marker (ending in '?...') for what is settled per kernel."""
    if d.follows_gemm:
        return _PENDING
    if d.pending == "place":
        return f"{_PLACE}{rules.by_id[d.rule_id].after_last_gemm}"
    if d.pending == "pass":
        return _PASS
    if d.pending == "moe":
        return _MOE
    return d.evidence


def _decide(con: duckdb.DuckDBPyConnection, rules: RuleSet, where_v: str) -> pa.Table:
    """(ctx_id, category, rule_id, evidence) for every context used by the selected runs."""
    dims = [c for c in DIM_COLS if c in rules.numeric_keys]
    rows = con.execute(
        f"SELECT c.ctx_id, n.name, n.short_name, c.op_name, c.input_dims, "
        f"{', '.join(f'c.{d}' for d in DIM_COLS)} "
        f"FROM kernel_contexts c JOIN kernel_names n USING (name_id) "
        f"WHERE c.ctx_id IN (SELECT DISTINCT v.ctx_id FROM kernel_verdicts v WHERE {where_v})"
    ).fetchall()
    shapes: dict[tuple[str, str | None], tuple[int | None, int | None, int | None]] = {}
    candidates: dict[tuple[str, str], list] = {}
    decided: dict[tuple, tuple[str | None, str | None, str]] = {}
    out: dict[str, list] = {"ctx_id": [], "category": [], "rule_id": [], "evidence": []}
    for ctx_id, name, short, op_name, input_dims, *dim_values in rows:
        if (op_name, input_dims) not in shapes:
            spec = rules.shape_ops.get(op_name)
            shapes[(op_name, input_dims)] = (
                m_from_dims(input_dims, spec) if spec else None,
                groups_from_dims(input_dims, spec) if spec else None,
                last_dim_from_dims(input_dims) if op_name else None,
            )
        m, experts, last_dim = shapes[(op_name, input_dims)]
        given = dict(zip(DIM_COLS, dim_values, strict=True))
        seen = tuple(given[d] for d in dims)
        op = op_name if rules.uses_op else None
        # Only what some rule looks at tells contexts apart for the rules.
        key = (name, short, op, m, experts, last_dim, seen)
        if key not in decided:
            ctx = KernelContext(
                name=demangle(name), short_name=short, op=op, m=m, experts=experts, last_dim=last_dim,
                grid=tuple(given[c] if c in dims else None for c in DIM_COLS[:3]),
                block=tuple(given[c] if c in dims else None for c in DIM_COLS[3:]),
            )
            # Regexes see only the names: each distinct name goes through the rules' RE2 sets once.
            if (name, short) not in candidates:
                candidates[(name, short)] = rules.candidates(ctx)
            d = rules.decide(ctx, candidates[(name, short)])
            decided[key] = (d.category, d.rule_id, _pending_evidence(d, rules))
        category, rule_id, evidence = decided[key]
        out["ctx_id"].append(ctx_id)
        out["category"].append(category)
        out["rule_id"].append(rule_id)
        out["evidence"].append(evidence)
    return pa.table({"ctx_id": pa.array(out["ctx_id"], pa.int64()),
                     **{c: pa.array(out[c], pa.string()) for c in ("category", "rule_id", "evidence")}})


def classify(con: duckdb.DuckDBPyConnection, run_ids: Sequence[int] | None = None,
             rules: RuleSet | None = None, *, refresh: bool = False) -> list[int]:
    """Fill the verdicts (kernels.category / rule_id / evidence) of `run_ids` (all runs when None).

    The per-kernel part (split-K reduces, GEMMs decided by their pass, MoE experts, softmax by its
    place) is redone for runs where a verdict changed, or for every selected run with `refresh`
    (after the run's metadata or stages changed: `tracekit classify` does that). Those runs'
    rollups that depend on verdicts are rewritten (store.refresh_follow_totals: from the kernels
    with follow_* set and the per-context totals, not every kernel); in the other runs whose
    verdicts changed, the kernel_sums rows of the changed contexts' names (store.refresh_kernel_sums).
    Returns the runs whose rollups were rewritten."""
    rules = rules if rules is not None else RuleSet.load()
    return _classify(con, None if run_ids is None else list(run_ids), rules, refresh, "kernel_rows")


def plan_kernel_follows(con: duckdb.DuckDBPyConnection, run_id: int, kernels: str, rules: RuleSet) -> pa.Table:
    """classify for a run whose kernel rows are not written yet (relation `kernels`: kernel_rows'
    columns, stages included, the run's verdict rows stored), as store.insert_run takes it
    (store.FollowPlanner): the verdicts are written, and the per-kernel answers are returned
    (kernel_id, follow_category, follow_evidence: the kernels that have one) for the rows to be
    written with them (why: store.FollowPlanner). The rollups are the caller's (refresh_rollups)."""
    rows = (f"(SELECT kernel_id AS rowid, {int(run_id)}::INTEGER AS run_id, pid, device, stream, start_ns, "
            f"ctx_id, stage, NULL::VARCHAR AS follow_category, NULL::VARCHAR AS follow_evidence FROM {kernels})")
    _classify(con, [int(run_id)], rules, False, rows)
    try:
        return con.sql("SELECT rid AS kernel_id, category AS follow_category, evidence AS follow_evidence "
                       "FROM _tk_planned").to_arrow_table()
    finally:
        _quietly(con.execute, "DROP TABLE IF EXISTS _tk_planned")


def _classify(con: duckdb.DuckDBPyConnection, selected: list[int] | None, rules: RuleSet, refresh: bool,
              rows: str) -> list[int]:
    """classify over kernel rows `rows` (kernel_rows, or rows not written yet: then the per-kernel
    answers go to temp table _tk_planned and no rollup is written)."""
    where_v = run_filter(con, selected, "v.")
    planned = rows != "kernel_rows"
    if planned:
        con.execute("CREATE OR REPLACE TEMP TABLE _tk_planned AS "
                    "SELECT NULL::BIGINT AS rid, NULL::VARCHAR AS category, NULL::VARCHAR AS evidence WHERE false")
    try:
        con.register("_tk_decided", _decide(con, rules, where_v))
        # Only verdicts that differ are written: after a rules edit, what the edit changed.
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _tk_new AS "
            f"SELECT v.run_id, v.ctx_id, d.category, d.rule_id, d.evidence, "
            f"       v.category AS old_category, v.evidence AS old_evidence "
            f"FROM kernel_verdicts v JOIN _tk_decided d USING (ctx_id) WHERE {where_v} "
            f"AND (v.category IS DISTINCT FROM d.category OR v.rule_id IS DISTINCT FROM d.rule_id "
            f"     OR v.evidence IS DISTINCT FROM d.evidence)"
        )
        con.execute(
            "UPDATE kernel_verdicts SET category = n.category, rule_id = n.rule_id, evidence = n.evidence "
            "FROM _tk_new n WHERE kernel_verdicts.run_id = n.run_id AND kernel_verdicts.ctx_id = n.ctx_id"
        )
        if refresh:
            per_kernel = [r[0] for r in con.execute(
                f"SELECT DISTINCT run_id FROM kernel_verdicts v WHERE {where_v} ORDER BY 1").fetchall()]
        else:
            # Per-kernel decisions are redone only where a changed verdict can move one (before or
            # after the edit: a category those decisions look at, or a per-kernel evidence
            # marker), and in runs with kernels their pass decides (a batch is known): that answer
            # depends on the GEMV threshold too, which no verdict records. Elsewhere a rules edit
            # rewrites only the run's kernel_sums: redoing every run's per-kernel part after an
            # edit to, say, the ELEMWISE rules cost 3.8 s at 10M kernels.
            markers = ", ".join(f"'{e}'" for e in _MARKERS)
            per_kernel = [r[0] for r in con.execute(
                f"SELECT run_id FROM _tk_new WHERE category IN ({_PER_KERNEL_INPUTS_SQL}) "
                f"OR old_category IN ({_PER_KERNEL_INPUTS_SQL}) "
                f"OR evidence IN ({markers}) OR old_evidence IN ({markers}) "
                f"OR starts_with(evidence, '{_PLACE}') OR starts_with(old_evidence, '{_PLACE}') "
                f"UNION SELECT DISTINCT v.run_id FROM kernel_verdicts v "
                f"JOIN ({_meta_sql(run_filter(con, selected, 'r.'))}) m ON m.run_id = v.run_id "
                f"WHERE {where_v} AND m.batch IS NOT NULL AND v.evidence IN ('{_PASS}', '{_MOE}') "
                f"ORDER BY 1").fetchall()]
        if per_kernel:
            _resolve_per_kernel(con, per_kernel, rules.gemv_max_m, rows)
            if not planned:
                refresh_follow_totals(con, per_kernel)
        done = set(per_kernel)
        sums_only = [r for (r,) in con.execute("SELECT DISTINCT run_id FROM _tk_new ORDER BY 1").fetchall()
                     if r not in done]
        if sums_only and not planned:
            # Their follow_* stand: only the kernel_sums rows of the changed contexts' names move.
            refresh_kernel_sums(con, f"SELECT run_id, ctx_id FROM _tk_new WHERE {run_filter(con, sums_only)}")
        return sorted(done.union(sums_only))
    finally:
        # After a failure the caller's transaction is aborted and these fail too; the original
        # error is the one to report, and the rollback drops the temp tables anyway.
        _quietly(con.unregister, "_tk_decided")
        # The per-kernel steps drop their own tables (_resolve_per_kernel).
        _quietly(con.execute, "DROP TABLE IF EXISTS _tk_new")


def _quietly(call, arg: str) -> None:
    try:
        call(arg)
    except duckdb.Error:
        pass


# Run metadata that gives a pass's tokens: the first key present wins (run_meta, then the HF
# config a capture manifest stores as `config`).
_META = {
    "batch": ("batch", "batch_size"),
    "input_len": ("input_len", "input_length", "prompt_len"),
    "top_k": ("moe_top_k", "num_experts_per_tok", "top_k"),
    "experts": ("moe_experts", "num_local_experts", "num_experts", "n_routed_experts"),
}


def _meta_sql(where_r: str) -> str:
    """Per run of `where_r` (on alias r.): batch, input_len, top_k, experts as integers (NULL when
    unknown)."""
    cols = []
    for out, keys in _META.items():
        picks = [f"max(TRY_CAST(value AS BIGINT)) FILTER (WHERE key = '{k}')" for k in keys]
        picks += [f"max(TRY_CAST(json_extract_string(TRY_CAST(value AS JSON), '$.{k}') AS BIGINT)) "
                  f"FILTER (WHERE key = 'config')" for k in keys]
        cols.append(f"coalesce({', '.join(picks)}) AS {out}")
    return f"SELECT run_id, {', '.join(cols)} FROM run_meta r WHERE {where_r} GROUP BY run_id"


def _resolve_per_kernel(con: duckdb.DuckDBPyConnection, run_ids: list[int], gemv_max_m: int, rows: str) -> None:
    """What a kernel's context alone cannot decide, decided per kernel (kernel_rows.follow_*), in
    dependency order: GEMMs by their pass, then split-K reduces by their GEMM, then softmaxes by
    their place. Each step reads the earlier steps' answers from their temp tables (_current), and
    kernel_rows is written once at the end, only where an answer changed: updating the same rows
    three times (after clearing them) made each later scan read the transaction's row versions,
    2.8 s of the 4.2 s an all-change classify took at 10M kernels. Rows not written yet (`rows` is
    not kernel_rows) have no answers: theirs go to _tk_planned."""
    where_r = run_filter(con, run_ids, "r.")
    answers = ("SELECT rid, category, evidence FROM _tk_pass UNION ALL "
               "SELECT rid, category, evidence FROM _tk_follow UNION ALL "
               "SELECT rid, category, evidence FROM _tk_place")
    try:
        _resolve_by_pass(con, where_r, gemv_max_m, rows)
        _resolve_follows_gemm(con, where_r, rows)
        _resolve_by_place(con, where_r, rows)
        if rows != "kernel_rows":
            con.execute(f"INSERT INTO _tk_planned SELECT * FROM ({answers}) "
                        "WHERE category IS NOT NULL OR evidence IS NOT NULL")
            return
        con.execute(
            "UPDATE kernel_rows SET follow_category = u.category, follow_evidence = u.evidence "
            "FROM (SELECT coalesce(n.rid, o.rid) AS rid, n.category, n.evidence "
            f"      FROM ({answers}) n "
            "      FULL JOIN (SELECT r.rowid AS rid, r.follow_category, r.follow_evidence FROM kernel_rows r "
            f"                 WHERE {where_r} AND (r.follow_category IS NOT NULL OR r.follow_evidence IS NOT NULL)) o "
            "      ON n.rid = o.rid "
            "      WHERE n.category IS DISTINCT FROM o.follow_category OR n.evidence IS DISTINCT FROM o.follow_evidence) u "
            "WHERE kernel_rows.rowid = u.rid")
    finally:
        for table in ("_tk_pass", "_tk_follow", "_tk_place"):
            _quietly(con.execute, f"DROP TABLE IF EXISTS {table}")


def _current(where_r: str, rows: str, steps: tuple[tuple[str, tuple[str, ...]], ...]) -> str:
    """Kernel rows of the selected runs (run_id, queue, start_ns) with their category / evidence
    as decided so far: a kernel whose verdict evidence is one of a done step's markers takes that
    step's answer (its temp table holds every such kernel once, with its queue and start), every
    other kernel its context's verdict. UNION ALL, no LEFT JOIN: the steps' tables may be empty
    (DuckDB 2.0.1 has summed LEFT JOINs to an empty table wrongly)."""
    marked = " OR ".join(f"v.evidence IN ({', '.join(repr(m) for m in marks)})" for _, marks in steps) or "FALSE"
    parts = [f"SELECT r.run_id, {_QUEUE}, r.start_ns, v.category, v.evidence "
             f"FROM {rows} r JOIN kernel_verdicts v ON v.run_id = r.run_id AND v.ctx_id = r.ctx_id "
             f"WHERE {where_r} AND NOT coalesce({marked}, FALSE)"]
    parts += [f"SELECT run_id, pid, device, stream, start_ns, category, evidence FROM {table}" for table, _ in steps]
    return " UNION ALL ".join(parts)


def _none_marked(con: duckdb.DuckDBPyConnection, where_r: str, marked: str, table: str, rows: str) -> bool:
    """Whether no selected run has a verdict `marked` (a condition on r.evidence); if so the step
    has nothing to decide and its table is made empty: its ASOF join would still read every kernel
    of the runs (0.4 s at 10M kernels for a database without such kernels)."""
    if con.execute(f"SELECT 1 FROM kernel_verdicts r WHERE {where_r} AND {marked} LIMIT 1").fetchone():
        return False
    con.execute(f"CREATE OR REPLACE TEMP TABLE {table} AS "
                f"SELECT {_PLACED}, NULL::VARCHAR AS category, NULL::VARCHAR AS evidence FROM {rows} r LIMIT 0")
    return True


def _with_marked(where_r: str, marked: str) -> str:
    """`where_r` narrowed to the runs with a verdict `marked` (a condition on r.evidence): the
    runs a per-kernel step has kernels to decide in, the only ones its ASOF join reads."""
    return f"{where_r} AND r.run_id IN (SELECT run_id FROM kernel_verdicts r WHERE {where_r} AND {marked})"


def _resolve_by_pass(con: duckdb.DuckDBPyConnection, where_r: str, gemv_max_m: int, rows: str) -> None:
    """A GEMM-family kernel without op shapes (a CUDA-graph replay has no CPU op) gets M from the
    pass it runs in: a decode pass of batch B multiplies B rows by every weight. An expert GEMM
    (MoE) sees tokens x top-k / experts, tokens being B in decode and B x input_len in prefill.
    Needs the stage
    (kernel_rows.stage) and the batch (run metadata); where either is missing the name's class
    stands, with evidence saying so."""
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _tk_pass AS "
        f"WITH meta AS ({_meta_sql(where_r)}), "
        f"k AS (SELECT {_PLACED}, r.stage, v.category, v.evidence = '{_MOE}' AS moe, m.batch, "
        f"             m.input_len, m.top_k, m.experts, "
        # A prefill pass is no single M for dense layers (HF computes the LM head on the last
        # token only), so only decode passes decide dense GEMMs; experts see every token in both.
        f"             CASE WHEN r.stage = 'generation' THEN m.batch "
        f"                  WHEN r.stage = 'summarization' AND v.evidence = '{_MOE}' "
        f"                       THEN m.batch * m.input_len END AS tokens "
        f"      FROM {rows} r JOIN kernel_verdicts v ON v.run_id = r.run_id AND v.ctx_id = r.ctx_id "
        f"      LEFT JOIN meta m ON m.run_id = r.run_id "
        f"      WHERE {where_r} AND v.evidence IN ('{_PASS}', '{_MOE}')) "
        f"SELECT rid, run_id, pid, device, stream, start_ns, "
        f"  CASE WHEN moe AND tokens IS NOT NULL AND top_k > 0 AND experts > 0 "
        f"         THEN CASE WHEN tokens * top_k / experts <= {int(gemv_max_m)} THEN 'GEMV' ELSE 'GEMM' END "
        f"       WHEN NOT moe AND tokens IS NOT NULL "
        f"         THEN CASE WHEN tokens <= {int(gemv_max_m)} THEN 'GEMV' ELSE 'GEMM' END "
        f"       ELSE category END AS category, "
        f"  CASE WHEN tokens IS NULL THEN (CASE WHEN moe THEN 'moe:name' ELSE 'name' END) "
        f"       WHEN moe AND NOT (top_k > 0 AND experts > 0) THEN 'moe:name' "
        f"       ELSE (CASE WHEN moe THEN 'moe:' ELSE '' END) || 'pass:' "
        f"            || (CASE stage WHEN 'generation' THEN 'decode' ELSE 'prefill' END) || ',batch=' || batch "
        f"            || (CASE WHEN stage = 'summarization' THEN ',input=' || input_len ELSE '' END) "
        f"            || (CASE WHEN moe THEN ',tokens/expert=' || "
        f"                 regexp_replace(printf('%.2f', tokens * top_k / experts), '\\.?0+$', '') ELSE '' END) "
        f"  END AS evidence "
        f"FROM k"
    )


def _resolve_follows_gemm(con: duckdb.DuckDBPyConnection, where_r: str, rows: str) -> None:
    """A split-K reduce with no shapes of its own takes the class of the GEMM it completes: the
    latest GEMM-family kernel that started before it on the same stream of the same process and
    device of the same run (stream ids repeat across GPUs and processes: stream 7 of GPU 0 is not
    stream 7 of GPU 1)."""
    pending = f"r.evidence = '{_PENDING}'"
    if _none_marked(con, where_r, pending, "_tk_follow", rows):
        return
    family = ", ".join(f"'{c}'" for c in sorted(GEMM_FAMILY))
    # The GEMMs' class as decided so far (by their pass where that step settled it), in the runs
    # that have reduces.
    gemms = _current(_with_marked(where_r, pending), rows, (("_tk_pass", (_PASS, _MOE)),))
    # Materialised (an UPDATE ... FROM (the ASOF join) took 2.15 s at 10M kernels / 415k reduces).
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _tk_follow AS "
        f"SELECT s.rid, s.run_id, s.pid, s.device, s.stream, s.start_ns, "
        f"       coalesce(p.category, s.category) AS category, "
        f"       coalesce('prev_gemm:' || p.evidence, 'name') AS evidence "
        f"FROM (SELECT {_PLACED}, v.category "
        f"      FROM {rows} r JOIN kernel_verdicts v ON v.run_id = r.run_id AND v.ctx_id = r.ctx_id "
        f"      WHERE {where_r} AND v.evidence = '{_PENDING}') s "
        # No GEMM before it (a trace cut mid-GEMM): the rule's own class by name stands.
        f"ASOF LEFT JOIN (SELECT * FROM ({gemms}) g WHERE g.category IN ({family}) "
        f"                AND g.evidence IS DISTINCT FROM '{_PENDING}') p "
        f"ON s.run_id = p.run_id AND s.pid = p.pid AND s.device = p.device AND s.stream = p.stream "
        f"AND s.start_ns >= p.start_ns"
    )


def _resolve_by_place(con: duckdb.DuckDBPyConnection, where_r: str, rows: str) -> None:
    """A softmax without shapes: over the vocabulary (sampling) when it runs after the last
    matrix product of its pass, over attention keys otherwise. The next GEMM-family, embedding or
    sampling kernel on its queue tells: a GEMM next (the attention's P x V) means attention; an
    embedding lookup or sampling kernel next (the next pass began), or nothing, means it came after
    the LM head."""
    placed = f"starts_with(r.evidence, '{_PLACE}')"
    if _none_marked(con, where_r, placed, "_tk_place", rows):
        return
    # The next kernels' class as decided so far (by their pass, or by their GEMM: a reduce), in
    # the runs that have such softmaxes.
    nexts = _current(_with_marked(where_r, placed), rows,
                     (("_tk_pass", (_PASS, _MOE)), ("_tk_follow", (_PENDING,))))
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _tk_place AS "
        f"SELECT s.rid, CASE WHEN n.category IN ('GEMM', 'GEMV') THEN s.category ELSE s.after END AS category, "
        f"       CASE WHEN n.category IN ('GEMM', 'GEMV') THEN 'place:before-gemm' "
        f"            WHEN n.category IS NULL THEN 'place:last' "
        f"            ELSE 'place:after-last-gemm' END AS evidence "
        f"FROM (SELECT {_PLACED}, v.category, substr(v.evidence, {len(_PLACE) + 1}) AS after "
        f"      FROM {rows} r JOIN kernel_verdicts v ON v.run_id = r.run_id AND v.ctx_id = r.ctx_id "
        f"      WHERE {where_r} AND starts_with(v.evidence, '{_PLACE}')) s "
        f"ASOF LEFT JOIN (SELECT * FROM ({nexts}) g WHERE g.category IN ({_PER_KERNEL_INPUTS_SQL}) "
        f"                AND NOT starts_with(coalesce(g.evidence, ''), '{_PLACE}')) n "
        f"ON s.run_id = n.run_id AND s.pid = n.pid AND s.device = n.device AND s.stream = n.stream "
        f"AND s.start_ns < n.start_ns"
    )
