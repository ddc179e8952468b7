"""Stage attribution: which forward pass (summarization = prefill, or a generation step) ran each kernel.

Method, in order of trust:

1. **Markers** (`markers:nvtx`, `markers:annotation`). CPU-side ranges (NVTX, or Kineto
   `user_annotation` from `record_function`) whose whole label matches `StageConfig`'s patterns mark
   one pass each. A kernel belongs to the pass of the innermost marker around its *launch* on the
   launching thread (kernels.launch_id -> launches pid/tid/start). GPU-side `gpu_user_annotation`
   copies are ignored: their extent follows the GPU queue, not the code that issued the work.
   When markers of one stage nest (emit_nvtx repeats `record_function` labels inside the NVTX range
   of the same pass; or a `generation` range wraps per-step ranges) the innermost one is the pass.
2. **Inference** (`inferred:<how>`), when no marker matches. Every forward pass of a decoder starts
   with the token-embedding lookup (a gather / index-select kernel), so each such kernel opens a
   pass that runs until the next one. A pass is summarization when the kernels' names say so
   (TensorRT-LLM context vs generation attention kernels: `+attention-names`), otherwise when its
   kernel mix (name and grid) differs by more than `StageConfig.change_threshold` from a
   reference generation pass, taken from the largest group of passes launching the same kernel
   names (`+kernel-mix`); the first pass is always summarization. Limitation: with a one-token
   prompt, prefill and decode launch the same kernels, so a warm-up run and the measured run
   cannot be told apart and become one iteration; record markers for such runs.
3. `none`: nothing found; every kernel is `other`.

Each summarization pass starts a new iteration (a warm-up run and the measured run are two
iterations). An iteration is complete when it has as many generation passes as the longest one.
With `iterations='last'` (default) only the last complete iteration is the measurement: its
kernels keep `summarization`/`generation`, earlier iterations become `warmup`, and passes after it
(a capture cut short) become `other`; with `iterations='all'` every pass keeps its stage. Kernels
outside every pass (model init, allocator fills, ...) are `other` with NULL step and iteration.

The passes themselves go to the `passes` table (marker label and extent, or the inferred pass's GPU
span), which the views use for wall-clock times. All work is set-based SQL (ASOF and range joins)
so that traces with millions of kernels take seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import duckdb

from tracekit.store import table_ddl

# Whole-label patterns (RE2, matched case-insensitively against the full label, so that an
# operator range such as `aten::mm` or a label that merely mentions "decode" never counts).
DEFAULT_SUMMARIZATION = (
    r"(?:stage[:_ /-]?)?(?:summarization|summarize|prefill|pre-fill|context)"
    r"(?:[ _-]?(?:stage|phase|pass|step))?(?:[ _#:-]*\d+)?",
)
DEFAULT_GENERATION = (
    r"(?:stage[:_ /-]?)?(?:generation|generate|decode|decoding)"
    r"(?:[ _-]?(?:stage|phase|pass|step))?(?:[ _#:-]*\d+)?",
)
# The first kernel of a forward pass: the token-embedding lookup (PyTorch gather/index_select,
# TensorRT-LLM lookup kernels). Searched in the demangled name.
DEFAULT_PASS_ANCHOR = r"gather|index_?select|embedding|lookup"
# Attention kernels that only run in one stage (TensorRT-LLM naming).
DEFAULT_CONTEXT_ATTENTION = r"fmha_v2|context_?fmha|contextfmha"
DEFAULT_GENERATION_ATTENTION = r"masked_multihead_attention|mmha|xqa"

# The kernel columns stage attribution reads (from kernel_rows, or rows not yet written: plan_stages).
STAGE_INPUT = "kernel_id, launch_id, name_id, start_ns, end_ns, grid_x, grid_y, grid_z"

# Defined in schema.sql with every other table; kept under this name for the views.
PASSES_DDL = table_ddl("passes")


@dataclass(frozen=True)
class StageConfig:
    """How stages are found. Patterns are RE2 regular expressions."""

    summarization_patterns: tuple[str, ...] = DEFAULT_SUMMARIZATION
    generation_patterns: tuple[str, ...] = DEFAULT_GENERATION
    # CPU-side range kinds that can carry markers.
    marker_kinds: tuple[str, ...] = ("nvtx", "user_annotation")
    iterations: Literal["last", "all"] = "last"
    infer: bool = True
    pass_anchor: str = DEFAULT_PASS_ANCHOR
    context_attention: str = DEFAULT_CONTEXT_ATTENTION
    generation_attention: str = DEFAULT_GENERATION_ATTENTION
    # Share of kernels (by name and grid) that must differ from the reference generation pass
    # for an inferred pass to count as a summarization. One-token passes differ from each other
    # only in the few kernels whose grid follows the KV-cache length (~4% on the shared traces);
    # a prompt pass runs nearly every kernel on another grid (>80%).
    change_threshold: float = 0.5
    # Inferred passes shorter than this share of the median pass are not passes: their opening
    # gather was sampling or routing, not the embedding lookup.
    min_pass_fraction: float = 0.25

    def __post_init__(self) -> None:
        if self.iterations not in ("last", "all"):
            raise ValueError(f"iterations must be 'last' or 'all', not {self.iterations!r}")


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> object:
    # fetchall, not fetchone: a half-read result blocks the connection's next relation query,
    # and this runs inside the importer's transaction on the caller's connection.
    return con.execute(sql).fetchall()[0][0]


def _alternation(patterns: tuple[str, ...]) -> str:
    # No pattern at all must match nothing, not everything.
    return "(?i)" + ("|".join(f"(?:{p})" for p in patterns) if patterns else "a^")


def attribute_stages(
    con: duckdb.DuckDBPyConnection, run_id: int, config: StageConfig | None = None
) -> str:
    """Fill kernels.stage/step/iteration, runs.stage_method/iterations and `passes` for one run.

    Returns the method that decided ('markers:nvtx', 'markers:annotation', 'inferred:<how>', 'none').
    Safe to re-run: the run's previous attribution is replaced.
    """
    kernels = f"(SELECT {STAGE_INPUT} FROM kernel_rows WHERE run_id = {int(run_id)})"
    try:
        method = _attribute(con, run_id, kernels, config or StageConfig())
        _write_kernels(con, run_id)
    finally:
        _drop_scratch(con)
    return method


def plan_stages(
    con: duckdb.DuckDBPyConnection, run_id: int, kernels: str, config: StageConfig | None = None
) -> str:
    """Stage attribution of a run whose kernel rows are not written yet, so that they are written
    once with their stage instead of updated (an UPDATE of every row of a fresh import, and the
    checkpoint rewriting those columns, cost 0.05-0.1 s at 375k kernels).

    `kernels`: a relation of the run's kernels with the STAGE_INPUT columns (names, launches and
    ranges already stored). Fills `passes` and runs.stage_method
    / iterations as attribute_stages does, and leaves temp table `_tk_kstage` (kernel_id, pass_id) of
    the kernels in a pass, which take their pass's stage, step and iteration from `passes`; every
    other kernel is 'other' with NULL step and iteration.
    The caller drops it with drop_plan(). Returns the method."""
    try:
        method = _attribute(con, run_id, kernels, config or StageConfig())
        con.execute("CREATE OR REPLACE TEMP TABLE _tk_kstage AS SELECT kernel_id, pass_id FROM _tk_kpass")
    finally:
        _drop_scratch(con)
    return method


def drop_plan(con: duckdb.DuckDBPyConnection) -> None:
    """Drop what plan_stages left."""
    _drop_scratch(con, ("_tk_kstage",))


def _attribute(con: duckdb.DuckDBPyConnection, run_id: int, kernels: str, cfg: StageConfig) -> str:
    con.execute(PASSES_DDL)
    con.execute("DELETE FROM passes WHERE run_id = ?", [run_id])
    method = _marker_passes(con, run_id, kernels, cfg)
    if method is not None and not _scalar(con, "SELECT count(*) FROM _tk_kpass"):
        method = None  # markers, but no kernel launch to place by them (no CUDA API events)
    if method is None and cfg.infer:
        method = _inferred_passes(con, kernels, cfg)
    if method is None:
        method = "none"
        con.execute("CREATE OR REPLACE TEMP TABLE _tk_pass AS SELECT NULL::INTEGER AS pass_id WHERE false")
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _tk_kpass AS "
            "SELECT NULL::BIGINT AS kernel_id, NULL::INTEGER AS pass_id WHERE false"
        )
        n_complete = 0
    else:
        n_complete = _finalize(con, run_id, cfg)
    con.execute(
        "UPDATE runs SET stage_method = ?, iterations = ? WHERE run_id = ?",
        [method, n_complete, run_id],
    )
    return method


def _drop_scratch(con: duckdb.DuckDBPyConnection,
                  tables: tuple[str, ...] = ("_tk_marks", "_tk_pass", "_tk_kpass", "_tk_final", "_tk_k")) -> None:
    for t in tables:
        try:
            con.execute(f"DROP TABLE IF EXISTS {t}")
        except duckdb.TransactionException:
            # The caller's transaction failed and will roll back, taking the tables with it;
            # raising here would hide the error that failed it.
            return


def _marker_passes(con: duckdb.DuckDBPyConnection, run_id: int, kernels: str, cfg: StageConfig) -> str | None:
    """Passes from marker ranges, and each kernel's pass by its launch. None when no marker matches."""
    kinds = list(cfg.marker_kinds)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_marks AS
        WITH names AS (
            SELECT name,
                   CASE WHEN regexp_full_match(trim(name), $s) THEN 'summarization'
                        WHEN regexp_full_match(trim(name), $g) THEN 'generation' END AS pstage
            FROM (SELECT DISTINCT name FROM ranges WHERE run_id = $r AND list_contains($kinds, kind)))
        SELECT r.range_id, r.kind, r.name, r.pid, r.tid, r.start_ns, r.end_ns, n.pstage
        FROM ranges r JOIN names n USING (name)
        WHERE r.run_id = $r AND list_contains($kinds, r.kind) AND n.pstage IS NOT NULL
        """,
        {"r": run_id, "s": _alternation(cfg.summarization_patterns),
         "g": _alternation(cfg.generation_patterns), "kinds": kinds},
    )
    if not _scalar(con, "SELECT count(*) FROM _tk_marks"):
        return None
    # A marker enclosing another marker of the same stage on the same thread is a wrapper (or
    # the emit_nvtx echo of the same pass): the innermost one is the pass. Ranges on a thread
    # nest, so a marker encloses another exactly when the next one to start (same stage and
    # thread, longer first on a tie) lies inside it. Identical extents keep the later range_id.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_pass AS
        WITH nxt AS (
            SELECT *, lead(start_ns) OVER w AS next_start, lead(end_ns) OVER w AS next_end
            FROM _tk_marks
            WINDOW w AS (PARTITION BY pstage, pid, tid ORDER BY start_ns, end_ns DESC, range_id))
        SELECT row_number() OVER (ORDER BY start_ns, end_ns DESC, range_id)::INTEGER - 1 AS pass_id,
               pstage, CASE kind WHEN 'nvtx' THEN 'nvtx' ELSE 'user_annotation' END AS source,
               name, range_id, pid, tid, start_ns, end_ns
        FROM nxt
        WHERE next_start IS NULL OR next_start > end_ns OR next_end > end_ns
        """
    )
    # ASOF finds the latest-starting pass at or before each launch on its thread: the innermost
    # one when it still covers the launch. A launch it does not cover can only lie in a pass
    # enclosing others (passes of different stages nested, rare), so only those are range-joined.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_kpass AS
        WITH kl AS (
            SELECT k.kernel_id, l.pid, l.tid, l.start_ns AS t
            FROM {kernels} k JOIN launches l ON l.run_id = $r AND l.launch_id = k.launch_id),
        a AS (
            SELECT kl.kernel_id, kl.pid, kl.tid, kl.t, p.pass_id, p.end_ns
            FROM kl ASOF LEFT JOIN _tk_pass p ON kl.pid = p.pid AND kl.tid = p.tid AND kl.t >= p.start_ns),
        outer_pass AS (
            SELECT * FROM (
                SELECT *, lead(start_ns) OVER (PARTITION BY pid, tid ORDER BY start_ns, end_ns DESC, pass_id)
                          AS next_start
                FROM _tk_pass)
            WHERE next_start <= end_ns),
        rest AS (
            SELECT a.kernel_id, arg_max(p.pass_id, p.start_ns) AS pass_id
            FROM a JOIN outer_pass p ON a.pid = p.pid AND a.tid = p.tid
                AND a.t >= p.start_ns AND a.t <= p.end_ns
            WHERE a.pass_id IS NOT NULL AND a.t > a.end_ns
            GROUP BY a.kernel_id)
        SELECT kernel_id, pass_id FROM a WHERE pass_id IS NOT NULL AND t <= end_ns
        UNION ALL SELECT kernel_id, pass_id FROM rest
        """.replace("{kernels}", kernels),
        {"r": run_id},
    )
    sources = [r[0] for r in con.execute(
        "SELECT DISTINCT source FROM _tk_pass ORDER BY source").fetchall()]
    names = {"nvtx": "nvtx", "user_annotation": "annotation"}
    return "markers:" + "+".join(names[s] for s in sources)


def _inferred_passes(con: duckdb.DuckDBPyConnection, kernels: str, cfg: StageConfig) -> str | None:
    """Passes from the kernel sequence alone. None when no pass anchor is found."""
    # Name patterns are matched once per distinct name (a trace has hundreds, not millions).
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_k AS
        WITH names AS (
            SELECT name_id, name, regexp_matches(name, $anchor) AS is_anchor,
                   regexp_matches(name, $ctx) AS is_ctx, regexp_matches(name, $gen) AS is_gen
            FROM kernel_names WHERE name_id IN (SELECT name_id FROM {kernels})),
        k AS (
            SELECT k.kernel_id, k.start_ns, k.end_ns, hash(n.name) AS name_hash,
                   hash(n.name, k.grid_x, k.grid_y, k.grid_z) AS sig,
                   coalesce(k.grid_x::BIGINT * k.grid_y * k.grid_z, 0) AS blocks,
                   n.is_anchor, n.is_ctx, n.is_gen
            FROM {kernels} k JOIN names n USING (name_id))
        SELECT *, sum(is_anchor::INTEGER) OVER (ORDER BY start_ns, kernel_id ROWS UNBOUNDED PRECEDING)
                  ::INTEGER - 1 AS seg
        FROM k
        """.replace("{kernels}", kernels),
        {"anchor": "(?i)" + cfg.pass_anchor, "ctx": "(?i)" + cfg.context_attention,
         "gen": "(?i)" + cfg.generation_attention},
    )
    if not _scalar(con, "SELECT count(*) FROM _tk_k WHERE seg >= 0"):
        return None
    _drop_minor_anchors(con, cfg.min_pass_fraction)
    # The generation passes are the most numerous group of passes launching the same kernel
    # names (grids change from step to step as the KV cache grows, so names alone group them;
    # a sum of name hashes identifies the multiset); on a tie (one generation pass per prompt)
    # the group doing less work (fewer thread blocks) is the one-token passes. Each pass is then
    # compared to a reference pass of that group by kernel mix, name and grid:
    # change = 1 - 2 * sum(min(count_i, count_ref)) / (n_i + n_ref), 0 = same kernels, 1 = none shared.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_pass AS
        WITH seg AS (
            SELECT seg, count(*) AS n, min(start_ns) AS start_ns, max(end_ns) AS end_ns,
                   (count(*), sum(name_hash::HUGEINT)) AS names_key, sum(blocks) AS blocks,
                   bool_or(is_ctx) AS ctx, bool_or(is_gen) AS gen
            FROM _tk_k WHERE seg >= 0 GROUP BY seg),
        grp AS (SELECT names_key, count(*) AS g FROM seg GROUP BY names_key),
        ref AS (
            SELECT seg.seg, seg.n FROM seg JOIN grp USING (names_key)
            ORDER BY grp.g DESC, seg.blocks, seg.seg LIMIT 1),
        cnt AS (SELECT seg, sig, count(*) AS c FROM _tk_k WHERE seg >= 0 GROUP BY seg, sig),
        common AS (
            SELECT a.seg, sum(least(a.c, b.c)) AS m
            FROM cnt a JOIN cnt b ON b.seg = (SELECT seg FROM ref) AND b.sig = a.sig
            GROUP BY a.seg),
        s AS (
            SELECT seg.*, 1 - 2 * coalesce(common.m, 0) / (seg.n + (SELECT n FROM ref)) AS change
            FROM seg LEFT JOIN common USING (seg))
        SELECT seg AS pass_id,
               CASE WHEN ctx AND NOT gen THEN 'summarization'
                    WHEN gen AND NOT ctx THEN 'generation'
                    WHEN seg = 0 OR change > $thr THEN 'summarization'
                    ELSE 'generation' END AS pstage,
               (ctx <> gen) AS by_names,
               'inferred' AS source, NULL::VARCHAR AS name, NULL::BIGINT AS range_id,
               NULL::BIGINT AS pid, NULL::BIGINT AS tid, start_ns, end_ns
        FROM s
        """,
        {"thr": cfg.change_threshold},
    )
    con.execute("CREATE OR REPLACE TEMP TABLE _tk_kpass AS SELECT kernel_id, seg AS pass_id FROM _tk_k WHERE seg >= 0")
    _trim_iteration_ends(con)
    by_names = _scalar(con, "SELECT bool_or(by_names) FROM _tk_pass")
    return "inferred:embedding-anchor+" + ("attention-names" if by_names else "kernel-mix")


def _drop_minor_anchors(con: duckdb.DuckDBPyConnection, fraction: float) -> None:
    """A gather that is not the embedding lookup (sampling, MoE routing) would open a "pass" of a
    handful of kernels. Segments shorter than `fraction` of the median segment are merged into
    the one before them."""
    con.execute(
        """
        UPDATE _tk_k SET is_anchor = false
        WHERE is_anchor AND seg IN (
            WITH n AS (SELECT seg, count(*) AS n FROM _tk_k WHERE seg >= 0 GROUP BY seg)
            SELECT seg FROM n WHERE seg > 0 AND n < $f * (SELECT median(n) FROM n))
        """,
        {"f": fraction},
    )
    con.execute(
        """
        UPDATE _tk_k SET seg = x.seg
        FROM (SELECT kernel_id, sum(is_anchor::INTEGER) OVER (ORDER BY start_ns, kernel_id
                  ROWS UNBOUNDED PRECEDING)::INTEGER - 1 AS seg FROM _tk_k) x
        WHERE _tk_k.kernel_id = x.kernel_id AND _tk_k.seg <> x.seg
        """
    )


def _trim_iteration_ends(con: duckdb.DuckDBPyConnection) -> None:
    """A pass runs until the next embedding lookup, so whatever ran after a sequence's last pass
    (bookkeeping between runs, the next model's init, the end of the capture) would join it.
    Passes that end a sequence (followed by a summarization pass, or by nothing) are capped at
    the longest pass of their stage that does not (eager decode passes all launch the same
    kernels); the surplus is `other`. Without such a pass to compare with, nothing is cut."""
    con.execute(
        """
        DELETE FROM _tk_kpass WHERE kernel_id IN (
            WITH p AS (SELECT pass_id, pstage, lead(pstage) OVER (ORDER BY pass_id) AS next_stage FROM _tk_pass),
            n AS (SELECT pass_id, count(*) AS n FROM _tk_kpass GROUP BY pass_id),
            b AS (
                SELECT p.pass_id, p.pstage, coalesce(p.next_stage = 'summarization', true) AS ends, n.n
                FROM p JOIN n USING (pass_id)),
            cap AS (SELECT pstage, max(n) AS cap FROM b WHERE NOT ends GROUP BY pstage),
            ordered AS (
                SELECT kp.kernel_id, kp.pass_id,
                       row_number() OVER (PARTITION BY kp.pass_id ORDER BY k.start_ns, k.kernel_id) AS i
                FROM _tk_kpass kp JOIN _tk_k k USING (kernel_id)
                WHERE kp.pass_id IN (SELECT pass_id FROM b WHERE ends))
            SELECT o.kernel_id FROM ordered o JOIN b USING (pass_id) JOIN cap USING (pstage)
            WHERE o.i > cap.cap)
        """
    )
    con.execute(
        """
        UPDATE _tk_pass SET end_ns = x.end_ns
        FROM (SELECT kp.pass_id, max(k.end_ns) AS end_ns FROM _tk_kpass kp JOIN _tk_k k USING (kernel_id)
              GROUP BY kp.pass_id) x
        WHERE _tk_pass.pass_id = x.pass_id
        """
    )


def _finalize(con: duckdb.DuckDBPyConnection, run_id: int, cfg: StageConfig) -> int:
    """Number passes into iterations and steps, decide each pass's stage, write `passes`.

    Returns the number of complete iterations."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_final AS
        WITH o AS (
            SELECT *, (sum(CASE WHEN pstage = 'summarization' THEN 1 ELSE 0 END)
                       OVER (ORDER BY start_ns, pass_id ROWS UNBOUNDED PRECEDING) - 1)::INTEGER AS it
            FROM _tk_pass),
        s AS (
            SELECT *, CASE WHEN pstage = 'summarization' THEN 0
                           ELSE row_number() OVER (PARTITION BY it, pstage ORDER BY start_ns, pass_id)
                      END::INTEGER AS st
            FROM o),
        its AS (SELECT it, count(*) FILTER (WHERE pstage = 'generation') AS ngen FROM s WHERE it >= 0 GROUP BY it),
        c AS (SELECT it, ngen = max(ngen) OVER () AS complete FROM its),
        meas AS (SELECT max(it) FILTER (WHERE complete) AS m FROM c)
        SELECT s.pass_id,
               CASE WHEN s.it >= 0 THEN s.it END AS iteration,
               CASE WHEN s.it >= 0 THEN s.st END AS step,
               CASE WHEN s.it < 0 THEN 'other'
                    WHEN $all OR s.it = meas.m THEN s.pstage
                    WHEN s.it < meas.m THEN 'warmup'
                    ELSE 'other' END AS stage,
               s.source, s.name, s.range_id, s.start_ns, s.end_ns
        FROM s, meas
        """,
        {"all": cfg.iterations == "all"},
    )
    con.execute(
        """
        INSERT INTO passes
        SELECT $r, f.pass_id, f.iteration, f.step, f.stage, f.source, f.name, f.range_id,
               f.start_ns, f.end_ns, coalesce(n.n, 0)
        FROM _tk_final f LEFT JOIN (SELECT pass_id, count(*) AS n FROM _tk_kpass GROUP BY pass_id) n USING (pass_id)
        """,
        {"r": run_id},
    )
    return con.execute(
        """
        WITH its AS (SELECT iteration, count(*) FILTER (WHERE step > 0) AS ngen
                     FROM _tk_final WHERE iteration IS NOT NULL GROUP BY iteration)
        SELECT count(*) FILTER (WHERE ngen = (SELECT max(ngen) FROM its)) FROM its
        """
    ).fetchall()[0][0]


def _write_kernels(con: duckdb.DuckDBPyConnection, run_id: int) -> None:
    con.execute(
        "UPDATE kernel_rows SET stage = 'other', step = NULL, iteration = NULL WHERE run_id = ?", [run_id]
    )
    if _scalar(con, "SELECT count(*) FROM _tk_kpass") == 0:
        return
    con.execute(
        """
        UPDATE kernel_rows SET stage = x.stage, step = x.step, iteration = x.iteration
        FROM (SELECT kp.kernel_id, f.stage, f.step, f.iteration
              FROM _tk_kpass kp JOIN _tk_final f USING (pass_id)) x
        WHERE kernel_rows.run_id = ? AND kernel_rows.kernel_id = x.kernel_id
        """,
        [run_id],
    )
