-- @view run_peaks
-- The roofs each run is measured against: the first `gpu_peaks` entry (tracekit/data/gpu_peaks.toml,
-- or a user's --peaks file before it) whose pattern matches runs.gpu_name, with --peak-tflops /
-- --peak-tbps put over it. NULL figures when no entry matches the GPU (the source says what to do).
--
-- @column run_id            INTEGER  the run
-- @column gpu_name          VARCHAR  the GPU the trace names
-- @column peak_gpu          VARCHAR  the peaks entry chosen (NULL: none matched)
-- @column bf16_flops_per_s  DOUBLE   dense bf16 tensor-core FLOP/s
-- @column fp16_flops_per_s  DOUBLE   dense fp16 tensor-core FLOP/s
-- @column fp8_flops_per_s   DOUBLE   dense fp8 tensor-core FLOP/s (NULL: the part has none)
-- @column tf32_flops_per_s  DOUBLE   dense tf32 tensor-core FLOP/s (the roof of fp32 matmuls)
-- @column fp32_flops_per_s  DOUBLE   fp32 vector FLOP/s (the roof of non-matmul kernels)
-- @column bytes_per_s       DOUBLE   memory (HBM) bandwidth
-- @column l2_bytes          DOUBLE   last-level cache size (activations that fit may not reach HBM)
-- @column source            VARCHAR  where the figures come from
-- @column measured          VARCHAR  what a device measurement read on such a GPU, if any
CREATE OR REPLACE TEMP VIEW run_peaks AS
WITH m AS (
    SELECT r.run_id, min(g.ord) AS ord
    FROM runs r JOIN gpu_peaks g ON regexp_matches(coalesce(r.gpu_name, ''), g.pattern)
    GROUP BY r.run_id
)
SELECT r.run_id, r.gpu_name, g.name AS peak_gpu,
       coalesce(o.tensor_flops_per_s, g.bf16_flops_per_s) AS bf16_flops_per_s,
       coalesce(o.tensor_flops_per_s, g.fp16_flops_per_s) AS fp16_flops_per_s,
       coalesce(o.tensor_flops_per_s, g.fp8_flops_per_s) AS fp8_flops_per_s,
       coalesce(o.tensor_flops_per_s, g.tf32_flops_per_s) AS tf32_flops_per_s,
       g.fp32_flops_per_s,
       coalesce(o.bytes_per_s, g.bytes_per_s) AS bytes_per_s,
       g.l2_bytes,
       CASE WHEN o.source IS NULL THEN g.source
            ELSE o.source || coalesce('; otherwise ' || g.source, '') END AS source,
       g.measured
FROM runs r
JOIN m USING (run_id)
JOIN gpu_peaks g ON g.ord = m.ord
CROSS JOIN peak_override o;

-- The op work model (what tracekit/work.py was): macros, then the view over distinct op contexts.
-- TEMP macros and views live on the connection, like every view here (a Python UDF would be
-- shared by every connection of the process to the same file, and is unsafe once its own closes).
CREATE OR REPLACE TEMP MACRO tk_itemsize(ty) AS CASE ty
    WHEN 'c10::BFloat16' THEN 2 WHEN 'c10::Half' THEN 2 WHEN 'float' THEN 4 WHEN 'double' THEN 8
    WHEN 'long int' THEN 8 WHEN 'int' THEN 4 WHEN 'short int' THEN 2 WHEN 'signed char' THEN 1
    WHEN 'unsigned char' THEN 1 WHEN 'bool' THEN 1 WHEN 'c10::Float8_e4m3fn' THEN 1
    WHEN 'c10::Float8_e5m2' THEN 1 WHEN 'c10::Float8_e4m3fnuz' THEN 1 WHEN 'c10::Float8_e5m2fnuz' THEN 1
    WHEN 'c10::Float8_e8m0fnu' THEN 1 WHEN 'c10::complex<float>' THEN 8 WHEN 'c10::complex<double>' THEN 16
    ELSE NULL END;
-- The tensor-core roof a matmul in that dtype runs against (fp32 matmuls: the TF32 roof, a ceiling).
CREATE OR REPLACE TEMP MACRO tk_compute(ty) AS CASE ty
    WHEN 'c10::BFloat16' THEN 'bf16' WHEN 'c10::Half' THEN 'fp16' WHEN 'float' THEN 'tf32'
    WHEN 'double' THEN 'fp64' WHEN 'c10::Float8_e4m3fn' THEN 'fp8' WHEN 'c10::Float8_e5m2' THEN 'fp8'
    WHEN 'c10::Float8_e4m3fnuz' THEN 'fp8' WHEN 'c10::Float8_e5m2fnuz' THEN 'fp8' ELSE NULL END;
-- Run metadata `dtype` spellings (capture manifests, --meta) -> the trace's type name.
CREATE OR REPLACE TEMP MACRO tk_meta_type(dt) AS CASE lower(trim(dt))
    WHEN 'bfloat16' THEN 'c10::BFloat16' WHEN 'bf16' THEN 'c10::BFloat16' WHEN 'torch.bfloat16' THEN 'c10::BFloat16'
    WHEN 'float16' THEN 'c10::Half' WHEN 'fp16' THEN 'c10::Half' WHEN 'half' THEN 'c10::Half'
    WHEN 'torch.float16' THEN 'c10::Half' WHEN 'float32' THEN 'float' WHEN 'fp32' THEN 'float'
    WHEN 'float' THEN 'float' WHEN 'torch.float32' THEN 'float' WHEN 'float8_e4m3fn' THEN 'c10::Float8_e4m3fn'
    WHEN 'fp8' THEN 'c10::Float8_e4m3fn' ELSE NULL END;
CREATE OR REPLACE TEMP MACRO tk_nontensor(ty) AS
    ty IN ('Scalar', 'ScalarList', 'TensorList', '', 'GenericList', 'None', 'Device', 'Layout', 'str');
-- A JSON shape [d0, d1, ...] as BIGINT[]; NULL for anything else (a tensor list, a scalar).
CREATE OR REPLACE TEMP MACRO tk_shape(j) AS CASE
    WHEN json_type(j) = 'ARRAY' AND (json_array_length(j) = 0 OR json_type(j, '$[0]') = 'UBIGINT')
         AND coalesce(list_min(TRY_CAST(j AS BIGINT[])), 0) >= 0
    THEN TRY_CAST(j AS BIGINT[]) END;
CREATE OR REPLACE TEMP MACRO tk_numel(s) AS CASE
    WHEN s IS NULL THEN NULL WHEN len(s) = 0 THEN 1.0
    ELSE list_aggregate(list_transform(s, lambda x: x::DOUBLE), 'product') END;
-- Argument k (1-based) of an op: its dtype name. Kineto types every argument; nsys emit_nvtx
-- ranges type none (t = types list or NULL, fb = the run's dtype), and there a [] may be a scalar.
CREATE OR REPLACE TEMP MACRO tk_arg_type(t, fb, k) AS CASE
    WHEN t IS NOT NULL THEN CASE WHEN tk_nontensor(t[k]) THEN NULL ELSE t[k] END ELSE fb END;

-- @view op_work
-- Work of each distinct CPU op (name, recorded shapes and dtypes, the run's dtype metadata):
-- FLOPs and the fewest bytes it must move, each input read once and each output written once.
--   matmuls (mm, addmm, bmm, baddbmm, linear, matmul, mv, _grouped_mm, _scaled_mm): 2*M*N*K
--     (over the batch or the groups); bytes A + B + C (+ bias); weight_bytes = the B operand of a
--     linear-layer product (2-D B), i.e. what a decode pass streams.
--   attention (SDPA and its flash / efficient / cuDNN forward ops): 2*B*Hq*pairs*(D + Dv), pairs
--     = Lq*Lk, or Lq*(Lk-Lq) + Lq*(Lq+1)/2 under the causal mask, which a query longer than one
--     token is taken to have (the traces do not keep is_causal; decoder prefill is causal);
--     bytes q + k + v + out; kv_bytes = k + v.
--   elementwise / activations / norms / softmax / reductions / copies / cat / embedding / gather:
--     bytes from their tensors (out-of-place output: the broadcast of the inputs), 1 FLOP per
--     element (0 for data movement), a convention that only places them on a roofline chart.
-- Anything else, or shapes that do not fit, gives NULL and the reason in `evidence`.
--
-- @column name          VARCHAR  op name
-- @column input_dims    VARCHAR  ops.input_dims
-- @column input_types   VARCHAR  ops.input_types
-- @column meta_dtype    VARCHAR  the run's dtype metadata (stands in where the trace has no dtypes)
-- @column flops         DOUBLE   floating-point operations
-- @column bytes         DOUBLE   fewest bytes moved
-- @column weight_bytes  DOUBLE   of which linear-layer weights
-- @column kv_bytes      DOUBLE   of which attention keys and values
-- @column compute       VARCHAR  bf16 | fp16 | fp8 | tf32 | fp64 | int8 for matmul/attention (the tensor roof), NULL otherwise
-- @column kind          VARCHAR  matmul | attention | elementwise | norm | reduce | copy (NULL: no model)
-- @column evidence      VARCHAR  how it was counted, or why not
CREATE OR REPLACE TEMP VIEW op_work AS
WITH run_dtype AS (
    SELECT r.run_id,
           (SELECT max(m.value) FROM run_meta m WHERE m.run_id = r.run_id AND m.key = 'dtype') AS meta_dtype
    FROM runs r
),
ctx AS (
    SELECT DISTINCT o.name, o.input_dims, o.input_types, d.meta_dtype
    FROM ops o JOIN run_dtype d ON d.run_id = o.run_id
),
p AS (
    SELECT c.*,
           try(from_json(c.input_dims, '["JSON"]')) AS d,
           try(from_json(c.input_types, '["VARCHAR"]')) AS t,
           tk_meta_type(c.meta_dtype) AS fb,
           regexp_replace(c.name, '^aten::', '') AS op
    FROM ctx c
),
-- Each argument's shape, dtype, element count and item size, once per op (the macros expand inline:
-- writing them out per use makes the view slow to create).
a0 AS (
    SELECT p.*, list_transform(p.d, lambda j: tk_shape(j)) AS rs FROM p
),
a AS (
    SELECT a0.*,
           list_transform(range(1, coalesce(len(a0.d), 0) + 1), lambda i: CASE
               WHEN a0.t IS NOT NULL AND (a0.t[i] IS NULL OR tk_nontensor(a0.t[i])) THEN NULL
               WHEN a0.t IS NULL AND len(a0.rs[i]) = 0 THEN NULL
               ELSE a0.rs[i] END) AS sh,
           list_transform(range(1, coalesce(len(a0.d), 0) + 1), lambda i: tk_arg_type(a0.t, a0.fb, i)) AS ty
    FROM a0
),
a2 AS (
    SELECT a.*, list_transform(a.sh, lambda x: tk_numel(x)) AS ne, list_transform(a.ty, lambda x: tk_itemsize(x)) AS sz
    FROM a
),
f AS (
    SELECT p.*,
           (p.name LIKE 'aten::%' AND p.op LIKE '%\_' ESCAPE '\' AND p.op NOT LIKE '\_%' ESCAPE '\') AS inplace,
           CASE WHEN p.name LIKE 'aten::%' AND p.op LIKE '%\_' ESCAPE '\' AND p.op NOT LIKE '\_%' ESCAPE '\'
                THEN p.op[1:-2] ELSE p.op END AS base
    FROM a2 p
),
fam AS (
    SELECT f.*,
           CASE
             WHEN f.name IN ('aten::mm', 'aten::addmm', 'aten::_addmm_activation', 'aten::bmm', 'aten::baddbmm',
                             'aten::linear', 'aten::matmul', 'aten::mv', 'aten::addmv', 'aten::_grouped_mm',
                             'aten::_scaled_mm', 'aten::_scaled_grouped_mm', 'aten::_int_mm') THEN 'matmul'
             WHEN f.name IN ('aten::scaled_dot_product_attention', 'aten::_scaled_dot_product_flash_attention',
                             'aten::_scaled_dot_product_efficient_attention',
                             'aten::_scaled_dot_product_cudnn_attention',
                             'aten::_scaled_dot_product_fused_attention_overrideable',
                             'aten::_cudnn_attention_forward') THEN 'attn_bhld'
             WHEN f.name IN ('aten::_flash_attention_forward', 'aten::_efficient_attention_forward',
                             'flash_attn::_flash_attn_forward') THEN 'attn_blhd'
             WHEN f.name NOT LIKE 'aten::%' THEN NULL
             WHEN f.base IN ('copy', 'clone', 'contiguous', '_to_copy', 'to') THEN 'copy'
             WHEN f.base = 'cat' THEN 'cat'
             WHEN f.base IN ('fill', 'zero') THEN 'fill'
             WHEN f.base IN ('index_select', 'embedding', 'gather') THEN f.base
             WHEN f.base IN ('mean', 'sum', 'amax', 'amin', 'max', 'min', 'argmax', 'argmin', 'var', 'std', 'norm',
                             'linalg_vector_norm', 'prod', 'all', 'any', 'var_mean', 'std_mean', 'logsumexp')
                  THEN 'reduce'
             WHEN f.base IN ('_softmax', 'softmax', '_log_softmax', 'log_softmax', 'cumsum', 'cumprod') THEN 'same'
             WHEN f.base IN ('rms_norm', '_fused_rms_norm', 'native_layer_norm', 'layer_norm', 'group_norm',
                             'native_group_norm') THEN 'norm'
             WHEN f.base IN ('abs', 'neg', 'exp', 'log', 'sqrt', 'rsqrt', 'reciprocal', 'sin', 'cos', 'tanh', 'sigmoid',
                             'relu', 'silu', 'gelu', 'erf', 'pow', 'add', 'sub', 'mul', 'div', 'floor_divide',
                             'remainder', 'clamp', 'clamp_min', 'clamp_max', 'maximum', 'minimum', 'where',
                             'masked_fill', 'lerp', 'addcmul', 'addcdiv', 'eq', 'ne', 'lt', 'le', 'gt', 'ge',
                             'logical_and', 'logical_or', 'logical_not', 'bitwise_and', 'bitwise_or', 'bitwise_not',
                             'sign', 'square', 'hardtanh', 'leaky_relu', 'mish', 'softplus', 'elu', 'fmod', 'round',
                             'floor', 'ceil', 'trunc', 'exp2', 'log1p', 'expm1', 'isnan', 'isinf', 'nan_to_num', 'sgn')
                  THEN 'elementwise'
           END AS fam
    FROM f
),
-- matmuls -------------------------------------------------------------------------------------
mm0 AS (
    SELECT fam.*,
           CASE WHEN op IN ('addmm', '_addmm_activation', 'baddbmm', 'addmv') THEN 2 ELSE 1 END AS ia,
           CASE WHEN op IN ('addmm', '_addmm_activation', 'baddbmm', 'addmv') THEN 1 WHEN op = 'linear' THEN 3 END AS ibias
    FROM fam WHERE fam = 'matmul' AND d IS NOT NULL
),
mm1 AS (
    SELECT mm0.*,
           sh[ia] AS sa, sh[ia + 1] AS sb,
           ty[ia] AS ta, ty[ia + 1] AS tb
    FROM mm0
),
mm2 AS (
    SELECT mm1.*,
           CASE WHEN op IN ('mm', 'addmm', '_addmm_activation', '_scaled_mm', '_int_mm') AND len(sa) = 2 AND len(sb) = 2 THEN 'mm'
                WHEN op IN ('bmm', 'baddbmm', 'matmul') AND len(sa) >= 2 AND len(sb) >= 2 THEN 'bmm'
                WHEN op = 'linear' AND len(sa) >= 1 AND len(sb) = 2 THEN 'linear'
                WHEN op IN ('mv', 'addmv') AND len(sa) = 2 AND len(sb) = 1 THEN 'mv'
                WHEN op IN ('_grouped_mm', '_scaled_grouped_mm') AND len(sa) = 2 AND len(sb) = 3 THEN 'g2'
                WHEN op IN ('_grouped_mm', '_scaled_grouped_mm') AND len(sa) = 3 AND len(sb) = 3 AND sa[1] = sb[1] THEN 'g3'
           END AS sub
    FROM mm1
),
mm3 AS (
    SELECT mm2.*,
           CASE sub WHEN 'mm' THEN sa[1] WHEN 'bmm' THEN sa[-2] WHEN 'linear' THEN tk_numel(sa[1:len(sa) - 1])
                    WHEN 'mv' THEN 1 WHEN 'g2' THEN sa[1] WHEN 'g3' THEN sa[2] END AS m,
           CASE sub WHEN 'mm' THEN sa[2] WHEN 'bmm' THEN sa[-1] WHEN 'linear' THEN sa[-1] WHEN 'mv' THEN sa[2]
                    WHEN 'g2' THEN sa[2] WHEN 'g3' THEN sa[3] END AS k,
           CASE sub WHEN 'mm' THEN sb[1] WHEN 'bmm' THEN sb[-2] WHEN 'linear' THEN sb[2] WHEN 'mv' THEN sb[1]
                    WHEN 'g2' THEN sb[2] WHEN 'g3' THEN sb[2] END AS k_b,
           CASE sub WHEN 'mm' THEN sb[2] WHEN 'bmm' THEN sb[-1] WHEN 'linear' THEN sb[1] WHEN 'mv' THEN sa[1]
                    WHEN 'g2' THEN sb[3] WHEN 'g3' THEN sb[3] END AS n,
           CASE sub WHEN 'bmm' THEN greatest(tk_numel(sa[1:len(sa) - 2]), tk_numel(sb[1:len(sb) - 2]))
                    WHEN 'g2' THEN sb[1] WHEN 'g3' THEN sa[1] ELSE 1 END AS g,
           tk_itemsize(ta) AS ia_b, tk_itemsize(tb) AS ib_b
    FROM mm2
),
mm AS (
    SELECT name, input_dims, input_types, meta_dtype,
           CASE WHEN sub IS NOT NULL AND k = k_b THEN 2.0 * (CASE WHEN sub = 'g2' THEN 1 ELSE g END) * m * n * k END AS flops,
           CASE WHEN sub IS NOT NULL AND k = k_b
                THEN tk_numel(sa) * ia_b + tk_numel(sb) * ib_b
                     + (CASE WHEN sub = 'g2' THEN m ELSE g * m END) * n
                       * (CASE WHEN op IN ('_scaled_mm', '_scaled_grouped_mm') THEN 2 WHEN op = '_int_mm' THEN 4 ELSE ia_b END)
                     + coalesce((ne[ibias] * sz[ibias]), 0) END AS bytes,
           CASE WHEN sub = 'mv' THEN tk_numel(sa) * ia_b
                WHEN sub = 'bmm' AND len(sb) > 2 THEN 0.0   -- a batched B is an activation (scores, KV), not a weight
                ELSE tk_numel(sb) * ib_b END AS weight_bytes,
           0.0 AS kv_bytes,
           CASE WHEN op LIKE '\_scaled%' ESCAPE '\' THEN 'fp8' WHEN op = '_int_mm' THEN 'int8' ELSE tk_compute(ta) END AS compute,
           'matmul' AS kind,
           CASE WHEN sa IS NULL OR sb IS NULL THEN name || ': operand shapes not recorded'
                WHEN sub IS NULL OR k <> k_b THEN name || ': shapes ' || sa::VARCHAR || ' x ' || sb::VARCHAR || ' not modelled'
                WHEN ia_b IS NULL OR ib_b IS NULL THEN name || ': no dtype recorded (set --meta dtype=...)'
                ELSE 'matmul:M=' || m::BIGINT || ',N=' || n || ',K=' || k || CASE WHEN g <> 1 THEN ',groups=' || g::BIGINT ELSE '' END
                     || CASE WHEN sub = 'g2' THEN ';all group weights counted (offsets not recorded)' ELSE '' END
                     || CASE WHEN op = '_scaled_mm' THEN ';output dtype taken as bf16' ELSE '' END
                     || CASE WHEN t IS NULL THEN ';dtype:run meta ' || fb ELSE '' END END AS evidence
    FROM mm3
),
-- attention -----------------------------------------------------------------------------------
at0 AS (
    SELECT fam.*,
           sh[1] AS q, sh[2] AS kk, sh[3] AS v,
           CASE WHEN name IN ('aten::_scaled_dot_product_flash_attention', 'aten::_flash_attention_forward',
                              'flash_attn::_flash_attn_forward') THEN NULL ELSE 4 END AS imask
    FROM fam WHERE fam IN ('attn_bhld', 'attn_blhd') AND d IS NOT NULL
),
at1 AS (
    SELECT at0.*,
           q[1] AS b,
           CASE fam WHEN 'attn_bhld' THEN q[2] ELSE q[3] END AS hq,
           CASE fam WHEN 'attn_bhld' THEN q[3] ELSE q[2] END AS lq,
           q[4] AS dq,
           CASE fam WHEN 'attn_bhld' THEN kk[2] ELSE kk[3] END AS hk,
           CASE fam WHEN 'attn_bhld' THEN kk[3] ELSE kk[2] END AS lk,
           v[4] AS dv,
           len(q) = 4 AND len(kk) = 4 AND len(v) = 4 AS ok4,
           sz[1] AS iq,
           sh[imask] AS mask
    FROM at0
),
at2 AS (
    SELECT at1.*,
           coalesce(ok4 AND CASE WHEN hk > 0 THEN hq % hk = 0 ELSE false END, false) AS ok,
           CASE WHEN lq > 1 AND lq <= lk THEN lq * (lk - lq) + lq * (lq + 1) // 2 ELSE lq * lk END AS pairs,
           (ne[1] * sz[1]) AS qb, (ne[2] * sz[2]) AS kb, (ne[3] * sz[3]) AS vb
    FROM at1
),
att AS (
    SELECT name, input_dims, input_types, meta_dtype,
           CASE WHEN ok THEN 2.0 * b * hq * pairs * (dq + dv) END AS flops,
           CASE WHEN ok THEN qb + kb + vb + 1.0 * b * hq * lq * dv * iq
                             + coalesce((ne[imask] * sz[imask]), 0) END AS bytes,
           0.0 AS weight_bytes,
           CASE WHEN ok THEN kb + vb END AS kv_bytes,
           tk_compute(ty[1]) AS compute,
           'attention' AS kind,
           CASE WHEN q IS NULL OR kk IS NULL OR v IS NULL THEN name || ': q/k/v shapes not recorded'
                WHEN NOT ok4 THEN name || ': q/k/v of rank ' || len(q) || ' (variable-length batch: lengths not recorded)'
                WHEN NOT ok THEN name || ': ' || hq || ' query heads over ' || hk || ' KV heads'
                WHEN iq IS NULL THEN name || ': no dtype recorded (set --meta dtype=...)'
                ELSE 'attention:B=' || b || ',Hq=' || hq || ',Hkv=' || hk || ',Lq=' || lq || ',Lk=' || lk || ',D=' || dq
                     || CASE WHEN lq > 1 AND lq <= lk THEN ';causal:assumed (is_causal is not recorded)'
                             WHEN lq = 1 THEN ';one query token' ELSE ';full' END
                     || CASE WHEN mask IS NOT NULL THEN ';mask tensor ' || mask::VARCHAR ELSE '' END
                     || CASE WHEN t IS NULL THEN ';dtype:run meta ' || fb ELSE '' END END AS evidence
    FROM at2
),
-- everything else: bytes from the tensors --------------------------------------------------------
ew0 AS (
    SELECT fam.*,
           list_filter(range(1, coalesce(len(d), 0) + 1), lambda i: sh[i] IS NOT NULL) AS idx
    FROM fam WHERE fam IN ('copy', 'cat', 'fill', 'index_select', 'embedding', 'gather', 'reduce', 'same', 'norm',
                           'elementwise') AND d IS NOT NULL
),
ew1 AS (
    SELECT ew0.*,
           list_transform(idx, lambda i: sh[i]) AS shapes,
           list_transform(idx, lambda i: sz[i]) AS sizes,
           list_transform(idx, lambda i: (ne[i] * sz[i])) AS tbytes
    FROM ew0
),
ew2 AS (
    SELECT ew1.*,
           len(idx) > 0 AS any_t,
           len(list_filter(sizes, lambda x: x IS NULL)) = 0 AS typed,
           tbytes[1] AS b0, tk_numel(shapes[1]) AS n0,
           list_max(list_transform(shapes, lambda s: len(s))) AS nd,
           list_sum(tbytes) AS in_bytes,
           -- result dtype: 0-dim tensors (recorded Python numbers) do not promote it
           coalesce(list_max(list_filter(list_transform(idx, lambda i: CASE WHEN len(sh[i]) > 0
                THEN sz[i] END), lambda x: x IS NOT NULL)), list_max(sizes)) AS out_item
    FROM ew1
),
ew3 AS (
    SELECT ew2.*,
           tk_numel(list_transform(range(1, coalesce(nd, 0) + 1), lambda j: list_max(list_transform(shapes,
               lambda s: CASE WHEN len(s) - nd + j >= 1 THEN s[len(s) - nd + j] ELSE 1 END))))
             AS out_numel
    FROM ew2
),
ew AS (
    SELECT name, input_dims, input_types, meta_dtype,
           CASE WHEN fam IN ('copy', 'cat', 'fill', 'index_select', 'embedding', 'gather') THEN 0.0
                WHEN fam IN ('reduce', 'same', 'norm') THEN n0
                ELSE CASE WHEN inplace THEN n0 ELSE out_numel END END AS flops_raw,
           CASE fam
             WHEN 'copy' THEN CASE WHEN base = 'copy' THEN (ne[1] * sz[1]) + (ne[2] * sz[2])
                                   ELSE 2 * b0 END
             -- Kineto records the tensor list as one nested argument, nsys as one argument per tensor
             WHEN 'cat' THEN 2.0 * tk_itemsize(fb) * CASE WHEN json_type(d[1], '$[0]') = 'ARRAY'
                    THEN list_sum(list_transform(TRY_CAST(d[1] AS BIGINT[][]), lambda s: tk_numel(s)))
                    ELSE list_sum(list_transform(shapes, lambda s: tk_numel(s))) END
             WHEN 'fill' THEN (ne[1] * sz[1])
             WHEN 'index_select' THEN 2.0 * ne[3] * tk_numel(sh[1][2:])
                                      * sz[1] + 8.0 * ne[3]
             WHEN 'embedding' THEN 2.0 * ne[2] * sh[1][-1]
                                   * sz[1] + 8.0 * ne[2]
             -- a gather's index is often a broadcast (stride-0) view: left out of the floor
             WHEN 'gather' THEN 2.0 * ne[3] * sz[1]
             WHEN 'reduce' THEN b0
             WHEN 'same' THEN 2 * b0
             WHEN 'norm' THEN b0 + in_bytes
             ELSE in_bytes + CASE WHEN inplace THEN b0
                                  ELSE out_numel * CASE WHEN base IN ('eq', 'ne', 'lt', 'le', 'gt', 'ge', 'logical_and',
                                       'logical_or', 'logical_not', 'isnan', 'isinf') THEN 1 ELSE out_item END END
           END AS bytes_raw,
           CASE WHEN fam = 'cat' THEN fb IS NOT NULL ELSE any_t AND typed END AS usable,
           CASE fam WHEN 'reduce' THEN 'reduce' WHEN 'norm' THEN 'norm'
                    WHEN 'elementwise' THEN 'elementwise' WHEN 'same' THEN 'elementwise' ELSE 'copy' END AS kind,
           CASE fam WHEN 'copy' THEN 'copy:read+write' WHEN 'cat' THEN 'cat:read+write' WHEN 'fill' THEN 'fill:write'
                    WHEN 'gather' THEN 'gather:selected elements read+written;index not counted'
                    WHEN 'reduce' THEN 'reduce:input read once (output not counted)'
                    WHEN 'norm' THEN 'norm:x read+written, params read'
                    WHEN 'same' THEN base || ':read+write'
                    WHEN 'elementwise' THEN 'elementwise:1 flop/element'
                    ELSE base || ':selected rows read+written' END
             || CASE WHEN t IS NULL OR fam = 'cat' THEN ';dtype:run meta ' || coalesce(fb, '?') ELSE '' END AS how,
           fam, any_t, fb, t
    FROM ew3
),
ew_out AS (
    SELECT name, input_dims, input_types, meta_dtype,
           CASE WHEN usable AND bytes_raw IS NOT NULL THEN flops_raw END AS flops,
           CASE WHEN usable THEN bytes_raw END AS bytes,
           0.0 AS weight_bytes, 0.0 AS kv_bytes, NULL::VARCHAR AS compute, kind,
           CASE WHEN fam = 'cat' AND fb IS NULL
                    THEN name || ': dtype of a tensor list is not recorded (set --meta dtype=...)'
                WHEN fam <> 'cat' AND NOT any_t THEN name || ': no tensor shapes recorded'
                WHEN NOT usable THEN name || ': no dtype recorded (set --meta dtype=...)'
                WHEN bytes_raw IS NULL THEN name || ': shapes not understood'
                ELSE how END AS evidence
    FROM ew
),
none AS (
    SELECT name, input_dims, input_types, meta_dtype, NULL::DOUBLE AS flops, NULL::DOUBLE AS bytes,
           NULL::DOUBLE AS weight_bytes, NULL::DOUBLE AS kv_bytes, NULL::VARCHAR AS compute, NULL::VARCHAR AS kind,
           CASE WHEN input_dims IS NULL
                THEN name || ': no input shapes recorded (record_shapes / emit_nvtx(record_shapes=True) off)'
                WHEN d IS NULL THEN name || ': input shapes not readable'
                ELSE name || ': no work model for this op' END AS evidence
    FROM fam WHERE fam IS NULL OR d IS NULL
)
SELECT * FROM mm
UNION ALL SELECT * FROM att
UNION ALL SELECT * FROM ew_out
UNION ALL SELECT * FROM none;

-- @view kernel_work
-- Work per kernel from its linked CPU op's recorded shapes and dtypes (tracekit.work: matmuls
-- 2*M*N*K, attention from q/k/v and KV length, elementwise/norm/copy from tensor bytes; bytes are
-- the floor: each input read once, each output written once). When one op launches several
-- kernels (split-K + reduce, cuBLAS + cast), the op's work is counted once, spread over its
-- kernels in proportion to their durations (`share`), so every kernel of the op shows the op's
-- rate and sums over kernels give the op's work exactly. Kernels with no op, no shapes or an op
-- without a work model have NULL flops/bytes and the reason in `evidence`.
--
-- @column run_id                INTEGER  the run
-- @column kernel_id             BIGINT   the kernel
-- @column short_name            VARCHAR  kernel short name
-- @column category              VARCHAR  kernel category (NULL: unclassified)
-- @column stage                 VARCHAR  summarization | generation | warmup | other
-- @column step                  INTEGER  forward pass (0 = summarization)
-- @column iteration             INTEGER  sequence
-- @column dur_ns                BIGINT   kernel duration
-- @column op_id                 BIGINT   the linked CPU op
-- @column op_name               VARCHAR  its name
-- @column kind                  VARCHAR  matmul | attention | elementwise | norm | reduce | copy (NULL: unknown)
-- @column compute               VARCHAR  the roof its FLOPs run against: bf16 | fp16 | fp8 | tf32 | fp32 ... (NULL: vector fp32)
-- @column share                 DOUBLE   fraction of the op's work given to this kernel (duration share)
-- @column flops                 DOUBLE   floating-point operations
-- @column bytes                 DOUBLE   fewest bytes the work must move through memory
-- @column weight_bytes          DOUBLE   of which linear-layer weights (matmul B operand)
-- @column kv_bytes              DOUBLE   of which attention keys and values (the KV cache)
-- @column hbm_bytes             DOUBLE   of which must cross HBM: weights + KV + the other bytes beyond the L2's size
-- @column intensity             DOUBLE   flops / bytes (FLOP per byte)
-- @column achieved_flops_per_s  DOUBLE   flops / dur
-- @column achieved_bytes_per_s  DOUBLE   bytes / dur
-- @column peak_flops_per_s      DOUBLE   the roof for its compute (run_peaks)
-- @column peak_bytes_per_s      DOUBLE   memory bandwidth roof
-- @column bound_ns              DOUBLE   time at the roof: max(flops / peak FLOP/s, hbm_bytes / bandwidth)
-- @column roof_share            DOUBLE   bound_ns / dur_ns: 1 = at the roof
-- @column limit_by              VARCHAR  'memory' | 'compute': which roof bounds it (bytes counted in full)
-- @column evidence              VARCHAR  how the work was counted, or why it is NULL
CREATE OR REPLACE TEMP VIEW kernel_work AS
WITH k AS (
    SELECT run_id, kernel_id, short_name, category, stage, step, iteration, dur_ns, op_id FROM kernels
),
op_kernels AS (
    SELECT run_id, op_id, count(*) AS n, sum(dur_ns) AS op_ns
    FROM k WHERE op_id IS NOT NULL GROUP BY run_id, op_id
),
run_dtype AS (
    SELECT r.run_id,
           (SELECT max(m.value) FROM run_meta m WHERE m.run_id = r.run_id AND m.key = 'dtype') AS meta_dtype
    FROM runs r
),
ops_used AS (
    SELECT o.run_id, o.op_id, o.name, o.input_dims, o.input_types, d.meta_dtype, ok.n, ok.op_ns
    FROM ops o
    JOIN op_kernels ok ON ok.run_id = o.run_id AND ok.op_id = o.op_id
    JOIN run_dtype d ON d.run_id = o.run_id
),
linked AS (
    SELECT k.*, u.name AS op_name, u.n AS op_kernels,
           CASE WHEN u.op_ns > 0 THEN k.dur_ns / u.op_ns ELSE 1.0 / u.n END AS share,
           w.flops AS w_flops, w.bytes AS w_bytes, w.weight_bytes AS w_weight, w.kv_bytes AS w_kv,
           w.compute, w.kind, w.evidence AS w_evidence
    FROM k
    JOIN ops_used u ON u.run_id = k.run_id AND u.op_id = k.op_id
    JOIN op_work w ON w.name = u.name AND w.input_dims IS NOT DISTINCT FROM u.input_dims
        AND w.input_types IS NOT DISTINCT FROM u.input_types AND w.meta_dtype IS NOT DISTINCT FROM u.meta_dtype
),
unlinked AS (
    SELECT k.*, NULL::VARCHAR AS op_name, NULL::BIGINT AS op_kernels, 1.0::DOUBLE AS share,
           NULL::DOUBLE AS w_flops, NULL::DOUBLE AS w_bytes, NULL::DOUBLE AS w_weight, NULL::DOUBLE AS w_kv,
           NULL::VARCHAR AS compute, NULL::VARCHAR AS kind,
           'kernel has no linked CPU op (no op records, or a CUDA-graph replay)' AS w_evidence
    FROM k
    WHERE NOT EXISTS (SELECT 1 FROM ops o WHERE o.run_id = k.run_id AND o.op_id = k.op_id)
),
allk AS (
    SELECT * FROM linked UNION ALL SELECT * FROM unlinked
),
rated AS (
    SELECT a.run_id, a.kernel_id, a.short_name, a.category, a.stage, a.step, a.iteration, a.dur_ns,
           a.op_id, a.op_name, a.kind, a.compute, a.share,
           a.w_flops * a.share AS flops, a.w_bytes * a.share AS bytes,
           a.w_weight * a.share AS weight_bytes, a.w_kv * a.share AS kv_bytes,
           CASE a.compute WHEN 'bf16' THEN p.bf16_flops_per_s WHEN 'fp16' THEN p.fp16_flops_per_s
                            WHEN 'fp8' THEN p.fp8_flops_per_s WHEN 'tf32' THEN p.tf32_flops_per_s
                            WHEN 'fp32' THEN p.fp32_flops_per_s
                            WHEN 'fp64' THEN NULL WHEN 'int8' THEN NULL
                            ELSE CASE WHEN a.kind IN ('matmul', 'attention') THEN NULL  -- dtype unknown
                                      ELSE p.fp32_flops_per_s END END AS peak_flops_per_s,
           p.bytes_per_s AS peak_bytes_per_s,
           -- Up to the last-level cache's size of a kernel's other (activation) bytes may be
           -- served from it or absorbed by it (reading what the kernel before wrote, writing what
           -- the next reads): only weights, KV and the rest are sure to cross HBM.
           (a.w_weight + a.w_kv) * a.share
             + greatest((a.w_bytes - a.w_weight - a.w_kv) * a.share - coalesce(p.l2_bytes, 0), 0)
             AS hbm_bytes,
           a.w_evidence || CASE WHEN a.op_kernels > 1
                                THEN ';op work split over its ' || a.op_kernels || ' kernels by duration'
                                ELSE '' END AS evidence
    FROM allk a
    JOIN run_peaks p ON p.run_id = a.run_id
)
SELECT run_id, kernel_id, short_name, category, stage, step, iteration, dur_ns, op_id, op_name, kind,
       compute, share, flops, bytes, weight_bytes, kv_bytes, hbm_bytes,
       flops / nullif(bytes, 0) AS intensity,
       flops / nullif(dur_ns * 1e-9, 0) AS achieved_flops_per_s,
       bytes / nullif(dur_ns * 1e-9, 0) AS achieved_bytes_per_s,
       peak_flops_per_s, peak_bytes_per_s,
       CASE WHEN bytes IS NOT NULL AND peak_bytes_per_s IS NOT NULL
            THEN greatest(flops / peak_flops_per_s, hbm_bytes / peak_bytes_per_s) * 1e9 END AS bound_ns,
       CASE WHEN bytes IS NOT NULL AND peak_bytes_per_s IS NOT NULL
            THEN greatest(flops / peak_flops_per_s, hbm_bytes / peak_bytes_per_s) * 1e9 / nullif(dur_ns, 0)
            END AS roof_share,
       CASE WHEN bytes IS NULL OR peak_bytes_per_s IS NULL THEN NULL
            WHEN coalesce(flops / peak_flops_per_s, 0) > bytes / peak_bytes_per_s THEN 'compute'
            ELSE 'memory' END AS limit_by,
       evidence
FROM rated;

-- @view roofline
-- Per run, stage and category: time, work, achieved and roofline-bound throughput, and the time
-- the same work would take at the roof (bound_ns, each kernel at its own roof, summed). Work sums
-- and rates are over the kernels whose bytes are known (n_with_work, time_with_work_ns); the rest
-- are counted in n_kernels / time_ns only, so a rate is never diluted by time without work.
--
-- @column run_id                INTEGER  the run
-- @column stage                 VARCHAR  summarization | generation | warmup | other
-- @column category              VARCHAR  kernel category, or 'Unclassified'
-- @column n_kernels             BIGINT   kernels
-- @column time_ns               BIGINT   their summed duration
-- @column n_with_work           BIGINT   kernels whose bytes are known
-- @column time_with_work_ns     BIGINT   their summed duration
-- @column flops                 DOUBLE   summed FLOPs
-- @column bytes                 DOUBLE   summed bytes
-- @column weight_bytes          DOUBLE   of which linear-layer weights
-- @column kv_bytes              DOUBLE   of which attention keys/values
-- @column hbm_bytes             DOUBLE   of which must cross HBM (see kernel_work)
-- @column intensity             DOUBLE   flops / bytes
-- @column achieved_flops_per_s  DOUBLE   flops / time_with_work
-- @column achieved_bytes_per_s  DOUBLE   bytes / time_with_work
-- @column peak_flops_per_s      DOUBLE   the FLOP roof (for mixed dtypes: flops / sum(flops / each kernel's roof))
-- @column peak_bytes_per_s      DOUBLE   the memory roof
-- @column bound_ns              DOUBLE   time at the roof
-- @column bound_flops_per_s     DOUBLE   flops / bound_ns: the roofline-bound FLOP/s of this work
-- @column bound_bytes_per_s     DOUBLE   bytes / bound_ns
-- @column roof_share            DOUBLE   bound_ns / time_with_work_ns: 1 = at the roof
-- @column limit_by              VARCHAR  'memory' | 'compute': the roof that bounds most of bound_ns
CREATE OR REPLACE TEMP VIEW roofline AS
WITH g AS (
    SELECT run_id, stage, coalesce(category, 'Unclassified') AS category,
           count(*) AS n_kernels, sum(dur_ns)::BIGINT AS time_ns,
           count(bytes) AS n_with_work,
           coalesce(sum(dur_ns) FILTER (WHERE bytes IS NOT NULL), 0)::BIGINT AS time_with_work_ns,
           sum(flops) FILTER (WHERE bytes IS NOT NULL) AS flops,
           sum(bytes) AS bytes,
           sum(weight_bytes) AS weight_bytes,
           sum(kv_bytes) AS kv_bytes,
           sum(hbm_bytes) AS hbm_bytes,
           sum(flops / peak_flops_per_s) FILTER (WHERE bytes IS NOT NULL AND flops > 0) AS flop_time_s,
           max(peak_bytes_per_s) AS peak_bytes_per_s,
           sum(bound_ns) AS bound_ns,
           sum(bound_ns) FILTER (WHERE limit_by = 'memory') AS memory_bound_ns,
           sum(bound_ns) FILTER (WHERE limit_by = 'compute') AS compute_bound_ns
    FROM kernel_work
    GROUP BY run_id, stage, coalesce(category, 'Unclassified')
)
SELECT run_id, stage, category, n_kernels, time_ns, n_with_work, time_with_work_ns,
       flops, bytes, weight_bytes, kv_bytes, hbm_bytes,
       flops / nullif(bytes, 0) AS intensity,
       flops / nullif(time_with_work_ns * 1e-9, 0) AS achieved_flops_per_s,
       bytes / nullif(time_with_work_ns * 1e-9, 0) AS achieved_bytes_per_s,
       flops / nullif(flop_time_s, 0) AS peak_flops_per_s,
       peak_bytes_per_s,
       bound_ns,
       flops / nullif(bound_ns * 1e-9, 0) AS bound_flops_per_s,
       bytes / nullif(bound_ns * 1e-9, 0) AS bound_bytes_per_s,
       bound_ns / nullif(time_with_work_ns, 0) AS roof_share,
       CASE WHEN bound_ns IS NULL THEN NULL
            WHEN coalesce(compute_bound_ns, 0) > coalesce(memory_bound_ns, 0) THEN 'compute'
            ELSE 'memory' END AS limit_by
FROM g
ORDER BY run_id, stage, time_ns DESC;

-- @view decode_ideal
-- Per generation pass: the bytes one decode pass must read, all linear-layer weights once plus the
-- keys and values its attention reads (the KV cache, growing with each step), over the memory
-- bandwidth, against the measured pass: kernel time, GPU span and host time (step_totals).
-- NULL bytes where a matmul or attention kernel of the pass has no work count (no shapes).
--
-- @column run_id             INTEGER  the run
-- @column iteration          INTEGER  sequence
-- @column step               INTEGER  generation pass (1..)
-- @column weight_bytes       DOUBLE   linear-layer weights read by the pass
-- @column kv_bytes           DOUBLE   keys and values its attention reads
-- @column ideal_bytes        DOUBLE   weight_bytes + kv_bytes
-- @column peak_bytes_per_s   DOUBLE   the memory roof
-- @column ideal_ns           DOUBLE   ideal_bytes / peak_bytes_per_s: the pass at the HBM limit
-- @column time_ns            BIGINT   the pass's kernel time (summed)
-- @column gpu_span_ns        BIGINT   first kernel start to last kernel end of the pass
-- @column host_ns            BIGINT   the pass's stage-marker extent on the host (NULL when passes were inferred)
-- @column kernel_hbm_share   DOUBLE   ideal_ns / time_ns: how close the kernels come to the limit
-- @column span_hbm_share     DOUBLE   ideal_ns / gpu_span_ns: the same, gaps between kernels included
-- @column host_hbm_share     DOUBLE   ideal_ns / host_ns: what a user waiting on the pass sees
-- @column n_missing          BIGINT   matmul / attention kernels of the pass without a work count
CREATE OR REPLACE TEMP VIEW decode_ideal AS
WITH s AS (
    SELECT run_id, iteration, step,
           sum(weight_bytes) AS weight_bytes, sum(kv_bytes) AS kv_bytes,
           max(peak_bytes_per_s) AS peak_bytes_per_s,
           count(*) FILTER (WHERE (category IN ('GEMM', 'GEMV', 'ATTN') OR kind IN ('matmul', 'attention'))
                                  AND bytes IS NULL) AS n_missing
    FROM kernel_work
    WHERE stage = 'generation' AND step IS NOT NULL
    GROUP BY run_id, iteration, step
),
b AS (
    SELECT s.*, CASE WHEN n_missing = 0 THEN weight_bytes + kv_bytes END AS ideal_bytes
    FROM s
),
-- step_totals has a row per pass and process/GPU partition: one pass's figures over its partitions.
t AS (
    SELECT run_id, iteration, step, sum(time_ns)::BIGINT AS time_ns, max(gpu_span_ns) AS gpu_span_ns,
           max(host_ns) AS host_ns
    FROM step_totals
    GROUP BY run_id, iteration, step
)
SELECT b.run_id, b.iteration, b.step,
       CASE WHEN b.n_missing = 0 THEN b.weight_bytes END AS weight_bytes,
       CASE WHEN b.n_missing = 0 THEN b.kv_bytes END AS kv_bytes,
       b.ideal_bytes, b.peak_bytes_per_s,
       b.ideal_bytes / b.peak_bytes_per_s * 1e9 AS ideal_ns,
       t.time_ns, t.gpu_span_ns, t.host_ns,
       b.ideal_bytes / b.peak_bytes_per_s * 1e9 / nullif(t.time_ns, 0) AS kernel_hbm_share,
       b.ideal_bytes / b.peak_bytes_per_s * 1e9 / nullif(t.gpu_span_ns, 0) AS span_hbm_share,
       b.ideal_bytes / b.peak_bytes_per_s * 1e9 / nullif(t.host_ns, 0) AS host_hbm_share,
       b.n_missing
FROM b
JOIN t ON t.run_id = b.run_id AND t.iteration = b.iteration AND t.step = b.step
ORDER BY b.run_id, b.iteration, b.step;

-- @view memop_work
-- Copies and memsets the CUDA runtime ran outside kernels (memops), with their bytes and the
-- memory roof: a device-to-device copy reads and writes its bytes in HBM (2 x bytes), a memset
-- writes them; copies to or from the host cross the host link, for which the peaks table has no
-- roof (NULL). The stage is that of the forward pass whose marker encloses the copy's launch on
-- the CPU (its GPU start when passes were inferred), 'other' outside every pass.
--
-- @column run_id                INTEGER  the run
-- @column memop_id              BIGINT   the memop
-- @column kind                  VARCHAR  memcpy | memset
-- @column copy_kind             VARCHAR  HtoD, DtoH, DtoD, ... as the trace names it
-- @column stage                 VARCHAR  summarization | generation | warmup | other
-- @column step                  INTEGER  forward pass (NULL outside passes)
-- @column dur_ns                BIGINT   duration
-- @column bytes                 DOUBLE   bytes moved through device memory (DtoD: read + written)
-- @column achieved_bytes_per_s  DOUBLE   bytes / dur
-- @column peak_bytes_per_s      DOUBLE   the HBM roof (NULL for host copies)
-- @column roof_share            DOUBLE   (bytes / peak) / dur
CREATE OR REPLACE TEMP VIEW memop_work AS
WITH m AS (
    SELECT m.run_id, m.memop_id, m.kind, m.copy_kind, m.dur_ns, m.bytes, m.start_ns,
           (SELECT l.start_ns FROM launches l WHERE l.run_id = m.run_id AND l.launch_id = m.launch_id) AS launch_ns,
           CASE WHEN m.kind = 'memset' THEN 'device'
                WHEN lower(replace(coalesce(m.copy_kind, ''), '-', '')) IN ('dtod', 'devicetodevice') THEN 'dtod'
                ELSE 'host' END AS path
    FROM memops m
),
staged AS (
    SELECT m.*,
           (SELECT arg_max(p.stage, p.start_ns) FROM passes p WHERE p.run_id = m.run_id
                AND CASE WHEN p.source = 'inferred' THEN m.start_ns ELSE m.launch_ns END BETWEEN p.start_ns AND p.end_ns)
             AS pass_stage,
           (SELECT arg_max(p.step, p.start_ns) FROM passes p WHERE p.run_id = m.run_id
                AND CASE WHEN p.source = 'inferred' THEN m.start_ns ELSE m.launch_ns END BETWEEN p.start_ns AND p.end_ns)
             AS pass_step
    FROM m
)
SELECT s.run_id, s.memop_id, s.kind, s.copy_kind, coalesce(s.pass_stage, 'other') AS stage, s.pass_step AS step,
       s.dur_ns,
       CASE s.path WHEN 'dtod' THEN 2.0 * s.bytes ELSE s.bytes::DOUBLE END AS bytes,
       CASE s.path WHEN 'dtod' THEN 2.0 * s.bytes ELSE s.bytes::DOUBLE END / nullif(s.dur_ns * 1e-9, 0)
           AS achieved_bytes_per_s,
       CASE WHEN s.path <> 'host' THEN p.bytes_per_s END AS peak_bytes_per_s,
       CASE WHEN s.path <> 'host'
            THEN CASE s.path WHEN 'dtod' THEN 2.0 * s.bytes ELSE s.bytes::DOUBLE END / p.bytes_per_s * 1e9
                 / nullif(s.dur_ns, 0) END AS roof_share
FROM staged s
JOIN run_peaks p ON p.run_id = s.run_id;
