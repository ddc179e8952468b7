-- @view top_kernels
-- Kernels by summed duration, per run, over the measured kernels (stage 'summarization' or
-- 'generation'); for a run without any (stage_method 'none') over all its kernels, so the view
-- is never empty for a run that has kernels. One row per (short_name, category): a name that
-- runs both as GEMM and as GEMV (the same cuBLAS kernel at prefill and decode) shows twice.
--
-- @column run_id      INTEGER  the run
-- @column short_name  VARCHAR  kernel function name without template arguments
-- @column category    VARCHAR  kernel category, 'Unclassified' when no rule matched
-- @column n           BIGINT   launches
-- @column time_ns     BIGINT   summed duration
-- @column share       DOUBLE   time_ns / the run's time in the same scope
CREATE OR REPLACE TEMP VIEW top_kernels AS
WITH has_measured AS (
    SELECT run_id, bool_or(stage IN ('summarization', 'generation')) AS measured
    FROM kernels GROUP BY run_id
),
scope AS (
    SELECT k.run_id, k.short_name, coalesce(k.category, 'Unclassified') AS category, k.dur_ns
    FROM kernels k JOIN has_measured h USING (run_id)
    WHERE NOT h.measured OR k.stage IN ('summarization', 'generation')
),
agg AS (
    SELECT run_id, short_name, category, count(*) AS n, sum(dur_ns)::BIGINT AS time_ns
    FROM scope GROUP BY run_id, short_name, category
)
SELECT run_id, short_name, category, n, time_ns,
       time_ns / nullif(sum(time_ns) OVER (PARTITION BY run_id), 0) AS share
FROM agg
ORDER BY run_id, time_ns DESC, short_name;
