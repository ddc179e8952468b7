"""Interval nesting on one thread's timeline: parents, depths, and the innermost interval around a point.

CPU-side ranges (NVTX push/pop, record_function, operators) nest like a call stack on their
thread, so each thread is swept once in start order. The point lookup is vectorised with numpy:
the candidate is the last interval starting at or before the point, then parents are followed
(a few levels at most) until one still covers the point.
"""

from __future__ import annotations

import numpy as np


def _thread_keys(pid: np.ndarray, tid: np.ndarray) -> np.ndarray:
    return np.stack([np.nan_to_num(pid.astype("float64"), nan=-1), np.nan_to_num(tid.astype("float64"), nan=-1)], 1)


def nest(pid: np.ndarray, tid: np.ndarray, start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Depth (0 = outermost) and parent row index (-1 = none) of each interval on its thread."""
    n = len(start)
    depth = np.zeros(n, dtype=np.int32)
    parent = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return depth, parent
    keys = _thread_keys(pid, tid)
    # Sort by thread, then start ascending, then end descending so an enclosing interval with the
    # same start comes before what it encloses.
    order = np.lexsort((-end, start, keys[:, 1], keys[:, 0]))
    k = keys[order]
    bounds = np.flatnonzero((k[1:] != k[:-1]).any(axis=1)) + 1
    # The sweep works on plain lists in sorted position (numpy scalar access per row is ~10x slower).
    s_list, e_list = start[order].tolist(), end[order].tolist()
    par = [-1] * n
    dep = [0] * n
    for a, b in zip([0, *bounds.tolist()], [*bounds.tolist(), n], strict=True):
        stack: list[int] = []
        for j in range(a, b):
            s = s_list[j]
            e = e_list[j]
            while stack:
                t = stack[-1]
                et = e_list[t]
                if et <= s and not (et == s == s_list[t]):
                    stack.pop()
                # Partial overlaps (legal for NVTX start/end ranges) are not nesting: pop those too.
                elif et < e:
                    stack.pop()
                else:
                    break
            if stack:
                t = stack[-1]
                par[j] = t
                dep[j] = dep[t] + 1
            stack.append(j)
    p = np.array(par, dtype=np.int64)
    parent[order] = np.where(p >= 0, order[np.clip(p, 0, None)], -1)
    depth[order] = np.array(dep, dtype=np.int32)
    return depth, parent


def innermost(
    pt_pid: np.ndarray, pt_tid: np.ndarray, pt_ts: np.ndarray,
    iv_pid: np.ndarray, iv_tid: np.ndarray, iv_start: np.ndarray, iv_end: np.ndarray, iv_parent: np.ndarray,
) -> np.ndarray:
    """Row index of the innermost interval on the point's thread that covers it, or -1."""
    out = np.full(len(pt_ts), -1, dtype=np.int64)
    if len(pt_ts) == 0 or len(iv_start) == 0:
        return out
    pk = _thread_keys(pt_pid, pt_tid)
    ik = _thread_keys(iv_pid, iv_tid)
    # One complex number per (pid, tid): a 1-D unique is far cheaper than np.unique(axis=0).
    pkey = pk[:, 0] + 1j * pk[:, 1]
    ikeys, iinv = np.unique(ik[:, 0] + 1j * ik[:, 1], return_inverse=True)
    iinv = iinv.reshape(-1)
    for g, key in enumerate(ikeys):
        rows = np.nonzero(iinv == g)[0]
        pts = np.nonzero(pkey == key)[0]
        if len(pts) == 0:
            continue
        o = np.lexsort((-iv_end[rows], iv_start[rows]))
        rows = rows[o]
        starts = iv_start[rows]
        ts = pt_ts[pts]
        pos = np.searchsorted(starts, ts, side="right") - 1
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
