-- @view stage_ratio_by_process
-- The stage split per run and partition (enrich/stages.py PARTITION: the process and GPU the
-- kernels ran on), each partition with its own passes, iterations and measured iteration.
-- Kernel time: gen_ratio = generation_ns / (summarization_ns + generation_ns), over the measured
-- kernels. A mixed pass's shared kernels (stage 'mixed') are split by the pass's token share
-- (passes.ctx_tokens / gen_tokens); where the marker gave no token counts they are unattributed.
-- GPU side, per stage and measured iteration: the span from the stage's first kernel start to its
-- last kernel end on the device, the busy time inside it (the union of its kernels' intervals, so
-- overlapping kernels count once) and the idle time (span - busy), summed over iterations. Host
-- side: the stage markers' extents on the CPU clock (NULL when stages were inferred). A stage
-- whose busy time is far below its span waited on the host (HF eager decode); a CUDA-graph trace
-- shows the opposite, host extents far below the GPU span.
--
-- @column run_id                     INTEGER  the run
-- @column pid                        BIGINT   process of the kernels (NULL where the trace does not say: Kineto)
-- @column device                     INTEGER  GPU of the kernels
-- @column rank                       INTEGER  rank of a multi-rank run (tracekit/ranks.py; a PARTITION column); NULL in one-rank runs
-- @column summarization_ns           BIGINT   summed kernel duration of the summarization pass(es), plus the prefill token share of mixed passes' shared kernels
-- @column generation_ns              BIGINT   summed kernel duration of the generation passes, plus the decode token share of mixed passes' shared kernels
-- @column other_ns                   BIGINT   kernels outside every pass (init, allocator fills, ...)
-- @column warmup_ns                  BIGINT   kernels of iterations before the measured one
-- @column unattributed_ns            BIGINT   kernels that could not be attributed (no launch record under markers; shared kernels of mixed passes without token counts)
-- @column gen_ratio                  DOUBLE   generation_ns / (summarization_ns + generation_ns); NULL if both 0
-- @column host_summarization_ns      BIGINT   CPU-clock extent of the summarization marker range(s); NULL when inferred
-- @column host_generation_ns         BIGINT   CPU-clock extent of the generation marker ranges (first start to last end)
-- @column host_gen_ratio             DOUBLE   host_generation_ns / (host_summarization_ns + host_generation_ns)
-- @column gpu_span_summarization_ns  BIGINT   first summarization kernel start to last summarization kernel end
-- @column gpu_span_generation_ns     BIGINT   first generation kernel start to last generation kernel end
-- @column gpu_busy_summarization_ns  BIGINT   time inside that span with a summarization kernel running
-- @column gpu_busy_generation_ns     BIGINT   time inside that span with a generation kernel running
-- @column gpu_idle_summarization_ns  BIGINT   gpu_span_summarization_ns - gpu_busy_summarization_ns
-- @column gpu_idle_generation_ns     BIGINT   gpu_span_generation_ns - gpu_busy_generation_ns
-- @column gpu_span_gen_ratio         DOUBLE   gpu_span_generation_ns / (gpu_span_summarization_ns + gpu_span_generation_ns)
CREATE OR REPLACE TEMP VIEW stage_ratio_by_process AS
-- Reads the per-run rollups (kernel_sums: kernel time by stage; stage_spans: GPU span and busy
-- time per iteration and stage), not every kernel: see schema.sql.
-- Each is read once (MATERIALIZED): over a Parquet dataset every read opens every run's file.
WITH ks AS MATERIALIZED (SELECT run_id, {{partition}}, stage, iteration, step, dur_ns FROM kernel_sums),
ps AS MATERIALIZED (SELECT run_id, {{partition}}, iteration, step, stage, source, start_ns, end_ns,
                           ctx_tokens, gen_tokens FROM passes),
mixed AS (
    -- Shared kernels of mixed passes (summed per pass) with the token share of their pass.
    SELECT k.run_id, {{partition:k}}, k.dur_ns,
           p.ctx_tokens::DOUBLE / nullif(p.ctx_tokens + p.gen_tokens, 0) AS ctx_share
    FROM ks k
    JOIN ps p ON p.run_id = k.run_id AND {{partition_eq:p:k}} AND p.iteration = k.iteration AND p.step = k.step
    WHERE k.stage = 'mixed'
),
mixed_sums AS (
    SELECT run_id, {{partition}},
           sum(dur_ns * ctx_share) AS ctx_ns,
           sum(dur_ns * (1 - ctx_share)) AS gen_ns,
           coalesce(sum(dur_ns) FILTER (WHERE ctx_share IS NULL), 0) AS unsplit_ns
    FROM mixed GROUP BY ALL
),
k AS (
    SELECT run_id, {{partition}},
           coalesce(sum(dur_ns) FILTER (WHERE stage = 'summarization'), 0) AS summarization_ns,
           coalesce(sum(dur_ns) FILTER (WHERE stage = 'generation'), 0)    AS generation_ns,
           coalesce(sum(dur_ns) FILTER (WHERE stage = 'other' OR stage IS NULL), 0) AS other_ns,
           coalesce(sum(dur_ns) FILTER (WHERE stage = 'warmup'), 0)        AS warmup_ns,
           coalesce(sum(dur_ns) FILTER (WHERE stage = 'unattributed'), 0)  AS unattributed_ns
    FROM ks
    GROUP BY ALL
),
gpu AS (
    SELECT run_id, {{partition}},
           sum(span_ns) FILTER (WHERE stage = 'summarization')::BIGINT AS gpu_span_summarization_ns,
           sum(span_ns) FILTER (WHERE stage = 'generation')::BIGINT    AS gpu_span_generation_ns,
           sum(busy_ns) FILTER (WHERE stage = 'summarization')::BIGINT AS gpu_busy_summarization_ns,
           sum(busy_ns) FILTER (WHERE stage = 'generation')::BIGINT    AS gpu_busy_generation_ns
    FROM stage_spans GROUP BY ALL
),
host_it AS (
    SELECT run_id, {{partition}}, iteration, stage, max(end_ns) - min(start_ns) AS span_ns
    FROM ps
    WHERE source <> 'inferred' AND stage IN ('summarization', 'generation')
    GROUP BY ALL
),
host AS (
    SELECT run_id, {{partition}},
           sum(span_ns) FILTER (WHERE stage = 'summarization')::BIGINT AS host_summarization_ns,
           sum(span_ns) FILTER (WHERE stage = 'generation')::BIGINT    AS host_generation_ns
    FROM host_it GROUP BY ALL
),
j AS (
    SELECT k.run_id, {{partition:k}},
           (k.summarization_ns + coalesce(m.ctx_ns, 0))::BIGINT AS summarization_ns,
           (k.generation_ns + coalesce(m.gen_ns, 0))::BIGINT    AS generation_ns,
           k.other_ns::BIGINT AS other_ns, k.warmup_ns::BIGINT AS warmup_ns,
           (k.unattributed_ns + coalesce(m.unsplit_ns, 0))::BIGINT AS unattributed_ns,
           h.host_summarization_ns, h.host_generation_ns,
           g.gpu_span_summarization_ns, g.gpu_span_generation_ns, g.gpu_busy_summarization_ns, g.gpu_busy_generation_ns
    FROM k
    LEFT JOIN mixed_sums m ON m.run_id = k.run_id AND {{partition_eq:m:k}}
    LEFT JOIN host h ON h.run_id = k.run_id AND {{partition_eq:h:k}}
    LEFT JOIN gpu g ON g.run_id = k.run_id AND {{partition_eq:g:k}}
)
SELECT run_id, {{partition}}, summarization_ns, generation_ns, other_ns, warmup_ns, unattributed_ns,
       generation_ns / nullif(summarization_ns + generation_ns, 0) AS gen_ratio,
       host_summarization_ns, host_generation_ns,
       host_generation_ns / nullif(coalesce(host_summarization_ns, 0) + coalesce(host_generation_ns, 0), 0)
           AS host_gen_ratio,
       gpu_span_summarization_ns, gpu_span_generation_ns, gpu_busy_summarization_ns, gpu_busy_generation_ns,
       gpu_span_summarization_ns - gpu_busy_summarization_ns AS gpu_idle_summarization_ns,
       gpu_span_generation_ns - gpu_busy_generation_ns AS gpu_idle_generation_ns,
       gpu_span_generation_ns / nullif(coalesce(gpu_span_summarization_ns, 0) + coalesce(gpu_span_generation_ns, 0), 0)
           AS gpu_span_gen_ratio
FROM j
ORDER BY run_id, {{partition}};

-- @view stage_ratio
-- The study's "generation stage share" per run, on GPU kernel time:
--   gen_ratio = generation_ns / (summarization_ns + generation_ns)
-- over the measured kernels of every partition together (stage_ratio_by_process has each process
-- and GPU on its own row; this view sums them). With the default StageConfig(iterations='last')
-- each partition's last complete iteration is measured. Host and GPU-side columns as in
-- stage_ratio_by_process, summed over partitions. A run whose stages could not be decided
-- (runs.stage_method 'none', reason in runs.stage_reason) has 0 / NULL here, never a ratio.
--
-- @column run_id                     INTEGER  the run
-- @column summarization_ns           BIGINT   summed kernel duration of the summarization pass(es) (+ mixed passes' prefill share)
-- @column generation_ns              BIGINT   summed kernel duration of the generation passes (+ mixed passes' decode share)
-- @column other_ns                   BIGINT   kernels outside every pass (init, allocator fills, ...)
-- @column warmup_ns                  BIGINT   kernels of iterations before the measured one
-- @column unattributed_ns            BIGINT   kernels that could not be attributed (see stage_ratio_by_process)
-- @column gen_ratio                  DOUBLE   generation_ns / (summarization_ns + generation_ns); NULL if both 0
-- @column host_summarization_ns      BIGINT   CPU-clock extent of the summarization marker range(s); NULL when inferred
-- @column host_generation_ns         BIGINT   CPU-clock extent of the generation marker ranges
-- @column host_gen_ratio             DOUBLE   host_generation_ns / (host_summarization_ns + host_generation_ns)
-- @column gpu_span_summarization_ns  BIGINT   GPU span of the summarization kernels, per device, summed
-- @column gpu_span_generation_ns     BIGINT   GPU span of the generation kernels, per device, summed
-- @column gpu_busy_summarization_ns  BIGINT   busy time inside the summarization span
-- @column gpu_busy_generation_ns     BIGINT   busy time inside the generation span
-- @column gpu_idle_summarization_ns  BIGINT   span - busy, summarization
-- @column gpu_idle_generation_ns     BIGINT   span - busy, generation
-- @column gpu_span_gen_ratio         DOUBLE   gpu_span_generation_ns / (gpu_span_summarization_ns + gpu_span_generation_ns)
CREATE OR REPLACE TEMP VIEW stage_ratio AS
WITH s AS (
    SELECT run_id,
           sum(summarization_ns) AS summarization_ns, sum(generation_ns) AS generation_ns,
           sum(other_ns) AS other_ns, sum(warmup_ns) AS warmup_ns, sum(unattributed_ns) AS unattributed_ns,
           sum(host_summarization_ns) AS host_summarization_ns, sum(host_generation_ns) AS host_generation_ns,
           sum(gpu_span_summarization_ns) AS gpu_span_summarization_ns,
           sum(gpu_span_generation_ns) AS gpu_span_generation_ns,
           sum(gpu_busy_summarization_ns) AS gpu_busy_summarization_ns,
           sum(gpu_busy_generation_ns) AS gpu_busy_generation_ns
    FROM stage_ratio_by_process
    GROUP BY run_id
)
SELECT r.run_id,
       coalesce(s.summarization_ns, 0)::BIGINT AS summarization_ns,
       coalesce(s.generation_ns, 0)::BIGINT    AS generation_ns,
       coalesce(s.other_ns, 0)::BIGINT         AS other_ns,
       coalesce(s.warmup_ns, 0)::BIGINT        AS warmup_ns,
       coalesce(s.unattributed_ns, 0)::BIGINT  AS unattributed_ns,
       s.generation_ns / nullif(s.summarization_ns + s.generation_ns, 0) AS gen_ratio,
       s.host_summarization_ns::BIGINT AS host_summarization_ns,
       s.host_generation_ns::BIGINT    AS host_generation_ns,
       s.host_generation_ns / nullif(coalesce(s.host_summarization_ns, 0) + coalesce(s.host_generation_ns, 0), 0)
           AS host_gen_ratio,
       s.gpu_span_summarization_ns::BIGINT AS gpu_span_summarization_ns,
       s.gpu_span_generation_ns::BIGINT    AS gpu_span_generation_ns,
       s.gpu_busy_summarization_ns::BIGINT AS gpu_busy_summarization_ns,
       s.gpu_busy_generation_ns::BIGINT    AS gpu_busy_generation_ns,
       (s.gpu_span_summarization_ns - s.gpu_busy_summarization_ns)::BIGINT AS gpu_idle_summarization_ns,
       (s.gpu_span_generation_ns - s.gpu_busy_generation_ns)::BIGINT       AS gpu_idle_generation_ns,
       s.gpu_span_generation_ns / nullif(coalesce(s.gpu_span_summarization_ns, 0) + coalesce(s.gpu_span_generation_ns, 0), 0)
           AS gpu_span_gen_ratio
FROM runs r
LEFT JOIN s USING (run_id)
ORDER BY r.run_id;
