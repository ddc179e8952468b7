"""Make the large benchmark inputs by scaling up the real H100 traces in fixtures/shared/.

Kineto: the 4-layer Llama-2-7B trace (1 summarization + 7 generation passes) becomes a
`layers` x (1 + `steps`) trace. Each pass's CPU timeline is cut into segments at its top-level
operators: a prefix, one segment per decoder layer (found as the period of the top-level op
names), and a suffix. Layers are replicated by cycling the real layer segments, generation passes
by cycling the real passes. Every segment copy carries its CPU events (by timestamp) and the GPU
events its launches caused (by correlation), shifted together, with fresh correlation / External
ids / flow ids, so launch -> kernel links stay exact. A copy starts when both the CPU segment
and the GPU work it launched are done, so nothing overlaps on a stream or a thread (prefill thus
gains small CPU gaps where the GPU lagged; kernel counts, names and durations are real).

nsys SQLite: the whole export is copied, then its kernel, runtime, driver, NVTX, memcpy and memset
rows are appended `copies - 1` more times, each copy shifted past the previous one's end and
given fresh correlationIds.

Outputs go to bench/data/ (git-ignored) unless told otherwise.
"""

from __future__ import annotations

import argparse
import bisect
import gzip
import json
import shutil
import sqlite3
from pathlib import Path

import msgspec

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / "fixtures" / "shared"
KINETO_SRC = SHARED / "kineto_llama2-7b-4L_b1_i64_o8.pt.trace.json.gz"
NSYS_SRC = SHARED / "nsys2024_llama2-7b-4L_b1_i64_o8.sqlite"
DATA = ROOT / "bench" / "data"

_GPU_CATS = {"kernel", "gpu_memcpy", "gpu_memset"}
_LAUNCH_CATS = {"cuda_runtime", "cuda_driver"}


def _ns(us: float) -> int:
    # Kineto writes µs with 3 decimals: scale the fraction alone so no nanosecond is lost.
    whole = int(us // 1)
    return whole * 1000 + round((us - whole) * 1000)


def _us(ns: int) -> msgspec.Raw:
    sign = "-" if ns < 0 else ""
    ns = abs(ns)
    return msgspec.Raw(f"{sign}{ns // 1000}.{ns % 1000:03d}".encode())


def _layer_period(names: list[str]) -> tuple[int, int, int]:
    """(start, period, repeats) of the longest run of a repeated block in a pass's top-level ops."""
    best = (0, 0, 0)
    n = len(names)
    for p in range(8, n // 2 + 1):
        for s in range(0, n - 2 * p + 1):
            r = 1
            while s + (r + 1) * p <= n and names[s + r * p: s + (r + 1) * p] == names[s: s + p]:
                r += 1
            if r >= 2 and r * p > best[1] * best[2]:
                best = (s, p, r)
    return best


class _Segment:
    def __init__(self, cpu_start: int, cpu_end: int) -> None:
        self.cpu_start, self.cpu_end = cpu_start, cpu_end
        self.events: list[dict] = []
        self.gpu_end = cpu_end

    @property
    def advance(self) -> int:
        return max(self.cpu_end, self.gpu_end) - self.cpu_start


def scale_kineto(src: Path, dst: Path, layers: int, steps: int) -> dict:
    trace = json.loads(gzip.decompress(src.read_bytes()))
    events = trace["traceEvents"]
    xs = [e for e in events if e.get("ph") == "X" and isinstance(e.get("ts"), (int, float))]
    for e in events:
        if isinstance(e.get("ts"), (int, float)):
            e["_ts"] = _ns(e["ts"])
            e["_dur"] = _ns(e["dur"]) if "dur" in e else 0
    passes = sorted((e for e in xs if e.get("cat") == "user_annotation" and e["name"].startswith("stage:")),
                    key=lambda e: e["_ts"])
    gpu_passes = sorted((e for e in xs if e.get("cat") == "gpu_user_annotation"), key=lambda e: e["_ts"])
    cpu_pid = passes[0]["pid"]
    ops = sorted((e for e in xs if e.get("cat") == "cpu_op" and e["pid"] == cpu_pid),
                 key=lambda e: (e["_ts"], -e["_dur"]))

    # Segment boundaries on the CPU clock, per pass: prefix, each layer, suffix (up to the next pass).
    pass_segments: list[tuple[_Segment, list[_Segment], _Segment]] = []
    bounds: list[tuple[int, _Segment]] = []
    t_end = max(e["_ts"] + e["_dur"] for e in xs)
    pre = _Segment(min(e["_ts"] for e in xs), passes[0]["_ts"])
    bounds.append((pre.cpu_start - 1, pre))
    src_layers = None
    for i, p in enumerate(passes):
        s, e_ = p["_ts"], p["_ts"] + p["_dur"]
        top, end = [], -1
        for op in ops:
            if s <= op["_ts"] < e_ and op["_ts"] >= end:
                top.append(op)
                end = op["_ts"] + op["_dur"]
        start, period, reps = _layer_period([op["name"] for op in top])
        src_layers = src_layers or reps
        cuts = [top[start + k * period]["_ts"] for k in range(reps)] + [top[start + reps * period]["_ts"]]
        nxt = passes[i + 1]["_ts"] if i + 1 < len(passes) else e_
        prefix = _Segment(s, cuts[0])
        lays = [_Segment(cuts[k], cuts[k + 1]) for k in range(reps)]
        suffix = _Segment(cuts[-1], nxt)
        pass_segments.append((prefix, lays, suffix))
        for seg in (prefix, *lays, suffix):
            bounds.append((seg.cpu_start, seg))
    post = _Segment(passes[-1]["_ts"] + passes[-1]["_dur"], t_end + 1)
    bounds.append((post.cpu_start, post))
    keys = [b[0] for b in bounds]

    def seg_at(ts: int) -> _Segment:
        return bounds[max(bisect.bisect_right(keys, ts) - 1, 0)][1]

    pass_ids = {id(p) for p in passes}
    fixed_ids: set[int] = set()
    launch_seg: dict[int, _Segment] = {}
    fixed: list[dict] = []  # metadata, instants, the profiler span: emitted once, rewritten at the end
    for e in events:
        ph, cat = e.get("ph"), e.get("cat")
        if "_ts" not in e or ph in ("M", "i") or cat in ("Trace", "overhead"):
            fixed.append(e)
            fixed_ids.add(id(e))
            continue
        if id(e) in pass_ids or cat == "gpu_user_annotation":
            continue  # rebuilt per pass copy below
        if cat in _LAUNCH_CATS or (ph == "s" and cat == "ac2g"):
            seg = seg_at(e["_ts"])
            seg.events.append(e)
            if cat in _LAUNCH_CATS:
                launch_seg[e["args"]["correlation"]] = seg
    for e in events:
        cat, ph = e.get("cat"), e.get("ph")
        if "_ts" not in e or id(e) in fixed_ids or id(e) in pass_ids or cat == "gpu_user_annotation":
            continue
        if cat in _LAUNCH_CATS or (ph == "s" and cat == "ac2g"):
            continue
        corr = (e.get("args") or {}).get("correlation") if cat in _GPU_CATS else e.get("id") if ph == "f" else None
        seg = launch_seg.get(corr) if corr is not None else None
        if seg is None:
            seg = seg_at(e["_ts"])
        seg.events.append(e)
        if cat in _GPU_CATS or ph == "f":
            seg.gpu_end = max(seg.gpu_end, e["_ts"] + e["_dur"])

    max_corr = max((e["args"]["correlation"] for e in xs if "correlation" in (e.get("args") or {})), default=0)
    max_ext = max((e["args"]["External id"] for e in xs if isinstance((e.get("args") or {}).get("External id"), int)),
                  default=0)
    corr_stride, ext_stride = max_corr + 1, max_ext + 1
    # Events are written as they are made (a 2.27 GB trace never sits in memory whole), in
    # Kineto's layout: one event per indented block, ",\n" between them.
    envelope = {k: v for k, v in trace.items() if k != "traceEvents"}
    head = msgspec.json.encode(envelope)[:-1] + b', "traceEvents": [\n'
    dst.parent.mkdir(parents=True, exist_ok=True)
    sink = gzip.open(dst, "wb", compresslevel=6)
    sink.write(head)
    pending: list[bytes] = []
    n_events, n_bytes = 0, len(head)

    def flush() -> None:
        nonlocal n_bytes
        chunk = b"".join(pending)
        n_bytes += len(chunk)
        sink.write(chunk)
        pending.clear()

    def put(ev: bytes) -> None:
        nonlocal n_events
        pending.append(b"  " + msgspec.json.format(ev, indent=0) if not n_events
                       else b",\n  " + msgspec.json.format(ev, indent=0))
        n_events += 1
        if len(pending) >= 20_000:
            flush()
    cursor = pre.cpu_start
    copy = 0

    def emit(seg: _Segment) -> int:
        nonlocal cursor, copy
        shift = cursor - seg.cpu_start
        for e in seg.events:
            d = {k: v for k, v in e.items() if k not in ("_ts", "_dur")}
            d["ts"] = _us(e["_ts"] + shift)
            if "dur" in e:
                d["dur"] = _us(e["_dur"])
            if copy:
                if "id" in d and d.get("cat") == "ac2g":
                    d["id"] = d["id"] + copy * corr_stride
                args = d.get("args")
                if args:
                    args = dict(args)
                    if "correlation" in args:
                        args["correlation"] += copy * corr_stride
                    if isinstance(args.get("External id"), int):
                        args["External id"] += copy * ext_stride
                    d["args"] = args
            put(msgspec.json.encode(d))
        cursor += seg.advance
        copy += 1
        return shift

    emit(pre)
    gen_sources = list(range(1, len(passes)))
    n_kernels = 0
    for k in range(1 + steps):
        src_i = 0 if k == 0 else gen_sources[(k - 1) % len(gen_sources)]
        prefix, lays, suffix = pass_segments[src_i]
        first_shift = emit(prefix)
        for j in range(layers):
            emit(lays[j % len(lays)])
        last_shift = emit(suffix)
        p, g = passes[src_i], gpu_passes[src_i] if src_i < len(gpu_passes) else None
        for ann, a_cat in ((p, "user_annotation"), (g, "gpu_user_annotation")):
            if ann is None:
                continue
            start = ann["_ts"] + first_shift
            end = ann["_ts"] + ann["_dur"] + last_shift
            d = {k2: v for k2, v in ann.items() if k2 not in ("_ts", "_dur")}
            d.update(ts=_us(start), dur=_us(end - start), cat=a_cat)
            put(msgspec.json.encode(d))
        n_kernels += sum(1 for seg in (prefix, *[lays[j % len(lays)] for j in range(layers)], suffix)
                         for e in seg.events if e.get("cat") == "kernel")
    emit(post)
    for e in fixed:
        d = {k2: v for k2, v in e.items() if k2 not in ("_ts", "_dur")}
        if e.get("cat") == "Trace":
            d["dur"] = _us(cursor - e["_ts"])
        elif e.get("name") == "Record Window End":
            d["ts"] = _us(cursor)
        put(msgspec.json.encode(d))
    pending.append(b"\n]}")
    flush()
    sink.close()
    return {"path": str(dst), "events": n_events, "kernels": n_kernels, "json_bytes": n_bytes,
            "gz_bytes": dst.stat().st_size, "layers": layers, "steps": steps, "source_layers": src_layers}


_SHIFT_TABLES = ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_RUNTIME", "CUPTI_ACTIVITY_KIND_DRIVER",
                 "CUPTI_ACTIVITY_KIND_MEMCPY", "CUPTI_ACTIVITY_KIND_MEMSET", "NVTX_EVENTS")


def scale_nsys(src: Path, dst: Path, copies: int) -> dict:
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_suffix(".tmp")
    shutil.copy(src, tmp)
    con = sqlite3.connect(tmp)
    tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    present = [t for t in _SHIFT_TABLES if t in tables]
    lo, hi, max_corr = 1 << 62, 0, 0
    for t in present:
        cols = {r[1] for r in con.execute(f'PRAGMA table_info("{t}")')}
        a, b = con.execute(f'SELECT min(start), max(coalesce("end", start)) FROM "{t}"').fetchone()
        if a is not None:
            lo, hi = min(lo, a), max(hi, b)
        if "correlationId" in cols:
            max_corr = max(max_corr, con.execute(f'SELECT coalesce(max(correlationId), 0) FROM "{t}"').fetchone()[0])
    span = hi - lo + 1_000_000  # 1 ms gap between copies
    for t in present:
        cols = [r[1] for r in con.execute(f'PRAGMA table_info("{t}")')]
        base = con.execute(f'SELECT * FROM "{t}"').fetchall()
        i_start, i_end = cols.index("start"), cols.index("end")
        i_corr = cols.index("correlationId") if "correlationId" in cols else None
        place = ", ".join("?" * len(cols))
        for k in range(1, copies):
            rows = []
            for r in base:
                r = list(r)
                r[i_start] += k * span
                if r[i_end] is not None:
                    r[i_end] += k * span
                if i_corr is not None and r[i_corr] is not None:
                    r[i_corr] += k * (max_corr + 1)
                rows.append(r)
            con.executemany(f'INSERT INTO "{t}" VALUES ({place})', rows)
    con.commit()
    n = con.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_KERNEL").fetchone()[0]
    n_rt = con.execute("SELECT count(*) FROM CUPTI_ACTIVITY_KIND_RUNTIME").fetchone()[0]
    con.execute("VACUUM")
    con.close()
    tmp.replace(dst)
    return {"path": str(dst), "kernels": n, "runtime_calls": n_rt, "copies": copies, "bytes": dst.stat().st_size}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=DATA)
    ap.add_argument("--layers", type=int, default=32)
    ap.add_argument("--steps", type=int, default=64, help="generation passes after the summarization pass")
    ap.add_argument("--nsys-copies", type=int, default=112, help="112 x 3,348 kernels = 374,976 kernels")
    ap.add_argument("--only", choices=("kineto", "nsys"), help="make one of the two inputs")
    args = ap.parse_args()
    if args.only != "nsys":
        k = scale_kineto(KINETO_SRC, args.out / f"kineto_llama2-7b-{args.layers}L_{args.steps}steps.pt.trace.json.gz",
                         args.layers, args.steps)
        print(json.dumps(k))
    if args.only == "kineto":
        return
    n = scale_nsys(NSYS_SRC, args.out / f"nsys_llama2-7b_x{args.nsys_copies}.sqlite", args.nsys_copies)
    print(json.dumps(n))


if __name__ == "__main__":
    main()
