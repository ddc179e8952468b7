-- @view stage_ratio
-- The study's "generation stage share" per run, on GPU kernel time:
--   gen_ratio = generation_ns / (summarization_ns + generation_ns)
-- over the measured kernels (stage 'summarization' / 'generation'; with the default
-- StageConfig(iterations='last') that is the last complete iteration only). Also the wall-clock
-- variant from the stage marker ranges: for each stage, first marker start to last marker end
-- within an iteration (CPU clock), summed over the measured iterations. Wall values are NULL when
-- the stages were inferred rather than marked.
--
-- @column run_id                 INTEGER  the run
-- @column summarization_ns       BIGINT   summed kernel duration of the summarization pass(es)
-- @column generation_ns          BIGINT   summed kernel duration of the generation passes
-- @column other_ns               BIGINT   kernels outside every pass (init, allocator fills, ...)
-- @column warmup_ns              BIGINT   kernels of iterations before the measured one
-- @column gen_ratio              DOUBLE   generation_ns / (summarization_ns + generation_ns); NULL if both 0
-- @column wall_summarization_ns  BIGINT   wall-clock extent of the summarization marker range(s)
-- @column wall_generation_ns     BIGINT   wall-clock extent of the generation marker ranges
-- @column wall_gen_ratio         DOUBLE   wall_generation_ns / (wall_summarization_ns + wall_generation_ns)
CREATE OR REPLACE TEMP VIEW stage_ratio AS
WITH k AS (
    SELECT run_id,
           coalesce(sum(dur_ns) FILTER (WHERE stage = 'summarization'), 0) AS summarization_ns,
           coalesce(sum(dur_ns) FILTER (WHERE stage = 'generation'), 0)    AS generation_ns,
           coalesce(sum(dur_ns) FILTER (WHERE stage = 'other' OR stage IS NULL), 0) AS other_ns,
           coalesce(sum(dur_ns) FILTER (WHERE stage = 'warmup'), 0)        AS warmup_ns
    FROM kernels
    GROUP BY run_id
),
spans AS (
    SELECT run_id, iteration, stage, max(end_ns) - min(start_ns) AS span_ns
    FROM passes
    WHERE source <> 'inferred' AND stage IN ('summarization', 'generation')
    GROUP BY run_id, iteration, stage
),
wall AS (
    SELECT run_id,
           sum(span_ns) FILTER (WHERE stage = 'summarization')::BIGINT AS wall_summarization_ns,
           sum(span_ns) FILTER (WHERE stage = 'generation')::BIGINT    AS wall_generation_ns
    FROM spans
    GROUP BY run_id
)
SELECT r.run_id,
       coalesce(k.summarization_ns, 0)::BIGINT AS summarization_ns,
       coalesce(k.generation_ns, 0)::BIGINT    AS generation_ns,
       coalesce(k.other_ns, 0)::BIGINT         AS other_ns,
       coalesce(k.warmup_ns, 0)::BIGINT        AS warmup_ns,
       k.generation_ns / nullif(k.summarization_ns + k.generation_ns, 0) AS gen_ratio,
       w.wall_summarization_ns,
       w.wall_generation_ns,
       w.wall_generation_ns / nullif(coalesce(w.wall_summarization_ns, 0) + coalesce(w.wall_generation_ns, 0), 0)
           AS wall_gen_ratio
FROM runs r
LEFT JOIN k USING (run_id)
LEFT JOIN wall w USING (run_id)
ORDER BY r.run_id;
