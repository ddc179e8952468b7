-- tracekit canonical schema: one shape for every source format.
-- All times are integer nanoseconds on the trace's own clock; durations are end - start.
-- Every table carries run_id; ids (kernel_id, launch_id, ...) are unique within a run.

CREATE SEQUENCE IF NOT EXISTS run_id_seq START 1;

CREATE TABLE IF NOT EXISTS runs (
    run_id           INTEGER PRIMARY KEY,
    source_path      VARCHAR NOT NULL,   -- as given on the command line (not resolved: no machine paths leak)
    source_name      VARCHAR NOT NULL,   -- file name only
    format           VARCHAR NOT NULL,   -- 'nsys-sqlite' | 'nsys-rep' | 'kineto'
    content_hash     VARCHAR NOT NULL UNIQUE,  -- sha256 of the file bytes: the same content is one run
    importer_version VARCHAR NOT NULL,
    imported_at      TIMESTAMP NOT NULL,
    gpu_name         VARCHAR,
    tool_versions    JSON,               -- {"nsys": "...", "cuda_runtime": "...", "pytorch": "..."}
    trace_meta       JSON,               -- metadata found in the trace itself
    absent           VARCHAR[],          -- tables/fields the source lacked (normal across versions)
    stage_method     VARCHAR,            -- how stages were decided: 'markers:nvtx' | 'markers:annotation' | 'inferred:<how>' | 'none'
    iterations       INTEGER,            -- complete summarization+generation sequences found
    n_kernels        BIGINT,
    kernel_time_ns   BIGINT,
    stage_confidence VARCHAR,            -- how sure stage_method is: 'high' | 'medium' | 'low' | 'none'
    stage_reason     VARCHAR,            -- one sentence: why that method and confidence (why no split, for 'none')
    world_size       INTEGER,            -- ranks of the job (multi-rank runs; NULL: one process on one GPU)
    ranks            VARCHAR             -- ranks present, and those missing: '0,1' | '1 (missing 0)'
);

-- Every key=value known about a run: --meta > capture manifest > found in the trace.
CREATE TABLE IF NOT EXISTS run_meta (
    run_id  INTEGER NOT NULL,
    key     VARCHAR NOT NULL,
    value   VARCHAR,
    source  VARCHAR NOT NULL,            -- 'cli' | 'manifest' | 'trace'
    PRIMARY KEY (run_id, key)
);

-- Kernels are stored narrow: each distinct (name, short_name) once in `kernel_names`, what a
-- classification rule can see of a kernel once per distinct context in `kernel_contexts`, verdicts
-- once per (run, context) in `kernel_verdicts`. A rules edit then rewrites thousands of verdict rows,
-- not millions of kernel rows, and an import writes integers instead of long demangled names.
-- Read kernels through the `kernels` view, which joins them back into one row per kernel.

CREATE TABLE IF NOT EXISTS kernel_names (
    name_id     BIGINT NOT NULL,         -- unique across the database
    name        VARCHAR NOT NULL,        -- demangled name
    short_name  VARCHAR NOT NULL         -- nsys shortName, or derived from the demangled name
);

-- Everything a rule can look at, independent of the rules: names, the linked op, launch dims.
CREATE TABLE IF NOT EXISTS kernel_contexts (
    ctx_id      BIGINT NOT NULL,         -- unique across the database
    name_id     BIGINT NOT NULL,         -- -> kernel_names
    op_name     VARCHAR,                 -- ops.name of the kernel's op (NULL: no op)
    input_dims  VARCHAR,                 -- ops.input_dims of that op
    grid_x INTEGER, grid_y INTEGER, grid_z INTEGER,
    block_x INTEGER, block_y INTEGER, block_z INTEGER,
    ctx_hash    UBIGINT NOT NULL         -- hash of the columns above but ctx_id: how an import finds a context
);

CREATE TABLE IF NOT EXISTS kernel_rows (
    run_id        INTEGER NOT NULL,
    kernel_id     BIGINT NOT NULL,       -- 0.. in start order
    name_id       BIGINT NOT NULL,       -- -> kernel_names
    ctx_id        BIGINT NOT NULL,       -- -> kernel_contexts, and with run_id -> kernel_verdicts
    start_ns      BIGINT NOT NULL,
    end_ns        BIGINT NOT NULL,
    dur_ns        BIGINT NOT NULL,
    device        INTEGER,
    context       BIGINT,
    stream        BIGINT,
    correlation   BIGINT,
    pid           BIGINT,
    grid_x INTEGER, grid_y INTEGER, grid_z INTEGER,
    block_x INTEGER, block_y INTEGER, block_z INTEGER,
    registers     INTEGER,               -- per thread
    shared_static BIGINT,                -- bytes; Kineto reports one total, stored here
    shared_dynamic BIGINT,
    graph_node_id BIGINT,                -- CUDA graph node, when launched from a graph
    launch_id     BIGINT,                -- -> launches.launch_id (CUDA API call, via correlation)
    op_id         BIGINT,                -- -> ops.op_id (innermost CPU operator around the launch)
    range_id      BIGINT,                -- -> ranges.range_id (innermost NVTX range / annotation around the launch)
    stage         VARCHAR,               -- 'summarization' | 'generation' | 'mixed' | 'warmup' | 'other' | 'unattributed'
    step          INTEGER,               -- 0 = summarization, k = k-th generation pass; NULL outside passes
    iteration     INTEGER,               -- which summarization+generation sequence (0-based); NULL outside
    -- A kernel that takes the class of the GEMM it completes (a split-K reduce): per kernel, because
    -- the answer depends on what ran before it on its stream. NULL for every other kernel.
    follow_category VARCHAR,
    follow_evidence VARCHAR,
    rank          INTEGER                -- rank of the job that ran it (run_ranks); NULL in a one-rank run
);

-- A database written before ranks existed gets the column before the view below reads it.
ALTER TABLE kernel_rows ADD COLUMN IF NOT EXISTS rank INTEGER;

-- One row per (run, context) present in the run; filled by classification.
CREATE TABLE IF NOT EXISTS kernel_verdicts (
    run_id    INTEGER NOT NULL,
    ctx_id    BIGINT NOT NULL,
    category  VARCHAR,
    rule_id   VARCHAR,
    evidence  VARCHAR                    -- as kernels.evidence; 'prev_gemm?': resolved per kernel (kernel_rows.follow_*)
);

-- One row per kernel, every column as the trace and enrichment give it.
CREATE OR REPLACE VIEW kernels AS
SELECT r.run_id,
       r.kernel_id,
       n.name,                               -- demangled name
       n.short_name,                         -- nsys shortName, or derived from the demangled name
       r.start_ns, r.end_ns, r.dur_ns, r.device, r.context, r.stream, r.correlation, r.pid,
       r.grid_x, r.grid_y, r.grid_z, r.block_x, r.block_y, r.block_z,
       r.registers, r.shared_static, r.shared_dynamic, r.graph_node_id,
       r.launch_id, r.op_id, r.range_id,
       coalesce(r.follow_category, v.category) AS category,  -- filled by classification
       v.rule_id,
       coalesce(r.follow_evidence, v.evidence) AS evidence,  -- 'name' | 'shape:M=<m>' | 'op:<op name>' | 'prev_gemm:<evidence>' | 'unclassified'
       r.rank,                               -- rank of a multi-rank run (NULL: one rank)
       r.stage, r.step, r.iteration
FROM kernel_rows r
JOIN kernel_names n ON n.name_id = r.name_id
LEFT JOIN kernel_verdicts v ON v.run_id = r.run_id AND v.ctx_id = r.ctx_id;

-- Per-run rollups, so that stage_ratio and composition read a few dozen rows a run instead of every
-- kernel (store.py refresh_rollups / refresh_follow_totals / refresh_kernel_sums):
--   kernel_totals: kernel_rows summed by partition, stage and context: depends on stages only
--     (written at import and by stage attribution);
--   follow_totals: the same for the kernels with per-kernel verdicts (kernel_rows.follow_*, a few
--     per cent), by follow_* too: rewritten when classification redoes a run's follow_*;
--   kernel_sums: the two with names and verdicts joined, summed by short name, category and
--     evidence (~50 rows a run): rewritten from them whenever a run's verdicts change; what the
--     views read (and what a Parquet dataset stores per run);
--   stage_spans: GPU span and busy time per iteration and stage: depends on stages only.
CREATE TABLE IF NOT EXISTS kernel_totals (
    run_id          INTEGER NOT NULL,
    pid             BIGINT,              -- the partition (store.PARTITION) ...
    device          INTEGER,
    rank            INTEGER,
    stage           VARCHAR,
    iteration       INTEGER,             -- mixed passes only (their token share is per pass); NULL otherwise
    step            INTEGER,             -- mixed passes only; NULL otherwise
    ctx_id          BIGINT NOT NULL,     -- with run_id -> kernel_verdicts
    name_id         BIGINT NOT NULL,     -- -> kernel_names (the context's name)
    n_kernels       BIGINT NOT NULL,
    dur_ns          BIGINT NOT NULL      -- summed kernel duration
);

CREATE TABLE IF NOT EXISTS follow_totals (
    run_id          INTEGER NOT NULL,
    pid             BIGINT,
    device          INTEGER,
    rank            INTEGER,
    stage           VARCHAR,
    iteration       INTEGER,
    step            INTEGER,
    ctx_id          BIGINT NOT NULL,
    name_id         BIGINT NOT NULL,
    follow_category VARCHAR,             -- kernel_rows.follow_*
    follow_evidence VARCHAR,
    n_kernels       BIGINT NOT NULL,
    dur_ns          BIGINT NOT NULL
);

-- GPU span and busy time per run, partition, iteration and stage (summarization / generation):
-- span = first kernel start to last kernel end, busy = time some kernel of the stage ran.
-- Depends on stage attribution only; written at import (store.refresh_stage_spans).
CREATE TABLE IF NOT EXISTS stage_spans (
    run_id     INTEGER NOT NULL,
    pid        BIGINT,
    device     INTEGER,
    rank       INTEGER,
    iteration  INTEGER,
    stage      VARCHAR NOT NULL,
    span_ns    BIGINT NOT NULL,
    busy_ns    BIGINT NOT NULL
);

-- Where no rollup is stored (a database written before them opened read-only, an older dataset),
-- tracekit.views makes `kernel_sums` and `stage_spans` live views over `kernels` (same columns).
CREATE TABLE IF NOT EXISTS kernel_sums (
    run_id     INTEGER NOT NULL,
    pid        BIGINT,
    device     INTEGER,
    rank       INTEGER,
    stage      VARCHAR,
    iteration  INTEGER,                  -- mixed passes only; NULL otherwise
    step       INTEGER,                  -- mixed passes only; NULL otherwise
    short_name VARCHAR NOT NULL,
    category   VARCHAR,                  -- as kernels.category (NULL: unclassified)
    evidence   VARCHAR,                  -- as kernels.evidence
    n_kernels  BIGINT NOT NULL,
    dur_ns     BIGINT NOT NULL
);

-- The API calls that launched GPU work recorded in the trace: a kernel, memcpy or memset row links
-- to each (kernels/memops.launch_id, by correlation id; a graph launch through its kernels). Calls
-- that launched nothing (synchronizations, queries, event records) are not stored (enrich.links).
CREATE TABLE IF NOT EXISTS launches (
    run_id      INTEGER NOT NULL,
    launch_id   BIGINT NOT NULL,
    name        VARCHAR NOT NULL,        -- cudaLaunchKernel, cuLaunchKernelEx, ...
    kind        VARCHAR NOT NULL,        -- 'runtime' | 'driver'
    start_ns    BIGINT NOT NULL,
    end_ns      BIGINT NOT NULL,
    dur_ns      BIGINT NOT NULL,
    pid         BIGINT,
    tid         BIGINT,
    correlation BIGINT,
    rank        INTEGER                  -- rank of a multi-rank run (NULL: one rank, or CPU rows shared by ranks)
);

CREATE TABLE IF NOT EXISTS ranges (
    run_id     INTEGER NOT NULL,
    range_id   BIGINT NOT NULL,
    name       VARCHAR NOT NULL,
    kind       VARCHAR NOT NULL,         -- 'nvtx' | 'user_annotation' | 'gpu_user_annotation'
    domain     VARCHAR,
    start_ns   BIGINT NOT NULL,
    end_ns     BIGINT NOT NULL,
    dur_ns     BIGINT NOT NULL,
    pid        BIGINT,
    tid        BIGINT,
    depth      INTEGER,                  -- 0 = outermost on its thread
    parent_id  BIGINT,                   -- enclosing range on the same thread
    rank        INTEGER                  -- rank of a multi-rank run (NULL: one rank, or CPU rows shared by ranks)
);

CREATE TABLE IF NOT EXISTS ops (
    run_id      INTEGER NOT NULL,
    op_id       BIGINT NOT NULL,
    name        VARCHAR NOT NULL,        -- aten::mm, ...
    source      VARCHAR NOT NULL,        -- 'kineto' | 'nvtx' (emit_nvtx(record_shapes=True) ranges)
    start_ns    BIGINT NOT NULL,
    end_ns      BIGINT NOT NULL,
    dur_ns      BIGINT NOT NULL,
    pid         BIGINT,
    tid         BIGINT,
    external_id BIGINT,
    input_dims  VARCHAR,                 -- JSON list of shapes, e.g. [[1,64],[4096,4096]]
    input_types VARCHAR,                 -- JSON list
    depth       INTEGER,
    parent_id   BIGINT,
    rank        INTEGER                  -- rank of a multi-rank run (NULL: one rank, or CPU rows shared by ranks)
);

CREATE TABLE IF NOT EXISTS memops (
    run_id      INTEGER NOT NULL,
    memop_id    BIGINT NOT NULL,
    kind        VARCHAR NOT NULL,        -- 'memcpy' | 'memset'
    name        VARCHAR,
    start_ns    BIGINT NOT NULL,
    end_ns      BIGINT NOT NULL,
    dur_ns      BIGINT NOT NULL,
    bytes       BIGINT,
    device      INTEGER,
    stream      BIGINT,
    correlation BIGINT,
    copy_kind   VARCHAR,                 -- HtoD, DtoH, DtoD, ...
    launch_id   BIGINT,
    rank        INTEGER                  -- rank of a multi-rank run (NULL: one rank, or CPU rows shared by ranks)
);

-- One row per forward pass found by stage attribution (enrich/stages.py).
CREATE TABLE IF NOT EXISTS passes (
    run_id     INTEGER NOT NULL,
    pass_id    INTEGER NOT NULL,     -- 0.. in start order
    iteration  INTEGER,              -- NULL before the first summarization pass
    step       INTEGER,              -- 0 = summarization, k = k-th generation pass of its iteration
    stage      VARCHAR NOT NULL,     -- what its kernels got: summarization | generation | mixed | warmup | other
    source     VARCHAR NOT NULL,     -- 'nvtx' | 'user_annotation' | 'inferred'
    name       VARCHAR,              -- marker label (NULL when inferred)
    range_id   BIGINT,               -- -> ranges.range_id of the marker
    start_ns   BIGINT NOT NULL,      -- marker extent (CPU clock), or GPU span of its kernels when inferred
    end_ns     BIGINT NOT NULL,
    n_kernels  BIGINT NOT NULL,
    -- The pass's partition (enrich/stages.py PARTITION: kernel_rows columns): a marker whose
    -- kernels ran on several devices is one pass per device; NULL where its kernels' value is NULL.
    pid        BIGINT,
    device     INTEGER,
    grammar    VARCHAR,              -- which label grammar: 'stage-label' | 'vllm' | 'sglang' | 'trtllm' | 'inferred'
    ctx_tokens BIGINT,               -- prefill tokens of the step, where an engine's marker says
    gen_tokens BIGINT,               -- decode tokens of the step, where an engine's marker says
    evidence   VARCHAR,              -- mixed passes: 'split:tokens=C/G' (shared kernels apportioned so) or 'split:unknown ...'
    rank       INTEGER               -- partition column too: the rank of a multi-rank run (NULL: one rank)
);

-- One row per rank of a multi-rank run (tracekit/ranks.py): where it came from and how its clock was
-- put on the run's clock. Every time stored for the rank is already shifted by clock_offset_ns.
CREATE TABLE IF NOT EXISTS run_ranks (
    run_id          INTEGER NOT NULL,
    rank            INTEGER NOT NULL,
    device          INTEGER,              -- GPU index its kernels ran on (lowest, if several)
    pid             BIGINT,               -- process that launched its kernels (lowest, if several)
    source_name     VARCHAR,              -- trace file the rank came from
    content_hash    VARCHAR,              -- sha256 of that file
    rank_source     VARCHAR NOT NULL,     -- 'distributedInfo' | 'file name' | 'process/device order'
    clock_offset_ns BIGINT NOT NULL,      -- added to the rank's own times (0 for the reference rank)
    align_method    VARCHAR NOT NULL,     -- 'reference' | 'collective-end' | 'shared-clock' | 'none'
    align_events    INTEGER,              -- matched collectives the offset was estimated from
    align_spread_ns BIGINT,               -- median |end difference| of those collectives after alignment
    stage_method    VARCHAR,              -- stage attribution of this rank alone
    iterations      INTEGER,
    n_kernels       BIGINT,
    kernel_time_ns  BIGINT
);

-- Columns added after databases were first written. tracekit/views/__init__.py adds them to a
-- tracekit database on a writable open, and stands NULLs in for them on a read-only one (never to
-- a foreign database: only where `runs` has tracekit's own columns).
-- @added runs stage_confidence VARCHAR
-- @added runs stage_reason VARCHAR
-- @added passes pid BIGINT
-- @added passes device INTEGER
-- @added passes grammar VARCHAR
-- @added passes ctx_tokens BIGINT
-- @added passes gen_tokens BIGINT
-- @added passes evidence VARCHAR
-- @added runs world_size INTEGER
-- @added runs ranks VARCHAR
-- @added launches rank INTEGER
-- @added ranges rank INTEGER
-- @added ops rank INTEGER
-- @added memops rank INTEGER
-- @added passes rank INTEGER
-- @added kernel_rows rank INTEGER
