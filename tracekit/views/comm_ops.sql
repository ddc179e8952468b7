-- @view comm_ops
-- One row per communication kernel (category COMM): how much of it was waiting for the slowest
-- rank to arrive, how much moved data, and how much no compute on the same GPU hid.
--
-- Matching: a collective's operation comes from its kernel name (all-reduce, all-gather,
-- reduce-scatter, all-to-all, broadcast, reduce; 'collective' when the name has none, as RCCL's
-- generic kernel); the k-th collective of one operation on a rank is the same collective as the
-- k-th of that operation on every other rank (every rank of a communicator issues the same
-- sequence). Times are on the run's one clock (tracekit.ranks aligned the ranks).
--   wait_ns     = min(latest start of this collective across ranks - this rank's start, dur_ns)
--   transfer_ns = dur_ns - wait_ns
-- The split is only computed when it can be trusted (wait_basis = 'measured'); otherwise wait and
-- transfer are NULL and wait_basis says why: 'one rank' (a one-rank run), 'ranks missing' (the
-- world size names ranks with no trace: the missing one may be the slowest), 'not aligned' (no
-- shared collective to put ranks on one clock), 'counts differ' (ranks ran different numbers of
-- this operation: order does not pair them), 'point-to-point' (send/recv pair two ranks, not all).
--   exposed_ns  = the part of the kernel during which no non-COMM kernel ran on the same rank and
--                 GPU (communication not hidden by compute); hidden_ns = dur_ns - exposed_ns.
--
-- Builds on: kernels (category, stage, rank, device), runs (world_size), run_ranks (align_method).
--
-- @column run_id                INTEGER  the run
-- @column rank                  INTEGER  rank (NULL: one-rank run)
-- @column device                INTEGER  GPU
-- @column kernel_id             BIGINT   the kernel
-- @column stage                 VARCHAR  its stage
-- @column step                  INTEGER  its forward pass
-- @column op                    VARCHAR  'allreduce' | 'allgather' | 'reducescatter' | 'alltoall' | 'broadcast' | 'reduce' | 'sendrecv' | 'send' | 'recv' | 'collective'
-- @column seq                   BIGINT   0.. order of this operation on this rank
-- @column start_ns              BIGINT   kernel start (run clock)
-- @column dur_ns                BIGINT   kernel duration
-- @column latest_start_ns       BIGINT   latest start of the same collective over the ranks (measured only)
-- @column wait_ns               BIGINT   waiting for the slowest rank (NULL unless measured)
-- @column transfer_ns           BIGINT   dur_ns - wait_ns (NULL unless measured)
-- @column exposed_ns            BIGINT   not overlapped by any non-COMM kernel on the same rank and GPU
-- @column wait_basis            VARCHAR  'measured' or why not (see above)
CREATE OR REPLACE TEMP VIEW comm_ops AS
WITH c AS (
    SELECT run_id, rank, device, kernel_id, stage, step, start_ns, end_ns, dur_ns,
           coalesce(nullif(lower(replace(regexp_extract(split_part(name, '(', 1),
               '(?i)(all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|broadcast|send_?recv|sendrecv|send|recv|reduce)',
               1), '_', '')), ''), 'collective') AS op
    FROM kernels
    WHERE category = 'COMM'
      -- Only runs that have COMM kernels (the rollup says, in a few rows a run): every other run's
      -- kernels are then never read, and composition, which reads this view, stays cheap.
      AND run_id IN (SELECT run_id FROM kernel_sums WHERE category = 'COMM')
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
-- Busy intervals of compute (every non-COMM kernel) per rank and GPU, overlapping ones merged.
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
-- Hidden time per COMM kernel as a sum over the merged intervals it overlaps; a zero row for every
-- kernel (UNION ALL, not a LEFT JOIN: an empty side of a LEFT JOIN inside a view has misbehaved).
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
