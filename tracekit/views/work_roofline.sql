-- @view run_peaks
-- The roofs each run is measured against: the first `gpu_peaks` entry (tracekit/data/gpu_peaks.toml,
-- or a user's --peaks file before it) whose pattern matches runs.gpu_name, with --peak-tflops /
-- --peak-tbps put over it. NULL figures when no entry matches the GPU (the source says what to do).
--
-- @column run_id            INTEGER  the run
-- @column gpu_name          VARCHAR  the GPU the trace names
-- @column peak_gpu          VARCHAR  the peaks entry chosen (NULL: none matched)
-- @column bf16_flops_per_s  DOUBLE   dense bf16 tensor-core FLOP/s
-- @column fp16_flops_per_s  DOUBLE   dense fp16 tensor-core FLOP/s
-- @column fp8_flops_per_s   DOUBLE   dense fp8 tensor-core FLOP/s (NULL: the part has none)
-- @column tf32_flops_per_s  DOUBLE   dense tf32 tensor-core FLOP/s (the roof of fp32 matmuls)
-- @column fp32_flops_per_s  DOUBLE   fp32 vector FLOP/s (the roof of non-matmul kernels)
-- @column bytes_per_s       DOUBLE   memory (HBM) bandwidth
-- @column l2_bytes          DOUBLE   last-level cache size (activations that fit may not reach HBM)
-- @column source            VARCHAR  where the figures come from
-- @column measured          VARCHAR  what a device measurement read on such a GPU, if any
CREATE OR REPLACE TEMP VIEW run_peaks AS
WITH m AS (
    SELECT r.run_id, min(g.ord) AS ord
    FROM runs r JOIN gpu_peaks g ON regexp_matches(coalesce(r.gpu_name, ''), g.pattern)
    GROUP BY r.run_id
)
SELECT r.run_id, r.gpu_name, g.name AS peak_gpu,
       coalesce(o.tensor_flops_per_s, g.bf16_flops_per_s) AS bf16_flops_per_s,
       coalesce(o.tensor_flops_per_s, g.fp16_flops_per_s) AS fp16_flops_per_s,
       coalesce(o.tensor_flops_per_s, g.fp8_flops_per_s) AS fp8_flops_per_s,
       coalesce(o.tensor_flops_per_s, g.tf32_flops_per_s) AS tf32_flops_per_s,
       g.fp32_flops_per_s,
       coalesce(o.bytes_per_s, g.bytes_per_s) AS bytes_per_s,
       g.l2_bytes,
       CASE WHEN o.source IS NULL THEN g.source
            ELSE o.source || coalesce('; otherwise ' || g.source, '') END AS source,
       g.measured
FROM runs r
JOIN m USING (run_id)
JOIN gpu_peaks g ON g.ord = m.ord
CROSS JOIN peak_override o;

-- @view kernel_work
-- Work per kernel from its linked CPU op's recorded shapes and dtypes (tracekit.work: matmuls
-- 2*M*N*K, attention from q/k/v and KV length, elementwise/norm/copy from tensor bytes; bytes are
-- the floor: each input read once, each output written once). When one op launches several
-- kernels (split-K + reduce, cuBLAS + cast), the op's work is counted once, spread over its
-- kernels in proportion to their durations (`share`), so every kernel of the op shows the op's
-- rate and sums over kernels give the op's work exactly. Kernels with no op, no shapes or an op
-- without a work model have NULL flops/bytes and the reason in `evidence`.
--
-- @column run_id                INTEGER  the run
-- @column kernel_id             BIGINT   the kernel
-- @column short_name            VARCHAR  kernel short name
-- @column category              VARCHAR  kernel category (NULL: unclassified)
-- @column stage                 VARCHAR  summarization | generation | warmup | other
-- @column step                  INTEGER  forward pass (0 = summarization)
-- @column iteration             INTEGER  sequence
-- @column dur_ns                BIGINT   kernel duration
-- @column op_id                 BIGINT   the linked CPU op
-- @column op_name               VARCHAR  its name
-- @column kind                  VARCHAR  matmul | attention | elementwise | norm | reduce | copy (NULL: unknown)
-- @column compute               VARCHAR  the roof its FLOPs run against: bf16 | fp16 | fp8 | tf32 | fp32 ... (NULL: vector fp32)
-- @column share                 DOUBLE   fraction of the op's work given to this kernel (duration share)
-- @column flops                 DOUBLE   floating-point operations
-- @column bytes                 DOUBLE   fewest bytes the work must move through memory
-- @column weight_bytes          DOUBLE   of which linear-layer weights (matmul B operand)
-- @column kv_bytes              DOUBLE   of which attention keys and values (the KV cache)
-- @column hbm_bytes             DOUBLE   of which must cross HBM: weights + KV + the other bytes beyond the L2's size
-- @column intensity             DOUBLE   flops / bytes (FLOP per byte)
-- @column achieved_flops_per_s  DOUBLE   flops / dur
-- @column achieved_bytes_per_s  DOUBLE   bytes / dur
-- @column peak_flops_per_s      DOUBLE   the roof for its compute (run_peaks)
-- @column peak_bytes_per_s      DOUBLE   memory bandwidth roof
-- @column bound_ns              DOUBLE   time at the roof: max(flops / peak FLOP/s, hbm_bytes / bandwidth)
-- @column roof_share            DOUBLE   bound_ns / dur_ns: 1 = at the roof
-- @column limit_by              VARCHAR  'memory' | 'compute': which roof bounds it
-- @column evidence              VARCHAR  how the work was counted, or why it is NULL
CREATE OR REPLACE TEMP VIEW kernel_work AS
WITH k AS (
    SELECT run_id, kernel_id, short_name, category, stage, step, iteration, dur_ns, op_id FROM kernels
),
op_kernels AS (
    SELECT run_id, op_id, count(*) AS n, sum(dur_ns) AS op_ns
    FROM k WHERE op_id IS NOT NULL GROUP BY run_id, op_id
),
run_dtype AS (
    SELECT r.run_id,
           (SELECT max(m.value) FROM run_meta m WHERE m.run_id = r.run_id AND m.key = 'dtype') AS meta_dtype
    FROM runs r
),
ops_used AS (
    SELECT o.run_id, o.op_id, o.name, o.input_dims, o.input_types, d.meta_dtype, ok.n, ok.op_ns
    FROM ops o
    JOIN op_kernels ok ON ok.run_id = o.run_id AND ok.op_id = o.op_id
    JOIN run_dtype d ON d.run_id = o.run_id
),
ctx AS (
    SELECT DISTINCT name, input_dims, input_types, meta_dtype FROM ops_used
),
ctx_work AS (
    SELECT name, input_dims, input_types, meta_dtype,
           tk_op_work(name, input_dims, input_types, meta_dtype) AS w
    FROM ctx
),
linked AS (
    SELECT k.*, u.name AS op_name, u.n AS op_kernels,
           CASE WHEN u.op_ns > 0 THEN k.dur_ns / u.op_ns ELSE 1.0 / u.n END AS share,
           c.w
    FROM k
    JOIN ops_used u ON u.run_id = k.run_id AND u.op_id = k.op_id
    JOIN ctx_work c ON c.name = u.name AND c.input_dims IS NOT DISTINCT FROM u.input_dims
        AND c.input_types IS NOT DISTINCT FROM u.input_types AND c.meta_dtype IS NOT DISTINCT FROM u.meta_dtype
),
unlinked AS (
    SELECT k.*, NULL::VARCHAR AS op_name, NULL::BIGINT AS op_kernels, 1.0::DOUBLE AS share,
           {'flops': NULL::DOUBLE, 'bytes': NULL::DOUBLE, 'weight_bytes': NULL::DOUBLE,
            'kv_bytes': NULL::DOUBLE, 'compute': NULL::VARCHAR, 'kind': NULL::VARCHAR,
            'evidence': 'kernel has no linked CPU op (no op records, or a CUDA-graph replay)'} AS w
    FROM k
    WHERE NOT EXISTS (SELECT 1 FROM ops o WHERE o.run_id = k.run_id AND o.op_id = k.op_id)
),
allk AS (
    SELECT * FROM linked UNION ALL SELECT * FROM unlinked
),
rated AS (
    SELECT a.run_id, a.kernel_id, a.short_name, a.category, a.stage, a.step, a.iteration, a.dur_ns,
           a.op_id, a.op_name, a.w.kind AS kind, a.w.compute AS compute, a.share,
           a.w.flops * a.share AS flops, a.w.bytes * a.share AS bytes,
           a.w.weight_bytes * a.share AS weight_bytes, a.w.kv_bytes * a.share AS kv_bytes,
           CASE a.w.compute WHEN 'bf16' THEN p.bf16_flops_per_s WHEN 'fp16' THEN p.fp16_flops_per_s
                            WHEN 'fp8' THEN p.fp8_flops_per_s WHEN 'tf32' THEN p.tf32_flops_per_s
                            WHEN 'fp32' THEN p.fp32_flops_per_s
                            WHEN 'fp64' THEN NULL WHEN 'int8' THEN NULL
                            ELSE CASE WHEN a.w.kind IN ('matmul', 'attention') THEN NULL  -- dtype unknown
                                      ELSE p.fp32_flops_per_s END END AS peak_flops_per_s,
           p.bytes_per_s AS peak_bytes_per_s,
           -- Up to the last-level cache's size of a kernel's other (activation) bytes may be
           -- served from it or absorbed by it (reading what the kernel before wrote, writing what
           -- the next reads): only weights, KV and the rest are sure to cross HBM.
           (a.w.weight_bytes + a.w.kv_bytes) * a.share
             + greatest((a.w.bytes - a.w.weight_bytes - a.w.kv_bytes) * a.share - coalesce(p.l2_bytes, 0), 0)
             AS hbm_bytes,
           a.w.evidence || CASE WHEN a.op_kernels > 1
                                THEN ';op work split over its ' || a.op_kernels || ' kernels by duration'
                                ELSE '' END AS evidence
    FROM allk a
    JOIN run_peaks p ON p.run_id = a.run_id
)
SELECT run_id, kernel_id, short_name, category, stage, step, iteration, dur_ns, op_id, op_name, kind,
       compute, share, flops, bytes, weight_bytes, kv_bytes, hbm_bytes,
       flops / nullif(bytes, 0) AS intensity,
       flops / nullif(dur_ns * 1e-9, 0) AS achieved_flops_per_s,
       bytes / nullif(dur_ns * 1e-9, 0) AS achieved_bytes_per_s,
       peak_flops_per_s, peak_bytes_per_s,
       CASE WHEN bytes IS NOT NULL AND peak_bytes_per_s IS NOT NULL
            THEN greatest(flops / peak_flops_per_s, hbm_bytes / peak_bytes_per_s) * 1e9 END AS bound_ns,
       CASE WHEN bytes IS NOT NULL AND peak_bytes_per_s IS NOT NULL
            THEN greatest(flops / peak_flops_per_s, hbm_bytes / peak_bytes_per_s) * 1e9 / nullif(dur_ns, 0)
            END AS roof_share,
       CASE WHEN bytes IS NULL OR peak_bytes_per_s IS NULL THEN NULL
            WHEN coalesce(flops / peak_flops_per_s, 0) > hbm_bytes / peak_bytes_per_s THEN 'compute'
            ELSE 'memory' END AS limit_by,
       evidence
FROM rated;

-- @view roofline
-- Per run, stage and category: time, work, achieved and roofline-bound throughput, and the time
-- the same work would take at the roof (bound_ns, each kernel at its own roof, summed). Work sums
-- and rates are over the kernels whose bytes are known (n_with_work, time_with_work_ns); the rest
-- are counted in n_kernels / time_ns only, so a rate is never diluted by time without work.
--
-- @column run_id                INTEGER  the run
-- @column stage                 VARCHAR  summarization | generation | warmup | other
-- @column category              VARCHAR  kernel category, or 'Unclassified'
-- @column n_kernels             BIGINT   kernels
-- @column time_ns               BIGINT   their summed duration
-- @column n_with_work           BIGINT   kernels whose bytes are known
-- @column time_with_work_ns     BIGINT   their summed duration
-- @column flops                 DOUBLE   summed FLOPs
-- @column bytes                 DOUBLE   summed bytes
-- @column weight_bytes          DOUBLE   of which linear-layer weights
-- @column kv_bytes              DOUBLE   of which attention keys/values
-- @column hbm_bytes             DOUBLE   of which must cross HBM (see kernel_work)
-- @column intensity             DOUBLE   flops / bytes
-- @column achieved_flops_per_s  DOUBLE   flops / time_with_work
-- @column achieved_bytes_per_s  DOUBLE   bytes / time_with_work
-- @column peak_flops_per_s      DOUBLE   the FLOP roof (for mixed dtypes: flops / sum(flops / each kernel's roof))
-- @column peak_bytes_per_s      DOUBLE   the memory roof
-- @column bound_ns              DOUBLE   time at the roof
-- @column bound_flops_per_s     DOUBLE   flops / bound_ns: the roofline-bound FLOP/s of this work
-- @column bound_bytes_per_s     DOUBLE   bytes / bound_ns
-- @column roof_share            DOUBLE   bound_ns / time_with_work_ns: 1 = at the roof
-- @column limit_by              VARCHAR  'memory' | 'compute': the roof that bounds most of bound_ns
CREATE OR REPLACE TEMP VIEW roofline AS
WITH g AS (
    SELECT run_id, stage, coalesce(category, 'Unclassified') AS category,
           count(*) AS n_kernels, sum(dur_ns)::BIGINT AS time_ns,
           count(bytes) AS n_with_work,
           coalesce(sum(dur_ns) FILTER (WHERE bytes IS NOT NULL), 0)::BIGINT AS time_with_work_ns,
           sum(flops) FILTER (WHERE bytes IS NOT NULL) AS flops,
           sum(bytes) AS bytes,
           sum(weight_bytes) AS weight_bytes,
           sum(kv_bytes) AS kv_bytes,
           sum(hbm_bytes) AS hbm_bytes,
           sum(flops / peak_flops_per_s) FILTER (WHERE bytes IS NOT NULL AND flops > 0) AS flop_time_s,
           max(peak_bytes_per_s) AS peak_bytes_per_s,
           sum(bound_ns) AS bound_ns,
           sum(bound_ns) FILTER (WHERE limit_by = 'memory') AS memory_bound_ns,
           sum(bound_ns) FILTER (WHERE limit_by = 'compute') AS compute_bound_ns
    FROM kernel_work
    GROUP BY run_id, stage, coalesce(category, 'Unclassified')
)
SELECT run_id, stage, category, n_kernels, time_ns, n_with_work, time_with_work_ns,
       flops, bytes, weight_bytes, kv_bytes, hbm_bytes,
       flops / nullif(bytes, 0) AS intensity,
       flops / nullif(time_with_work_ns * 1e-9, 0) AS achieved_flops_per_s,
       bytes / nullif(time_with_work_ns * 1e-9, 0) AS achieved_bytes_per_s,
       flops / nullif(flop_time_s, 0) AS peak_flops_per_s,
       peak_bytes_per_s,
       bound_ns,
       flops / nullif(bound_ns * 1e-9, 0) AS bound_flops_per_s,
       bytes / nullif(bound_ns * 1e-9, 0) AS bound_bytes_per_s,
       bound_ns / nullif(time_with_work_ns, 0) AS roof_share,
       CASE WHEN bound_ns IS NULL THEN NULL
            WHEN coalesce(compute_bound_ns, 0) > coalesce(memory_bound_ns, 0) THEN 'compute'
            ELSE 'memory' END AS limit_by
FROM g
ORDER BY run_id, stage, time_ns DESC;

-- @view decode_ideal
-- Per generation pass: the bytes one decode pass must read, all linear-layer weights once plus the
-- keys and values its attention reads (the KV cache, growing with each step), over the memory
-- bandwidth, against the measured pass: kernel time and wall time (the stage marker's extent).
-- NULL bytes where a matmul or attention kernel of the pass has no work count (no shapes).
--
-- @column run_id             INTEGER  the run
-- @column iteration          INTEGER  sequence
-- @column step               INTEGER  generation pass (1..)
-- @column weight_bytes       DOUBLE   linear-layer weights read by the pass
-- @column kv_bytes           DOUBLE   keys and values its attention reads
-- @column ideal_bytes        DOUBLE   weight_bytes + kv_bytes
-- @column peak_bytes_per_s   DOUBLE   the memory roof
-- @column ideal_ns           DOUBLE   ideal_bytes / peak_bytes_per_s: the pass at the HBM limit
-- @column time_ns            BIGINT   the pass's kernel time
-- @column wall_ns            BIGINT   the pass's wall time (NULL when passes were inferred)
-- @column kernel_hbm_share   DOUBLE   ideal_ns / time_ns: how close the kernels come to the limit
-- @column wall_hbm_share     DOUBLE   ideal_ns / wall_ns
-- @column n_missing          BIGINT   matmul / attention kernels of the pass without a work count
CREATE OR REPLACE TEMP VIEW decode_ideal AS
WITH s AS (
    SELECT run_id, iteration, step,
           sum(weight_bytes) AS weight_bytes, sum(kv_bytes) AS kv_bytes,
           max(peak_bytes_per_s) AS peak_bytes_per_s,
           count(*) FILTER (WHERE (category IN ('GEMM', 'GEMV', 'ATTN') OR kind IN ('matmul', 'attention'))
                                  AND bytes IS NULL) AS n_missing
    FROM kernel_work
    WHERE stage = 'generation' AND step IS NOT NULL
    GROUP BY run_id, iteration, step
),
b AS (
    SELECT s.*, CASE WHEN n_missing = 0 THEN weight_bytes + kv_bytes END AS ideal_bytes
    FROM s
)
SELECT b.run_id, b.iteration, b.step,
       CASE WHEN b.n_missing = 0 THEN b.weight_bytes END AS weight_bytes,
       CASE WHEN b.n_missing = 0 THEN b.kv_bytes END AS kv_bytes,
       b.ideal_bytes, b.peak_bytes_per_s,
       b.ideal_bytes / b.peak_bytes_per_s * 1e9 AS ideal_ns,
       t.time_ns, t.wall_ns,
       b.ideal_bytes / b.peak_bytes_per_s * 1e9 / nullif(t.time_ns, 0) AS kernel_hbm_share,
       b.ideal_bytes / b.peak_bytes_per_s * 1e9 / nullif(t.wall_ns, 0) AS wall_hbm_share,
       b.n_missing
FROM b
JOIN step_totals t ON t.run_id = b.run_id AND t.iteration = b.iteration AND t.step = b.step
ORDER BY b.run_id, b.iteration, b.step;
