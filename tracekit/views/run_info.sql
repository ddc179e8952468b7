-- @view run_info
-- One row per run: the run's own columns plus the metadata the study varies (from run_meta,
-- whatever its source: --meta, capture manifest, or the trace). Numeric metadata is cast to
-- integers; a value that is not a number gives NULL there (the raw text stays in run_meta).
--
-- @column run_id          INTEGER  the run
-- @column source_name     VARCHAR  trace file name
-- @column format          VARCHAR  'nsys-sqlite' | 'nsys-rep' | 'kineto'
-- @column gpu_name        VARCHAR  GPU the trace was recorded on
-- @column model           VARCHAR  run_meta 'model'
-- @column batch           BIGINT   run_meta 'batch'
-- @column input_len       BIGINT   run_meta 'input_len' (prompt tokens)
-- @column output_len      BIGINT   run_meta 'output_len' (generated tokens = 1 + generation passes)
-- @column dtype           VARCHAR  run_meta 'dtype'
-- @column profiler        VARCHAR  run_meta 'profiler'
-- @column layers          BIGINT   run_meta 'layers'
-- @column stage_method    VARCHAR  how stages were decided (see tracekit.enrich.stages)
-- @column iterations      INTEGER  complete summarization+generation sequences in the trace
-- @column n_kernels       BIGINT   kernels in the trace
-- @column kernel_time_ns  BIGINT   their summed duration
-- @column source_path, content_hash, importer_version, imported_at, tool_versions, trace_meta, absent
--                                  as in the runs table
CREATE OR REPLACE TEMP VIEW run_info AS
WITH meta AS (
    SELECT run_id,
           max(value) FILTER (WHERE key = 'model')      AS model,
           max(value) FILTER (WHERE key = 'batch')      AS batch,
           max(value) FILTER (WHERE key = 'input_len')  AS input_len,
           max(value) FILTER (WHERE key = 'output_len') AS output_len,
           max(value) FILTER (WHERE key = 'dtype')      AS dtype,
           max(value) FILTER (WHERE key = 'profiler')   AS profiler,
           max(value) FILTER (WHERE key = 'layers')     AS layers
    FROM run_meta
    GROUP BY run_id
)
SELECT r.run_id, r.source_name, r.format, r.gpu_name,
       m.model,
       TRY_CAST(m.batch AS BIGINT)      AS batch,
       TRY_CAST(m.input_len AS BIGINT)  AS input_len,
       TRY_CAST(m.output_len AS BIGINT) AS output_len,
       m.dtype, m.profiler,
       TRY_CAST(m.layers AS BIGINT)     AS layers,
       r.stage_method, r.iterations, r.n_kernels, r.kernel_time_ns,
       r.source_path, r.content_hash, r.importer_version, r.imported_at,
       r.tool_versions, r.trace_meta, r.absent
FROM runs r
LEFT JOIN meta m USING (run_id)
ORDER BY r.run_id;
