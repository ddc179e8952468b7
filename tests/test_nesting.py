"""Interval nesting: the vectorised parent search must give exactly the call-stack sweep's answer."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import FIXTURES, KINETO_L2, KINETO_L3, NSYS_L2, NSYS_L3_SHAPES
from hypothesis import given, settings
from hypothesis import strategies as st

from tracekit.enrich.nesting import (
    _blocked_cover,
    _depths,
    _nearest_cover,
    _sweep,
    _thread_keys,
    nest,
    timeline,
)
from tracekit.readers import read


def _both(pid, tid, start, end):
    """(parents, depths) in sorted position from the sweep and from the vectorised search."""
    keys = _thread_keys(pid, tid)
    order = np.lexsort((-end, start, keys[:, 1], keys[:, 0]))
    k = keys[order]
    bounds = np.flatnonzero((k[1:] != k[:-1]).any(axis=1)) + 1
    s, e = start[order], end[order]
    sweep_parent, sweep_depth = _sweep(s, e, bounds)
    parent = _nearest_cover(s, e, bounds)
    # Searched a block of rows at a time (as nest does for millions of ops), with blocks small
    # enough that they cut threads, nesting chains and runs of equal starts everywhere.
    blocked = [_blocked_cover(s, e, bounds, block) for block in (1, 2, 5, 16)]
    return (sweep_parent, sweep_depth), (parent, _depths(parent)), blocked


def _assert_same(pid, tid, start, end):
    (sp, sd), (vp, vd), blocked = _both(pid, tid, start, end)
    assert np.array_equal(sp, vp)
    assert np.array_equal(sd, vd)
    for bp, bd in blocked:
        assert np.array_equal(sp, bp)
        assert np.array_equal(sd, bd)
    return sp, sd


@pytest.mark.parametrize("path", [KINETO_L2, KINETO_L3, NSYS_L2, NSYS_L3_SHAPES,
                                  FIXTURES / "variants" / "nsys_two_processes_two_gpus.sqlite"],
                         ids=lambda p: p.name)
def test_real_ops_and_ranges_nest_as_the_sweep_does(path):
    data = read(path)
    nested = compared = 0
    for table in (data.ops, data.ranges):
        if table.num_rows == 0:
            continue
        cols = [table.column(c).to_numpy(zero_copy_only=False).astype(t) for c, t in
                (("pid", "float64"), ("tid", "float64"), ("start_ns", "int64"), ("end_ns", "int64"))]
        parent, _ = _assert_same(*cols)
        nested += int((parent >= 0).sum())
        compared += len(parent)
    assert compared > 0
    if path.name.startswith("kineto"):
        assert nested > 0  # operators do nest: not a comparison of two all-empty answers


def test_edge_cases_touching_zero_length_partial_overlap_and_threads():
    # rows:        0: [0,10]  1: [0,10] same extent  2: [2,2] zero  3: [2,2] zero, same instant
    #              4: [2,5]   5: [5,8] touches 4     6: [8,12] partial overlap of 0
    #              7: [10,10] zero at 0's end        8: [3,4] on another thread
    pid = np.zeros(9)
    tid = np.array([1, 1, 1, 1, 1, 1, 1, 1, 2], dtype=float)
    start = np.array([0, 0, 2, 2, 2, 5, 8, 10, 3], dtype=np.int64)
    end = np.array([10, 10, 2, 2, 5, 8, 12, 10, 4], dtype=np.int64)
    _assert_same(pid, tid, start, end)
    depth, parent = nest(pid, tid, start, end)
    assert parent.tolist() == [-1, 0, 4, 2, 1, 1, -1, 6, -1]
    assert depth.tolist() == [0, 1, 3, 4, 2, 2, 0, 1, 0]


def test_negative_durations_take_the_sweep():
    pid = tid = np.zeros(3)
    start = np.array([0, 5, 6], dtype=np.int64)
    end = np.array([10, 3, 7], dtype=np.int64)
    depth, parent = nest(pid, tid, start, end)
    assert parent.tolist() == [-1, 0, 0]
    assert depth.tolist() == [0, 1, 1]


_interval = st.tuples(st.integers(0, 3), st.integers(0, 30), st.integers(0, 12))


@settings(max_examples=300, deadline=None)
@given(st.lists(_interval, max_size=60), st.randoms(use_true_random=False))
def test_random_intervals_nest_as_the_sweep_does(rows, rnd):
    if not rows:
        return
    tid = np.array([r[0] for r in rows], dtype=float)
    start = np.array([r[1] for r in rows], dtype=np.int64)
    # Durations of 0 are common in traces (and at equal starts the hardest case): make them so.
    end = start + np.array([r[2] if rnd.random() < 0.7 else 0 for r in rows], dtype=np.int64)
    pid = np.where(np.array([rnd.random() < 0.1 for _ in rows]), np.nan, 0.0)
    _assert_same(pid, tid, start, end)


@settings(max_examples=300, deadline=None)
@given(st.lists(_interval, max_size=60), st.randoms(use_true_random=False))
def test_timeline_of_rows_in_time_order_is_the_four_key_sort(rows, rnd):
    """Readers number rows by start, then end descending: timeline then sorts by thread alone,
    which must give the order of the four keys (thread, start, end descending, row), ties
    included. Rows in any other order take the four-key sort."""
    tid = np.array([r[0] for r in rows], dtype=float)
    start = np.array([r[1] for r in rows], dtype=np.int64)
    end = start + np.array([r[2] if rnd.random() < 0.7 else 0 for r in rows], dtype=np.int64)
    pid = np.where(np.array([rnd.random() < 0.1 for _ in rows], dtype=bool), np.nan, 0.0)
    for shuffled in (False, True):
        if shuffled:
            perm = np.array(rnd.sample(range(len(rows)), len(rows)), dtype=np.int64)
        else:  # as a reader numbers them
            perm = np.lexsort((np.arange(len(rows)), -end, start))
        p, t, s, e = pid[perm], tid[perm], start[perm], end[perm]
        keys = _thread_keys(p, t)
        want = np.lexsort((-e, s, keys[:, 1], keys[:, 0]))
        got = timeline(p, t, s, e)
        assert got.order.tolist() == want.tolist()
        k = keys[want]
        assert got.bounds.tolist() == (np.flatnonzero((k[1:] != k[:-1]).any(axis=1)) + 1).tolist()
        firsts = [0, *got.bounds.tolist()] if len(rows) else []
        assert got.keys == [tuple(k[i].tolist()) for i in firsts]
