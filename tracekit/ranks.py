"""Multi-rank runs: the traces of one distributed job (tensor / pipeline parallel) as ONE run.

What a rank is
  One process of the job on its GPU. Ranks come from, in order of trust:
  - Kineto's `distributedInfo` (`rank`, `world_size`), written by PyTorch when a process group
    exists: authoritative for the file it is in;
  - the file name (`..._rank3_...`, `rank-3`, `rank3.`): files of one directory whose names
    differ only in that token are one job;
  - inside one trace with several GPU units (an nsys export of several processes, or one process
    driving several GPUs): each (process, GPU) that ran kernels is one rank, numbered in GPU
    order (`process/device order`): the trace does not name NCCL ranks, so the numbering is the
    GPUs', and the run says so.
  `import --group NAME` makes every file given one job; a file with no rank in its trace or name
  is then refused rather than given a guessed number. A rank the world size names but no file
  holds is reported (`runs.ranks`, `runs.absent`), never invented.

Clocks
  Each file's times are on its own host's clock. Ranks are put on the clock of the lowest rank by
  the collectives they share: the k-th collective of one kind (all-reduce, all-gather, ...) is
  the same operation on every rank, and a collective cannot complete on any rank before every
  rank has joined it, so the *ends* of one collective coincide across ranks (to within the last
  chunk's transfer) while the *starts* differ by exactly the wait to be measured. The offset of a
  rank is the median, over the collectives matched, of (reference end - rank end); its quality
  (median residual) and the number of collectives are kept in `run_ranks`. Without a shared
  collective, ranks from different files are left on their own clocks (`align_method = 'none'`)
  and nothing that compares ranks' times (wait) is computed. Ranks of one trace share one clock
  (`shared-clock`).

Stages
  `rank` is one of the columns of enrich.stages.PARTITION: passes and iterations are numbered
  within each rank, so one rank's prefill never becomes another's warm-up. Stage markers are
  matched to launches by process and thread, so ranks of different files whose process ids
  collide (one pid on two hosts) get their pids shifted apart (`absent` says so).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# `..._rank3_...`: the rank token of a file name (also `rank-3`, `RANK_3`). Shared with capture's
# naming rule, which strips it to find the job's one manifest.
from tracekit.capture.manifest import RANK_TOKEN
from tracekit.errors import TraceError
from tracekit.readers.common import TraceData

# A collective kernel (NCCL / RCCL) and its operation, from the kernel name. Custom all-reduce
# kernels of serving engines count too. The operation keys the cross-rank matching; a name with
# none is the generic 'collective' (RCCL's ncclDevKernel_Generic): every rank runs the same
# sequence of collectives on a communicator, so order still matches them.
COLLECTIVE = re.compile(
    r"(?i)^(?:void )?(?:nccl|rccl)\w*kernel|\b(?:cross_device_reduce_\w+|oneShotAllReduceKernel|"
    r"twoShotAllReduceKernel|allReduceFusionKernel|lamportAllReduce|customAllReduce)")
COLLECTIVE_OP = re.compile(
    r"(?i)(all_?reduce|all_?gather|reduce_?scatter|all_?to_?all|broadcast|send_?recv|sendrecv|send|recv|reduce)")
# Point-to-point transfers pair two ranks, not all of them: no "slowest of all ranks" wait.
POINT_TO_POINT = ("sendrecv", "send", "recv")

_TABLES = ("kernels", "launches", "ranges", "ops", "memops")
# Id columns renumbered when ranks of several files are put in one run (ids are unique per run).
_ID_COLUMNS = {
    "kernels": {"kernel_id": "kernels", "launch_id": "launches", "op_id": "ops", "range_id": "ranges"},
    "launches": {"launch_id": "launches"},
    "ranges": {"range_id": "ranges", "parent_id": "ranges"},
    "ops": {"op_id": "ops", "parent_id": "ops"},
    "memops": {"memop_id": "memops", "launch_id": "launches"},
}
_ID_OF = {"kernels": "kernel_id", "launches": "launch_id", "ranges": "range_id", "ops": "op_id", "memops": "memop_id"}


def collective_op(name: str) -> str | None:
    """The normalised operation of a collective kernel ('allreduce', ...), None for other kernels."""
    if not COLLECTIVE.search(name):
        return None
    m = COLLECTIVE_OP.search(name.split("(", 1)[0])
    return m.group(1).lower().replace("_", "") if m else "collective"


def rank_in_name(name: str) -> int | None:
    m = RANK_TOKEN.search(name)
    return int(m.group(2)) if m and m.group(2).isdigit() else None


@dataclass
class RankPart:
    """One rank: its own trace data (its own ids and clock) and where it came from."""

    rank: int
    data: TraceData
    rank_source: str
    source_name: str | None = None
    content_hash: str | None = None
    clock_offset_ns: int = 0
    align_method: str = "reference"
    align_events: int | None = None
    align_spread_ns: int | None = None
    id_offset: dict[str, int] = field(default_factory=dict)


@dataclass
class RankedTrace(TraceData):
    """A multi-rank run: the merged tables (rank column, ids unique, one clock) plus its parts."""

    parts: list[RankPart] = field(default_factory=list)
    world_size: int | None = None
    shared_clock: bool = False


@dataclass
class RankGroup:
    """Files of one job, to be imported as one run."""

    label: Path  # the job's name: the members' common name with `rank*` for the rank token
    members: list[Path]
    explicit: bool = False  # named with --group: every member must say its rank


# ---------------------------------------------------------------- grouping files

def group_files(files: Sequence[Path], group: str | None = None) -> tuple[list[Path], list[RankGroup]]:
    """Split files into single traces and jobs of several ranks.

    With `group`, every file is one job named `group`. Otherwise files of one directory whose
    names are equal but for a rank token form a job (two or more files)."""
    if group is not None:
        files = list(files)
        if not files:
            return [], []
        return [], [RankGroup(files[0].parent / group, files, explicit=True)]
    by_key: dict[tuple[Path, str], list[Path]] = {}
    for f in files:
        if rank_in_name(f.name) is None:
            continue
        key = (f.parent, RANK_TOKEN.sub(lambda m: m.group(1) + "rank*", f.name, count=1))
        by_key.setdefault(key, []).append(f)
    grouped = {f for fs in by_key.values() if len(fs) > 1 for f in fs}
    singles = [f for f in files if f not in grouped]
    groups = [RankGroup(parent / name, sorted(fs, key=lambda p: rank_in_name(p.name) or 0))
              for (parent, name), fs in by_key.items() if len(fs) > 1]
    return singles, groups


def group_hash(hashes: Sequence[str]) -> str:
    """The content hash of a job: one value for the same set of files, in any order."""
    h = hashlib.sha256(b"tracekit rank group\n")
    for x in sorted(hashes):
        h.update(x.encode() + b"\n")
    return h.hexdigest()


def _distributed(data: TraceData) -> tuple[int | None, int | None]:
    info = data.trace_meta.get("distributedInfo") if isinstance(data.trace_meta, dict) else None
    if not isinstance(info, dict):
        return None, None
    rank, world = info.get("rank"), info.get("world_size")
    return (rank if isinstance(rank, int) else None), (world if isinstance(world, int) and world > 0 else None)


def job_from_files(group: RankGroup, parsed: Sequence[tuple[Path, str, TraceData]]) -> RankedTrace:
    """One RankedTrace from the parsed members of a job. TraceError when two files claim one rank,
    or (with --group) a file says no rank."""
    parts: list[RankPart] = []
    worlds: set[int] = set()
    for path, h, data in parsed:
        rank, world = _distributed(data)
        source = "distributedInfo"
        if rank is None:
            rank, source = rank_in_name(path.name), "file name"
        if rank is None:
            raise TraceError(path, f"no rank in the trace (distributedInfo) or the file name: cannot place it "
                                   f"in job {group.label.name}")
        if world is not None:
            worlds.add(world)
        parts.append(RankPart(rank, data, source, path.name, h))
    seen: dict[int, str] = {}
    for p in parts:
        if p.rank in seen:
            raise TraceError(group.label, f"two traces of rank {p.rank} ({seen[p.rank]}, {p.source_name})")
        seen[p.rank] = p.source_name or ""
    if len(worlds) > 1:
        raise TraceError(group.label, f"the traces disagree on the world size ({sorted(worlds)})")
    parts.sort(key=lambda p: p.rank)
    world = worlds.pop() if worlds else None
    notes = []
    if world is None:
        notes.append("world size: not recorded in the traces; taken as the ranks present")
    _align(parts, notes)
    return _merge(parts, world, shared_clock=False, notes=notes)


def ranks_of_trace(path: Path, data: TraceData) -> TraceData:
    """A single trace as a multi-rank run when it is one: Kineto with distributedInfo of world size
    > 1, or several (process, GPU) units running kernels. Otherwise the trace unchanged."""
    rank, world = _distributed(data)
    if rank is not None and world is not None and world > 1:
        return _merge([RankPart(rank, data, "distributedInfo", path.name)], world, shared_clock=True, notes=[])
    k = data.kernels
    if k.num_rows == 0:
        return data
    pid = _ints(k.column("pid"))
    dev = _ints(k.column("device"))
    if (pid == pid[0]).all() and (dev == dev[0]).all():
        return data  # one unit, the usual trace: found without a Python loop over every kernel (1 s at 3.75M)
    units = sorted({(int(d), int(p)) for d, p in zip(dev, pid, strict=True)})
    if len(units) < 2:
        return data
    unit_rank = {u: r for r, u in enumerate(units)}
    kernel_rank = np.array([unit_rank[(int(d), int(p))] for d, p in zip(dev, pid, strict=True)], np.int32)
    parts = [RankPart(r, _subset(data, kernel_rank == r, p if p >= 0 else None, d), "process/device order",
                      path.name, align_method="shared-clock" if r else "reference")
             for r, (d, p) in enumerate(units)]
    by_pid: dict[int, list[int]] = {}
    by_dev: dict[int, list[int]] = {}
    for r, (d, p) in enumerate(units):
        by_pid.setdefault(p, []).append(r)
        by_dev.setdefault(d, []).append(r)

    def ranked(t: pa.Table, col: str, owners: dict[int, list[int]]) -> pa.Table:
        # A CPU row belongs to a rank when its process (GPU, for memory operations) is that one
        # rank's; rows of a process driving several GPUs are shared (NULL), stored once.
        vals = _ints(t.column(col)) if col in t.column_names else np.full(t.num_rows, -1)
        out = [owners[v][0] if len(owners.get(v, ())) == 1 else None for v in vals.tolist()]
        return t.append_column("rank", pa.array(out, pa.int32()))

    absent = [*data.absent, "ranks: numbered by GPU then process (the trace does not name the job's ranks)"]
    return RankedTrace(
        format=data.format, kernels=k.append_column("rank", pa.array(kernel_rank)),
        launches=ranked(data.launches, "pid", by_pid), ranges=ranked(data.ranges, "pid", by_pid),
        ops=ranked(data.ops, "pid", by_pid), memops=ranked(data.memops, "device", by_dev),
        gpu_name=data.gpu_name, tool_versions=data.tool_versions, trace_meta=data.trace_meta,
        found_meta=data.found_meta, absent=absent, parts=parts, world_size=len(units), shared_clock=True)


def _pids(data: TraceData) -> set[int]:
    out: set[int] = set()
    for t in ("kernels", "launches", "ranges", "ops"):
        tab = data.table(t)
        if "pid" in tab.column_names and tab.num_rows:
            out |= {int(x) for x in np.unique(_ints(tab.column("pid"))) if x >= 0}
    return out


def _ints(col: pa.ChunkedArray) -> np.ndarray:
    """An integer column as int64, nulls as -1."""
    return pc.fill_null(pc.cast(col, pa.int64()), -1).to_numpy()


def _subset(data: TraceData, keep: np.ndarray, pid: int | None, device: int) -> TraceData:
    """One (process, GPU) unit of a trace, as a part: its kernels (for alignment and run_ranks)."""
    return TraceData(format=data.format, kernels=data.kernels.filter(pa.array(keep)),
                     gpu_name=data.gpu_name, trace_meta=data.trace_meta, absent=list(data.absent))


# ---------------------------------------------------------------- clocks

def collective_ends(data: TraceData) -> dict[tuple[str, int], int]:
    """(operation, k) -> end of the k-th collective of that operation on this rank (k from 0, in
    start order). Point-to-point transfers are left out: they pair two ranks, not all."""
    k = data.kernels
    if k.num_rows == 0:
        return {}
    names = k.column("name")
    if not pa.types.is_dictionary(names.type):
        names = pc.dictionary_encode(names)
    names = names.unify_dictionaries() if isinstance(names, pa.ChunkedArray) else names
    chunks = names.chunks if isinstance(names, pa.ChunkedArray) else [names]
    if not chunks:
        return {}
    dictionary = chunks[0].dictionary.to_pylist()
    ops = [collective_op(n) if n is not None else None for n in dictionary]
    codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in chunks])
    start = k.column("start_ns").to_numpy()
    end = k.column("end_ns").to_numpy()
    order = np.argsort(start, kind="stable")
    out: dict[tuple[str, int], int] = {}
    count: dict[str, int] = {}
    for i in order:
        op = ops[codes[i]]
        if op is None or op in POINT_TO_POINT:
            continue
        n = count.get(op, 0)
        out[(op, n)] = int(end[i])
        count[op] = n + 1
    return out


def _align(parts: list[RankPart], notes: list[str]) -> None:
    """Put every rank of separate files on the reference (lowest) rank's clock: the offset that
    makes the ends of the collectives they share coincide (median over collectives)."""
    ref = parts[0]
    ref.align_method = "reference"
    ends = {p.rank: collective_ends(p.data) for p in parts}
    ops_count = {p.rank: _count_by_op(ends[p.rank]) for p in parts}
    for p in parts[1:]:
        shared_ops = [op for op, n in ops_count[p.rank].items() if ops_count[ref.rank].get(op) == n]
        keys = [key for key in ends[p.rank] if key[0] in shared_ops]
        if not keys:
            p.align_method = "none"
            notes.append(f"rank {p.rank}: no collective shared with rank {ref.rank} in equal number; "
                         "left on its own clock, cross-rank wait not computed")
            continue
        diffs = np.array([ends[ref.rank][key] - ends[p.rank][key] for key in keys], np.int64)
        offset = int(np.median(diffs))
        p.clock_offset_ns = offset
        p.align_method = "collective-end"
        p.align_events = len(keys)
        p.align_spread_ns = int(np.median(np.abs(diffs - offset)))
    ref.align_events = max((p.align_events or 0 for p in parts[1:]), default=0) or None


def _count_by_op(ends: dict[tuple[str, int], int]) -> dict[str, int]:
    out: dict[str, int] = {}
    for op, _ in ends:
        out[op] = out.get(op, 0) + 1
    return out


# ---------------------------------------------------------------- merging

def _shift(t: pa.Table, offset: int) -> pa.Table:
    if offset == 0:
        return t
    for col in ("start_ns", "end_ns"):
        if col in t.column_names:
            i = t.schema.get_field_index(col)
            t = t.set_column(i, col, pc.add(t.column(col), pa.scalar(offset, pa.int64())))
    return t


def _renumber(t: pa.Table, table: str, offsets: dict[str, int]) -> pa.Table:
    for col, target in _ID_COLUMNS[table].items():
        off = offsets.get(target, 0)
        if off and col in t.column_names:
            i = t.schema.get_field_index(col)
            t = t.set_column(i, col, pc.add(t.column(col), pa.scalar(off, pa.int64())))
    return t


def _merge(parts: list[RankPart], world: int | None, *, shared_clock: bool, notes: list[str]) -> RankedTrace:
    """One RankedTrace from ranks: ids offset so they stay unique, times shifted onto one clock, a
    rank column on every table (the parts keep their own data for per-rank stage attribution)."""
    next_id = dict.fromkeys(_TABLES, 0)
    tables: dict[str, list[pa.Table]] = {t: [] for t in _TABLES}
    seen_pids: set[int] = set()
    for p in parts:
        p.id_offset = dict(next_id)
        pids = _pids(p.data)
        pid_shift = (p.rank + 1) << 32 if pids & seen_pids else 0
        if pid_shift:
            notes.append(f"rank {p.rank}: process ids shifted by {pid_shift} (the same ids as another rank's)")
        seen_pids |= {x + pid_shift for x in pids}
        for t in _TABLES:
            src = p.data.table(t)
            out = _shift(_renumber(src, t, p.id_offset), p.clock_offset_ns)
            if pid_shift and "pid" in out.column_names:
                i = out.schema.get_field_index("pid")
                out = out.set_column(i, "pid", pc.add(out.column("pid"), pa.scalar(pid_shift, pa.int64())))
            out = out.append_column("rank", pa.array(np.full(out.num_rows, p.rank, np.int32)))
            tables[t].append(out)
            ids = src.column(_ID_OF[t]).to_numpy() if src.num_rows else np.zeros(0, np.int64)
            next_id[t] += int(ids.max()) + 1 if len(ids) else 0
    merged = {t: pa.concat_tables(ts, promote_options="permissive") for t, ts in tables.items()}
    first = parts[0].data
    present = [p.rank for p in parts]
    world = world or len(parts)
    missing = sorted(set(range(world)) - set(present))
    absent = sorted({a for p in parts for a in p.data.absent})
    if missing:
        absent.append(f"ranks {','.join(map(str, missing))} of world size {world}: no trace")
    absent += notes
    gpu = sorted({p.data.gpu_name for p in parts if p.data.gpu_name})
    return RankedTrace(
        format=first.format, kernels=merged["kernels"], launches=merged["launches"], ranges=merged["ranges"],
        ops=merged["ops"], memops=merged["memops"], gpu_name=", ".join(gpu) or None,
        tool_versions=first.tool_versions,
        trace_meta={"ranks": {str(p.rank): p.data.trace_meta for p in parts}} if len(parts) > 1 else first.trace_meta,
        found_meta=first.found_meta, absent=absent, parts=parts, world_size=world, shared_clock=shared_clock)


def ranks_text(present: Sequence[int], world: int) -> str:
    missing = sorted(set(range(world)) - set(present))
    text = ",".join(map(str, sorted(present)))
    return text + (f" (missing {','.join(map(str, missing))})" if missing else "")


# ---------------------------------------------------------------- storing

def prepare(path: Path, data: TraceData) -> TraceData:
    """What the importer stores for one parsed file: a multi-rank run when the trace is one."""
    return data if isinstance(data, RankedTrace) else ranks_of_trace(path, data)


def insert(con, data: TraceData, **kw) -> int:
    """store.insert_run, or for a multi-rank run insert_ranked_run (same arguments)."""
    from tracekit.store import insert_run

    if isinstance(data, RankedTrace):
        return insert_ranked_run(con, data, **kw)
    return insert_run(con, data, **kw)


def insert_ranked_run(con, data: RankedTrace, *, stages=None, **kw) -> int:
    """Insert a multi-rank run (caller owns the transaction): the merged rows with their rank, stages
    attributed per rank (`rank` is part of enrich.stages.PARTITION, so passes and iterations are
    numbered within each rank), then `run_ranks` and runs.world_size / ranks."""
    from tracekit.store import insert_run

    run_id = insert_run(con, data, stages=stages, **kw)
    present = [p.rank for p in data.parts]
    con.execute("UPDATE runs SET world_size = ?, ranks = ? WHERE run_id = ?",
                [data.world_size, ranks_text(present, data.world_size or len(present)), run_id])
    method = con.execute("SELECT stage_method FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0]
    for p in data.parts:
        k = p.data.kernels
        dev = _ints(k.column("device")) if k.num_rows else np.zeros(0, np.int64)
        pid = _ints(k.column("pid")) if k.num_rows else np.zeros(0, np.int64)
        if p.data.launches.num_rows and (pid < 0).all():
            pid = _ints(p.data.launches.column("pid"))
        # This rank's own passes: its method where it has any, and its complete iterations.
        n_pass, iterations = con.execute(
            "SELECT count(*), count(DISTINCT iteration) FILTER (WHERE stage IN ('summarization', 'generation')) "
            "FROM passes WHERE run_id = ? AND rank = ?", [run_id, p.rank]).fetchall()[0]
        con.execute(
            "INSERT INTO run_ranks VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, p.rank, int(dev[dev >= 0].min()) if (dev >= 0).any() else None,
             int(pid[pid >= 0].min()) if (pid >= 0).any() else None, p.source_name, p.content_hash,
             p.rank_source, p.clock_offset_ns, p.align_method, p.align_events, p.align_spread_ns,
             method if n_pass else "none", iterations, k.num_rows,
             int(pc.sum(k.column("dur_ns")).as_py() or 0) if k.num_rows else 0])
    return run_id


def import_group(con, group: RankGroup, *, store, parse, file_hash, find_run, replace: bool):
    """Import the files of one job as one run, atomically: any bad member fails the whole job (one
    line naming the file) and stores nothing. `store`, `parse`, ... are the importer's own steps."""
    import time

    from tracekit.importer import ImportResult

    t0 = time.perf_counter()
    label = str(group.label)
    try:
        hashes = [file_hash(f) for f in group.members]
    except TraceError as exc:
        return ImportResult(label, "failed", error=str(exc))
    h = group_hash(hashes)
    existing = find_run(con, h)
    if existing is not None and not replace:
        return ImportResult(label, "skipped", run_id=existing, seconds=time.perf_counter() - t0)
    parsed = []
    for f, fh in zip(group.members, hashes, strict=True):
        data = parse(f)
        if isinstance(data, TraceError):
            return ImportResult(label, "failed", error=f"{data} (job {group.label.name}: nothing of it stored)")
        parsed.append((f, fh, data))
    try:
        job = job_from_files(group, parsed)
    except TraceError as exc:
        return ImportResult(label, "failed", error=str(exc))
    return store(group.label, h, job, t0)
