"""Links each kernel to the CUDA API call that launched it, and that call to the innermost CPU
operator and range around it on the launching thread. Also nests ranges and ops, and keeps only
the launches: the API calls some kernel or memory operation links to (_only_launches).

Runs on a reader's TraceData before it is stored, so the store receives complete rows and an
import stays one INSERT per table.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from tracekit.enrich.nesting import Timeline, innermost, nest_on, timeline
from tracekit.readers.common import TraceData, give_back_memory


def _np(t: pa.Table, col: str, dtype: str = "float64") -> np.ndarray:
    # Nullable integer columns become float with NaN for null, which nest/innermost treat as -1.
    return t.column(col).to_numpy(zero_copy_only=False).astype(dtype, copy=False)


def _with_nesting(t: pa.Table) -> tuple[pa.Table, np.ndarray, Timeline]:
    """t with depth and parent_id, its rows' parents, and its timeline (innermost takes it too)."""
    start = _np(t, "start_ns", "int64")
    end = _np(t, "end_ns", "int64")
    by_thread = timeline(_np(t, "pid"), _np(t, "tid"), start, end)
    depth, parent = nest_on(by_thread, start, end)
    id_col = t.column(0).to_numpy(zero_copy_only=False)
    parent_id = pa.array(np.where(parent >= 0, id_col[np.clip(parent, 0, None)], 0), pa.int64(),
                         mask=parent < 0)
    t = t.append_column("depth", pa.array(depth, pa.int32())).append_column("parent_id", parent_id)
    return t, parent, by_thread


def _link_unique(rows: pa.Table, launches: pa.Table) -> pa.Array | None:
    """The join below, by binary search, for the usual case of unique correlation ids among the
    launches (one process): then each row has at most one candidate, kept when the pids agree or
    either is unknown. None when ids repeat, for the general join to decide."""
    l_corr = launches.column("correlation")
    have = l_corr.is_valid().to_numpy(zero_copy_only=False)
    lc = l_corr.to_numpy(zero_copy_only=False)[have].astype(np.int64)
    if lc.size == 0:
        return None
    order = np.argsort(lc, kind="stable")
    lc = lc[order]
    if (lc[1:] == lc[:-1]).any():
        return None
    l_id = launches.column("launch_id").to_numpy(zero_copy_only=False)[have][order]
    l_pid = _np(launches, "pid")[have][order]
    r_corr = rows.column("correlation")
    r_ok = r_corr.is_valid().to_numpy(zero_copy_only=False)
    rc = np.where(r_ok, _np(rows, "correlation"), 0).astype(np.int64)
    pos = np.clip(np.searchsorted(lc, rc), 0, lc.size - 1)
    found = r_ok & (lc[pos] == rc)
    r_pid = _np(rows, "pid") if "pid" in rows.column_names else np.full(rows.num_rows, np.nan)
    lp = l_pid[pos]
    # NaN stands for an unknown pid (see _np): unknown on either side does not contradict.
    found &= np.isnan(r_pid) | np.isnan(lp) | (r_pid == lp)
    return pa.array(np.where(found, l_id[pos], 0), pa.int64(), mask=~found)


def _ints(t: pa.Table, col: str) -> tuple[np.ndarray, np.ndarray]:
    """A nullable integer column as exact int64 values (0 where null) and its validity mask."""
    c = t.column(col)
    valid = c.is_valid().to_numpy(zero_copy_only=False)
    return c.fill_null(0).to_numpy(zero_copy_only=False).astype(np.int64), valid


def _link_general(rows: pa.Table, launches: pa.Table) -> tuple[pa.Array, int]:
    """Each row's launch when correlation ids repeat (several processes), and how many rows
    could not be attributed. Candidates are the launches with the row's correlation id whose pid
    agrees with the row's (or either pid is unknown). Where they all belong to one process, the
    first in launch order is taken. Where they span processes (a Kineto kernel knows its device,
    not its process), a launch that starts after the kernel cannot be its launch; of the rest,
    the one of the process that every unambiguous row on the same device was launched from.
    Otherwise the row stays unlinked and is counted: a wrong process would be a silent error.
    In NumPy rather than a dataframe join so that an import never loads polars."""
    n = rows.num_rows
    rc, r_ok = _ints(rows, "correlation")
    if "pid" in rows.column_names:
        r_pid, r_has_pid = _ints(rows, "pid")
    else:
        r_pid, r_has_pid = np.zeros(n, np.int64), np.zeros(n, bool)
    lc, l_ok = _ints(launches, "correlation")
    l_pid, l_has_pid = _ints(launches, "pid")
    l_id, l_has_id = _ints(launches, "launch_id")
    keep = np.flatnonzero(l_ok)
    # Stable: equal ids stay in launch order, so "first candidate" means first launch.
    keep = keep[np.argsort(lc[keep], kind="stable")]
    lc_s = lc[keep]
    lo = np.searchsorted(lc_s, rc, side="left")
    hi = np.searchsorted(lc_s, rc, side="right")
    count = np.where(r_ok, hi - lo, 0)
    # One (row, candidate) pair per match, rows in order, candidates in launch order within a row.
    pair_row = np.repeat(np.arange(n), count)
    starts = np.cumsum(count) - count
    pair_cand = keep[lo[pair_row] + (np.arange(pair_row.size) - starts[pair_row])]
    exact = r_has_pid[pair_row] & l_has_pid[pair_cand] & (r_pid[pair_row] == l_pid[pair_cand])
    agree = exact | ~r_has_pid[pair_row] | ~l_has_pid[pair_cand]
    pr, pc, rank = pair_row[agree], pair_cand[agree], np.where(exact[agree], 0, 1)
    big = np.iinfo(np.int64).max

    def spanning(pr: np.ndarray, pc: np.ndarray) -> np.ndarray:
        """Rows of unknown process whose candidates' known processes are more than one."""
        sel = ~r_has_pid[pr] & l_has_pid[pc]
        pmin = np.full(n, big, np.int64)
        pmax = np.full(n, -big, np.int64)
        np.minimum.at(pmin, pr[sel], l_pid[pc[sel]])
        np.maximum.at(pmax, pr[sel], l_pid[pc[sel]])
        return (pmin != pmax) & (pmin != big)

    multi = spanning(pr, pc)
    if multi.any() and "start_ns" in rows.column_names and "start_ns" in launches.column_names:
        # A launch cannot start after the kernel it launched did.
        r_start = _ints(rows, "start_ns")[0]
        l_start = _ints(launches, "start_ns")[0]
        keep_ = ~(multi[pr] & (l_start[pc] > r_start[pr]))
        pr, pc, rank = pr[keep_], pc[keep_], rank[keep_]
        multi = spanning(pr, pc)
    lp = np.where(l_has_pid[pc], l_pid[pc], -1)
    # The first candidate per row: of the row's own process if any, else of an unknown one;
    # then in launch order (pairs are in launch order within a row).
    order = np.lexsort((np.arange(pr.size), rank, pr))
    pr, pc, lp = pr[order], pc[order], lp[order]
    ok_rows, first = np.unique(pr, return_index=True)
    out = np.zeros(n, np.int64)
    found = np.zeros(n, bool)
    chosen = pc[first]
    out[ok_rows] = l_id[chosen]
    found[ok_rows] = l_has_id[chosen]
    found &= ~multi
    unresolved = int(multi.sum())
    if unresolved and "device" in rows.column_names:
        dev, has_dev = _ints(rows, "device")
        # The process each device's unambiguous rows were launched from (one, or no verdict).
        settled = np.flatnonzero(found & has_dev & ~multi)
        chosen_of = np.full(n, -1, np.int64)
        chosen_of[ok_rows] = chosen
        owner: dict[int, int] = {}
        s_pid = np.where(l_has_pid[chosen_of[settled]], l_pid[chosen_of[settled]], -1)
        for d, p_ in set(zip(dev[settled].tolist(), s_pid.tolist(), strict=True)):
            owner[d] = p_ if d not in owner else -2  # -2: launched from several processes, no verdict
        want_pid = np.array([owner.get(d, -2) for d in dev.tolist()], np.int64)
        want_pid[~has_dev] = -2
        sel = multi[pr] & (lp == want_pid[pr])
        rows_ok, first_ok = np.unique(pr[sel], return_index=True)
        out[rows_ok] = l_id[pc[sel][first_ok]]
        found[rows_ok] = l_has_id[pc[sel][first_ok]]
        unresolved -= rows_ok.size
    return pa.array(out, pa.int64(), mask=~found), unresolved


def _link_to_launch(rows: pa.Table, launches: pa.Table) -> tuple[pa.Array, int]:
    """launch_id for each row of kernels/memops, joined on correlation (and process where the
    ids repeat); and the number of rows whose process could not be decided (left unlinked)."""
    if rows.num_rows == 0 or launches.num_rows == 0:
        return pa.nulls(rows.num_rows, pa.int64()), 0
    # Correlation ids are unique per process; most traces hold one process, so match on the id
    # and use pid only to break ties between processes.
    fast = _link_unique(rows, launches)
    if fast is not None:
        return fast, 0
    return _link_general(rows, launches)


def link(data: TraceData) -> TraceData:
    ranges, r_parent, r_timeline = _with_nesting(data.ranges)
    ops, o_parent, o_timeline = _with_nesting(data.ops)
    # Here and below: the temporaries of millions of rows go back before the next step's are made.
    give_back_memory()
    launch_id, k_unresolved = _link_to_launch(data.kernels, data.launches)
    kernels = data.kernels.append_column("launch_id", launch_id)
    m_launch, m_unresolved = _link_to_launch(data.memops, data.launches)
    memops = data.memops.append_column("launch_id", m_launch)
    if data.launches.num_rows:
        no_launch = int((launch_id.is_null().to_numpy(zero_copy_only=False)
                         & data.kernels.column("correlation").is_valid().to_numpy(zero_copy_only=False)).sum()) - k_unresolved
        if no_launch:
            data.absent.append(f"launch of {no_launch} kernels: no launch event with their correlation id in the trace "
                               "(recorded outside the profiled window, or removed)")
    if k_unresolved or m_unresolved:
        data.absent.append(f"launch of {k_unresolved} kernels and {m_unresolved} memory operations: their correlation "
                           "ids are used by several processes and nothing in the trace tells which launched them "
                           "(left unlinked)")

    give_back_memory()
    # Where each kernel was launched from: its launch's thread and start time.
    la = data.launches
    lid = launch_id.to_numpy(zero_copy_only=False).astype("float64")
    has = ~np.isnan(lid)
    idx = np.where(has, lid, 0).astype(np.int64)  # launch_id == row index (readers number rows 0..n-1)
    if la.num_rows:
        l_pid, l_tid, l_ts = _np(la, "pid")[idx], _np(la, "tid")[idx], _np(la, "start_ns", "int64")[idx]
    else:
        l_pid = l_tid = np.full(len(idx), np.nan)
        l_ts = np.zeros(len(idx), dtype=np.int64)
    l_pid = np.where(has, l_pid, np.nan)
    # A kernel's process is its launch's (Kineto's GPU rows carry a device, not a process).
    k_pid = kernels.column("pid")
    if k_pid.null_count and (fill := has & ~np.isnan(l_pid) & ~k_pid.is_valid().to_numpy(zero_copy_only=False)).any():
        vals = np.where(fill, np.nan_to_num(l_pid), k_pid.fill_null(0).to_numpy(zero_copy_only=False)).astype(np.int64)
        mask = ~(fill | k_pid.is_valid().to_numpy(zero_copy_only=False))
        kernels = kernels.set_column(kernels.schema.get_field_index("pid"), kernels.schema.field("pid"),
                                     pa.array(vals, kernels.schema.field("pid").type, mask=mask))
    op_row = innermost(l_pid, l_tid, l_ts, o_timeline, _np(ops, "start_ns", "int64"), _np(ops, "end_ns", "int64"),
                       o_parent)
    rg_row = innermost(l_pid, l_tid, l_ts, r_timeline, _np(ranges, "start_ns", "int64"),
                       _np(ranges, "end_ns", "int64"), r_parent)
    op_ids = ops.column("op_id").to_numpy(zero_copy_only=False)
    rg_ids = ranges.column("range_id").to_numpy(zero_copy_only=False)
    op_id = pa.array(np.where(op_row >= 0, op_ids[np.clip(op_row, 0, None)] if len(op_ids) else 0, 0),
                     pa.int64(), mask=op_row < 0)
    range_id = pa.array(np.where(rg_row >= 0, rg_ids[np.clip(rg_row, 0, None)] if len(rg_ids) else 0, 0),
                        pa.int64(), mask=rg_row < 0)
    kernels = kernels.append_column("op_id", op_id).append_column("range_id", range_id)
    del op_row, rg_row, l_pid, l_tid, l_ts, idx, lid, o_timeline, r_timeline
    data.launches, kernels, memops = _only_launches(data.launches, kernels, memops)
    data.kernels, data.ranges, data.ops, data.memops = kernels, ranges, ops, memops
    give_back_memory()  # the nesting's temporaries (~200 B per op): the insert that follows reuses them
    return data


def _only_launches(launches: pa.Table, kernels: pa.Table, memops: pa.Table) -> tuple[pa.Table, pa.Table, pa.Table]:
    """The launches some kernel or memory operation links to, numbered 0..n-1 again in their
    order, and the kernels' and memops' launch_id renumbered to match.

    A trace records every runtime and driver call (cudaStreamSynchronize, cudaGetDevice,
    cudaEventRecord, ...): two thirds of an LLM export's calls launch nothing, and stored they
    would only be written, linked and scanned (issue 15). The one rule for every format, applied
    after linking: a launch is the call that launched GPU work of the trace. A graph launch is
    kept through its kernels (they carry its correlation id). Readers may drop calls earlier
    (the nsys reader keeps those whose correlation id some GPU row has), never one linked here.
    """
    n = launches.num_rows
    if n == 0:
        return launches, kernels, memops
    used = np.zeros(n, bool)
    for t in (kernels, memops):
        lid = t.column("launch_id")
        if lid.null_count < len(lid):
            used[lid.drop_null().to_numpy()] = True  # launch_id == row index (readers number rows 0..n-1)
    if used.all():
        return launches, kernels, memops
    new_id = np.cumsum(used) - 1
    kept = launches.filter(pa.array(used))
    i = kept.schema.get_field_index("launch_id")
    kept = kept.set_column(i, kept.schema.field(i), pa.array(np.arange(kept.num_rows), pa.int64()))

    def renumbered(t: pa.Table) -> pa.Table:
        i = t.schema.get_field_index("launch_id")
        col = t.column(i)
        valid = col.is_valid().to_numpy(zero_copy_only=False)
        ids = new_id[col.fill_null(0).to_numpy(zero_copy_only=False)]
        return t.set_column(i, t.schema.field(i), pa.array(ids, pa.int64(), mask=~valid))

    return kept, renumbered(kernels), renumbered(memops)
