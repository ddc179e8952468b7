"""Property-based and mutation fuzzing of the readers: whatever the bytes, a reader returns
well-formed canonical tables or raises TraceError, and never anything else.

Bounded for CI: a fixed number of derandomized examples per property (a few seconds in all).
For a deeper, random hunt set TRACEKIT_FUZZ_EXAMPLES (e.g. 5000).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import sqlite3
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from robust_util import KINETO_FLOWS, NSYS_LEGACY, NSYS_REGISTERED

from tracekit.enrich.links import link
from tracekit.errors import TraceError
from tracekit.readers import kineto, nsys_sqlite, read

_DEEP = os.environ.get("TRACEKIT_FUZZ_EXAMPLES")
FUZZ = settings(max_examples=int(_DEEP or 60), deadline=None, derandomize=not _DEEP, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                       HealthCheck.function_scoped_fixture])
KERNEL_CATS = ("kernel", "Kernel")
MAX_US = 4.6e15  # 2^62 ns: the documented limit of a kept timestamp


def check_tables(data) -> None:
    """Invariants every successful read must satisfy, whatever the input."""
    for name in ("kernels", "launches", "ranges", "ops", "memops"):
        t = data.table(name).to_pydict()
        ids = t[data.table(name).column_names[0]]
        assert ids == list(range(len(ids))), name
        for s, e, d in zip(t["start_ns"], t["end_ns"], t["dur_ns"], strict=True):
            assert e - s == d and d >= 0, (name, s, e, d)
    assert data.kernels.num_rows > 0
    link(data)  # the importer's next step must not fail on what the reader accepted either


def read_or_trace_error(path: Path):
    try:
        data = read(path)
    except TraceError as exc:
        assert str(path) in str(exc) and "\n" not in exc.problem
        return None
    check_tables(data)
    return data


# ---- Kineto: structurally plausible events with hostile values ---------------------------------

ints = st.one_of(st.integers(-5, 50), st.integers(-(2**63), 2**63 - 1), st.integers(2**63, 2**70))
nums = st.one_of(st.floats(allow_nan=False, allow_infinity=False), st.integers(-(10**17), 10**17),
                 st.floats(-1e3, 1e7))
idish = st.one_of(st.none(), ints, st.text(max_size=8), st.just("stream 7"))
args = st.fixed_dictionaries({}, optional={
    "correlation": ints, "External id": st.one_of(ints, st.text(max_size=4)), "device": ints,
    "stream": ints, "grid": st.lists(ints, max_size=4), "block": st.lists(ints, max_size=4),
    "Input Dims": st.lists(st.lists(st.integers(0, 9), max_size=3), max_size=3),
    "registers per thread": ints, "shared memory": ints,
})
event = st.fixed_dictionaries({"ph": st.sampled_from(["X", "X", "X", "s", "f", "M", "i", "t"])}, optional={
    "cat": st.sampled_from(["kernel", "Kernel", "cuda_runtime", "Runtime", "cpu_op", "Operator", "ac2g",
                            "gpu_memcpy", "gpu_memset", "user_annotation", "gpu_user_annotation", "python"]),
    "name": st.text(max_size=40), "pid": idish, "tid": idish, "ts": nums, "dur": nums, "id": idish,
    "args": args,
})


def valid_kernel(e: dict) -> bool:
    # Independent statement of which kernel events a trace keeps.
    ts, dur = e.get("ts"), e.get("dur")
    return (e["ph"] == "X" and e.get("cat") in KERNEL_CATS and isinstance(ts, (int, float))
            and isinstance(dur, (int, float)) and 0 <= dur <= MAX_US and abs(ts) <= MAX_US)


@FUZZ
@given(st.lists(event, max_size=30))
def test_kineto_reader_on_generated_events(events):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "gen.json"
        p.write_text(json.dumps({"traceEvents": events}))
        data = read_or_trace_error(p)
    if data is not None:
        assert data.kernels.num_rows == sum(valid_kernel(e) for e in events)


KINETO_SMALL = json.dumps({"traceEvents": json.loads(gzip.decompress(KINETO_FLOWS.read_bytes()))["traceEvents"][:300]},
                          separators=(",", ":")).encode()


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(KINETO_SMALL) - 1), st.binary(min_size=1, max_size=4)), max_size=6),
       st.one_of(st.none(), st.integers(0, len(KINETO_SMALL))), st.booleans())
def test_kineto_reader_on_mutated_bytes(edits, cut, gz):
    raw = bytearray(KINETO_SMALL)
    for pos, b in edits:
        raw[pos:pos + len(b)] = b
    raw = bytes(raw[:cut] if cut is not None else raw)
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / ("m.json.gz" if gz else "m.json")
        p.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
        if gz and edits:
            # Also corrupt the compressed stream itself at the same offsets.
            z = bytearray(p.read_bytes())
            for pos, b in edits:
                z[pos % len(z)] = b[0]
            p.write_bytes(bytes(z))
        read_or_trace_error(p)


# ---- nsys SQLite: any value of any type in any column ------------------------------------------

@pytest.fixture(scope="module")
def small_nsys(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("fz") / "small.sqlite"
    shutil.copy(NSYS_REGISTERED, p)
    con = sqlite3.connect(p)
    con.execute("DELETE FROM CUPTI_ACTIVITY_KIND_KERNEL WHERE rowid > 40")
    con.execute("DELETE FROM CUPTI_ACTIVITY_KIND_RUNTIME WHERE correlationId NOT IN "
                "(SELECT correlationId FROM CUPTI_ACTIVITY_KIND_KERNEL)")
    con.commit()
    con.execute("VACUUM")
    con.close()
    return p


def _columns(path: Path) -> list[tuple[str, str]]:
    con = sqlite3.connect(path)
    out = []
    for t in ("CUPTI_ACTIVITY_KIND_KERNEL", "CUPTI_ACTIVITY_KIND_RUNTIME", "NVTX_EVENTS", "StringIds",
              "CUPTI_ACTIVITY_KIND_MEMSET", "TARGET_INFO_GPU", "META_DATA_EXPORT"):
        out += [(t, r[1]) for r in con.execute(f"PRAGMA table_info({t})")]
    return out


COLUMNS = _columns(NSYS_REGISTERED)
values = st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1), st.floats(allow_nan=False), st.text(max_size=20),
                   st.binary(max_size=8))


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(COLUMNS), st.integers(1, 45), values), min_size=1, max_size=8))
def test_nsys_reader_on_values_of_any_type(small_nsys, edits):
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "v.sqlite"
        shutil.copy(small_nsys, p)
        con = sqlite3.connect(p)
        # SQLite enforces only NOT NULL; the table copies drop even that, as a careless tool would.
        for (table, col), rowid, v in edits:
            try:
                con.execute(f'UPDATE "{table}" SET "{col}" = ? WHERE rowid = ?', [v, rowid])
            except sqlite3.IntegrityError:
                con.execute(f'UPDATE "{table}" SET "{col}" = ? WHERE rowid = ?', [0, rowid])
        con.commit()
        con.close()
        read_or_trace_error(p)


@FUZZ
@given(st.lists(st.tuples(st.integers(100, NSYS_LEGACY.stat().st_size - 1), st.integers(0, 255)), min_size=1,
                max_size=20), st.one_of(st.none(), st.integers(0, NSYS_LEGACY.stat().st_size)))
def test_nsys_reader_on_corrupted_pages(flips, cut):
    raw = bytearray(NSYS_LEGACY.read_bytes())
    for pos, b in flips:
        raw[pos] = b
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "c.sqlite"
        p.write_bytes(bytes(raw[:cut] if cut is not None else raw))
        try:
            data = nsys_sqlite.read(p)
        except TraceError:
            return
        check_tables(data)


def test_kineto_reader_rejects_or_reads_every_prefix_of_a_trace():
    """Every truncation point of a small trace (a download cut short): never a crash."""
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "prefix.json"
        for cut in range(0, len(KINETO_SMALL), max(1, len(KINETO_SMALL) // 200)):
            p.write_bytes(KINETO_SMALL[:cut])
            try:
                kineto.read(p)
            except TraceError:
                pass
