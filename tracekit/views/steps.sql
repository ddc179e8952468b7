-- @view steps
-- Kernel time per forward pass and category: step 0 is an iteration's summarization pass,
-- step k its k-th generation pass (for serving engines' step markers: step k is the k-th engine
-- step, of any stage). Every iteration is listed; `stage` tells the measured one
-- ('summarization' / 'generation' / 'mixed') from warm-up iterations ('warmup'). One row per
-- partition (process and GPU, see stage_ratio_by_process) as well.
--
-- @column run_id     INTEGER  the run
-- @column iteration  INTEGER  summarization+generation sequence, 0-based
-- @column step       INTEGER  0 = summarization, k = k-th generation pass
-- @column stage      VARCHAR  summarization | generation | mixed | warmup | other
-- @column category   VARCHAR  kernel category, 'Unclassified' when no rule matched
-- @column time_ns    BIGINT   summed kernel duration
-- @column n_kernels  BIGINT   kernels
-- @column pid        BIGINT   process of the kernels
-- @column device     INTEGER  GPU of the kernels
-- @column rank       INTEGER  rank of a multi-rank run (a PARTITION column); NULL in one-rank runs
CREATE OR REPLACE TEMP VIEW steps AS
SELECT run_id, iteration, step, stage, coalesce(category, 'Unclassified') AS category,
       sum(dur_ns)::BIGINT AS time_ns, count(*) AS n_kernels, {{partition}}
FROM kernels
WHERE step IS NOT NULL
GROUP BY run_id, iteration, step, stage, coalesce(category, 'Unclassified'), {{partition}}
ORDER BY run_id, iteration, step, time_ns DESC;

-- @view step_totals
-- One row per forward pass (from the `passes` table written by stage attribution), per partition.
-- host_ns is the pass's marker extent on the CPU clock; gpu_span_ns its kernels' extent on the
-- GPU (first start to last end) and gpu_busy_ns the time inside that span with one of them running.
--
-- @column run_id       INTEGER  the run
-- @column iteration    INTEGER  summarization+generation sequence, 0-based
-- @column step         INTEGER  0 = summarization, k = k-th generation pass
-- @column stage        VARCHAR  summarization | generation | mixed | warmup | other
-- @column time_ns      BIGINT   summed kernel duration of the pass
-- @column host_ns      BIGINT   duration of the pass's marker range (CPU clock); NULL when inferred
-- @column gpu_span_ns  BIGINT   first kernel start to last kernel end of the pass
-- @column gpu_busy_ns  BIGINT   time inside gpu_span_ns with a kernel of the pass running
-- @column n_kernels    BIGINT   kernels of the pass
-- @column pid          BIGINT   process of the pass's kernels
-- @column device       INTEGER  GPU of the pass's kernels
-- @column rank         INTEGER  rank of a multi-rank run (a PARTITION column); NULL in one-rank runs
CREATE OR REPLACE TEMP VIEW step_totals AS
WITH o AS (
    SELECT run_id, iteration, step, {{partition}}, start_ns, end_ns, dur_ns,
           max(end_ns) OVER (PARTITION BY run_id, iteration, step, {{partition}} ORDER BY start_ns, end_ns
                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
    FROM kernels
    WHERE step IS NOT NULL
),
k AS (
    SELECT run_id, iteration, step, {{partition}}, sum(dur_ns) AS time_ns, count(*) AS n_kernels,
           max(end_ns) - min(start_ns) AS gpu_span_ns,
           sum(greatest(0, end_ns - greatest(start_ns, coalesce(prev_end, start_ns)))) AS gpu_busy_ns
    FROM o
    GROUP BY ALL
)
SELECT p.run_id, p.iteration, p.step, p.stage,
       coalesce(k.time_ns, 0)::BIGINT AS time_ns,
       CASE WHEN p.source <> 'inferred' THEN p.end_ns - p.start_ns END AS host_ns,
       k.gpu_span_ns::BIGINT AS gpu_span_ns,
       k.gpu_busy_ns::BIGINT AS gpu_busy_ns,
       coalesce(k.n_kernels, 0) AS n_kernels,
       {{partition:p}}
FROM passes p
JOIN runs r USING (run_id)
LEFT JOIN k ON k.run_id = p.run_id AND k.iteration = p.iteration AND k.step = p.step AND {{partition_eq:k:p}}
WHERE p.step IS NOT NULL
ORDER BY p.run_id, p.iteration, p.step, {{partition:p}};
