-- @view steps
-- Kernel time per forward pass and category: step 0 is an iteration's summarization pass,
-- step k its k-th generation pass. Every iteration is listed; `stage` tells the measured one
-- ('summarization' / 'generation') from warm-up iterations ('warmup').
--
-- @column run_id     INTEGER  the run
-- @column iteration  INTEGER  summarization+generation sequence, 0-based
-- @column step       INTEGER  0 = summarization, k = k-th generation pass
-- @column stage      VARCHAR  summarization | generation | warmup | other
-- @column category   VARCHAR  kernel category, 'Unclassified' when no rule matched
-- @column time_ns    BIGINT   summed kernel duration
-- @column n_kernels  BIGINT   kernels
CREATE OR REPLACE TEMP VIEW steps AS
SELECT run_id, iteration, step, stage, coalesce(category, 'Unclassified') AS category,
       sum(dur_ns)::BIGINT AS time_ns, count(*) AS n_kernels
FROM kernels
WHERE step IS NOT NULL
GROUP BY run_id, iteration, step, stage, coalesce(category, 'Unclassified')
ORDER BY run_id, iteration, step, time_ns DESC;

-- @view step_totals
-- One row per forward pass (from the `passes` table written by stage attribution).
--
-- @column run_id     INTEGER  the run
-- @column iteration  INTEGER  summarization+generation sequence, 0-based
-- @column step       INTEGER  0 = summarization, k = k-th generation pass
-- @column stage      VARCHAR  summarization | generation | warmup | other
-- @column time_ns    BIGINT   summed kernel duration of the pass
-- @column wall_ns    BIGINT   duration of the pass's marker range (CPU clock); NULL when inferred
-- @column n_kernels  BIGINT   kernels of the pass
CREATE OR REPLACE TEMP VIEW step_totals AS
WITH k AS (
    SELECT run_id, iteration, step, sum(dur_ns) AS time_ns, count(*) AS n_kernels
    FROM kernels
    WHERE step IS NOT NULL
    GROUP BY run_id, iteration, step
)
SELECT p.run_id, p.iteration, p.step, p.stage,
       coalesce(k.time_ns, 0)::BIGINT AS time_ns,
       CASE WHEN p.source <> 'inferred' THEN p.end_ns - p.start_ns END AS wall_ns,
       coalesce(k.n_kernels, 0) AS n_kernels
FROM passes p
JOIN runs r USING (run_id)
LEFT JOIN k USING (run_id, iteration, step)
WHERE p.step IS NOT NULL
ORDER BY p.run_id, p.iteration, p.step;
