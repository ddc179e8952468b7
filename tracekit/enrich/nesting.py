"""Interval nesting on one thread's timeline: parents, depths, and the innermost interval around a point.

CPU-side ranges (NVTX push/pop, record_function, operators) nest like a call stack on their
thread: the parents are those of a call-stack sweep in start order (`_sweep`), found without a
per-row Python loop (`_nearest_cover`; the sweep itself remains for intervals that end before
they start). The point lookup is vectorised with numpy too:
the candidate is the last interval starting at or before the point, then parents are followed
(a few levels at most) until one still covers the point.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


def _thread_keys(pid: np.ndarray, tid: np.ndarray) -> np.ndarray:
    return np.stack([np.nan_to_num(pid.astype("float64"), nan=-1), np.nan_to_num(tid.astype("float64"), nan=-1)], 1)


class Timeline(NamedTuple):
    """Intervals sorted by thread, start, then end descending (stable: ties keep row order), so
    that an enclosing interval with the same start comes before what it encloses and each
    thread is a slice of `order`: its rows begin at 0 and at each of `bounds`, and `keys` are
    the threads' (pid, tid), NaN as -1. nest and innermost take the same one."""

    order: np.ndarray
    bounds: np.ndarray
    keys: list[tuple[float, float]]


def timeline(pid: np.ndarray, tid: np.ndarray, start: np.ndarray, end: np.ndarray) -> Timeline:
    kp = np.nan_to_num(pid.astype("float64"), nan=-1)
    kt = np.nan_to_num(tid.astype("float64"), nan=-1)
    # Readers number rows by start, then end descending: there a stable sort by thread alone
    # gives the same order as the four keys, ~20x faster, without the negated copy of `end`.
    # (Keys as 1-D arrays, as _thread_keys gives them stacked: a stacked copy of millions of
    # rows is memory for nothing.)
    if len(start) < 2 or _in_time_order(start, end):
        order = np.lexsort((kt, kp))
    else:
        order = np.lexsort((-end, start, kt, kp))
    kp, kt = kp[order], kt[order]
    bounds = np.flatnonzero((kp[1:] != kp[:-1]) | (kt[1:] != kt[:-1])) + 1
    firsts = np.concatenate([[0], bounds]) if len(order) else bounds
    return Timeline(order, bounds, list(zip(kp[firsts].tolist(), kt[firsts].tolist(), strict=True)))


def _in_time_order(start: np.ndarray, end: np.ndarray) -> bool:
    s0, s1 = start[:-1], start[1:]
    return bool(np.all((s1 > s0) | ((s1 == s0) & (end[1:] <= end[:-1]))))


def nest(pid: np.ndarray, tid: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth (0 = outermost) and parent row index (-1 = none) of each interval on its thread."""
    return nest_on(timeline(pid, tid, start, end), start, end)


def nest_on(by_thread: Timeline, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """nest, for intervals whose timeline the caller has already (innermost takes it too)."""
    n = len(start)
    depth = np.zeros(n, dtype=np.int32)
    parent = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return depth, parent
    order, bounds, _ = by_thread
    s_sorted, e_sorted = start[order], end[order]
    # The search below assumes end >= start and computes start + 1 without overflow.
    if (e_sorted < s_sorted).any() or s_sorted.max() == np.iinfo(np.int64).max:
        p, dep = _sweep(s_sorted, e_sorted, bounds)
    else:
        p, dep = _blocked_cover(s_sorted, e_sorted, bounds)
    parent[order] = np.where(p >= 0, order[np.clip(p, 0, None)], -1)
    depth[order] = dep
    return depth, parent


# Rows searched at once by _nearest_cover: its sparse table holds ~log2(distance to the parent)
# copies of the block's ends, so whole traces of millions of ops would need hundreds of MB.
BLOCK = 1 << 18


def _blocked_cover(s: np.ndarray, e: np.ndarray, bounds: np.ndarray, block: int = BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """_nearest_cover's parents and their depths, a block of sorted rows at a time.

    Before a block, the sweep's stack is the previous row and its ancestors (a row on the stack
    has what was under it when it was pushed, its own ancestors, below it); by _nearest_cover's
    argument, a row's parent is in that stack or earlier in its block. So each block is searched
    with that chain in front of it, whose parents and depths are already known."""
    n = len(s)
    if n <= block:
        p = _nearest_cover(s, e, bounds)
        return p, _depths(p)
    parent = np.empty(n, dtype=np.int64)
    depth = np.empty(n, dtype=np.int32)
    new_thread = np.zeros(n + 1, dtype=bool)
    new_thread[bounds] = True
    for a in range(0, n, block):
        b = min(a + block, n)
        chain: list[int] = []
        if a and not new_thread[a]:
            t = a - 1
            while t >= 0:
                chain.append(t)
                t = int(parent[t])
            chain.reverse()
        m = len(chain)
        idx = np.concatenate([np.array(chain, dtype=np.int64), np.arange(a, b, dtype=np.int64)])
        local_bounds = bounds[(bounds > a) & (bounds < b)] - a + m
        p = _nearest_cover(s[idx], e[idx], local_bounds)
        p[:m] = -1  # the chain's rows are roots here, at their known depths
        base = np.zeros(len(idx), dtype=np.int64)
        base[:m] = depth[idx[:m]]
        parent[a:b] = np.where(p[m:] >= 0, idx[np.clip(p[m:], 0, None)], -1)
        depth[a:b] = _depths(p, base)[m:]
    return parent, depth


def _sweep(s: np.ndarray, e: np.ndarray, bounds: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The call-stack sweep over sorted intervals: parent position (-1 = none) and depth.

    On a thread's stack, the top is popped while it does not cover the next interval (ends
    before it: touching is not nesting, unless both are zero-length at the same instant; or
    ends before it does: a partial overlap, legal for NVTX start/end ranges). The parent is the
    top that remains."""
    n = len(s)
    # Plain lists: numpy scalar access per row is ~10x slower.
    s_list, e_list = s.tolist(), e.tolist()
    par = [-1] * n
    dep = [0] * n
    for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), n], strict=True):
        stack: list[int] = []
        for j in range(a, b):
            sj = s_list[j]
            ej = e_list[j]
            while stack:
                t = stack[-1]
                et = e_list[t]
                if et <= sj and not (et == sj == s_list[t]):
                    stack.pop()
                elif et < ej:
                    stack.pop()
                else:
                    break
            if stack:
                t = stack[-1]
                par[j] = t
                dep[j] = dep[t] + 1
            stack.append(j)
    return np.array(par, dtype=np.int64), np.array(dep, dtype=np.int32)


def _nearest_cover(s: np.ndarray, e: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """_sweep's parents without the per-row loop, for intervals with end >= start.

    The sweep's pop test is exactly "does not cover", and an interval popped while it still
    covers a later one j was popped by a later interval that covers j too. So the parent is the
    nearest earlier interval on the thread that covers j: e_t >= e_j and e_t > s_j, or (for a
    zero-length j) a zero-length t at the same instant, which, in sort order, can only be j-1.
    "Nearest earlier position with e_t >= need_j" is searched over a sparse table of range
    maxima of e."""
    n = len(s)
    pos = np.arange(n, dtype=np.int64)
    seg = np.zeros(n, dtype=np.int64)  # first position of each row's thread
    if len(bounds):
        seg[bounds] = bounds
        seg = np.maximum.accumulate(seg)
    zero = e == s
    # e is int64 nanoseconds: "e_t > s_j" is "e_t >= s_j + 1".
    need = np.where(zero, s + 1, e)
    tables = [e]  # tables[k][i] = max(e[i : i + 2^k]), built as far as a search reaches

    def block_max(level: int, first: np.ndarray) -> np.ndarray:
        while len(tables) <= level:
            half = 1 << (len(tables) - 1)
            tables.append(np.maximum(tables[-1][:-half], tables[-1][half:]))
        return tables[level][first]

    # Rows that nothing earlier on their thread reaches (the outermost) have no parent: found
    # from the running maximum of e per thread, so that the search below only runs for rows
    # that will find one.
    reach = np.empty(n, dtype=e.dtype)
    for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), n], strict=True):
        np.maximum.accumulate(e[a:b], out=reach[a:b])
    has = np.zeros(n, dtype=bool)
    has[1:] = (pos[1:] > seg[1:]) & (reach[:-1] >= need[1:])
    # Invariant: every position in [lo, j) is below need_j. Most parents are a few rows back, so
    # gallop outwards (blocks of 1, 2, 4, ... rows, clipped at the thread's start) until a block
    # reaches need_j, then bisect back inside it: O(log distance) per row.
    lo = pos.copy()
    rows = np.flatnonzero(has)
    stop = np.zeros(n, dtype=np.int64)  # the level of the block where each row's gallop stopped
    level = 0
    while rows.size:
        first = np.maximum(lo[rows] - (1 << level), seg[rows])
        # A clipped block also covers rows at or after lo: a false "reaches" only ends the
        # gallop early, and the answer is still less than 2^level rows back, as bisecting needs.
        below = (block_max(level, first) < need[rows]) & (first + (1 << level) == lo[rows])
        lo[rows[below]] = first[below]
        stop[rows[~below]] = level
        rows = rows[below]
        level += 1
    for level in range(int(stop.max()) - 1, -1, -1):
        rows = np.flatnonzero(stop > level)
        first = lo[rows] - (1 << level)
        inside = first >= seg[rows]
        rows, first = rows[inside], first[inside]
        below = block_max(level, first) < need[rows]
        lo[rows[below]] = first[below]
    parent = np.where(has, lo - 1, -1)
    prev_zero = np.zeros(n, dtype=bool)
    prev_zero[1:] = zero[:-1] & (s[:-1] == s[1:]) & (seg[1:] <= pos[:-1])
    return np.where(zero & prev_zero, pos - 1, parent)


def _depths(parent: np.ndarray, base: np.ndarray | None = None) -> np.ndarray:
    """Ancestors of each node, by pointer doubling (parents come before children); a root
    counts `base` ancestors of its own (0 without it)."""
    depth = (parent >= 0).astype(np.int64)
    if base is not None:
        depth = np.where(parent >= 0, depth, base)
    up = parent.copy()
    while True:
        live = np.flatnonzero(up >= 0)
        if live.size == 0:
            break
        anc = up[live]
        depth[live] += depth[anc]
        up[live] = up[anc]
    return depth.astype(np.int32)


def innermost(pt_pid: np.ndarray, pt_tid: np.ndarray, pt_ts: np.ndarray, intervals: Timeline,
              iv_start: np.ndarray, iv_end: np.ndarray, iv_parent: np.ndarray) -> np.ndarray:
    """Row index of the innermost interval on the point's thread that covers it, or -1.
    `intervals` is the intervals' timeline (each thread a slice of it), iv_parent nest's parents."""
    out = np.full(len(pt_ts), -1, dtype=np.int64)
    if len(pt_ts) == 0 or len(iv_start) == 0:
        return out
    order, bounds, keys = intervals
    firsts = [0, *bounds.tolist()]
    lasts = [*bounds.tolist(), len(order)]
    pp = np.nan_to_num(pt_pid.astype("float64"), nan=-1)
    ptt = np.nan_to_num(pt_tid.astype("float64"), nan=-1)
    for (kp, kt), a, b in zip(keys, firsts, lasts, strict=True):
        pts = np.flatnonzero((pp == kp) & (ptt == kt))
        if len(pts) == 0:
            continue
        rows = order[a:b]
        starts = iv_start[rows]
        ts = pt_ts[pts]
        pos = np.searchsorted(starts, ts, side="right") - 1
        del starts
        cand = np.where(pos >= 0, rows[np.clip(pos, 0, None)], -1)
        # Walk up the parent chain while the candidate ended before the point.
        for _ in range(256):
            valid = cand >= 0
            stale = valid & (iv_end[np.where(valid, cand, 0)] < ts)
            if not stale.any():
                break
            cand = np.where(stale, iv_parent[np.where(valid, cand, 0)], cand)
        out[pts] = cand
    return out
