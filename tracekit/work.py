"""How much work a CPU operator asks of the GPU: FLOPs and the fewest bytes it must move.

Read from what the trace recorded of the operator: its name, input shapes (`ops.input_dims`) and
dtypes (`ops.input_types`; nsys `emit_nvtx` ranges record shapes only, so there the run's `dtype`
metadata stands in, and the evidence says so). The byte count is the floor a roofline needs:
every input read once, every output written once (a matmul's weight once, however the kernel
tiles it), so an achieved bandwidth computed from it can only understate what the kernel moved.

- matmuls (`mm`, `addmm`, `bmm`, `baddbmm`, `linear`, `matmul`, `mv`, `_grouped_mm`,
  `_scaled_mm`): FLOPs = 2·M·N·K (summed over batch or groups); bytes = A + B + C (+ bias);
  `weight_bytes` = the B operand of a linear-layer product (the weights a decode pass streams).
- attention (the SDPA family, flash / memory-efficient / cuDNN forward ops): FLOPs =
  4·B·Hq·D·(query-key pairs), pairs = Lq·Lk, or under the causal mask Lq·(Lk − Lq) + Lq·(Lq+1)/2;
  bytes = q + k + v + out; `kv_bytes` = k + v (the KV cache the pass attends to). The traces
  do not keep `is_causal` (a scalar argument), so a query longer than one token is taken as
  causal, as every decoder LLM's prefill is; the evidence says `causal:assumed`.
- elementwise, activations, norms, softmax, reductions, copies, concatenation, embedding and
  gather: bytes from their tensors (out-of-place output = broadcast of the inputs); 1 FLOP per
  output element (0 for pure data movement), a convention that only places these memory-bound
  kernels on a roofline chart.

Anything else returns no work and a reason: a number is given only where the shapes say it.
"""

from __future__ import annotations

import json
import math
from functools import lru_cache
from typing import Any

# Kineto's `Input type` names -> bytes per element.
DTYPE_BYTES = {
    "c10::BFloat16": 2, "c10::Half": 2, "float": 4, "double": 8, "long int": 8, "int": 4,
    "short int": 2, "signed char": 1, "unsigned char": 1, "bool": 1,
    "c10::Float8_e4m3fn": 1, "c10::Float8_e5m2": 1, "c10::Float8_e4m3fnuz": 1, "c10::Float8_e5m2fnuz": 1,
    "c10::Float8_e8m0fnu": 1, "c10::complex<float>": 8, "c10::complex<double>": 16,
}
# Which tensor-core peak a matmul in that dtype runs against.
_COMPUTE = {
    "c10::BFloat16": "bf16", "c10::Half": "fp16", "float": "tf32", "double": "fp64",
    "c10::Float8_e4m3fn": "fp8", "c10::Float8_e5m2": "fp8", "c10::Float8_e4m3fnuz": "fp8",
    "c10::Float8_e5m2fnuz": "fp8",
}
# Run metadata `dtype` spellings (capture manifests, --meta) -> a Kineto type name.
META_DTYPE = {
    "bfloat16": "c10::BFloat16", "bf16": "c10::BFloat16", "torch.bfloat16": "c10::BFloat16",
    "float16": "c10::Half", "fp16": "c10::Half", "half": "c10::Half", "torch.float16": "c10::Half",
    "float32": "float", "fp32": "float", "float": "float", "torch.float32": "float",
    "float8_e4m3fn": "c10::Float8_e4m3fn", "fp8": "c10::Float8_e4m3fn",
}
_NOT_TENSOR = {"Scalar", "ScalarList", "TensorList", "", "GenericList", "None", "Device", "Layout", "str"}

UDF_NAME = "tk_op_work"
UDF_FIELDS = {"flops": "DOUBLE", "bytes": "DOUBLE", "weight_bytes": "DOUBLE", "kv_bytes": "DOUBLE",
              "compute": "VARCHAR", "kind": "VARCHAR", "evidence": "VARCHAR"}

_MATMUL = {"aten::mm", "aten::addmm", "aten::_addmm_activation", "aten::bmm", "aten::baddbmm",
           "aten::linear", "aten::matmul", "aten::mv", "aten::addmv", "aten::_grouped_mm",
           "aten::_scaled_mm", "aten::_scaled_grouped_mm", "aten::_int_mm"}
# Attention ops: name -> (layout of q/k/v, index of the mask / bias argument or None).
_ATTENTION = {
    "aten::scaled_dot_product_attention": ("bhld", 3),
    "aten::_scaled_dot_product_flash_attention": ("bhld", None),
    "aten::_scaled_dot_product_efficient_attention": ("bhld", 3),
    "aten::_scaled_dot_product_cudnn_attention": ("bhld", 3),
    "aten::_scaled_dot_product_fused_attention_overrideable": ("bhld", 3),
    "aten::_cudnn_attention_forward": ("bhld", 3),
    "aten::_flash_attention_forward": ("blhd", None),
    "aten::_efficient_attention_forward": ("blhd", 3),
    "flash_attn::_flash_attn_forward": ("blhd", None),
}
_UNARY_FLOP = {
    "abs", "neg", "exp", "log", "sqrt", "rsqrt", "reciprocal", "sin", "cos", "tanh", "sigmoid", "relu",
    "silu", "gelu", "erf", "pow", "add", "sub", "mul", "div", "floor_divide", "remainder", "clamp",
    "clamp_min", "clamp_max", "maximum", "minimum", "where", "masked_fill", "lerp", "addcmul", "addcdiv",
    "eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not", "bitwise_and",
    "bitwise_or", "bitwise_not", "sign", "square", "hardtanh", "leaky_relu", "mish", "softplus", "elu",
    "gelu_backward", "silu_backward", "fmod", "round", "floor", "ceil", "trunc", "exp2", "log1p", "expm1",
    "isnan", "isinf", "nan_to_num", "sgn",
}
_COMPARE = {"eq", "ne", "lt", "le", "gt", "ge", "logical_and", "logical_or", "logical_not", "isnan", "isinf"}
_REDUCE = {"mean", "sum", "amax", "amin", "max", "min", "argmax", "argmin", "var", "std", "norm",
           "linalg_vector_norm", "prod", "all", "any", "var_mean", "std_mean", "logsumexp"}
_SAME_SHAPE = {"_softmax", "softmax", "_log_softmax", "log_softmax", "cumsum", "cumprod"}
_COPY = {"copy_", "clone", "contiguous", "_to_copy", "to"}


class _Args:
    """The recorded arguments of one op: shape and dtype of each, and which are tensors."""

    def __init__(self, dims: list, types: list | None, fallback: str | None) -> None:
        self.dims = dims
        self.types = types
        self.fallback = fallback
        self.used_fallback = False

    def __len__(self) -> int:
        return len(self.dims)

    def shape(self, i: int) -> list[int] | None:
        if i >= len(self.dims):
            return None
        d = self.dims[i]
        if not isinstance(d, list) or any(not isinstance(x, int) or isinstance(x, bool) for x in d):
            return None
        t = self.types[i] if self.types is not None and i < len(self.types) else None
        if self.types is not None and (t in _NOT_TENSOR or t is None):
            return None
        if self.types is None and not d:
            return None  # nsys: a [] may be a scalar; a 0-dim tensor is one element anyway
        return d

    def type_name(self, i: int) -> str | None:
        if self.types is not None:
            t = self.types[i] if i < len(self.types) else None
            return None if t in _NOT_TENSOR else t
        if self.fallback is not None:
            self.used_fallback = True
        return self.fallback

    def itemsize(self, i: int) -> int | None:
        t = self.type_name(i)
        return DTYPE_BYTES.get(t) if t else None

    def nbytes(self, i: int) -> float | None:
        s, b = self.shape(i), self.itemsize(i)
        return None if s is None or b is None else float(math.prod(s) * b)

    def tensors(self) -> list[int]:
        return [i for i in range(len(self.dims)) if self.shape(i) is not None]

    def tensor_list(self, i: int) -> list[list[int]] | None:
        if i >= len(self.dims):
            return None
        d = self.dims[i]
        if isinstance(d, list) and d and all(isinstance(x, list) for x in d):
            return d
        return None


def _result(flops, nbytes, kind, evidence, compute=None, weight=0.0, kv=0.0) -> dict[str, Any]:
    return {"flops": None if flops is None else float(flops), "bytes": None if nbytes is None else float(nbytes),
            "weight_bytes": weight if nbytes is not None else None, "kv_bytes": kv if nbytes is not None else None,
            "compute": compute, "kind": kind, "evidence": evidence}


def _none(reason: str, kind: str | None = None) -> dict[str, Any]:
    return {"flops": None, "bytes": None, "weight_bytes": None, "kv_bytes": None, "compute": None,
            "kind": kind, "evidence": reason}


def _broadcast(shapes: list[list[int]]) -> list[int] | None:
    n = max((len(s) for s in shapes), default=0)
    out = []
    for i in range(1, n + 1):
        dims = {s[-i] for s in shapes if len(s) >= i} - {1}
        if len(dims) > 1:
            return None
        out.append(dims.pop() if dims else 1)
    return out[::-1]


def _dtype_note(a: _Args) -> str:
    return f";dtype:run meta {a.fallback}" if a.used_fallback else ""


def _matmul(name: str, a: _Args) -> dict[str, Any]:
    op = name.removeprefix("aten::")
    bias = None
    weight_is_b = op in {"mm", "addmm", "_addmm_activation", "linear", "matmul", "mv", "addmv",
                         "_grouped_mm", "_scaled_mm", "_scaled_grouped_mm", "_int_mm"}
    if op in {"addmm", "_addmm_activation", "baddbmm", "addmv"}:
        bias, ia, ib = 0, 1, 2
    else:
        ia, ib = 0, 1
    sa, sb = a.shape(ia), a.shape(ib)
    if sa is None or sb is None:
        return _none(f"{name}: operand shapes not recorded", "matmul")
    groups = 1
    if op == "linear":  # x [..., K], w [N, K], bias [N]
        if len(sb) != 2 or sa[-1] != sb[1]:
            return _none(f"{name}: shapes {sa} x {sb} do not multiply", "matmul")
        m, k, n = math.prod(sa[:-1]), sa[-1], sb[0]
        bias = 2 if a.shape(2) is not None else None
    elif op in {"mv", "addmv"}:  # mat [N, K] @ vec [K]
        if len(sa) != 2 or len(sb) != 1 or sa[1] != sb[0]:
            return _none(f"{name}: shapes {sa} x {sb} do not multiply", "matmul")
        m, k, n = 1, sa[1], sa[0]
        weight_is_b = False  # the matrix is A here
    elif op in {"_grouped_mm", "_scaled_grouped_mm"}:
        if len(sa) == 2 and len(sb) == 3 and sa[1] == sb[1]:  # tokens [T, K] x experts [G, K, N]
            m, k, n, groups = sa[0], sa[1], sb[2], sb[0]
        elif len(sa) == 3 and len(sb) == 3 and sa[0] == sb[0] and sa[2] == sb[1]:
            groups, m, k, n = sa[0], sa[1], sa[2], sb[2]
        else:
            return _none(f"{name}: grouped shapes {sa} x {sb} not modelled", "matmul")
    else:
        if len(sa) < 2 or len(sb) < 2 or sa[-1] != sb[-2]:
            return _none(f"{name}: shapes {sa} x {sb} do not multiply", "matmul")
        batch_a, batch_b = sa[:-2], sb[:-2]
        bshape = _broadcast([batch_a, batch_b])
        if bshape is None:
            return _none(f"{name}: batch dims {batch_a} / {batch_b} do not broadcast", "matmul")
        groups = math.prod(bshape) if bshape else 1
        m, k, n = sa[-2], sa[-1], sb[-1]
        if batch_b:  # a batched B is an activation (attention scores, KV), not a weight
            weight_is_b = False
    ta = a.type_name(ia)
    sa_b, sb_b = a.itemsize(ia), a.itemsize(ib)
    flops = 2.0 * groups * m * n * k if op not in {"_grouped_mm", "_scaled_grouped_mm"} or len(sa) == 3 \
        else 2.0 * m * n * k  # 2-D tokens: each token meets one group's matrix
    compute = _COMPUTE.get(ta or "")
    if op in {"_scaled_mm", "_scaled_grouped_mm"}:
        compute = "fp8"
    if op == "_int_mm":
        compute = "int8"
    if sa_b is None or sb_b is None:
        return _result(flops, None, "matmul", f"{name}: no dtype recorded (set --meta dtype=...)", compute)
    a_bytes = float(math.prod(sa) * sa_b)
    b_bytes = float(math.prod(sb) * sb_b)
    out_item = 2 if op in {"_scaled_mm", "_scaled_grouped_mm"} else (4 if op == "_int_mm" else sa_b)
    out_rows = m if op in {"_grouped_mm", "_scaled_grouped_mm"} and len(sa) == 2 else groups * m
    c_bytes = float(out_rows * n * out_item)
    extra = a.nbytes(bias) if bias is not None and a.shape(bias) is not None else 0.0
    nbytes = a_bytes + b_bytes + c_bytes + (extra or 0.0)
    weight = (b_bytes if weight_is_b else (a_bytes if op in {"mv", "addmv"} else 0.0))
    ev = f"matmul:M={m},N={n},K={k}" + (f",groups={groups}" if groups != 1 else "")
    if op in {"_grouped_mm", "_scaled_grouped_mm"} and len(sa) == 2:
        ev += ";all group weights counted (offsets not recorded)"
    if op == "_scaled_mm":
        ev += ";output dtype taken as bf16"
    return _result(flops, nbytes, "matmul", ev + _dtype_note(a), compute, weight=weight)


def _attention(name: str, a: _Args) -> dict[str, Any]:
    layout, mask_at = _ATTENTION[name]
    q, k, v = a.shape(0), a.shape(1), a.shape(2)
    if q is None or k is None or v is None:
        return _none(f"{name}: q/k/v shapes not recorded", "attention")
    if len(q) != 4 or len(k) != 4 or len(v) != 4:
        return _none(f"{name}: q/k/v of rank {len(q)} (variable-length batch: lengths not recorded)", "attention")
    if layout == "bhld":
        (b, hq, lq, d), (_, hk, lk, _), dv = q, k, v[3]
    else:
        (b, lq, hq, d), (_, lk, hk, _), dv = q, k, v[3]
    if hk == 0 or hq % hk:
        return _none(f"{name}: {hq} query heads over {hk} KV heads", "attention")
    mask = a.shape(mask_at) if mask_at is not None else None
    if lq > 1 and lq <= lk:
        pairs = lq * (lk - lq) + lq * (lq + 1) // 2
        note = "causal:assumed (is_causal is not recorded)"
    else:
        pairs = lq * lk
        note = "one query token: no mask effect" if lq == 1 else "full"
    if mask is not None:
        note += f";mask tensor {mask}"
    flops = 2.0 * b * hq * pairs * (d + dv)
    sizes = [a.nbytes(i) for i in (0, 1, 2)]
    item = a.itemsize(0)
    if any(s is None for s in sizes) or item is None:
        return _result(flops, None, "attention", f"{name}: no dtype recorded (set --meta dtype=...)",
                       _COMPUTE.get(a.type_name(0) or ""))
    out = float(b * hq * lq * dv * item)
    mask_b = a.nbytes(mask_at) if mask is not None else 0.0
    nbytes = sum(sizes) + out + (mask_b or 0.0)
    ev = f"attention:B={b},Hq={hq},Hkv={hk},Lq={lq},Lk={lk},D={d};{note}"
    return _result(flops, nbytes, "attention", ev + _dtype_note(a), _COMPUTE.get(a.type_name(0) or ""),
                   kv=sizes[1] + sizes[2])


def _elementwise(name: str, a: _Args) -> dict[str, Any] | None:
    op = name.removeprefix("aten::")
    inplace = op.endswith("_") and not op.startswith("_")
    base = op[:-1] if inplace else op
    ts = a.tensors()
    if base in _COPY:
        if not ts:
            return _none(f"{name}: no tensor shapes recorded", "copy")
        if op == "copy_":  # dst, src
            if a.shape(0) is None or a.shape(1) is None:
                return _none(f"{name}: shapes not recorded", "copy")
            nb = [a.nbytes(0), a.nbytes(1)]
        else:  # read the input, write a copy of the same size (dtype of the output not recorded)
            nb = [a.nbytes(ts[0]), a.nbytes(ts[0])]
        if any(x is None for x in nb):
            return _none(f"{name}: no dtype recorded (set --meta dtype=...)", "copy")
        return _result(0.0, sum(nb), "copy", "copy:read+write" + _dtype_note(a))
    if base == "cat":
        lst = a.tensor_list(0)
        if lst is None:
            return _none(f"{name}: tensor list shapes not recorded", "copy")
        # Neither Kineto (type 'TensorList') nor nsys records a tensor list's dtype: the run's
        # dtype metadata stands in, or there is no byte count.
        item = DTYPE_BYTES.get(a.fallback or "")
        if item is None:
            return _none(f"{name}: dtype of a tensor list is not recorded (set --meta dtype=...)", "copy")
        a.used_fallback = True
        return _result(0.0, 2.0 * sum(math.prod(s) for s in lst) * item, "copy", "cat:read+write" + _dtype_note(a))
    if base in ("fill", "zero"):
        if a.nbytes(0) is None:
            return _none(f"{name}: shape or dtype not recorded", "copy")
        return _result(0.0, a.nbytes(0), "copy", "fill:write")
    if base in ("index_select", "embedding", "gather"):
        return _gather(name, base, a)
    if base in _REDUCE:
        if not ts or a.nbytes(ts[0]) is None:
            return _none(f"{name}: shape or dtype not recorded", "reduce")
        n = math.prod(a.shape(ts[0]))
        return _result(float(n), a.nbytes(ts[0]), "reduce", "reduce:input read once (output not counted)"
                       + _dtype_note(a))
    if base in _SAME_SHAPE:
        if not ts or a.nbytes(ts[0]) is None:
            return _none(f"{name}: shape or dtype not recorded", "elementwise")
        n = math.prod(a.shape(ts[0]))
        return _result(float(n), 2.0 * a.nbytes(ts[0]), "elementwise", f"{base}:read+write" + _dtype_note(a))
    if base in ("rms_norm", "_fused_rms_norm", "native_layer_norm", "layer_norm", "group_norm",
                "native_group_norm"):
        if not ts or a.nbytes(ts[0]) is None:
            return _none(f"{name}: shape or dtype not recorded", "norm")
        n = math.prod(a.shape(ts[0]))
        rest = sum(a.nbytes(i) or 0.0 for i in ts[1:])
        return _result(float(n), 2.0 * a.nbytes(ts[0]) + rest, "norm", "norm:x read+written, params read"
                       + _dtype_note(a))
    if base in _UNARY_FLOP:
        shapes = [a.shape(i) for i in ts]
        if not shapes:
            return _none(f"{name}: no tensor shapes recorded", "elementwise")
        if any(a.itemsize(i) is None for i in ts):
            return _none(f"{name}: no dtype recorded (set --meta dtype=...)", "elementwise")
        out_shape = shapes[0] if inplace else _broadcast(shapes)
        if out_shape is None:
            return _none(f"{name}: shapes {shapes} do not broadcast", "elementwise")
        n = math.prod(out_shape)
        read = sum(a.nbytes(i) for i in ts)
        # 0-dim tensors (recorded Python numbers) do not promote the result's dtype.
        sized = [i for i in ts if a.shape(i)] or ts
        out_item = a.itemsize(ts[0]) if inplace else (1 if base in _COMPARE else max(a.itemsize(i) for i in sized))
        return _result(float(n), read + n * out_item, "elementwise", "elementwise:1 flop/element"
                       + _dtype_note(a))
    return None


def _gather(name: str, base: str, a: _Args) -> dict[str, Any]:
    # Only the rows the index selects are read, not the whole table.
    if base == "index_select":  # table [V, H], dim, index [n]
        t, idx = a.shape(0), a.shape(2)
        if t is None or idx is None or a.itemsize(0) is None:
            return _none(f"{name}: shapes or dtype not recorded", "copy")
        n = math.prod(idx) * math.prod(t[1:])
        item = a.itemsize(0)
    elif base == "embedding":  # weight [V, H], indices [...]
        t, idx = a.shape(0), a.shape(1)
        if t is None or idx is None or a.itemsize(0) is None:
            return _none(f"{name}: shapes or dtype not recorded", "copy")
        n = math.prod(idx) * t[-1]
        item = a.itemsize(0)
    else:  # gather(src, dim, index): output has the index's shape
        idx = a.shape(2)
        if idx is None or a.itemsize(0) is None:
            return _none(f"{name}: shapes or dtype not recorded", "copy")
        n, item = math.prod(idx), a.itemsize(0)
    # The index of a gather is often a broadcast (stride-0) view, which the trace cannot tell
    # from a materialised one: its bytes are left out of the floor.
    idx_bytes = float(math.prod(idx) * 8) if base != "gather" else 0.0
    return _result(0.0, 2.0 * n * item + idx_bytes, "copy", f"{base}:selected rows read+written"
                   + (";index not counted" if base == "gather" else "") + _dtype_note(a))


@lru_cache(maxsize=65536)
def op_work(name: str | None, input_dims: str | None, input_types: str | None,
            fallback_dtype: str | None = None) -> dict[str, Any]:
    """The work of one op as a dict of UDF_FIELDS; flops/bytes None (and why in `evidence`)
    where the recorded shapes and dtypes do not say."""
    if name is None:
        return _none("kernel has no linked CPU op (no op records, or a CUDA-graph replay)")
    if input_dims is None:
        return _none(f"{name}: no input shapes recorded (record_shapes / emit_nvtx(record_shapes=True) off)")
    try:
        dims = json.loads(input_dims)
        types = json.loads(input_types) if input_types else None
    except (ValueError, TypeError):
        return _none(f"{name}: input shapes not readable")
    if not isinstance(dims, list) or (types is not None and not isinstance(types, list)):
        return _none(f"{name}: input shapes not readable")
    fallback = META_DTYPE.get((fallback_dtype or "").strip().lower())
    args = _Args(dims, types, fallback)
    try:
        if name in _MATMUL:
            return _matmul(name, args)
        if name in _ATTENTION:
            return _attention(name, args)
        if name.startswith("aten::"):
            r = _elementwise(name, args)
            if r is not None:
                return r
    except (TypeError, ValueError, OverflowError):
        return _none(f"{name}: shapes not understood")
    return _none(f"{name}: no work model for this op")


def register(con) -> None:
    """Make `tk_op_work(name, input_dims, input_types, dtype)` callable in SQL on `con`."""
    import duckdb

    st = duckdb.struct_type(UDF_FIELDS)
    vc = duckdb.sqltype("VARCHAR")
    try:
        con.remove_function(UDF_NAME)
    except (duckdb.InvalidInputException, duckdb.CatalogException):
        pass
    con.create_function(UDF_NAME, op_work, [vc, vc, vc, vc], st, null_handling="special", side_effects=False)
