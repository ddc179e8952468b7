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
from collections import defaultdict
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


# -- Perfetto's own protobuf format ------------------------------------------------------------

PROTO_SUFFIXES = (".pftrace", ".perfetto-trace", ".pb")


def _annotation(ann: Any, name: str, value: Any) -> None:
    ann.name = name
    if isinstance(value, bool):
        ann.bool_value = value
    elif isinstance(value, int) and -(1 << 63) <= value < (1 << 63):
        ann.int_value = value
    elif isinstance(value, float):
        ann.double_value = value
    elif isinstance(value, str):
        ann.string_value = value
    else:
        ann.string_value = json.dumps(value)


def proto_bytes(trace: dict) -> bytes:
    """The Chrome JSON trace of trace_events() as a Perfetto protobuf trace (TrackEvent): the same
    slices on the same tracks, args as debug annotations, launch -> kernel flows. Needs the
    `perfetto` package (`pip install 'tracekit[perfetto]'`), whose proto classes write it."""
    try:
        from perfetto.trace_builder.proto_builder import TraceProtoBuilder
    except ImportError:
        raise TracekitError("the Perfetto protobuf format needs the perfetto package: "
                            "pip install 'tracekit[perfetto]' (or write .json, which needs nothing)") from None
    events = trace["traceEvents"]
    gpus = {d["id"] for d in trace.get("deviceProperties", [])}
    names: dict[tuple, str] = {}
    for e in events:
        if e.get("ph") == "M" and e["name"] in ("process_name", "thread_name"):
            key = (e["pid"],) if e["name"] == "process_name" else (e["pid"], e["tid"])
            names[key] = e["args"]["name"]

    builder = TraceProtoBuilder()
    seq = 1
    uuids: dict[tuple, int] = {}

    def is_gpu(pid: Any) -> bool:
        return pid in gpus or (isinstance(pid, int) and pid >= DECISION_PID)

    def lane_track(pid: Any, tid: Any, lane: int) -> int:
        """Lane 0 is the thread or stream itself; lane k > 0 a child track holding slices that
        overlap others of that thread without nesting in them (a track's slices must nest)."""
        base = track(pid, tid)
        if lane == 0:
            return base
        key = (pid, tid, lane)
        if key not in uuids:
            uuids[key] = len(uuids) + 1
            pkt = builder.add_packet()
            pkt.trusted_packet_sequence_id = seq
            desc = pkt.track_descriptor
            desc.uuid = uuids[key]
            desc.parent_uuid = base
            desc.name = f"{names.get((pid, tid), f'thread {tid}')} (overlapping {lane})"
        return uuids[key]

    def track(pid: Any, tid: Any) -> int:
        """Track uuid of (pid, tid); GPU and tracekit tracks are named tracks under a named parent
        (a device is no process), host threads are thread tracks of their process."""
        if (pid, tid) in uuids:
            return uuids[pid, tid]
        if (pid,) not in uuids:
            uuids[(pid,)] = len(uuids) + 1
            pkt = builder.add_packet()
            pkt.trusted_packet_sequence_id = seq
            desc = pkt.track_descriptor
            desc.uuid = uuids[(pid,)]
            if is_gpu(pid):
                desc.name = names.get((pid,), f"GPU {pid}")
            else:
                desc.process.pid = int(pid or 0)
                desc.process.process_name = names.get((pid,), f"process {pid}")
        uuids[pid, tid] = len(uuids) + 1
        pkt = builder.add_packet()
        pkt.trusted_packet_sequence_id = seq
        desc = pkt.track_descriptor
        desc.uuid = uuids[pid, tid]
        desc.parent_uuid = uuids[(pid,)]
        if is_gpu(pid):
            desc.name = names.get((pid, tid), f"stream {tid}")
        else:
            desc.thread.pid = int(pid or 0)
            desc.thread.tid = int(tid or 0)
            desc.thread.thread_name = names.get((pid, tid), f"thread {tid}")
        return uuids[pid, tid]

    def ns(us: float) -> int:
        return round(us * 1000)

    flows_out = {(e["pid"], e["tid"], ns(e["ts"])): e["id"] for e in events if e.get("ph") == "s"}
    # Begin and end of every slice, ordered so that nested slices open outer-first and close
    # inner-first when they share a timestamp.
    marks = []
    lanes: dict[tuple, list[list[int]]] = defaultdict(list)  # (pid, tid) -> per lane, the open ends
    lane_of: dict[int, int] = {}
    xs = sorted((ns(e["ts"]), -ns(e["dur"]), i) for i, e in enumerate(events) if e.get("ph") == "X")
    for start, neg_dur, i in xs:
        end = start - neg_dur
        open_ends = lanes[events[i]["pid"], events[i]["tid"]]
        for k, stack in enumerate([*open_ends, None]):
            if stack is None:
                stack = []
                open_ends.append(stack)
            while stack and stack[-1] <= start:
                stack.pop()
            if not stack or stack[-1] >= end:  # nests in the innermost open slice of this lane
                stack.append(end)
                lane_of[i] = k
                break
    for i, e in enumerate(events):
        if e.get("ph") != "X":
            continue
        start, end = ns(e["ts"]), ns(e["ts"]) + ns(e["dur"])
        marks.append((start, 1, -(end - start), i))
        # Ends before begins at one timestamp (a slice ending where the next starts), except a
        # zero-length slice's own end; of two identical slices, the later-opened closes first.
        marks.append((end, 0 if end > start else 2, -start, -i))
    marks.sort()
    first = True
    for ts, kind, _, i in marks:
        is_begin = kind == 1
        e = events[abs(i)]
        uuid = lane_track(e["pid"], e["tid"], lane_of[abs(i)])  # its descriptor goes first
        pkt = builder.add_packet()
        pkt.timestamp = ts
        pkt.trusted_packet_sequence_id = seq
        if first:
            pkt.sequence_flags = 1  # SEQ_INCREMENTAL_STATE_CLEARED
            first = False
        te = pkt.track_event
        te.track_uuid = uuid
        if not is_begin:
            te.type = te.TYPE_SLICE_END
            continue
        te.type = te.TYPE_SLICE_BEGIN
        te.name = e["name"] or ""
        te.categories.append(e["cat"])
        for key, value in (e.get("args") or {}).items():
            if value is not None:
                _annotation(te.debug_annotations.add(), key, value)
        if e["cat"] in ("cuda_runtime", "cuda_driver"):
            fid = flows_out.get((e["pid"], e["tid"], ts))
            if fid is not None:
                te.flow_ids.append(int(fid) & ((1 << 64) - 1))
        elif e["cat"] == "kernel" and "correlation" in e.get("args", {}):
            te.terminating_flow_ids.append(int(e["args"]["correlation"]) & ((1 << 64) - 1))
    return builder.serialize()


def export_proto(db: Queryable, run_id: int, out: Path) -> int:
    """Write `run_id` as a Perfetto protobuf trace; return the number of packets."""
    from perfetto.protos.perfetto.trace.perfetto_trace_pb2 import Trace

    data = proto_bytes(trace_events(db, run_id))
    tmp = out.with_name(out.name + ".part")
    tmp.write_bytes(data)
    tmp.replace(out)
    return len(Trace.FromString(data).packet)


def write_manifest(db: Queryable, run_id: int, out: Path) -> Path | None:
    """Write the run's metadata (run_meta) as the capture manifest beside `out`, where
    `tracekit import` looks for it, so a re-import keeps model, batch, lengths, ... (which some
    rules' evidence uses). An existing manifest there is left alone: returns None."""
    from tracekit.manifest import manifest_path

    path = manifest_path(out)
    if path.exists():
        return None
    meta = {r["key"]: r["value"] for r in _rows(db, "SELECT key, value FROM run_meta WHERE run_id = ? "
                                                   "ORDER BY key", [run_id])}
    tmp = path.with_name(path.name + ".part")
    tmp.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")
    tmp.replace(path)
    return path
