-- @view composition
-- Where the GPU kernel time goes, in the study's buckets (its Figure 7):
-- 'Sum GEMM', 'Sum GEMV' (summarization stage), 'Gen GEMM', 'Gen GEMV' (generation stage),
-- 'ATTN' (both stages); MoE expert GEMMs as 'Sum MoE GEMM', 'Gen MoE GEMV', ...; the shared
-- kernels of mixed passes are 'Mixed GEMM' / 'Mixed GEMV'; every
-- other category keeps its own name (NORM, ELEMWISE, ...), kernels no rule classified are
-- 'Unclassified', and CUDA graphs traced whole (one row per launch, kernels unknown: see the nsys
-- reader) are 'CUDA graph (whole)', so nothing is hidden.
-- scope 'measured stages': over the kernels of stages summarization, generation and mixed; the
-- five study buckets are always present (0 when empty) so charts line up across runs.
-- scope 'whole run': a run with no measured kernels (its stages could not be decided: see
-- runs.stage_method / stage_reason) is still shown, over all its kernels, with GEMM / GEMV
-- unsplit by stage. Shares sum to 1 per run.
-- Multi-rank runs: the time of all ranks summed; COMM is the transfer part of collectives and
-- 'COMM wait' the part spent waiting for the slowest rank, where comm_ops measured it.
--
-- @column run_id   INTEGER  the run
-- @column scope    VARCHAR  'measured stages' | 'whole run'
-- @column bucket   VARCHAR  study bucket, other category name, 'CUDA graph (whole)' or 'Unclassified'
-- @column time_ns  BIGINT   summed kernel duration
-- @column share    DOUBLE   time_ns / the run's time in that scope
-- Reads the per-run rollup kernel_sums (kernel time by stage, name, category), not every kernel.
CREATE OR REPLACE TEMP VIEW composition AS
WITH k AS (
    -- The rollup summed to what decides a bucket: stage, whole graph or not, category, MoE or not
    -- (MoE expert GEMMs apart from dense ones: evidence 'moe:...', also through a split-K reduce:
    -- 'prev_gemm:moe:...').
    SELECT run_id, stage, short_name = 'CUDA graph (whole)' AS graph, category,
           category IN ('GEMM', 'GEMV') AND (starts_with(coalesce(evidence, ''), 'moe:')
                                              OR starts_with(coalesce(evidence, ''), 'prev_gemm:moe:')) AS moe,
           sum(dur_ns) AS dur_ns
    FROM kernel_sums
    GROUP BY ALL
),
scoped AS (
    SELECT k.*, CASE WHEN m.run_id IS NULL THEN 'whole run' ELSE 'measured stages' END AS scope
    FROM k
    LEFT JOIN (SELECT DISTINCT run_id FROM k WHERE stage IN ('summarization', 'generation', 'mixed')) m
        USING (run_id)
),
measured AS (
    SELECT run_id, scope,
           CASE WHEN graph THEN 'CUDA graph (whole)'
                WHEN category = 'ATTN' THEN 'ATTN'
                WHEN category IN ('GEMM', 'GEMV') AND scope = 'measured stages'
                    THEN CASE stage WHEN 'summarization' THEN 'Sum ' WHEN 'mixed' THEN 'Mixed ' ELSE 'Gen ' END
                         || CASE WHEN moe THEN 'MoE ' ELSE '' END   -- e.g. 'Gen MoE GEMV'
                         || category
                WHEN category IS NULL THEN 'Unclassified'
                ELSE category END AS bucket,
           dur_ns
    FROM scoped
    WHERE scope = 'whole run' OR stage IN ('summarization', 'generation', 'mixed')
    UNION ALL  -- the wait inside collectives moves from COMM to its own bucket (comm_ops.sql)
    SELECT c.run_id, s.scope, b.bucket, b.sign * c.wait_ns
    FROM comm_ops c JOIN (SELECT DISTINCT run_id, scope FROM scoped) s USING (run_id),
         (VALUES ('COMM', -1), ('COMM wait', 1)) b(bucket, sign)
    WHERE c.wait_ns > 0 AND (s.scope = 'whole run' OR c.stage IN ('summarization', 'generation', 'mixed'))
      -- wait is only measured across ranks (comm_ops.wait_basis): the filter spares one-rank runs
      -- reading comm_ops at all
      AND c.run_id IN (SELECT run_id FROM runs WHERE world_size >= 2)
),
study AS (
    SELECT * FROM (VALUES ('Sum GEMM', 1), ('Sum GEMV', 2), ('Gen GEMM', 3), ('Gen GEMV', 4), ('ATTN', 5))
        AS t(bucket, ord)
),
present AS (
    SELECT run_id, scope, bucket, sum(dur_ns) AS time_ns FROM measured GROUP BY run_id, scope, bucket
),
grid AS (
    SELECT DISTINCT p.run_id, p.scope, s.bucket FROM present p, study s WHERE p.scope = 'measured stages'
    UNION
    SELECT run_id, scope, bucket FROM present
),
filled AS (
    SELECT g.run_id, g.scope, g.bucket, coalesce(p.time_ns, 0)::BIGINT AS time_ns
    FROM grid g LEFT JOIN present p USING (run_id, scope, bucket)
)
SELECT f.run_id, f.scope, f.bucket, f.time_ns,
       f.time_ns / nullif(sum(f.time_ns) OVER (PARTITION BY f.run_id), 0) AS share
FROM filled f
LEFT JOIN study s USING (bucket)
ORDER BY f.run_id, coalesce(s.ord, CASE WHEN f.bucket = 'Unclassified' THEN 99 ELSE 6 END),
         f.time_ns DESC, f.bucket;
