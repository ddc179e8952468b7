"""Stage attribution: which forward pass (summarization = prefill, or a generation step) ran each kernel.

Method, in order of trust:

1. **Markers** (`markers:nvtx`, `markers:annotation`, `markers:vllm`, `markers:sglang`,
   `markers:trtllm`). CPU-side ranges (NVTX, or Kineto `user_annotation` from `record_function`)
   mark one pass each. A kernel belongs to the pass of the innermost marker around its *launch*
   on the launching thread (kernels.launch_id -> launches pid/tid/start). GPU-side
   `gpu_user_annotation` copies are ignored: their extent follows the GPU queue, not the code
   that issued the work. When markers of one stage nest (emit_nvtx repeats `record_function`
   labels inside the NVTX range of the same pass; or a `generation` range wraps per-step ranges)
   the innermost one is the pass. Labels understood (whole label, case-insensitive):

   - stage labels (`StageConfig` patterns): `summarization` / `prefill` / `context` and
     `generation` / `decode`, with `stage:` prefixes and `step K` suffixes (tracekit's capture
     scripts, and anyone's own `record_function` / NVTX ranges);
   - vLLM's per-step annotation (`ENGINE_GRAMMARS['vllm']`):
     `execute_<reqs>_context_<n>(sq<T>sk..)_generation_<m>(sq<T>sk..)`, the numbers of prefill
     (context) and decode requests and, in `sq<T>`, their query tokens (the grammar as recorded
     in the public vLLM and SGLang traces of AMD-AGI/TraceLens, `external/tracelens/`); and
     `execute_new_<n>_cached_<m>` of vLLM v1's worker (`annotate_profile`: new = requests
     scheduled for the first time, i.e. prefill; cached = requests already running, decode
     unless a chunked prefill continues, so `mixed` without token counts);
   - SGLang's forward-step span (`_build_step_span_name(forward_batch)` in its model runner):
     `step[EXTEND bs=<n> toks=<T>]` (prefill/extend), `step[DECODE bs=<n>]`, `step[MIXED bs=<n>]`,
     other `ForwardMode`s (IDLE, speculative draft/verify) are not passes;
   - TensorRT-LLM's NVTX step ranges: `executeStep: <c> ctx reqs, <g> gen reqs` (C++ batch
     manager) and `[Executor] _forward_step <i>: <c> ctx reqs, <g> gen reqs` (PyExecutor).

   A step with only prefill work is a summarization pass, with only decode work a generation
   pass, with both a **mixed** pass (continuous batching, chunked prefill). In a mixed pass a
   kernel that serves one side only (separate prefill and decode attention kernels:
   `StageConfig.context_attention` / `generation_attention`) takes that side; every other kernel
   (linears, norms, ...) stays `mixed` and the views split its time by the pass's token share
   (`passes.ctx_tokens` / `gen_tokens`, evidence `split:tokens=C/G`); without token counts
   (TensorRT-LLM, vLLM's older label) the mixed time is `unattributed` and the reason says so.
   Engine steps are serving steps, not generate loops: every one of them is measured (no
   warm-up), iteration 0, step = its ordinal.
   HF `generate` itself records no markers; its traces are marked by tracekit's capture or inferred.
2. **Inference** (`inferred:<how>`), when no marker matches. Every forward pass of a decoder
   starts with the token-embedding lookup of the input ids (a gather / index-select / embedding
   kernel; HF eager prefill opens with a gather), so each such kernel
   opens a pass that runs until the next one. Kernels that repeat once per layer never open a
   pass: names of rotary embeddings, KV-cache writes and attention kernels are excluded
   (`StageConfig.not_anchor`); a "pass" with fewer kernels than `min_pass_fraction` of the largest pass
   (an encoder's position / token-type embedding, a sampling gather) is merged into the one
   before it. Limitation: a per-layer kernel whose name looks like a lookup and is not in
   `not_anchor` would still make every layer a pass; record markers. Without any candidate, the
   first kernel of each CUDA-graph launch opens a pass. A pass is summarization when the
   kernels' names say so (TensorRT-LLM context vs generation attention kernels:
   `+attention-names`), otherwise when its kernel mix (name and grid) differs by more than
   `StageConfig.change_threshold` from a reference generation pass, taken from the largest group
   of passes launching the same kernel names (`+kernel-mix`); the first pass is always
   summarization. Limitation: with a one-token prompt, prefill and decode launch the same
   kernels, so a warm-up run and the measured run cannot be told apart; record markers.
3. `none`, with the reason in runs.stage_reason: no marker and no pass anchor (HPC codes); or
   the trace is not autoregressive inference — backward / optimizer kernels above
   `StageConfig.training_share` of GPU time (training), no generation pass after the first
   forward pass (an encoder, a vision model, a single forward), or decode passes with no prompt
   pass (a window of serving without its markers): every kernel is `other` and no ratio is given.

Everything is decided per **partition** (`PARTITION`: the kernel-row columns that separate
independent streams of forward passes — processes and GPUs): passes are numbered, iterations
counted and the measured iteration chosen within each, so one process's prefill never becomes
another's warm-up. A marker pass whose kernels ran on several devices is one pass per device.
Each summarization pass starts a new iteration. An iteration is complete when it has as many
generation passes as the longest one. With `iterations='last'` (default) only the last complete
iteration is the measurement: its kernels keep `summarization`/`generation`, earlier iterations
become `warmup`, and passes after it (a capture cut short) become `other`; with
`iterations='all'` every pass keeps its stage. Kernels outside every pass (model init, allocator
fills, ...) are `other` with NULL step and iteration; kernels whose launch is unknown while
markers decide (no launch row with their correlation id) are `unattributed`.

runs.stage_confidence ('high' | 'medium' | 'low' | 'none') and runs.stage_reason (one sentence)
say how sure the method is and why. The passes themselves go to the `passes` table (marker label
and extent, or the inferred pass's GPU span), which the views use for host-side times. All work
is set-based SQL (ASOF and range joins, windows) so that traces with millions of kernels take
seconds.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import duckdb
import pyarrow as pa

from tracekit.readers.common import WHOLE_GRAPH_SHORT_NAME
from tracekit.store import PARTITION, PASSES_DDL, refresh_rollups

# PARTITION (the kernel-row columns that separate independent streams of forward passes: pid,
# device, rank) is defined by the store, which keeps its rollups by it; stages are decided per
# partition. Re-exported here, with PASSES_DDL, for callers that read them from this module.

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
# Candidates for the first kernel of a forward pass: the token-embedding lookup (PyTorch
# gather/index_select/embedding kernels, TensorRT-LLM lookup kernels). Searched in the name.
DEFAULT_PASS_ANCHOR = r"gather|index_?select|embedding|lookup"
# Names that match the anchor pattern but run once per decoder layer (rotary position
# embeddings, KV-cache writes, CK FMHA's `KVCacheLookupTable`) or are attention: never anchors.
DEFAULT_NOT_ANCHOR = r"rotary|rope|kv_?cache|cache_kernel|fmha|attn|attention|moe|expert|topk"
# Attention kernels that only serve one side (TensorRT-LLM; FlashInfer; vLLM / ROCm paged decode).
DEFAULT_CONTEXT_ATTENTION = r"fmha_v2|context_?fmha|contextfmha|BatchPrefill|prefill_attention|_prefill_kernel"
DEFAULT_GENERATION_ATTENTION = (
    r"masked_multihead_attention|mmha|xqa|BatchDecode|paged_attention_v[12]|paged_attention_ll4mi|decode_attention"
)
# Training: backward and optimizer kernels. (Not `multi_tensor_apply`: foreach ops run in
# inference too, e.g. SGLang's decode.)
DEFAULT_TRAINING = r"backward|_bwd|bwd_|Backward|wgrad|dgrad|optimizer|adam|_sgd|sgd_|lamb_|zero_grad"

# The kernel columns stage attribution reads (from kernel_rows, or rows not yet written: plan_stages).
STAGE_INPUT = ("kernel_id, launch_id, op_id, name_id, start_ns, end_ns, grid_x, grid_y, grid_z, "
               + ", ".join(PARTITION))


@dataclass(frozen=True)
class StageConfig:
    """How stages are found. Patterns are RE2 regular expressions."""

    summarization_patterns: tuple[str, ...] = DEFAULT_SUMMARIZATION
    generation_patterns: tuple[str, ...] = DEFAULT_GENERATION
    # Read serving engines' step annotations (vLLM, SGLang, TensorRT-LLM); see ENGINE_GRAMMARS.
    engine_markers: bool = True
    # CPU-side range kinds that can carry markers.
    marker_kinds: tuple[str, ...] = ("nvtx", "user_annotation")
    iterations: Literal["last", "all"] = "last"
    infer: bool = True
    pass_anchor: str = DEFAULT_PASS_ANCHOR
    not_anchor: str = DEFAULT_NOT_ANCHOR
    context_attention: str = DEFAULT_CONTEXT_ATTENTION
    generation_attention: str = DEFAULT_GENERATION_ATTENTION
    training_kernels: str = DEFAULT_TRAINING
    # Share of GPU time in training kernels above which a trace is training, not inference.
    training_share: float = 0.05
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


# Serving engines' step annotations: engine -> [(whole-label regex, how to read the groups)].
# Each regex is matched against the whole (stripped) label; the reader turns the groups into
# (stage, ctx_tokens, gen_tokens). Grammars as the engines write them (see the module docstring
# for where); tests/test_stages_split.py checks them, on real traces where there are some.
_VLLM_CTX_GEN = re.compile(
    r"execute_\d+_context_(?P<c>\d+)(?:\((?P<cd>[^)]*)\))?_generation_(?P<g>\d+)(?:\((?P<gd>[^)]*)\))?")
_VLLM_NEW_CACHED = re.compile(r"execute_new_(?P<c>\d+)_cached_(?P<g>\d+)")
_SGLANG_STEP = re.compile(r"step\[(?P<mode>[A-Z_]+) bs=(?P<bs>\d+)(?: toks=(?P<toks>\d+))?\]")
_TRTLLM_STEP = re.compile(
    r"(?:\[Executor\] )?(?:_forward_step(?: \d+)?|executeStep): (?P<c>\d+) ctx reqs, (?P<g>\d+) gen reqs")
_SGLANG_PREFILL = {"EXTEND", "PREFILL", "SPLIT_PREFILL"}
_SGLANG_DECODE = {"DECODE"}
_SGLANG_MIXED = {"MIXED"}

ENGINE_GRAMMARS = {
    "vllm": (_VLLM_CTX_GEN.pattern, _VLLM_NEW_CACHED.pattern),
    "sglang": (_SGLANG_STEP.pattern,),
    "trtllm": (_TRTLLM_STEP.pattern,),
}


@dataclass(frozen=True)
class EngineStep:
    """What an engine's step label says: the engine, the pass's stage and its tokens per side."""

    engine: str
    stage: str                 # 'summarization' | 'generation' | 'mixed'
    ctx_tokens: int | None     # prefill tokens (None: the label does not say)
    gen_tokens: int | None     # decode tokens


def _stage_of(ctx: int, gen: int) -> str | None:
    if ctx and gen:
        return "mixed"
    return "summarization" if ctx else "generation" if gen else None


def _sq(desc: str | None) -> int | None:
    m = re.match(r"sq(\d+)", desc or "")
    return int(m.group(1)) if m else None


def engine_step(label: str) -> EngineStep | None:
    """The engine step a marker label describes, or None when it is no engine's step label."""
    t = label.strip()
    if m := _VLLM_CTX_GEN.fullmatch(t):
        c, g = int(m["c"]), int(m["g"])
        stage = _stage_of(c, g)
        if stage is None:
            return None
        # sq<T>: the query tokens of that side's requests; without it, decode is one token each.
        ct = _sq(m["cd"]) if c else 0
        gt = _sq(m["gd"]) if g else 0
        return EngineStep("vllm", stage, ct, gt if gt is not None or not g else g)
    if m := _VLLM_NEW_CACHED.fullmatch(t):
        c, g = int(m["c"]), int(m["g"])
        stage = _stage_of(c, g)
        # Request counts only: the tokens of a prefill are unknown, a decode request is one token.
        return None if stage is None else EngineStep("vllm", stage, None if c else 0, 0 if not g else None if c else g)
    if m := _SGLANG_STEP.fullmatch(t):
        mode, bs = m["mode"], int(m["bs"])
        if mode in _SGLANG_PREFILL:
            return EngineStep("sglang", "summarization", int(m["toks"]) if m["toks"] else None, 0)
        if mode in _SGLANG_DECODE:
            return EngineStep("sglang", "generation", 0, bs)
        if mode in _SGLANG_MIXED:
            return EngineStep("sglang", "mixed", None, None)
        return None
    if m := _TRTLLM_STEP.fullmatch(t):
        c, g = int(m["c"]), int(m["g"])
        stage = _stage_of(c, g)
        return None if stage is None else EngineStep("trtllm", stage, None if c else 0, 0 if not g else None if c else g)
    return None


def _scalar(con: duckdb.DuckDBPyConnection, sql: str, params: object = None) -> object:
    # fetchall, not fetchone: a half-read result blocks the connection's next relation query,
    # and this runs inside the importer's transaction on the caller's connection.
    return con.execute(sql, params).fetchall()[0][0]


def _alternation(patterns: tuple[str, ...]) -> str:
    # No pattern at all must match nothing, not everything.
    return "(?i)" + ("|".join(f"(?:{p})" for p in patterns) if patterns else "a^")


def _part_cols(alias: str = "") -> str:
    return ", ".join(f"{alias}{c}" for c in PARTITION)


def attribute_stages(
    con: duckdb.DuckDBPyConnection, run_id: int, config: StageConfig | None = None
) -> str:
    """Fill kernels.stage/step/iteration, runs.stage_method/iterations/stage_confidence/stage_reason
    and `passes` for one run.

    Returns the method ('markers:<kinds>', 'inferred:<how>', 'none').
    Safe to re-run: the run's previous attribution is replaced, and so are the run's rollups
    (store.refresh_rollups: they are summed by stage).
    """
    kernels = f"(SELECT {STAGE_INPUT} FROM kernel_rows WHERE run_id = {int(run_id)})"
    try:
        method = _attribute(con, run_id, kernels, config or StageConfig())
        _write_kernels(con, run_id)
    finally:
        _drop_scratch(con)
    refresh_rollups(con, [run_id])
    return method


def plan_stages(
    con: duckdb.DuckDBPyConnection, run_id: int, kernels: str, config: StageConfig | None = None
) -> str:
    """Stage attribution of a run whose kernel rows are not written yet, so that they are written
    once with their stage instead of updated (an UPDATE of every row of a fresh import, and the
    checkpoint rewriting those columns, cost 0.05-0.1 s at 375k kernels).

    `kernels`: a relation of the run's kernels with the STAGE_INPUT columns (names, launches and
    ranges already stored). Fills `passes` and the runs columns as attribute_stages does, and
    leaves temp table `_tk_kstage` (kernel_id, pass_id, stage) of the kernels in a pass, which take
    their pass's step and iteration from `passes` and the stage given (their pass's, or the side
    they serve in a mixed pass); every other kernel is 'other' ('unattributed' when listed with
    pass_id -1) with NULL step and iteration. The caller drops it with drop_plan(). Returns the method."""
    try:
        method = _attribute(con, run_id, kernels, config or StageConfig())
        con.execute("CREATE OR REPLACE TEMP TABLE _tk_kstage AS SELECT kernel_id, pass_id, kstage AS stage "
                    "FROM _tk_kfinal")
    finally:
        _drop_scratch(con)
    return method


def plan_kernel_stages(con: duckdb.DuckDBPyConnection, run_id: int, kernels: str) -> dict:
    """plan_stages with the default StageConfig over relation `kernels` (kernel_rows' columns, rows
    not written yet), as store.insert_run takes it (store.StagePlanner): NumPy arrays kernel_id,
    pass_id and stage of the kernels in a pass (or unattributed), the stage as a code into
    `stages`, their distinct values; `passes` and runs are filled."""
    plan_stages(con, run_id, f"(SELECT {STAGE_INPUT} FROM {kernels})")
    try:
        # Codes, not one Python string per kernel sorted as text: that cost 2 s at 3.75M kernels
        # (issue 15). NULL is 'None', as str(None) made it before.
        stages = [w for (w,) in con.execute(
            "SELECT DISTINCT coalesce(stage, 'None') FROM _tk_kstage ORDER BY 1").fetchall()]
        kp = con.execute("SELECT kernel_id, pass_id, list_position(?, coalesce(stage, 'None'))::INTEGER - 1 "
                         "AS stage FROM _tk_kstage", [stages]).fetchnumpy()
        return {**kp, "stages": stages}
    finally:
        drop_plan(con)


def drop_plan(con: duckdb.DuckDBPyConnection) -> None:
    """Drop what plan_stages left."""
    _drop_scratch(con, ("_tk_kstage",))


_SCRATCH = ("_tk_kin", "_tk_parts", "_tk_marks", "_tk_pass0", "_tk_kpass0", "_tk_pass", "_tk_kpass", "_tk_final",
            "_tk_k", "_tk_kfinal", "_tk_mnames")


def _drop_scratch(con: duckdb.DuckDBPyConnection, tables: tuple[str, ...] = _SCRATCH) -> None:
    for t in tables:
        try:
            con.execute(f"DROP TABLE IF EXISTS {t}")
        except duckdb.TransactionException:
            # The caller's transaction failed and will roll back, taking the tables with it;
            # raising here would hide the error that failed it.
            return
    try:
        con.unregister("_tk_mnames_arrow")
    except (duckdb.Error, KeyError):
        pass


def _attribute(con: duckdb.DuckDBPyConnection, run_id: int, kernels: str, cfg: StageConfig) -> str:
    con.execute(PASSES_DDL)
    con.execute("DELETE FROM passes WHERE run_id = ?", [run_id])
    # The partitions, numbered (dense, 1..); every kernel with the number of its partition and
    # whether its name is one that serves one side of a mixed pass. Only the columns the steps read:
    # this copy of every kernel is the planning's largest table (op_id and the partition columns
    # took a quarter of it, 3.75M kernels).
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _tk_parts AS SELECT {_part_cols()}, "
        f"row_number() OVER (ORDER BY {_part_cols()})::INTEGER AS part FROM (SELECT DISTINCT {_part_cols()} FROM {kernels})")
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _tk_kin AS
        WITH k AS (SELECT * FROM {kernels}),
        -- Name patterns once per distinct name (hundreds), not per kernel (millions).
        n AS (
            SELECT name_id, CASE WHEN regexp_matches(name, $ctx) THEN 'summarization'
                                 WHEN regexp_matches(name, $gen) THEN 'generation' END AS side
            FROM kernel_names WHERE name_id IN (SELECT DISTINCT name_id FROM k))
        SELECT k.kernel_id, k.launch_id, k.name_id, k.start_ns, k.end_ns, k.grid_x, k.grid_y, k.grid_z,
               parts.part, n.side
        FROM k JOIN n USING (name_id)
        JOIN _tk_parts parts ON {" AND ".join(f"parts.{c} IS NOT DISTINCT FROM k.{c}" for c in PARTITION)}
        """,
        {"ctx": "(?i)" + cfg.context_attention, "gen": "(?i)" + cfg.generation_attention},
    )
    reason = None
    confidence = "high"
    method = _marker_passes(con, run_id, cfg)
    if method is not None and not _scalar(con, "SELECT count(*) FROM _tk_kpass0"):
        method = None  # markers, but no kernel launch to place by them (no CUDA API events)
    engine = method is not None and any(e in method for e in ENGINE_GRAMMARS)
    if method is None:
        training = _training_share(con, cfg)
        if training > cfg.training_share:
            reason = (f"not inference: backward/optimizer kernels take {training:.0%} of GPU time (training), "
                      "and no stage markers")
        elif cfg.infer:
            method, confidence, reason = _inferred_passes(con, run_id, cfg)
            if method is None:
                confidence = "none"
        else:
            reason = "no stage markers, and inference from the kernel sequence is off"
    if method is None:
        method, confidence = "none", "none"
        reason = reason or "no stage markers and no token-embedding lookup opening forward passes"
        con.execute("CREATE OR REPLACE TEMP TABLE _tk_pass AS SELECT NULL::INTEGER AS pass_id WHERE false")
        con.execute("CREATE OR REPLACE TEMP TABLE _tk_kfinal AS SELECT NULL::BIGINT AS kernel_id, "
                    "NULL::INTEGER AS pass_id, NULL::VARCHAR AS kstage WHERE false")
        n_complete = 0
    else:
        if method.startswith("markers:"):
            _split_parts(con)
        n_complete = _finalize(con, run_id, cfg, engine)
        if method.startswith("markers:"):
            confidence, reason = _marker_confidence(con, run_id, method, engine)
    con.execute(
        "UPDATE runs SET stage_method = ?, iterations = ?, stage_confidence = ?, stage_reason = ? WHERE run_id = ?",
        [method, n_complete, confidence, reason, run_id],
    )
    return method


def _training_share(con: duckdb.DuckDBPyConnection, cfg: StageConfig) -> float:
    return float(_scalar(
        con,
        """
        WITH n AS (SELECT name_id, regexp_matches(name, $t) AS tr FROM kernel_names
                   WHERE name_id IN (SELECT DISTINCT name_id FROM _tk_kin))
        SELECT coalesce(sum(k.end_ns - k.start_ns) FILTER (WHERE n.tr) / nullif(sum(k.end_ns - k.start_ns), 0), 0)
        FROM _tk_kin k JOIN n USING (name_id)
        """,
        {"t": cfg.training_kernels},
    ))


def _marker_names(con: duckdb.DuckDBPyConnection, run_id: int, cfg: StageConfig) -> None:
    """_tk_mnames(name, pstage, grammar, ctx_tokens, gen_tokens): the distinct marker labels of
    the run that mark a pass. Stage labels by the RE2 patterns (in SQL); engine labels by
    engine_step (in Python, once per distinct label)."""
    kinds = list(cfg.marker_kinds)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_mnames AS
        WITH names AS (SELECT DISTINCT name FROM ranges WHERE run_id = $r AND list_contains($kinds, kind))
        SELECT name,
               CASE WHEN regexp_full_match(trim(name), $s) THEN 'summarization'
                    WHEN regexp_full_match(trim(name), $g) THEN 'generation' END AS pstage,
               'stage-label' AS grammar, NULL::BIGINT AS ctx_tokens, NULL::BIGINT AS gen_tokens
        FROM names
        """,
        {"r": run_id, "s": _alternation(cfg.summarization_patterns),
         "g": _alternation(cfg.generation_patterns), "kinds": kinds},
    )
    if cfg.engine_markers:
        # Only labels that can be engine steps reach Python (a serving trace has one per step).
        rows = con.execute(
            "SELECT name FROM _tk_mnames WHERE pstage IS NULL AND "
            "regexp_matches(name, '^\\s*(execute_|step\\[|executeStep: |\\[Executor\\] _forward_step|_forward_step)')"
        ).fetchall()
        steps = [(n, engine_step(n)) for (n,) in rows]
        steps = [(n, s) for n, s in steps if s is not None]
        if steps:
            tbl = pa.table({
                "name": [n for n, _ in steps], "pstage": [s.stage for _, s in steps],
                "grammar": [s.engine for _, s in steps],
                "ctx_tokens": pa.array([s.ctx_tokens for _, s in steps], pa.int64()),
                "gen_tokens": pa.array([s.gen_tokens for _, s in steps], pa.int64()),
            })
            con.register("_tk_mnames_arrow", tbl)
            con.execute("DELETE FROM _tk_mnames WHERE name IN (SELECT name FROM _tk_mnames_arrow)")
            con.execute("INSERT INTO _tk_mnames SELECT * FROM _tk_mnames_arrow")
            con.unregister("_tk_mnames_arrow")
    con.execute("DELETE FROM _tk_mnames WHERE pstage IS NULL")


def _marker_passes(con: duckdb.DuckDBPyConnection, run_id: int, cfg: StageConfig) -> str | None:
    """Passes from marker ranges (_tk_pass0), and each kernel's pass by its launch (_tk_kpass0).
    None when no marker matches."""
    _marker_names(con, run_id, cfg)
    kinds = list(cfg.marker_kinds)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_marks AS
        SELECT r.range_id, r.kind, r.name, r.pid, r.tid, r.start_ns, r.end_ns, n.pstage, n.grammar,
               n.ctx_tokens, n.gen_tokens
        FROM ranges r JOIN _tk_mnames n USING (name)
        WHERE r.run_id = $r AND list_contains($kinds, r.kind)
        """,
        {"r": run_id, "kinds": kinds},
    )
    if not _scalar(con, "SELECT count(*) FROM _tk_marks"):
        return None
    # A marker enclosing another marker of the same stage on the same thread is a wrapper (or
    # the emit_nvtx echo of the same pass): the innermost one is the pass. Ranges on a thread
    # nest, so a marker encloses another exactly when the next one to start (same stage and
    # thread, longer first on a tie) lies inside it. Identical extents keep the later range_id.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_pass0 AS
        WITH nxt AS (
            SELECT *, lead(start_ns) OVER w AS next_start, lead(end_ns) OVER w AS next_end
            FROM _tk_marks
            WINDOW w AS (PARTITION BY pstage, pid, tid ORDER BY start_ns, end_ns DESC, range_id))
        SELECT row_number() OVER (ORDER BY start_ns, end_ns DESC, range_id)::INTEGER - 1 AS pass_id,
               pstage, CASE kind WHEN 'nvtx' THEN 'nvtx' ELSE 'user_annotation' END AS source,
               grammar, name, range_id, pid, tid, start_ns, end_ns, ctx_tokens, gen_tokens
        FROM nxt
        WHERE next_start IS NULL OR next_start > end_ns OR next_end > end_ns
        """
    )
    # ASOF finds the latest-starting pass at or before each launch on its thread: the innermost
    # one when it still covers the launch. A launch it does not cover can only lie in a pass
    # enclosing others (passes of different stages nested, rare), so only those are range-joined.
    # Each kernel's pass depends on its launch alone, so kernels are placed _KPASS_SLICE at a time
    # (by kernel_id): the join to their launches and the ASOF's sort of them were the import's peak
    # at 3.75M kernels, done at once.
    con.execute("CREATE OR REPLACE TEMP TABLE _tk_kpass0 (kernel_id BIGINT, pass_id INTEGER)")
    lo, hi = con.execute("SELECT min(kernel_id), max(kernel_id) FROM _tk_kin").fetchall()[0]
    for start in range(lo if lo is not None else 0, (hi if hi is not None else -1) + 1, _KPASS_SLICE):
        _place_kernels(con, run_id, start, start + _KPASS_SLICE)
    names = {"nvtx": "nvtx", "user_annotation": "annotation"}
    kinds_used = [r[0] for r in con.execute(
        "SELECT DISTINCT CASE WHEN grammar = 'stage-label' THEN source ELSE grammar END FROM _tk_pass0 "
        "WHERE pass_id IN (SELECT pass_id FROM _tk_kpass0) ORDER BY 1").fetchall()]
    if not kinds_used:
        return "markers:none-used"
    return "markers:" + "+".join(names.get(s, s) for s in kinds_used)


_KPASS_SLICE = 1 << 20


def _place_kernels(con: duckdb.DuckDBPyConnection, run_id: int, lo: int, hi: int) -> None:
    """_tk_kpass0 rows of the kernels lo <= kernel_id < hi: the marker pass each one's launch lies in."""
    con.execute(
        """
        INSERT INTO _tk_kpass0
        WITH kl AS (
            SELECT k.kernel_id, l.pid, l.tid, l.start_ns AS t
            FROM _tk_kin k JOIN launches l ON l.run_id = $r AND l.launch_id = k.launch_id
            WHERE k.kernel_id >= $lo AND k.kernel_id < $hi),
        a AS (
            SELECT kl.kernel_id, kl.pid, kl.tid, kl.t, p.pass_id, p.end_ns
            FROM kl ASOF LEFT JOIN _tk_pass0 p ON kl.pid = p.pid AND kl.tid = p.tid AND kl.t >= p.start_ns),
        outer_pass AS (
            SELECT * FROM (
                SELECT *, lead(start_ns) OVER (PARTITION BY pid, tid ORDER BY start_ns, end_ns DESC, pass_id)
                          AS next_start
                FROM _tk_pass0)
            WHERE next_start <= end_ns),
        rest AS (
            SELECT a.kernel_id, arg_max(p.pass_id, p.start_ns) AS pass_id
            FROM a JOIN outer_pass p ON a.pid = p.pid AND a.tid = p.tid
                AND a.t >= p.start_ns AND a.t <= p.end_ns
            WHERE a.pass_id IS NOT NULL AND a.t > a.end_ns
            GROUP BY a.kernel_id)
        SELECT kernel_id, pass_id FROM a WHERE pass_id IS NOT NULL AND t <= end_ns
        UNION ALL SELECT kernel_id, pass_id FROM rest
        """,
        {"r": run_id, "lo": lo, "hi": hi},
    )


def _split_parts(con: duckdb.DuckDBPyConnection) -> None:
    """Marker passes -> one pass per (marker, partition of its kernels): _tk_pass / _tk_kpass.

    A marker without kernels belongs to the partitions its thread's other markers launched to
    (else to none: a partition of its own)."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_pass AS
        WITH kp AS (SELECT DISTINCT kp.pass_id, k.part FROM _tk_kpass0 kp JOIN _tk_kin k USING (kernel_id)),
        thread_parts AS (SELECT DISTINCT p.pid, p.tid, kp.part FROM kp JOIN _tk_pass0 p USING (pass_id)),
        empty AS (
            SELECT p.pass_id, tp.part FROM _tk_pass0 p
            LEFT JOIN thread_parts tp ON tp.pid IS NOT DISTINCT FROM p.pid AND tp.tid IS NOT DISTINCT FROM p.tid
            WHERE p.pass_id NOT IN (SELECT pass_id FROM kp)),
        pp AS (SELECT * FROM kp UNION ALL SELECT * FROM empty)
        SELECT row_number() OVER (ORDER BY p.start_ns, p.end_ns DESC, p.range_id, pp.part)::INTEGER - 1 AS pass_id,
               p.pass_id AS marker_pass, pp.part, p.pstage, p.source, p.grammar, p.name, p.range_id,
               p.start_ns, p.end_ns, p.ctx_tokens, p.gen_tokens
        FROM _tk_pass0 p JOIN pp USING (pass_id)
        """
    )
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_kpass AS
        SELECT kp.kernel_id, p.pass_id
        FROM _tk_kpass0 kp JOIN _tk_kin k USING (kernel_id)
        JOIN _tk_pass p ON p.marker_pass = kp.pass_id AND p.part = k.part
        """
    )


def _marker_confidence(con: duckdb.DuckDBPyConnection, run_id: int, method: str, engine: bool
                       ) -> tuple[str, str]:
    """How sure a marker attribution is, and why, in one sentence."""
    n_unlinked, unlinked_ns, total_ns, n_mixed_unsplit, n_graph = con.execute(
        """
        SELECT count(*) FILTER (WHERE k.launch_id IS NULL),
               coalesce(sum(k.end_ns - k.start_ns) FILTER (WHERE k.launch_id IS NULL), 0),
               coalesce(sum(k.end_ns - k.start_ns), 0),
               (SELECT count(*) FROM _tk_final WHERE stage = 'mixed' AND (ctx_tokens IS NULL OR gen_tokens IS NULL)),
               count(*) FILTER (WHERE n.short_name = $g)
        FROM _tk_kin k JOIN kernel_names n USING (name_id)
        """,
        {"g": WHOLE_GRAPH_SHORT_NAME},
    ).fetchall()[0]
    words = {"nvtx": "NVTX stage ranges", "annotation": "record_function stage labels",
             "vllm": "vLLM step annotations", "sglang": "SGLang step spans", "trtllm": "TensorRT-LLM step ranges"}
    what = " and ".join(words.get(k, k) for k in method.removeprefix("markers:").split("+"))
    notes = []
    confidence = "high"
    if n_unlinked:
        share = unlinked_ns / total_ns if total_ns else 0
        notes.append(f"{n_unlinked} kernels ({share:.1%} of GPU time) have no launch record and are unattributed")
        if share > 0.01:
            confidence = "medium"
    if n_mixed_unsplit:
        notes.append(f"{n_mixed_unsplit} mixed passes have no token counts: their shared kernels are unattributed")
        confidence = "medium"
    if n_graph:
        notes.append(f"{n_graph} CUDA graphs were traced whole: each counts as one kernel whose time includes "
                     "the gaps between its kernels")
        confidence = "medium"
    if engine:
        kinds = {r[0] for r in con.execute("SELECT DISTINCT stage FROM _tk_final").fetchall()}
        if len(kinds & {"summarization", "generation", "mixed"}) == 1 and "mixed" not in kinds:
            only = "decode" if "generation" in kinds else "prefill"
            notes.append(f"the trace holds {only} steps only: gen_ratio describes this window of serving, "
                         "not the whole of a request's life")
            confidence = "medium"
        head = f"{what} give each serving step's prefill / decode work"
    else:
        head = f"{what} mark every forward pass"
    return confidence, head + ("; " + "; ".join(notes) if notes else "") + "."


def _inferred_passes(con: duckdb.DuckDBPyConnection, run_id: int, cfg: StageConfig
                     ) -> tuple[str | None, str, str | None]:
    """Passes from the kernel sequence alone, per partition. (method or None, confidence, reason)."""
    # Anchor candidates: names matching the pattern but not a per-layer kernel.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_k AS
        WITH names AS (
            SELECT name_id, name,
                   regexp_matches(name, $anchor) AND NOT regexp_matches(name, $not) AS cand
            FROM kernel_names WHERE name_id IN (SELECT DISTINCT name_id FROM _tk_kin)),
        k AS (
            SELECT k.kernel_id, k.part, k.launch_id, k.start_ns, k.end_ns, k.side, hash(n.name) AS name_hash,
                   hash(n.name, k.grid_x, k.grid_y, k.grid_z) AS sig,
                   coalesce(k.grid_x::BIGINT * k.grid_y * k.grid_z, 0) AS blocks,
                   n.cand, k.name_id
            FROM _tk_kin k JOIN names n USING (name_id))
        SELECT * FROM k
        """,
        {"anchor": "(?i)" + cfg.pass_anchor, "not": "(?i)" + cfg.not_anchor},
    )
    how = "embedding-anchor"
    if not _scalar(con, "SELECT count(*) FROM _tk_k WHERE cand"):
        # No lookup kernel: the first kernel of each CUDA-graph launch (a replayed forward pass).
        con.execute(
            """
            UPDATE _tk_k SET cand = true WHERE kernel_id IN (
                SELECT arg_min(k.kernel_id, k.start_ns) FROM _tk_k k
                JOIN launches l ON l.run_id = $r AND l.launch_id = k.launch_id
                WHERE l.name ILIKE '%GraphLaunch%' GROUP BY k.part, k.launch_id)
            """,
            {"r": run_id},
        )
        how = "graph-launch-anchor"
    if not _scalar(con, "SELECT count(*) FROM _tk_k WHERE cand"):
        return None, "none", "no stage markers, no token-embedding lookup and no CUDA-graph launch opening passes"
    con.execute("CREATE OR REPLACE TEMP TABLE _tk_k AS SELECT *, cand AS is_anchor, NULL::INTEGER AS seg FROM _tk_k")
    _number_segments(con)
    _drop_minor_anchors(con, cfg.min_pass_fraction)
    # Per partition: the generation passes are the most numerous group of passes launching the
    # same kernel names (grids change from step to step as the KV cache grows, so names alone group
    # them; a sum of name hashes identifies the multiset); on a tie (one generation pass per
    # prompt) the group doing less work (fewer thread blocks) is the one-token passes. Each pass
    # is then compared to a reference pass of that group by kernel mix, name and grid:
    # change = 1 - 2 * sum(min(count_i, count_ref)) / (n_i + n_ref), 0 = same kernels, 1 = none shared.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_pass AS
        WITH seg AS (
            SELECT part, seg, count(*) AS n, min(start_ns) AS start_ns, max(end_ns) AS end_ns,
                   (count(*), sum(name_hash::HUGEINT)) AS names_key, sum(blocks) AS blocks,
                   bool_or(side = 'summarization') AS ctx, bool_or(side = 'generation') AS gen
            FROM _tk_k WHERE seg >= 0 GROUP BY part, seg),
        grp AS (SELECT part, names_key, count(*) AS g FROM seg GROUP BY part, names_key),
        ref AS (
            SELECT DISTINCT ON (seg.part) seg.part, seg.seg AS ref_seg, seg.n AS ref_n
            FROM seg JOIN grp USING (part, names_key)
            ORDER BY seg.part, grp.g DESC, seg.blocks, seg.seg),
        cnt AS (SELECT part, seg, sig, count(*) AS c FROM _tk_k WHERE seg >= 0 GROUP BY part, seg, sig),
        common AS (
            SELECT a.part, a.seg, sum(least(a.c, b.c)) AS m
            FROM cnt a JOIN ref ON ref.part = a.part
            JOIN cnt b ON b.part = a.part AND b.seg = ref.ref_seg AND b.sig = a.sig
            GROUP BY a.part, a.seg),
        s AS (
            SELECT seg.*, 1 - 2 * coalesce(common.m, 0) / (seg.n + ref.ref_n) AS change,
                   min(seg.seg) OVER (PARTITION BY seg.part) AS first_seg
            FROM seg JOIN ref USING (part) LEFT JOIN common USING (part, seg))
        SELECT seg AS pass_id, part,
               CASE WHEN ctx AND NOT gen THEN 'summarization'
                    WHEN gen AND NOT ctx THEN 'generation'
                    WHEN seg = first_seg OR change > $thr THEN 'summarization'
                    ELSE 'generation' END AS pstage,
               (ctx <> gen) AS by_names,
               'inferred' AS source, 'inferred' AS grammar, NULL::VARCHAR AS name, NULL::BIGINT AS range_id,
               start_ns, end_ns, NULL::BIGINT AS ctx_tokens, NULL::BIGINT AS gen_tokens
        FROM s
        """,
        {"thr": cfg.change_threshold},
    )
    con.execute("CREATE OR REPLACE TEMP TABLE _tk_kpass AS SELECT kernel_id, seg AS pass_id FROM _tk_k WHERE seg >= 0")
    _trim_iteration_ends(con)
    n_sum, n_gen, by_names, n_parts_gen = con.execute(
        """
        SELECT count(*) FILTER (WHERE pstage = 'summarization'), count(*) FILTER (WHERE pstage = 'generation'),
               coalesce(bool_or(by_names), false),
               count(DISTINCT part) FILTER (WHERE pstage = 'generation')
        FROM _tk_pass
        """
    ).fetchall()[0]
    method = f"inferred:{how}+" + ("attention-names" if by_names else "kernel-mix")
    if n_sum == 0:
        # Decode passes only (told by decode attention kernels): a window of a serving run with
        # no prompt pass in it. Which requests' prefill these decode steps belong to is unknown.
        return None, "none", (f"{n_gen} decode pass(es) (decode attention kernels) and no prefill pass in the "
                              "trace, and no stage markers: a window of serving, no split")
    if n_gen == 0:
        # One forward pass (or several alike) and nothing decoded after it: an encoder, a vision
        # model, a benchmark of one forward, a prefill-only step. Not a generate loop: no ratio.
        return None, "none", (f"not autoregressive generation: {n_sum} forward pass(es) found and no generation "
                              "(decode) pass after them (an encoder, a vision model, or a single forward)")
    if by_names:
        return method, "medium", ("inferred without markers: passes opened by the token-embedding lookup, "
                                  "prefill vs decode told by context vs generation attention kernels")
    confidence = "medium" if how == "embedding-anchor" else "low"
    reason = (f"inferred without markers: {n_sum + n_gen} passes opened by "
              + ("the token-embedding lookup" if how == "embedding-anchor" else "CUDA-graph launches")
              + ", prefill told from decode by kernel mix")
    return method, confidence, reason


def _number_segments(con: duckdb.DuckDBPyConnection) -> None:
    """_tk_k.seg: per partition, the number of anchors at or before each kernel, minus one, made
    unique across partitions (segment ids order by partition, then start). The table is rebuilt
    rather than updated: an UPDATE of every row costs more than writing it anew."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_k AS
        WITH l AS (
            SELECT * EXCLUDE (seg),
                   sum(is_anchor::INTEGER) OVER (PARTITION BY part ORDER BY start_ns, kernel_id
                       ROWS UNBOUNDED PRECEDING)::INTEGER - 1 AS s
            FROM _tk_k),
        off AS (SELECT part, coalesce(sum(max(s) + 1) OVER (ORDER BY part ROWS BETWEEN UNBOUNDED PRECEDING
                                                             AND 1 PRECEDING), 0) AS base
                FROM l GROUP BY part)
        SELECT l.* EXCLUDE (s), CASE WHEN l.s < 0 THEN -1 ELSE (l.s + off.base)::INTEGER END AS seg
        FROM l JOIN off USING (part)
        """
    )


def _drop_minor_anchors(con: duckdb.DuckDBPyConnection, fraction: float) -> None:
    """A gather that is not the embedding lookup (sampling, MoE routing, an encoder's position
    and token-type embeddings) would open a "pass" of a handful of kernels. A forward pass runs
    every layer, prompt or one token alike, so segments with fewer kernels than `fraction` of the
    largest segment of their partition are merged into the one before them."""
    con.execute(
        """
        UPDATE _tk_k SET is_anchor = false
        WHERE is_anchor AND seg IN (
            WITH n AS (SELECT part, seg, count(*) AS n FROM _tk_k WHERE seg >= 0 GROUP BY part, seg),
            m AS (SELECT part, max(n) AS big, min(seg) AS first FROM n GROUP BY part)
            SELECT n.seg FROM n JOIN m USING (part) WHERE n.seg > m.first AND n.n < $f * m.big)
        """,
        {"f": fraction},
    )
    _number_segments(con)


def _trim_iteration_ends(con: duckdb.DuckDBPyConnection) -> None:
    """A pass runs until the next embedding lookup, so whatever ran after a sequence's last pass
    (bookkeeping between runs, the next model's init, the end of the capture) would join it.
    Passes that end a sequence (followed by a summarization pass, or by nothing) are capped at
    the longest pass of their stage that does not (eager decode passes all launch the same
    kernels); the surplus is `other`. Without such a pass to compare with, nothing is cut."""
    con.execute(
        """
        DELETE FROM _tk_kpass WHERE kernel_id IN (
            WITH p AS (SELECT pass_id, part, pstage,
                              lead(pstage) OVER (PARTITION BY part ORDER BY pass_id) AS next_stage FROM _tk_pass),
            n AS (SELECT pass_id, count(*) AS n FROM _tk_kpass GROUP BY pass_id),
            b AS (
                SELECT p.pass_id, p.part, p.pstage, coalesce(p.next_stage = 'summarization', true) AS ends, n.n
                FROM p JOIN n USING (pass_id)),
            cap AS (SELECT part, pstage, max(n) AS cap FROM b WHERE NOT ends GROUP BY part, pstage),
            ordered AS (
                SELECT kp.kernel_id, kp.pass_id,
                       row_number() OVER (PARTITION BY kp.pass_id ORDER BY k.start_ns, k.kernel_id) AS i
                FROM _tk_kpass kp JOIN _tk_k k USING (kernel_id)
                WHERE kp.pass_id IN (SELECT pass_id FROM b WHERE ends))
            SELECT o.kernel_id FROM ordered o JOIN b USING (pass_id) JOIN cap USING (part, pstage)
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


def _finalize(con: duckdb.DuckDBPyConnection, run_id: int, cfg: StageConfig, engine: bool) -> int:
    """Number passes into iterations and steps per partition, decide each pass's stage, write
    `passes`, and each kernel's stage (_tk_kfinal). Returns the number of complete iterations
    (of the partition that has most)."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_final AS
        WITH o AS (
            SELECT *, CASE WHEN $engine THEN 0 ELSE
                       (sum(CASE WHEN pstage = 'summarization' THEN 1 ELSE 0 END)
                        OVER (PARTITION BY part ORDER BY start_ns, pass_id ROWS UNBOUNDED PRECEDING) - 1) END
                      ::INTEGER AS it
            FROM _tk_pass),
        s AS (
            SELECT *, CASE WHEN $engine THEN row_number() OVER (PARTITION BY part ORDER BY start_ns, pass_id) - 1
                           WHEN pstage = 'summarization' THEN 0
                           ELSE row_number() OVER (PARTITION BY part, it, pstage ORDER BY start_ns, pass_id)
                      END::INTEGER AS st
            FROM o),
        its AS (SELECT part, it, count(*) FILTER (WHERE pstage = 'generation') AS ngen
                FROM s WHERE it >= 0 GROUP BY part, it),
        c AS (SELECT part, it, ngen = max(ngen) OVER (PARTITION BY part) AS complete FROM its),
        meas AS (SELECT part, max(it) FILTER (WHERE complete) AS m FROM c GROUP BY part)
        SELECT s.pass_id, s.part,
               CASE WHEN s.it >= 0 THEN s.it END AS iteration,
               CASE WHEN s.it >= 0 THEN s.st END AS step,
               CASE WHEN s.it < 0 THEN 'other'
                    WHEN $all OR $engine OR s.it = meas.m THEN s.pstage
                    WHEN s.it < meas.m THEN 'warmup'
                    ELSE 'other' END AS stage,
               s.source, s.grammar, s.name, s.range_id, s.start_ns, s.end_ns, s.ctx_tokens, s.gen_tokens
        FROM s LEFT JOIN meas USING (part)
        """,
        {"all": cfg.iterations == "all", "engine": engine},
    )
    # Each kernel's stage: its pass's; in a mixed pass, the side its name serves (if one).
    # Kernels not in a pass: 'other', or 'unattributed' when markers decide and the kernel has no
    # launch to place it by (pass_id -1).
    marker = _scalar(con, "SELECT count(*) FILTER (WHERE source <> 'inferred') > 0 FROM _tk_final")
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _tk_kfinal AS
        SELECT kp.kernel_id, kp.pass_id,
               CASE WHEN f.stage = 'mixed' AND k.side IS NOT NULL THEN k.side ELSE f.stage END AS kstage
        FROM _tk_kpass kp JOIN _tk_final f USING (pass_id) JOIN _tk_kin k USING (kernel_id)
        UNION ALL
        SELECT kernel_id, -1, 'unattributed' FROM _tk_kin WHERE $marker AND launch_id IS NULL
        """,
        {"marker": marker},
    )
    part_cols = ", ".join(f"pt.{c}" for c in PARTITION)
    con.execute(
        f"""
        INSERT INTO passes (run_id, pass_id, iteration, step, stage, source, name, range_id, start_ns, end_ns,
                            n_kernels, {", ".join(PARTITION)}, grammar, ctx_tokens, gen_tokens, evidence)
        SELECT $r, f.pass_id, f.iteration, f.step, f.stage, f.source, f.name, f.range_id,
               f.start_ns, f.end_ns, coalesce(n.n, 0), {part_cols}, f.grammar, f.ctx_tokens, f.gen_tokens,
               CASE WHEN f.stage = 'mixed' THEN
                    CASE WHEN f.ctx_tokens IS NOT NULL AND f.gen_tokens IS NOT NULL
                         THEN 'split:tokens=' || f.ctx_tokens || '/' || f.gen_tokens
                         ELSE 'split:unknown (no token counts in the marker)' END END
        FROM _tk_final f
        LEFT JOIN (SELECT pass_id, count(*) AS n FROM _tk_kpass GROUP BY pass_id) n USING (pass_id)
        LEFT JOIN _tk_parts pt ON pt.part = f.part
        """,
        {"r": run_id},
    )
    return con.execute(
        """
        WITH its AS (SELECT part, iteration, count(*) FILTER (WHERE step > 0 OR stage = 'mixed') AS ngen
                     FROM _tk_final WHERE iteration IS NOT NULL GROUP BY part, iteration),
        per AS (SELECT part, count(*) FILTER (WHERE ngen = (SELECT max(ngen) FROM its i2 WHERE i2.part = its.part))
                    AS n FROM its GROUP BY part)
        SELECT coalesce(max(n), 0) FROM per
        """
    ).fetchall()[0][0]


def _write_kernels(con: duckdb.DuckDBPyConnection, run_id: int) -> None:
    con.execute(
        "UPDATE kernel_rows SET stage = 'other', step = NULL, iteration = NULL WHERE run_id = ?", [run_id]
    )
    if _scalar(con, "SELECT count(*) FROM _tk_kfinal") == 0:
        return
    con.execute(
        """
        UPDATE kernel_rows SET stage = x.kstage, step = x.step, iteration = x.iteration
        FROM (SELECT kf.kernel_id, kf.kstage, f.step, f.iteration
              FROM _tk_kfinal kf LEFT JOIN _tk_final f USING (pass_id)) x
        WHERE kernel_rows.run_id = ? AND kernel_rows.kernel_id = x.kernel_id
        """,
        [run_id],
    )
