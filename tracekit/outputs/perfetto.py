"""`tracekit export perfetto RUN -o FILE`: one run back on a timeline, with what tracekit decided.

The file is a Chrome JSON trace (the format ui.perfetto.dev and Perfetto's trace processor open,
and the one PyTorch's profiler writes), shaped like a Kineto trace so that `tracekit import`
reads it back:

- the original events on their own tracks: kernels, memcpys and memsets on process `GPU <d>`,
  thread `stream <s>` (Kineto's layout: pid = device, tid = stream); CUDA API launches, CPU
  operators (with their shapes) and marker ranges (NVTX or annotations, written as
  `user_annotation`) on the host process and thread they ran on; a flow arrow from each launch
  to its kernel (`ac2g`, as Kineto writes);
- tracekit's decisions, in every kernel's args (`tracekit.stage`, `.step`, `.iteration`,
  `.category`, `.rule`, `.evidence`) and on tracks of their own (process `tracekit · GPU <d>`):
  one `passes` thread with a slice per forward pass over the GPU span of its kernels, and per
  stream a `categories · stream <s>` thread with a slice per kernel named by its category.

Timestamps are the trace's own (µs with ns precision, as Kineto writes them).
"""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

from tracekit.errors import TracekitError
from tracekit.outputs.charts import Queryable

# pids of tracekit's decision tracks: far above real process ids and device indexes.
DECISION_PID = 1 << 30
TRACEKIT_CAT = "tracekit"


def _us(ns: int | None) -> float | None:
    # Three decimals are exact nanoseconds; the reader rounds back to the same integer.
    return None if ns is None else round(ns / 1000, 3)


def _meta(pid: int, name: str, tid: int | None = None, thread: str | None = None,
          sort: int | None = None) -> list[dict]:
    out = []
    if tid is None:
        out.append({"ph": "M", "name": "process_name", "pid": pid, "tid": 0, "args": {"name": name}})
        if sort is not None:
            out.append({"ph": "M", "name": "process_sort_index", "pid": pid, "tid": 0, "args": {"sort_index": sort}})
    else:
        out.append({"ph": "M", "name": "thread_name", "pid": pid, "tid": tid, "args": {"name": thread}})
    return out


def _rows(db: Queryable, sql: str, params: list) -> list[dict]:
    return db.query(sql, params).to_dicts()


def _json_or_none(text: str | None) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError:
        return text


def trace_events(db: Queryable, run_id: int) -> dict:
    """The whole Chrome JSON trace of `run_id` as a dict (see the module docstring)."""
    run = _rows(db, "SELECT * FROM run_info WHERE run_id = ?", [run_id])
    if not run:
        raise TracekitError(f"no run {run_id}")
    info = run[0]
    events: list[dict] = []
    kernels = _rows(db, "SELECT k.*, o.external_id AS op_external_id FROM kernels k "
                        "LEFT JOIN ops o ON o.run_id = k.run_id AND o.op_id = k.op_id "
                        "WHERE k.run_id = ? ORDER BY k.start_ns, k.kernel_id", [run_id])
    launches = _rows(db, "SELECT * FROM launches WHERE run_id = ? ORDER BY start_ns", [run_id])
    ranges = _rows(db, "SELECT * FROM ranges WHERE run_id = ? ORDER BY start_ns", [run_id])
    ops = _rows(db, "SELECT * FROM ops WHERE run_id = ? ORDER BY start_ns", [run_id])
    memops = _rows(db, "SELECT m.*, l.pid AS host_pid FROM memops m LEFT JOIN launches l "
                       "ON l.run_id = m.run_id AND l.launch_id = m.launch_id WHERE m.run_id = ? ORDER BY m.start_ns",
                   [run_id])
    # One slice per forward pass and device: the GPU span of the pass's kernels, labelled with
    # the pass (marker name, how it was found) from the passes table.
    passes = _rows(db, "WITH k AS (SELECT iteration, step, stage, device, min(start_ns) AS gpu_start, "
                       "max(end_ns) AS gpu_end, count(*) AS n FROM kernel_rows WHERE run_id = ? AND step IS NOT NULL "
                       "GROUP BY ALL) SELECT k.*, p.source, p.name AS marker, p.start_ns AS marker_start, "
                       "p.end_ns AS marker_end FROM k LEFT JOIN passes p ON p.run_id = ? "
                       "AND p.iteration IS NOT DISTINCT FROM k.iteration AND p.step = k.step AND p.stage = k.stage "
                       "ORDER BY k.gpu_start", [run_id, run_id])

    def dev(v: int | None) -> int:
        return 0 if v is None else int(v)

    def stream(v: int | None) -> int:
        return 0 if v is None else int(v)

    # Track names: GPU processes and streams, host processes/threads keep their ids.
    gpu_tracks = sorted({(dev(k["device"]), stream(k["stream"])) for k in kernels}
                        | {(dev(m["device"]), stream(m["stream"])) for m in memops})
    for d in sorted({d for d, _ in gpu_tracks}):
        name = f"GPU {d}" + (f" ({info['gpu_name']})" if info.get("gpu_name") else "")
        events += _meta(d, name, sort=d)
        events += _meta(DECISION_PID + d, f"tracekit · GPU {d}", sort=1000 + d)
        events += _meta(DECISION_PID + d, "", tid=0, thread="passes (tracekit)")
    for d, s in gpu_tracks:
        events += _meta(d, "", tid=s, thread=f"stream {s}")
        events += _meta(DECISION_PID + d, "", tid=1 + s, thread=f"categories · stream {s} (tracekit)")

    # Correlation ids are unique per process only. A Kineto trace is one process, so with several
    # host processes each id is moved into its process's own range (rank << 32); the original
    # stays in the args. Kernels and launches then still pair up when the file is read back.
    host_pids = sorted({la["pid"] for la in launches if la["pid"] is not None}
                       | {k["pid"] for k in kernels if k["pid"] is not None})
    rank = {pid: i for i, pid in enumerate(host_pids)} if len(host_pids) > 1 else {}

    def corr(c: int | None, pid: int | None) -> int | None:
        return None if c is None else (rank.get(pid, 0) << 32) + int(c) if rank else c

    for la in launches:
        la["correlation_out"] = corr(la["correlation"], la["pid"])
    launch_at = {la["correlation_out"]: la for la in launches if la["correlation"] is not None}
    for la in launches:
        args: dict[str, Any] = {"correlation": la["correlation_out"]}
        if rank:
            args["tracekit.correlation"] = la["correlation"]
        events.append({"ph": "X", "cat": "cuda_runtime" if la["kind"] == "runtime" else "cuda_driver",
                       "name": la["name"], "pid": la["pid"], "tid": la["tid"], "ts": _us(la["start_ns"]),
                       "dur": _us(la["dur_ns"]), "args": args})
    for r in ranges:
        events.append({"ph": "X", "cat": "gpu_user_annotation" if r["kind"] == "gpu_user_annotation"
                       else "user_annotation", "name": r["name"], "pid": r["pid"], "tid": r["tid"],
                       "ts": _us(r["start_ns"]), "dur": _us(r["dur_ns"]),
                       "args": {"tracekit.kind": r["kind"], "tracekit.domain": r["domain"]}})
    for o in ops:
        args = {"External id": o["external_id"]}
        if o["input_dims"] is not None:
            args["Input Dims"] = _json_or_none(o["input_dims"])
        if o["input_types"] is not None:
            args["Input type"] = _json_or_none(o["input_types"])
        if o["source"] != "kineto":
            args["tracekit.source"] = o["source"]
        events.append({"ph": "X", "cat": "cpu_op", "name": o["name"], "pid": o["pid"], "tid": o["tid"],
                       "ts": _us(o["start_ns"]), "dur": _us(o["dur_ns"]), "args": args})
    for m in memops:
        cat = "gpu_memcpy" if m["kind"] == "memcpy" else "gpu_memset"
        events.append({"ph": "X", "cat": cat, "name": m["name"] or m["kind"], "pid": dev(m["device"]),
                       "tid": stream(m["stream"]), "ts": _us(m["start_ns"]), "dur": _us(m["dur_ns"]),
                       "args": {"device": m["device"], "stream": m["stream"], "correlation": corr(m["correlation"], m["host_pid"]),
                                "bytes": m["bytes"], "tracekit.copy_kind": m["copy_kind"]}})
    for k in kernels:
        d, s = dev(k["device"]), stream(k["stream"])
        k_corr = corr(k["correlation"], k["pid"])
        args = {"device": k["device"], "context": k["context"], "stream": k["stream"],
                "correlation": k_corr, "tracekit.correlation": k["correlation"] if rank else None,
                "tracekit.pid": k["pid"],
                "grid": [k["grid_x"], k["grid_y"], k["grid_z"]] if k["grid_x"] is not None else None,
                "block": [k["block_x"], k["block_y"], k["block_z"]] if k["block_x"] is not None else None,
                "registers per thread": k["registers"],
                "shared memory": k["shared_static"],
                "External id": k["op_external_id"],
                "tracekit.short_name": k["short_name"], "tracekit.stage": k["stage"], "tracekit.step": k["step"],
                "tracekit.iteration": k["iteration"], "tracekit.category": k["category"],
                "tracekit.rule": k["rule_id"], "tracekit.evidence": k["evidence"]}
        ts, dur = _us(k["start_ns"]), _us(k["dur_ns"])
        events.append({"ph": "X", "cat": "kernel", "name": k["name"], "pid": d, "tid": s, "ts": ts, "dur": dur,
                       "args": {a: v for a, v in args.items() if v is not None}})
        events.append({"ph": "X", "cat": TRACEKIT_CAT, "name": k["category"] or "Unclassified",
                       "pid": DECISION_PID + d, "tid": 1 + s, "ts": ts, "dur": dur,
                       "args": {"kernel": k["short_name"], "stage": k["stage"], "step": k["step"],
                                "rule": k["rule_id"], "evidence": k["evidence"]}})
        la = launch_at.get(k_corr)
        if la is not None:
            # Launch -> kernel arrow, as Kineto writes it ("bp": "e": bind to the enclosing slice).
            events.append({"ph": "s", "cat": "ac2g", "name": "ac2g", "id": k_corr, "pid": la["pid"],
                           "tid": la["tid"], "ts": _us(la["start_ns"]), "bp": "e"})
            events.append({"ph": "f", "cat": "ac2g", "name": "ac2g", "id": k_corr, "pid": d, "tid": s,
                           "ts": ts, "bp": "e"})
    for p in passes:
        label = "summarization" if p["stage"] == "summarization" else f"{p['stage']} step {p['step']}"
        events.append({"ph": "X", "cat": TRACEKIT_CAT, "name": label, "pid": DECISION_PID + dev(p["device"]),
                       "tid": 0, "ts": _us(p["gpu_start"]), "dur": _us(p["gpu_end"] - p["gpu_start"]),
                       "args": {"stage": p["stage"], "step": p["step"], "iteration": p["iteration"],
                                "source": p["source"], "marker": p["marker"], "kernels": p["n"],
                                "marker_start_us": _us(p["marker_start"]), "marker_end_us": _us(p["marker_end"])}})
    devices = sorted({d for d, _ in gpu_tracks})
    meta = _rows(db, "SELECT key, value FROM run_meta WHERE run_id = ? ORDER BY key", [run_id])
    return {
        "schemaVersion": 1,
        "displayTimeUnit": "ns",
        "deviceProperties": [{"id": d, "name": info.get("gpu_name") or ""} for d in devices],
        "tracekit": {"run_id": run_id, "source_name": info.get("source_name"), "format": info.get("format"),
                     "stage_method": info.get("stage_method"),
                     "meta": {m["key"]: m["value"] for m in meta}},
        "traceEvents": events,
    }


def export(db: Queryable, run_id: int, out: Path) -> int:
    """Write the trace of `run_id` to `out` (gzip when the name ends in .gz); return the number
    of events written."""
    trace = trace_events(db, run_id)
    data = json.dumps(trace, separators=(",", ":"), allow_nan=False).encode("utf-8")
    tmp = out.with_name(out.name + ".part")
    if out.name.endswith(".gz"):
        tmp.write_bytes(gzip.compress(data, compresslevel=6, mtime=0))
    else:
        tmp.write_bytes(data)
    tmp.replace(out)
    return len(trace["traceEvents"])
