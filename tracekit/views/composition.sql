-- @view composition
-- Where the measured GPU kernel time goes, in the study's buckets (its Figure 7):
-- 'Sum GEMM', 'Sum GEMV' (summarization stage), 'Gen GEMM', 'Gen GEMV' (generation stage),
-- 'ATTN' (both stages); every other category keeps its own name (NORM, ELEMWISE, ...), and
-- kernels no rule classified are 'Unclassified', so nothing is hidden. Over the kernels of stage
-- 'summarization' and 'generation' only; shares sum to 1 per run. The five study buckets are
-- always present (0 when empty) for runs with measured kernels, so charts line up across runs.
-- Multi-rank runs: the time of all ranks summed; COMM is the transfer part of collectives and
-- 'COMM wait' the part spent waiting for the slowest rank, where comm_ops measured it.
--
-- @column run_id   INTEGER  the run
-- @column bucket   VARCHAR  study bucket, other category name, or 'Unclassified'
-- @column time_ns  BIGINT   summed kernel duration
-- @column share    DOUBLE   time_ns / the run's summarization + generation kernel time
CREATE OR REPLACE TEMP VIEW composition AS
WITH measured AS (
    SELECT run_id,
           CASE WHEN category = 'ATTN' THEN 'ATTN'
                WHEN category IN ('GEMM', 'GEMV')
                    THEN CASE stage WHEN 'summarization' THEN 'Sum ' ELSE 'Gen ' END || category
                WHEN category IS NULL THEN 'Unclassified'
                ELSE category END AS bucket,
           dur_ns
    FROM kernels
    WHERE stage IN ('summarization', 'generation')
    UNION ALL  -- the wait inside collectives moves from COMM to its own bucket (comm_ops.sql)
    SELECT run_id, 'COMM', -wait_ns FROM comm_ops WHERE wait_ns > 0 AND stage IN ('summarization', 'generation')
    UNION ALL
    SELECT run_id, 'COMM wait', wait_ns FROM comm_ops WHERE wait_ns > 0 AND stage IN ('summarization', 'generation')
),
study AS (
    SELECT * FROM (VALUES ('Sum GEMM', 1), ('Sum GEMV', 2), ('Gen GEMM', 3), ('Gen GEMV', 4), ('ATTN', 5))
        AS t(bucket, ord)
),
present AS (
    SELECT run_id, bucket, sum(dur_ns) AS time_ns FROM measured GROUP BY run_id, bucket
),
grid AS (
    SELECT DISTINCT p.run_id, s.bucket FROM present p, study s
    UNION
    SELECT run_id, bucket FROM present
),
filled AS (
    SELECT g.run_id, g.bucket, coalesce(p.time_ns, 0)::BIGINT AS time_ns
    FROM grid g LEFT JOIN present p USING (run_id, bucket)
)
SELECT f.run_id, f.bucket, f.time_ns,
       f.time_ns / nullif(sum(f.time_ns) OVER (PARTITION BY f.run_id), 0) AS share
FROM filled f
LEFT JOIN study s USING (bucket)
ORDER BY f.run_id, coalesce(s.ord, CASE WHEN f.bucket = 'Unclassified' THEN 99 ELSE 6 END),
         f.time_ns DESC, f.bucket;
