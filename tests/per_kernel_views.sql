-- The per-kernel definitions of stage_ratio_by_process, stage_ratio, composition and comm_ops as
-- they were before the views read the per-run rollups (tracekit 2026-11-29, views/*.sql): the
-- oracle of tests/test_rollups.py. Every name carries the suffix _oracle.

CREATE OR REPLACE TEMP VIEW comm_ops_oracle AS
WITH c AS (
    SELECT run_id, rank, device, kernel_id, stage, step, start_ns, end_ns, dur_ns,
           coalesce(nullif(lower(replace(regexp_extract(split_part(name, '(', 1),
               '(?i)(all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|broadcast|send_?recv|sendrecv|send|recv|reduce)',
               1), '_', '')), ''), 'collective') AS op
    FROM kernels
    WHERE category = 'COMM'
),
s AS (
    SELECT *, row_number() OVER (PARTITION BY run_id, rank, op ORDER BY start_ns, kernel_id) - 1 AS seq,
           count(*) OVER (PARTITION BY run_id, rank, op) AS n_op
    FROM c
),
per_op AS (      -- per run and operation: do all ranks run it equally often?
    SELECT run_id, op, count(DISTINCT rank) AS n_ranks, min(n_op) = max(n_op) AS same_count
    FROM s GROUP BY run_id, op
),
per_seq AS (
    SELECT run_id, op, seq, max(start_ns) AS latest_start_ns FROM s GROUP BY run_id, op, seq
),
basis AS (
    SELECT s.run_id, s.kernel_id, q.latest_start_ns,
           CASE WHEN s.rank IS NULL OR coalesce(r.world_size, 1) < 2 THEN 'one rank'
                WHEN s.op IN ('sendrecv', 'send', 'recv') THEN 'point-to-point'
                WHEN p.n_ranks < r.world_size
                     OR (SELECT count(*) FROM run_ranks x WHERE x.run_id = s.run_id) < r.world_size
                    THEN 'ranks missing'
                WHEN (SELECT bool_or(x.align_method = 'none') FROM run_ranks x WHERE x.run_id = s.run_id)
                    THEN 'not aligned'
                WHEN NOT p.same_count THEN 'counts differ'
                ELSE 'measured' END AS wait_basis
    FROM s
    JOIN runs r USING (run_id)
    JOIN per_op p USING (run_id, op)
    JOIN per_seq q USING (run_id, op, seq)
),
busy AS (
    SELECT run_id, coalesce(rank, -1) AS rk, coalesce(device, -1) AS dev, start_ns, end_ns,
           max(end_ns) OVER (PARTITION BY run_id, coalesce(rank, -1), coalesce(device, -1)
                             ORDER BY start_ns, end_ns ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
    FROM kernels
    WHERE category IS DISTINCT FROM 'COMM'
      AND run_id IN (SELECT run_id FROM c)
),
islands AS (
    SELECT *, sum(CASE WHEN prev_end IS NULL OR start_ns > prev_end THEN 1 ELSE 0 END)
                  OVER (PARTITION BY run_id, rk, dev ORDER BY start_ns, end_ns ROWS UNBOUNDED PRECEDING) AS island
    FROM busy
),
merged AS (
    SELECT run_id, rk, dev, min(start_ns) AS s, max(end_ns) AS e FROM islands GROUP BY run_id, rk, dev, island
),
hidden AS (
    SELECT run_id, kernel_id, sum(h)::BIGINT AS hidden_ns FROM (
        SELECT run_id, kernel_id, 0 AS h FROM c
        UNION ALL
        SELECT c.run_id, c.kernel_id, least(c.end_ns, m.e) - greatest(c.start_ns, m.s) AS h
        FROM c JOIN merged m ON m.run_id = c.run_id AND m.rk = coalesce(c.rank, -1) AND m.dev = coalesce(c.device, -1)
                            AND m.s < c.end_ns AND m.e > c.start_ns)
    GROUP BY run_id, kernel_id
)
SELECT s.run_id, s.rank, s.device, s.kernel_id, s.stage, s.step, s.op, s.seq, s.start_ns, s.dur_ns,
       CASE WHEN b.wait_basis = 'measured' THEN b.latest_start_ns END AS latest_start_ns,
       CASE WHEN b.wait_basis = 'measured' THEN least(b.latest_start_ns - s.start_ns, s.dur_ns) END AS wait_ns,
       CASE WHEN b.wait_basis = 'measured' THEN s.dur_ns - least(b.latest_start_ns - s.start_ns, s.dur_ns) END
           AS transfer_ns,
       s.dur_ns - h.hidden_ns AS exposed_ns,
       b.wait_basis
FROM s
JOIN basis b USING (run_id, kernel_id)
JOIN hidden h USING (run_id, kernel_id)
ORDER BY s.run_id, s.rank, s.start_ns, s.kernel_id;
CREATE OR REPLACE TEMP VIEW stage_ratio_by_process_oracle AS
WITH mixed AS (
    -- Shared kernels of mixed passes with the token share of their pass.
    SELECT k.run_id, {{partition:k}}, k.dur_ns,
           p.ctx_tokens::DOUBLE / nullif(p.ctx_tokens + p.gen_tokens, 0) AS ctx_share
    FROM kernels k
    JOIN passes p ON p.run_id = k.run_id AND {{partition_eq:p:k}} AND p.iteration = k.iteration AND p.step = k.step
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
    FROM kernels
    GROUP BY ALL
),
ordered AS (
    SELECT run_id, {{partition}}, iteration, stage, start_ns, end_ns,
           max(end_ns) OVER (PARTITION BY run_id, {{partition}}, iteration, stage ORDER BY start_ns, end_ns
                             ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_end
    FROM kernels
    WHERE stage IN ('summarization', 'generation')
),
gpu_it AS (
    SELECT run_id, {{partition}}, iteration, stage, max(end_ns) - min(start_ns) AS span_ns,
           sum(greatest(0, end_ns - greatest(start_ns, coalesce(prev_end, start_ns)))) AS busy_ns
    FROM ordered GROUP BY ALL
),
gpu AS (
    SELECT run_id, {{partition}},
           sum(span_ns) FILTER (WHERE stage = 'summarization')::BIGINT AS gpu_span_summarization_ns,
           sum(span_ns) FILTER (WHERE stage = 'generation')::BIGINT    AS gpu_span_generation_ns,
           sum(busy_ns) FILTER (WHERE stage = 'summarization')::BIGINT AS gpu_busy_summarization_ns,
           sum(busy_ns) FILTER (WHERE stage = 'generation')::BIGINT    AS gpu_busy_generation_ns
    FROM gpu_it GROUP BY ALL
),
host_it AS (
    SELECT run_id, {{partition}}, iteration, stage, max(end_ns) - min(start_ns) AS span_ns
    FROM passes
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

CREATE OR REPLACE TEMP VIEW stage_ratio_oracle AS
WITH s AS (
    SELECT run_id,
           sum(summarization_ns) AS summarization_ns, sum(generation_ns) AS generation_ns,
           sum(other_ns) AS other_ns, sum(warmup_ns) AS warmup_ns, sum(unattributed_ns) AS unattributed_ns,
           sum(host_summarization_ns) AS host_summarization_ns, sum(host_generation_ns) AS host_generation_ns,
           sum(gpu_span_summarization_ns) AS gpu_span_summarization_ns,
           sum(gpu_span_generation_ns) AS gpu_span_generation_ns,
           sum(gpu_busy_summarization_ns) AS gpu_busy_summarization_ns,
           sum(gpu_busy_generation_ns) AS gpu_busy_generation_ns
    FROM stage_ratio_by_process_oracle
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
CREATE OR REPLACE TEMP VIEW composition_oracle AS
WITH scoped AS (
    SELECT k.*, CASE WHEN m.run_id IS NULL THEN 'whole run' ELSE 'measured stages' END AS scope
    FROM kernels k
    LEFT JOIN (SELECT DISTINCT run_id FROM kernels WHERE stage IN ('summarization', 'generation', 'mixed')) m
        USING (run_id)
),
measured AS (
    SELECT run_id, scope,
           CASE WHEN short_name = 'CUDA graph (whole)' THEN 'CUDA graph (whole)'
                WHEN category = 'ATTN' THEN 'ATTN'
                WHEN category IN ('GEMM', 'GEMV') AND scope = 'measured stages'
                    THEN CASE stage WHEN 'summarization' THEN 'Sum ' WHEN 'mixed' THEN 'Mixed ' ELSE 'Gen ' END
                         -- MoE expert GEMMs apart from dense ones (evidence 'moe:...', also
                         -- through a split-K reduce: 'prev_gemm:moe:...'): e.g. 'Gen MoE GEMV'.
                         || CASE WHEN regexp_matches(coalesce(evidence, ''), '^(prev_gemm:)?moe:')
                                 THEN 'MoE ' ELSE '' END
                         || category
                WHEN category IS NULL THEN 'Unclassified'
                ELSE category END AS bucket,
           dur_ns
    FROM scoped
    WHERE scope = 'whole run' OR stage IN ('summarization', 'generation', 'mixed')
    UNION ALL  -- the wait inside collectives moves from COMM to its own bucket (comm_ops_oracle.sql)
    SELECT c.run_id, s.scope, b.bucket, b.sign * c.wait_ns
    FROM comm_ops_oracle c JOIN (SELECT DISTINCT run_id, scope FROM scoped) s USING (run_id),
         (VALUES ('COMM', -1), ('COMM wait', 1)) b(bucket, sign)
    WHERE c.wait_ns > 0 AND (s.scope = 'whole run' OR c.stage IN ('summarization', 'generation', 'mixed'))
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
