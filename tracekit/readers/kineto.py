"""Reader for PyTorch profiler / Kineto Chrome traces (`.json`, `.json.gz`, `.pt.trace.json`).

Decoding goes through a typed msgspec schema straight into small structs, so only the fields
tracekit keeps are ever materialised: a 250 MB trace never becomes a list of Python dicts.
Chrome-trace timestamps are microseconds with nanosecond decimals; they are converted to integer
nanoseconds by splitting off the
fraction first, which is exact for the 3-decimal values Kineto writes (see _ns).
"""

from __future__ import annotations

import gzip
import json
import math
import zlib
from pathlib import Path

import msgspec

from tracekit.errors import TraceError
from tracekit.readers.common import (
    KERNEL_SCHEMA,
    LAUNCH_SCHEMA,
    MEMOP_SCHEMA,
    OP_SCHEMA,
    RANGE_SCHEMA,
    TraceData,
    short_name,
    to_table,
)

# Decompressed size limit: a gzip bomb must fail cleanly, not exhaust memory.
MAX_DECOMPRESSED = 8 * 1024**3


class Args(msgspec.Struct, omit_defaults=True):
    external_id: int | str | None = msgspec.field(default=None, name="External id")
    correlation: int | None = None
    device: int | None = None
    context: int | None = None
    stream: int | None = None
    registers: int | None = msgspec.field(default=None, name="registers per thread")
    shared: int | None = msgspec.field(default=None, name="shared memory")
    grid: list[int] | None = None
    block: list[int] | None = None
    input_dims: list | None = msgspec.field(default=None, name="Input Dims")
    input_dims_old: list | None = msgspec.field(default=None, name="Input dims")
    input_type: list | None = msgspec.field(default=None, name="Input type")
    nbytes: int | None = msgspec.field(default=None, name="bytes")


class Event(msgspec.Struct):
    ph: str | None = None
    cat: str | None = None
    name: str | None = None
    pid: int | str | None = None
    tid: int | str | None = None
    ts: float | None = None
    dur: float | None = None
    args: Args | None = None


class Trace(msgspec.Struct):
    traceEvents: list[Event] | None = None
    deviceProperties: list[dict] | None = None


_ENVELOPE_SKIP = {"traceEvents"}
_KERNEL_CATS = {"kernel", "Kernel"}
_RUNTIME_CATS = {"cuda_runtime": "runtime", "Runtime": "runtime", "cuda_driver": "driver"}
_MEM_CATS = {"gpu_memcpy": "memcpy", "Memcpy": "memcpy", "gpu_memset": "memset", "Memset": "memset"}
_OP_CATS = {"cpu_op", "Operator", "operator"}
_RANGE_CATS = {"user_annotation", "gpu_user_annotation"}


def looks_like(path: Path, head: bytes) -> bool:
    if head[:2] == b"\x1f\x8b":
        return True
    return head.lstrip()[:1] in (b"{", b"[")


def _load_bytes(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    # Stream the inflate with an output cap instead of gzip.decompress, which has none.
    out = bytearray()
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    data = raw
    try:
        while data:
            chunk = d.decompress(data, 64 * 1024 * 1024)
            out += chunk
            if len(out) > MAX_DECOMPRESSED:
                raise TraceError(path, f"gzip expands beyond {MAX_DECOMPRESSED >> 30} GiB; refusing (zip bomb?)")
            data = d.unconsumed_tail
            if d.eof and d.unused_data:
                # Concatenated gzip members are legal; continue with the next one.
                data = d.unused_data
                d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        if not d.eof:
            raise TraceError(path, "truncated gzip (file ends before the compressed stream does)")
    except zlib.error as exc:
        raise TraceError(path, f"corrupt gzip ({exc})") from None
    except (EOFError, gzip.BadGzipFile) as exc:
        raise TraceError(path, f"corrupt gzip ({exc})") from None
    return bytes(out)


def _ns(us: float | None) -> int | None:
    # us * 1000 would round twice at ~4.5e15 and be off by a nanosecond; the fraction alone
    # scales exactly. Exact while the double still resolves 0.5 ns (timestamps < ~8.8e12 µs).
    if us is None:
        return None
    whole = math.floor(us)
    return int(whole) * 1000 + round((us - whole) * 1000)


def _int_or_none(v: object) -> int | None:
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.lstrip("-").isdigit():
        return int(v)
    return None


def read(path: Path) -> TraceData:
    raw = _load_bytes(path)
    try:
        trace = msgspec.json.decode(raw, type=Trace)
    except msgspec.ValidationError as exc:
        raise TraceError(path, f"not a Chrome/Kineto trace ({exc})") from None
    except msgspec.DecodeError as exc:
        raise TraceError(path, f"invalid JSON ({exc})") from None
    if trace.traceEvents is None:
        raise TraceError(path, "JSON has no traceEvents: not a Chrome/Kineto trace")
    envelope = _envelope(raw)
    del raw
    k: dict[str, list] = {n: [] for n in KERNEL_SCHEMA.names}
    la: dict[str, list] = {n: [] for n in LAUNCH_SCHEMA.names}
    r: dict[str, list] = {n: [] for n in RANGE_SCHEMA.names}
    o: dict[str, list] = {n: [] for n in OP_SCHEMA.names}
    m: dict[str, list] = {n: [] for n in MEMOP_SCHEMA.names}
    bad_ts = 0
    for e in trace.traceEvents:
        if e.ph != "X":
            continue
        cat = e.cat
        if e.ts is None or e.dur is None or e.ts != e.ts or e.dur != e.dur or e.dur < 0:
            bad_ts += 1  # NaN or negative extents have no place on a timeline
            continue
        start = _ns(e.ts)
        dur = _ns(e.dur)
        a = e.args or Args()
        if cat in _KERNEL_CATS:
            name = e.name or ""
            grid = a.grid or [None, None, None]
            block = a.block or [None, None, None]
            k["name"].append(name)
            k["short_name"].append(short_name(name))
            k["start_ns"].append(start)
            k["end_ns"].append(start + dur)
            k["dur_ns"].append(dur)
            k["device"].append(a.device if a.device is not None else _int_or_none(e.pid))
            k["context"].append(a.context)
            k["stream"].append(a.stream if a.stream is not None else _int_or_none(e.tid))
            k["correlation"].append(a.correlation)
            k["pid"].append(None)
            for i, axis in enumerate("xyz"):
                k[f"grid_{axis}"].append(grid[i] if i < len(grid) else None)
                k[f"block_{axis}"].append(block[i] if i < len(block) else None)
            k["registers"].append(a.registers)
            k["shared_static"].append(a.shared)
            k["shared_dynamic"].append(None)
            k["graph_node_id"].append(None)
        elif cat in _RUNTIME_CATS:
            la["name"].append(e.name or "")
            la["kind"].append(_RUNTIME_CATS[cat])
            la["start_ns"].append(start)
            la["end_ns"].append(start + dur)
            la["dur_ns"].append(dur)
            la["pid"].append(_int_or_none(e.pid))
            la["tid"].append(_int_or_none(e.tid))
            la["correlation"].append(a.correlation)
        elif cat in _OP_CATS:
            dims = a.input_dims if a.input_dims is not None else a.input_dims_old
            o["name"].append(e.name or "")
            o["source"].append("kineto")
            o["start_ns"].append(start)
            o["end_ns"].append(start + dur)
            o["dur_ns"].append(dur)
            o["pid"].append(_int_or_none(e.pid))
            o["tid"].append(_int_or_none(e.tid))
            o["external_id"].append(_int_or_none(a.external_id))
            o["input_dims"].append(json.dumps(dims, separators=(",", ":")) if dims is not None else None)
            o["input_types"].append(json.dumps(a.input_type) if a.input_type is not None else None)
        elif cat in _RANGE_CATS:
            r["name"].append(e.name or "")
            r["kind"].append(cat)
            r["domain"].append(None)
            r["start_ns"].append(start)
            r["end_ns"].append(start + dur)
            r["dur_ns"].append(dur)
            r["pid"].append(_int_or_none(e.pid))
            r["tid"].append(_int_or_none(e.tid))
        elif cat in _MEM_CATS:
            m["kind"].append(_MEM_CATS[cat])
            m["name"].append(e.name)
            m["start_ns"].append(start)
            m["end_ns"].append(start + dur)
            m["dur_ns"].append(dur)
            m["bytes"].append(a.nbytes)
            m["device"].append(a.device)
            m["stream"].append(a.stream)
            m["correlation"].append(a.correlation)
            m["copy_kind"].append(_copy_kind(e.name) if _MEM_CATS[cat] == "memcpy" else None)
    del trace
    if not k["name"]:
        raise TraceError(path, "trace has no GPU kernels (was the profiler run with CUDA activities?)")
    absent = []
    if bad_ts:
        absent.append(f"{bad_ts} events with missing, NaN or negative timestamps (skipped)")
    if not o["name"]:
        absent.append("cpu_op events")
    elif all(d is None for d in o["input_dims"]):
        absent.append("Input Dims (record_shapes was off)")
    if not la["name"]:
        absent.append("cuda_runtime events")
    return TraceData(
        format="kineto",
        kernels=_sorted_with_ids(k, KERNEL_SCHEMA, "kernel_id"),
        launches=_sorted_with_ids(la, LAUNCH_SCHEMA, "launch_id"),
        ranges=_sorted_with_ids(r, RANGE_SCHEMA, "range_id"),
        ops=_sorted_with_ids(o, OP_SCHEMA, "op_id"),
        memops=_sorted_with_ids(m, MEMOP_SCHEMA, "memop_id"),
        gpu_name=envelope["gpu_name"],
        tool_versions=envelope["tool_versions"],
        trace_meta=envelope["trace_meta"],
        found_meta=envelope["found_meta"],
        absent=absent,
    )


def _copy_kind(name: str | None) -> str | None:
    # Kineto names copies like "Memcpy HtoD (Pageable -> Device)".
    if not name:
        return None
    parts = name.split()
    return parts[1] if len(parts) > 1 else None


def _sorted_with_ids(cols: dict[str, list], schema, id_col: str):
    import pyarrow.compute as pc

    cols[id_col] = [0] * len(cols["start_ns"])
    t = to_table(cols, schema)
    if t.num_rows:
        t = t.take(pc.sort_indices(t, sort_keys=[("start_ns", "ascending"), ("end_ns", "descending")]))
    import pyarrow as pa

    return t.set_column(t.schema.get_field_index(id_col), id_col, pa.array(range(t.num_rows), pa.int64()))


def _envelope(raw: bytes) -> dict:
    """Top-level keys other than traceEvents: device properties, versions, user metadata."""

    # Decode everything except the events: msgspec.Raw skips their parsing.
    top = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
    top.pop("traceEvents", None)
    meta: dict[str, object] = {}
    for key, val in top.items():
        try:
            meta[key] = msgspec.json.decode(val)
        except msgspec.DecodeError:
            continue
    devices = meta.pop("deviceProperties", None) or []
    gpu_names = sorted({d.get("name") for d in devices if isinstance(d, dict) and d.get("name")})
    tool_versions = {}
    for key in ("cuda_runtime_version", "cuda_driver_version", "cupti_version", "schemaVersion"):
        if key in meta:
            tool_versions[key] = str(meta[key])
    found: dict[str, str] = {}
    # Capture scripts store their run description with prof.add_metadata_json(key, json).
    for key, val in list(meta.items()):
        if key in ("tracekit_run", "tracekit") and isinstance(val, (str, dict)):
            obj = json.loads(val) if isinstance(val, str) else val
            if isinstance(obj, dict):
                found.update({k: _scalar(v) for k, v in obj.items()})
    meta["deviceProperties"] = devices
    return {
        "gpu_name": ", ".join(gpu_names) or None,
        "tool_versions": tool_versions,
        "trace_meta": meta,
        "found_meta": found,
    }


def _scalar(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v)
