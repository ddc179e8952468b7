"""Reader for `nsys export --type sqlite` files (Nsight Systems 2021 and later).

Exports differ by version: string columns are inline text in old exports and `StringIds`
references in new ones, NVTX text is `text` or `textId`, metadata lives in `EXPORT_META_DATA` or
`META_DATA_EXPORT`, and whole tables are absent when nothing of their kind was traced. Each
lookup here therefore asks the file what it has and records what it lacked in `absent`.
"""

from __future__ import annotations

import json
import re
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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

KERNEL_TABLE = "CUPTI_ACTIVITY_KIND_KERNEL"

# NVTX event types (ENUM_NSYS_EVENT_TYPE); stable since nsys 2020.
_NVTX_PUSHPOP, _NVTX_STARTEND, _NVTX_DOMAIN_CREATE = 59, 60, 75

# torch.autograd.profiler.emit_nvtx labels: "aten::mm, seq = 3, op_id = 5, sizes = [[..]], ..."
_EMIT_NVTX = re.compile(r"^(?P<name>[^,]+), (?:seq = \d+, )?op_id = (?P<op_id>\d+)(?P<rest>.*)$", re.S)
_SIZES = re.compile(r"sizes = (\[.*?\]\])(?:, input_op_ids|$)", re.S)


def looks_like(path: Path, head: bytes) -> bool:
    return head.startswith(b"SQLite format 3\x00")


def _tables(con: sqlite3.Connection) -> dict[str, set[str]]:
    names = [r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type IN ('table','view')")]
    return {n: {r[1] for r in con.execute(f'PRAGMA table_info("{n}")')} for n in names}


# SQLite columns hold any type whatever their declaration; a value of the wrong type or out of
# range becomes NULL here instead of failing later in Arrow with a message naming no file.
def _int(expr: str, bits: int = 64) -> str:
    lo, hi = -(2 ** (bits - 1)), 2 ** (bits - 1) - 1
    return f"(CASE WHEN typeof({expr}) = 'integer' AND {expr} BETWEEN {lo} AND {hi} THEN {expr} END)"


def _text_or_id(expr: str) -> str:
    return f"(CASE WHEN typeof({expr}) IN ('integer', 'text') THEN {expr} END)"


# Rows whose extent is not a pair of integers with end >= start cannot be placed on a timeline;
# within +-2^62 ns the duration end - start cannot overflow 64 bits.
_GOOD_EXTENT = ("typeof(\"start\") = 'integer' AND typeof(\"end\") = 'integer' AND \"end\" >= \"start\" "
                "AND \"start\" >= -4611686018427387904 AND \"end\" <= 4611686018427387904")


def _gtid_pid(g: int | None) -> int | None:
    # globalTid / globalPid pack (hardware id, pid, tid) as 0x00HH_PPPPPP_TTTTTT.
    return None if g is None else (g >> 24) & 0xFFFFFF


def _gtid_tid(g: int | None) -> int | None:
    return None if g is None else g & 0xFFFFFF


class _Strings:
    """Resolves a column that is either inline text or a StringIds id."""

    def __init__(self, con: sqlite3.Connection, has_table: bool) -> None:
        self.map: dict[int, str] = dict(con.execute(
            "SELECT id, value FROM StringIds WHERE typeof(value) = 'text'")) if has_table else {}

    def get(self, v: object) -> str | None:
        if v is None or isinstance(v, str):
            return v
        return self.map.get(v)


# A corrupt page can put invalid UTF-8 into SQLite's own error message, which Python then fails
# to decode: that is the same corruption, not a different problem.
_SQLITE_ERRORS = (sqlite3.DatabaseError, UnicodeDecodeError)


def _why(exc: Exception) -> str:
    return "invalid text in the file's schema or index pages" if isinstance(exc, UnicodeDecodeError) else str(exc)


def read(path: Path) -> TraceData:
    try:
        # Read-only and immutable: the user's file is never touched, even its journal.
        con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
        # Names are copied from the traced program; invalid UTF-8 there must not fail the import.
        con.text_factory = lambda b: b.decode("utf-8", "replace")
        tables = _tables(con)
    except _SQLITE_ERRORS as exc:
        raise TraceError(path, f"not a readable SQLite file ({_why(exc)})") from None
    try:
        return _read(con, path, tables)
    except _SQLITE_ERRORS as exc:
        raise TraceError(path, f"SQLite error while reading ({_why(exc)})") from None
    finally:
        con.close()


def _read(con: sqlite3.Connection, path: Path, tables: dict[str, set[str]]) -> TraceData:
    if KERNEL_TABLE not in tables:
        nsys_marks = {"StringIds", "TARGET_INFO_GPU", "META_DATA_EXPORT", "EXPORT_META_DATA", "NVTX_EVENTS"}
        if not nsys_marks & tables.keys():
            raise TraceError(path, "SQLite file is not an Nsight Systems export (no nsys tables)")
        raise TraceError(path, f"no GPU kernels in this nsys export ({KERNEL_TABLE} absent: was CUDA traced?)")
    absent: list[str] = []
    strings = _Strings(con, {"id", "value"} <= tables.get("StringIds", set()))
    kcols = tables[KERNEL_TABLE]
    required = {"start", "end", "correlationId"}
    missing = required - kcols
    if missing or not ({"demangledName", "shortName", "name"} & kcols):
        raise TraceError(path, f"{KERNEL_TABLE} lacks columns {sorted(missing) or ['demangledName']}")

    kernels = _kernels(con, kcols, strings, absent)
    names = kernels.column("name")
    if kernels.num_rows and pc.all(pc.or_(pc.starts_with(names, "<string "), pc.starts_with(names, "<no name>"))).as_py():
        raise TraceError(path, "no kernel name could be resolved (StringIds table missing or malformed)")
    if not kernels.num_rows:
        graphs = _count(con, tables, "CUPTI_ACTIVITY_KIND_GRAPH_TRACE")
        if graphs:
            raise TraceError(path, f"CUDA graphs were traced as whole graphs ({graphs} launches, no kernels): "
                                   "capture again with `nsys profile --cuda-graph-trace=node`")
        bad = _count(con, tables, KERNEL_TABLE)
        why = f" ({bad} rows with unusable start/end)" if bad else " (kernel table is empty)"
        raise TraceError(path, f"no GPU kernels in this nsys export{why}")
    graphs = _count(con, tables, "CUPTI_ACTIVITY_KIND_GRAPH_TRACE")
    if graphs:
        absent.append(f"kernels of {graphs} CUDA graph launches traced as whole graphs (--cuda-graph-trace=graph)")
    launches = _launches(con, tables, strings, absent)
    ranges, ops = _nvtx(con, tables, strings, absent)
    memops = _memops(con, tables, absent)
    gpu_name, tool_versions, trace_meta = _meta(con, tables, absent)
    return TraceData(
        format="nsys-sqlite", kernels=kernels, launches=launches, ranges=ranges, ops=ops,
        memops=memops, gpu_name=gpu_name, tool_versions=tool_versions, trace_meta=trace_meta,
        absent=absent,
    )


def _count(con: sqlite3.Connection, tables: dict[str, set[str]], table: str) -> int:
    return con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0] if table in tables else 0


def _skipped(con: sqlite3.Connection, table: str, absent: list[str], what: str) -> None:
    n = con.execute(f'SELECT count(*) FROM "{table}" WHERE NOT ({_GOOD_EXTENT}) OR "start" IS NULL '
                    'OR "end" IS NULL').fetchone()[0]
    if n:
        absent.append(f"{table}: {n} {what} with missing, non-integer or negative extents (skipped)")


def _col(cols: set[str], name: str, absent: list[str], table: str, default: str = "NULL", bits: int = 64) -> str:
    if name in cols:
        return _int(f'"{name}"', bits)
    absent.append(f"{table}.{name}")
    return default


def _unresolved(v: object) -> str:
    # Keep the id visible: an empty name would silently merge unrelated kernels.
    return f"<string {v}>" if isinstance(v, int) else "<no name>"


def _kernels(con: sqlite3.Connection, cols: set[str], strings: _Strings, absent: list[str]):
    t = KERNEL_TABLE
    demangled = "demangledName" if "demangledName" in cols else "name" if "name" in cols else "shortName"
    short = "shortName" if "shortName" in cols else None
    if short is None:
        absent.append(f"{t}.shortName")
    sel = ", ".join([
        '"start"', '"end"', _col(cols, "deviceId", absent, t, bits=32), _col(cols, "contextId", absent, t),
        _col(cols, "streamId", absent, t), _int('"correlationId"'), _col(cols, "globalPid", absent, t),
        _text_or_id(f'"{demangled}"'), _text_or_id(f'"{short}"') if short else "NULL",
        *(_col(cols, c, absent, t, bits=32) for c in ("gridX", "gridY", "gridZ", "blockX", "blockY", "blockZ")),
        _col(cols, "registersPerThread", absent, t, bits=32), _col(cols, "staticSharedMemory", absent, t),
        _col(cols, "dynamicSharedMemory", absent, t),
        _int('"graphNodeId"') if "graphNodeId" in cols else "NULL",
    ])
    _skipped(con, t, absent, "kernels")
    rows = con.execute(f'SELECT {sel} FROM "{t}" WHERE {_GOOD_EXTENT} ORDER BY "start", "end"').fetchall()
    c = list(zip(*rows, strict=False)) if rows else [()] * 22
    del rows
    # Names repeat (tens of distinct kernels over 100k+ rows): resolve each distinct id once.
    idx, uniq = _codes(c[7])
    resolved = [strings.get(v) for v in uniq]
    counts = np.bincount(np.asarray(idx, dtype=np.int64), minlength=len(uniq)) if idx else np.zeros(0, np.int64)
    missing = int(sum(counts[i] for i, r in enumerate(resolved) if not r))
    if missing:
        absent.append(f"{t}: {missing} kernel names not found in StringIds (named <string N>)")
    name_u = [r or _unresolved(v) for r, v in zip(resolved, uniq, strict=True)]
    pair_idx, pairs = _codes(list(zip(idx, c[8], strict=True)))
    short_u = [strings.get(sid) or short_name(name_u[i]) for i, sid in pairs]
    start = pa.array(c[0], pa.int64())
    end = pa.array(c[1], pa.int64())
    return _table({
        "kernel_id": pa.array(np.arange(len(start)), pa.int64()), "name": _decoded(idx, name_u),
        "short_name": _decoded(pair_idx, short_u), "start_ns": start, "end_ns": end,
        "dur_ns": pc.subtract(end, start), "device": c[2], "context": c[3], "stream": c[4],
        "correlation": c[5], "pid": _gtid_part(c[6], 24), "grid_x": c[9], "grid_y": c[10], "grid_z": c[11],
        "block_x": c[12], "block_y": c[13], "block_z": c[14],
        "registers": c[15], "shared_static": c[16], "shared_dynamic": c[17], "graph_node_id": c[18],
    }, KERNEL_SCHEMA)


def _codes(vals: Sequence) -> tuple[list[int], list]:
    uniq = list(dict.fromkeys(vals))  # first-seen order; C loops only, no per-row Python call
    return list(map({v: i for i, v in enumerate(uniq)}.__getitem__, vals)), uniq


def _decoded(idx: list[int], uniq: list[str]) -> pa.Array:
    # Built from codes, each distinct string is copied once instead of once per row.
    return pa.DictionaryArray.from_arrays(pa.array(idx, pa.int32()), pa.array(uniq, pa.string())).cast(pa.string())


def _gtid_part(vals: Sequence[int | None], shift: int) -> pa.Array:
    """_gtid_pid (shift 24) or _gtid_tid (shift 0) of a whole column."""
    g = pa.array(vals, pa.int64())
    return pc.bit_wise_and(pc.shift_right(g, shift) if shift else g, 0xFFFFFF)


def _table(cols: dict[str, object], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_arrays(
        [v if isinstance(v, pa.Array) else pa.array(v, f.type) for f, v in ((f, cols[f.name]) for f in schema)],
        schema=schema)


def _launches(con: sqlite3.Connection, tables: dict[str, set[str]], strings: _Strings, absent: list[str]):
    parts: list[pa.Table] = []
    for table, kind in (("CUPTI_ACTIVITY_KIND_RUNTIME", "runtime"), ("CUPTI_ACTIVITY_KIND_DRIVER", "driver")):
        tc = tables.get(table)
        if tc is None:
            absent.append(table)
            continue
        name_col = "nameId" if "nameId" in tc else "name" if "name" in tc else None
        if name_col is None or not {"start", "end", "globalTid", "correlationId"} <= tc:
            absent.append(f"{table} (unexpected columns)")
            continue
        _skipped(con, table, absent, "calls")
        rows = con.execute(
            f'SELECT "start", "end", {_int("globalTid")}, {_int("correlationId")}, {_text_or_id(name_col)} '
            f'FROM "{table}" WHERE {_GOOD_EXTENT}'
        ).fetchall()
        if not rows:
            continue
        # A million API calls: columns at once, not a Python loop per call.
        start_, end_, gtid, corr, nm = zip(*rows, strict=True)
        del rows
        idx, uniq = _codes(nm)
        start = pa.array(start_, pa.int64())
        end = pa.array(end_, pa.int64())
        parts.append(_table({
            "launch_id": pa.nulls(len(start), pa.int64()),
            "name": _decoded(idx, [strings.get(v) or "" for v in uniq]),
            "kind": _decoded([0] * len(start), [kind]), "start_ns": start, "end_ns": end,
            "dur_ns": pc.subtract(end, start), "pid": _gtid_part(gtid, 24), "tid": _gtid_part(gtid, 0),
            "correlation": corr,
        }, LAUNCH_SCHEMA))
    if not parts:
        return to_table({k: [] for k in LAUNCH_SCHEMA.names}, LAUNCH_SCHEMA)
    t = pa.concat_tables(parts).combine_chunks()
    return t.set_column(0, "launch_id", pa.array(np.arange(t.num_rows), pa.int64()))


def _nvtx(con: sqlite3.Connection, tables: dict[str, set[str]], strings: _Strings, absent: list[str]):
    rcols: dict[str, list] = {k: [] for k in RANGE_SCHEMA.names}
    ocols: dict[str, list] = {k: [] for k in OP_SCHEMA.names}
    tc = tables.get("NVTX_EVENTS")
    if tc is None or not {"start", "end", "eventType", "globalTid"} <= tc:
        absent.append("NVTX_EVENTS" if tc is None else "NVTX_EVENTS (unexpected columns)")
        return to_table(rcols | {"range_id": []}, RANGE_SCHEMA), to_table(ocols | {"op_id": []}, OP_SCHEMA)
    text = "(CASE WHEN typeof(\"text\") = 'text' THEN \"text\" END)" if "text" in tc else "NULL"
    text_id = _int('"textId"') if "textId" in tc else "NULL"
    domain_col = _int('"domainId"') if "domainId" in tc else "NULL"
    domains: dict[int, str] = {}
    for dom, t, tid_ in con.execute(
        f"SELECT {domain_col}, {text}, {text_id} FROM NVTX_EVENTS WHERE eventType = {_NVTX_DOMAIN_CREATE}"
    ):
        domains[dom] = t if t is not None else strings.get(tid_)
    open_ranges = bad = 0
    for start, end, gtid, t, tid_, dom, _etype in con.execute(
        f'SELECT "start", "end", {_int("globalTid")}, {text}, {text_id}, {domain_col}, eventType FROM NVTX_EVENTS '
        f"WHERE eventType IN ({_NVTX_PUSHPOP}, {_NVTX_STARTEND}) ORDER BY \"start\""
    ):
        if end is None:
            open_ranges += 1  # never closed before capture stopped: no extent to attribute
            continue
        if not isinstance(start, int) or not isinstance(end, int) or end < start or max(-start, end) > 2**62:
            bad += 1
            continue
        label = t if t is not None else strings.get(tid_)
        if label is None:
            label = ""
        pid, tid = _gtid_pid(gtid), _gtid_tid(gtid)
        m = _EMIT_NVTX.match(label)
        if m:
            sizes = _SIZES.search(m.group("rest"))
            ocols["name"].append(m.group("name"))
            ocols["source"].append("nvtx")
            ocols["start_ns"].append(start)
            ocols["end_ns"].append(end)
            ocols["dur_ns"].append(end - start)
            ocols["pid"].append(pid)
            ocols["tid"].append(tid)
            ocols["external_id"].append(int(m.group("op_id")))
            ocols["input_dims"].append(_json_dims(sizes.group(1)) if sizes else None)
            ocols["input_types"].append(None)
            # Under emit_nvtx, record_function labels (stage markers among them) arrive in the same
            # format as operators; anything not namespaced like an operator is also kept as a range.
            if "::" in m.group("name"):
                continue
            label = m.group("name")
        rcols["name"].append(label)
        rcols["kind"].append("nvtx")
        rcols["domain"].append("emit_nvtx" if m else domains.get(dom) if dom else None)
        rcols["start_ns"].append(start)
        rcols["end_ns"].append(end)
        rcols["dur_ns"].append(end - start)
        rcols["pid"].append(pid)
        rcols["tid"].append(tid)
    if open_ranges:
        absent.append(f"NVTX_EVENTS: {open_ranges} ranges never closed (skipped)")
    if bad:
        absent.append(f"NVTX_EVENTS: {bad} ranges with non-integer or negative extents (skipped)")
    rcols["range_id"] = list(range(len(rcols["name"])))
    ocols["op_id"] = list(range(len(ocols["name"])))
    return to_table(rcols, RANGE_SCHEMA), to_table(ocols, OP_SCHEMA)


def _json_dims(text: str) -> str | None:
    try:
        return json.dumps(json.loads(text), separators=(",", ":"))
    except ValueError:
        return None


def _memops(con: sqlite3.Connection, tables: dict[str, set[str]], absent: list[str]):
    cols: dict[str, list] = {k: [] for k in MEMOP_SCHEMA.names}
    kinds: dict[int, str] = {}
    if {"id", "label"} <= tables.get("ENUM_CUDA_MEMCPY_OPER", set()):
        kinds = {i: label for i, label in con.execute("SELECT id, label FROM ENUM_CUDA_MEMCPY_OPER")}
    for table, kind in (("CUPTI_ACTIVITY_KIND_MEMCPY", "memcpy"), ("CUPTI_ACTIVITY_KIND_MEMSET", "memset")):
        tc = tables.get(table)
        if tc is None or not {"start", "end"} <= tc:
            absent.append(table if tc is None else f"{table} (unexpected columns)")
            continue
        ck, dev, stream, nbytes, corr_col = (
            _int(f'"{c}"', bits) if c in tc else "NULL"
            for c, bits in (("copyKind", 64), ("deviceId", 32), ("streamId", 64), ("bytes", 64), ("correlationId", 64))
        )
        _skipped(con, table, absent, "rows")
        for start, end, d, s, corr, b, k in con.execute(
            f'SELECT "start", "end", {dev}, {stream}, {corr_col}, {nbytes}, {ck} FROM "{table}" WHERE {_GOOD_EXTENT}'
        ):
            label = kinds.get(k, str(k)) if k is not None else None
            cols["kind"].append(kind)
            cols["name"].append(f"Memcpy {label}" if kind == "memcpy" else "Memset")
            cols["start_ns"].append(start)
            cols["end_ns"].append(end)
            cols["dur_ns"].append(end - start)
            cols["bytes"].append(b)
            cols["device"].append(d)
            cols["stream"].append(s)
            cols["correlation"].append(corr)
            cols["copy_kind"].append(label)
    order = sorted(range(len(cols["kind"])), key=lambda i: cols["start_ns"][i])
    cols = {k: [v[i] for i in order] for k, v in cols.items() if v or k != "memop_id"}
    cols["memop_id"] = list(range(len(order)))
    return to_table(cols, MEMOP_SCHEMA)


def _meta(con: sqlite3.Connection, tables: dict[str, set[str]], absent: list[str]):
    gpu_name = None
    if "TARGET_INFO_GPU" in tables and "name" in tables["TARGET_INFO_GPU"]:
        names = sorted({r[0] for r in con.execute(
            "SELECT name FROM TARGET_INFO_GPU WHERE typeof(name) = 'text'") if r[0]})
        gpu_name = ", ".join(names) or None
    else:
        absent.append("TARGET_INFO_GPU")
    trace_meta: dict[str, object] = {}
    tool_versions: dict[str, str] = {}
    meta_table = next((t for t in ("META_DATA_EXPORT", "EXPORT_META_DATA")
                       if {"name", "value"} <= tables.get(t, set())), None)
    if meta_table:
        export = dict(con.execute(f'SELECT name, value FROM "{meta_table}"'))
        trace_meta["export"] = export
        if "EXPORT_PRODUCT_VERSION" in export:
            tool_versions["nsys"] = str(export["EXPORT_PRODUCT_VERSION"])
        if "EXPORT_SCHEMA_VERSION" in export:
            tool_versions["nsys_schema"] = str(export["EXPORT_SCHEMA_VERSION"])
    else:
        absent.append("META_DATA_EXPORT")
    if {"name", "value"} <= tables.get("META_DATA_CAPTURE", set()):
        capture = dict(con.execute("SELECT name, value FROM META_DATA_CAPTURE"))
        keep = {k: v for k, v in capture.items() if "VERSION" in k.upper() or "COMMAND" in k.upper()}
        trace_meta["capture"] = keep
        for k, v in keep.items():
            if k.upper() in ("CUDA_DRIVER_VERSION", "CUDA_VERSION", "NSYS_VERSION"):
                tool_versions[k.lower()] = str(v)
    if "name" in tables.get("TARGET_INFO_CUDA_GPU", set()) and gpu_name is None:
        row = con.execute("SELECT name FROM TARGET_INFO_CUDA_GPU WHERE typeof(name) = 'text' LIMIT 1").fetchone()
        gpu_name = row[0] if row else None
    return gpu_name, tool_versions, trace_meta
