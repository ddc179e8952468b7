-- @view rank_stage_ratio
-- Stage split per rank of a multi-rank run (tensor / pipeline parallel: tracekit.ranks), with the
-- communication split of comm_ops. How ranks combine:
--   - per rank: each rank's own shares (this view, rank_composition);
--   - the whole run: summed GPU-seconds over ranks (stage_ratio and composition, which sum every
--     kernel of the run; run_rank_summary.gen_ratio_summed);
--   - the critical rank: the slowest one, the rank the others wait for = the one that waited
--     least in collectives (it arrives last; ties: the most kernel time without wait, then the
--     lowest rank). Only decided where every rank of the world size is present and wait is
--     measured (every collective's wait_basis = 'measured'); NULL otherwise, never a guess.
--     Ranks with no collective wait for nothing (then: the most kernel time).
--
-- Builds on: kernel_sums (stage, rank), comm_ops (wait_ns, exposed_ns), runs (world_size).
--
-- @column run_id                INTEGER  the run (multi-rank runs only)
-- @column rank                  INTEGER  the rank
-- @column summarization_ns      BIGINT   its summarization kernel time
-- @column generation_ns         BIGINT   its generation kernel time
-- @column other_ns              BIGINT   kernels outside every pass
-- @column warmup_ns             BIGINT   kernels of warm-up iterations
-- @column gen_ratio             DOUBLE   generation / (summarization + generation), kernel time as recorded
-- @column comm_ns               BIGINT   COMM kernel time in the two stages
-- @column comm_wait_ns          BIGINT   of which waiting for the slowest rank (NULL: not measured)
-- @column comm_exposed_ns       BIGINT   COMM time not overlapped by compute on its GPU, in the two stages
-- @column busy_ns               BIGINT   summarization + generation - comm_wait_ns (NULL: wait not measured)
-- @column gen_ratio_no_wait     DOUBLE   the generation share with the wait taken out of both stages
-- @column critical              BOOLEAN  the slowest rank of its run (NULL: wait not measured)
CREATE OR REPLACE TEMP VIEW rank_stage_ratio AS
WITH k AS (
    SELECT run_id, rank,
           coalesce(sum(dur_ns) FILTER (WHERE stage = 'summarization'), 0)::BIGINT AS summarization_ns,
           coalesce(sum(dur_ns) FILTER (WHERE stage = 'generation'), 0)::BIGINT    AS generation_ns,
           coalesce(sum(dur_ns) FILTER (WHERE stage = 'other' OR stage IS NULL), 0)::BIGINT AS other_ns,
           coalesce(sum(dur_ns) FILTER (WHERE stage = 'warmup'), 0)::BIGINT        AS warmup_ns
    FROM kernel_sums  -- the per-run rollup (schema.sql): kernel time by rank and stage
    WHERE rank IS NOT NULL
    GROUP BY run_id, rank
),
-- Every (run, rank) of k gets a row here (UNION ALL of zeros, not a LEFT JOIN to a maybe-empty side).
c AS (
    SELECT run_id, rank,
           sum(comm_ns)::BIGINT AS comm_ns, sum(exposed_ns)::BIGINT AS comm_exposed_ns,
           sum(sum_wait)::BIGINT AS sum_wait_ns, sum(gen_wait)::BIGINT AS gen_wait_ns,
           bool_and(measured) AS measured
    FROM (
        SELECT run_id, rank, 0 AS comm_ns, 0 AS exposed_ns, 0 AS sum_wait, 0 AS gen_wait, true AS measured FROM k
        UNION ALL
        SELECT run_id, rank, dur_ns, exposed_ns,
               CASE WHEN stage = 'summarization' THEN coalesce(wait_ns, 0) ELSE 0 END,
               CASE WHEN stage = 'generation' THEN coalesce(wait_ns, 0) ELSE 0 END,
               wait_basis = 'measured'
        FROM comm_ops
        WHERE rank IS NOT NULL AND stage IN ('summarization', 'generation'))
    GROUP BY run_id, rank
),
r AS (
    SELECT k.*, c.comm_ns, c.comm_exposed_ns, c.measured,
           CASE WHEN c.measured THEN c.sum_wait_ns + c.gen_wait_ns END AS comm_wait_ns,
           CASE WHEN c.measured THEN k.summarization_ns + k.generation_ns - c.sum_wait_ns - c.gen_wait_ns END::BIGINT
               AS busy_ns,
           CASE WHEN c.measured THEN (k.generation_ns - c.gen_wait_ns)
               / nullif(k.summarization_ns + k.generation_ns - c.sum_wait_ns - c.gen_wait_ns, 0) END
               AS gen_ratio_no_wait
    FROM k JOIN c USING (run_id, rank)
)
SELECT run_id, rank, summarization_ns, generation_ns, other_ns, warmup_ns,
       generation_ns / nullif(summarization_ns + generation_ns, 0) AS gen_ratio,
       comm_ns, comm_wait_ns, comm_exposed_ns, busy_ns, gen_ratio_no_wait,
       CASE WHEN bool_and(measured) OVER (PARTITION BY run_id)
                 AND count(*) OVER (PARTITION BY run_id) = (SELECT world_size FROM runs x WHERE x.run_id = r.run_id)
            THEN rank = first(rank ORDER BY comm_wait_ns, busy_ns DESC, rank) OVER (PARTITION BY run_id
                     ROWS BETWEEN UNBOUNDED PRECEDING AND UNBOUNDED FOLLOWING) END AS critical
FROM r
ORDER BY run_id, rank;

-- @view rank_composition
-- Kernel-time composition per rank of a multi-rank run, in composition's buckets ('Sum GEMM',
-- 'Sum GEMV', 'Gen GEMM', 'Gen GEMV', 'ATTN', 'Mixed GEMM/GEMV' of mixed passes, the other
-- categories, 'Unclassified'; over the stages summarization, generation and mixed), with COMM
-- split as in composition: 'COMM' is the transfer, 'COMM wait' the wait for the slowest rank
-- (where comm_ops measured it). Shares sum to 1 per rank.
--
-- Builds on: kernel_sums (category, stage, rank), comm_ops (wait_ns).
--
-- @column run_id                INTEGER  the run
-- @column rank                  INTEGER  the rank
-- @column bucket                VARCHAR  as in composition
-- @column time_ns               BIGINT   summed kernel time of the rank in the bucket
-- @column share                 DOUBLE   time_ns / the rank's summarization + generation kernel time
CREATE OR REPLACE TEMP VIEW rank_composition AS
WITH measured AS (
    SELECT run_id, rank,
           CASE WHEN category = 'ATTN' THEN 'ATTN'
                WHEN category IN ('GEMM', 'GEMV')
                    THEN CASE stage WHEN 'summarization' THEN 'Sum ' WHEN 'mixed' THEN 'Mixed ' ELSE 'Gen ' END
                         || category
                WHEN category IS NULL THEN 'Unclassified'
                ELSE category END AS bucket,
           dur_ns
    FROM kernel_sums  -- the per-run rollup (schema.sql): kernel time by rank, stage and category
    WHERE stage IN ('summarization', 'generation', 'mixed') AND rank IS NOT NULL
    UNION ALL
    SELECT run_id, rank, 'COMM', -wait_ns FROM comm_ops
    WHERE wait_ns > 0 AND rank IS NOT NULL AND stage IN ('summarization', 'generation', 'mixed')
    UNION ALL
    SELECT run_id, rank, 'COMM wait', wait_ns FROM comm_ops
    WHERE wait_ns > 0 AND rank IS NOT NULL AND stage IN ('summarization', 'generation', 'mixed')
),
study AS (
    SELECT * FROM (VALUES ('Sum GEMM', 1), ('Sum GEMV', 2), ('Gen GEMM', 3), ('Gen GEMV', 4), ('ATTN', 5))
        AS t(bucket, ord)
),
present AS (
    SELECT run_id, rank, bucket, sum(dur_ns)::BIGINT AS time_ns FROM measured GROUP BY run_id, rank, bucket
),
filled AS (
    SELECT run_id, rank, bucket, sum(time_ns)::BIGINT AS time_ns FROM (
        SELECT run_id, rank, bucket, time_ns FROM present
        UNION ALL
        SELECT DISTINCT p.run_id, p.rank, s.bucket, 0 FROM present p, study s)
    GROUP BY run_id, rank, bucket
)
SELECT f.run_id, f.rank, f.bucket, f.time_ns,
       f.time_ns / nullif(sum(f.time_ns) OVER (PARTITION BY f.run_id, f.rank), 0) AS share
FROM filled f
ORDER BY f.run_id, f.rank,
         coalesce((SELECT ord FROM study s WHERE s.bucket = f.bucket),
                  CASE WHEN f.bucket = 'Unclassified' THEN 99 ELSE 6 END),
         f.time_ns DESC, f.bucket;

-- @view run_rank_summary
-- One row per multi-rank run: how its ranks combine.
--
-- Builds on: rank_stage_ratio, runs (world_size, ranks), run_ranks (clock alignment).
--
-- @column run_id                INTEGER  the run
-- @column world_size            INTEGER  ranks of the job
-- @column ranks                 VARCHAR  ranks present (and missing)
-- @column align                 VARCHAR  how rank clocks were aligned ('collective-end', 'shared-clock', 'none', ...)
-- @column max_clock_offset_ns   BIGINT   largest |offset| applied to a rank's clock
-- @column gen_ratio_summed      DOUBLE   generation share of the GPU-seconds summed over ranks
-- @column gen_ratio_min         DOUBLE   smallest per-rank gen_ratio
-- @column gen_ratio_max         DOUBLE   largest per-rank gen_ratio
-- @column critical_rank         INTEGER  the slowest rank (NULL: wait not measured)
-- @column gen_ratio_critical    DOUBLE   the critical rank's gen_ratio_no_wait
-- @column comm_share            DOUBLE   COMM share of the summed summarization + generation time
-- @column comm_wait_share       DOUBLE   of that, waiting (NULL: not measured)
-- @column comm_exposed_share    DOUBLE   COMM not hidden by compute, share of the summed time
CREATE OR REPLACE TEMP VIEW run_rank_summary AS
WITH s AS (
    SELECT run_id,
           sum(summarization_ns + generation_ns) AS measured_ns,
           sum(generation_ns) AS generation_ns,
           min(gen_ratio) AS gen_ratio_min, max(gen_ratio) AS gen_ratio_max,
           sum(comm_ns) AS comm_ns, sum(comm_wait_ns) AS comm_wait_ns,
           bool_and(comm_wait_ns IS NOT NULL) AS measured,
           sum(comm_exposed_ns) AS comm_exposed_ns,
           max(rank) FILTER (WHERE critical) AS critical_rank,
           max(gen_ratio_no_wait) FILTER (WHERE critical) AS gen_ratio_critical
    FROM rank_stage_ratio GROUP BY run_id
),
a AS (
    SELECT run_id, string_agg(DISTINCT align_method, ', ' ORDER BY align_method) AS align,
           max(abs(clock_offset_ns)) AS max_clock_offset_ns
    FROM run_ranks GROUP BY run_id
)
SELECT s.run_id, r.world_size, r.ranks, a.align, a.max_clock_offset_ns,
       s.generation_ns / nullif(s.measured_ns, 0) AS gen_ratio_summed,
       s.gen_ratio_min, s.gen_ratio_max, s.critical_rank, s.gen_ratio_critical,
       s.comm_ns / nullif(s.measured_ns, 0) AS comm_share,
       CASE WHEN s.measured THEN s.comm_wait_ns / nullif(s.measured_ns, 0) END AS comm_wait_share,
       s.comm_exposed_ns / nullif(s.measured_ns, 0) AS comm_exposed_share
FROM s JOIN runs r USING (run_id) JOIN a USING (run_id)
ORDER BY s.run_id;
