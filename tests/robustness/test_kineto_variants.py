"""Kineto trace variants across PyTorch versions, checked against independent readings."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from decimal import Decimal

import pytest
from conftest import run_id_of as run_id
from robust_util import KINETO_FLOWS, KINETO_TORCH1, ROOT

import tracekit
from tracekit.readers import kineto

KINETO_L2 = ROOT / "fixtures" / "shared" / "kineto_llama2-7b-4L_b1_i64_o8.pt.trace.json.gz"


def events(path) -> list[dict]:
    return json.loads(gzip.decompress(path.read_bytes()), parse_float=Decimal)["traceEvents"]


def ns(v) -> int:
    return int((Decimal(str(v)) * 1000).to_integral_value())


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    d = tracekit.open(tmp_path_factory.mktemp("kinvar") / "k.duckdb")
    for path in (KINETO_TORCH1, KINETO_FLOWS):
        [r] = d.import_paths([path])
        assert r.status == "imported", r.error
    yield d
    d.close()



def test_torch1_kernels_streams_and_times(db):
    ks = [e for e in events(KINETO_TORCH1) if e.get("cat") == "Kernel"]
    rid = run_id(db, KINETO_TORCH1)
    got = db.con.execute("SELECT count(*), sum(dur_ns), min(start_ns) FROM kernels WHERE run_id = ?", [rid]).fetchone()
    assert got == (len(ks), sum(ns(e["dur"]) for e in ks), min(ns(e["ts"]) for e in ks))
    # "stream 7" rows: the stream number comes from the row name when args lack it.
    streams = Counter(int(e["tid"].split()[1]) for e in ks)
    assert dict(db.con.execute("SELECT stream, count(*) FROM kernels WHERE run_id = ? GROUP BY 1",
                               [rid]).fetchall()) == dict(streams)


def test_torch1_lowercase_input_dims_and_launch_links(db):
    ev = events(KINETO_TORCH1)
    rid = run_id(db, KINETO_TORCH1)
    with_dims = sum(1 for e in ev if e.get("cat") == "Operator" and "Input dims" in e.get("args", {}))
    assert with_dims > 0
    assert db.con.execute("SELECT count(input_dims) FROM ops WHERE run_id = ?", [rid]).fetchone()[0] == with_dims
    runtime = {e["args"]["correlation"]: e["name"] for e in ev if e.get("cat") == "Runtime"}
    expected = Counter(runtime[e["args"]["correlation"]] for e in ev if e.get("cat") == "Kernel")
    got = Counter(n for (n,) in db.con.execute(
        "SELECT l.name FROM kernels k JOIN launches l USING (run_id, launch_id) WHERE k.run_id = ?", [rid]).fetchall())
    assert got == expected
    row = db.con.execute("SELECT gpu_name, tool_versions FROM runs WHERE run_id = ?", [rid]).fetchone()
    assert row == (None, "{}")


def test_flows_only_links_like_the_original_correlation_args(db):
    """The flow-linked fixture must link each kernel to the launch that the untrimmed original
    trace names through its `correlation` args."""
    orig = events(KINETO_L2)
    launch_of = {e["args"]["correlation"]: (ns(e["ts"]), e["name"]) for e in orig
                 if e.get("cat") in ("cuda_runtime", "cuda_driver") and e.get("ph") == "X"}
    kept = {ns(e["ts"]) for e in events(KINETO_FLOWS) if e.get("cat") == "kernel"}
    expected = sorted((ns(e["ts"]), *launch_of[e["args"]["correlation"]]) for e in orig
                      if e.get("cat") == "kernel" and ns(e["ts"]) in kept)
    rid = run_id(db, KINETO_FLOWS)
    got = db.con.execute("SELECT k.start_ns, l.start_ns, l.name FROM kernels k JOIN launches l "
                         "USING (run_id, launch_id) WHERE k.run_id = ? ORDER BY 1", [rid]).fetchall()
    assert len(got) == len(kept) and got == expected
    absent = db.con.execute("SELECT absent FROM runs WHERE run_id = ?", [rid]).fetchone()[0]
    assert any("ac2g flows" in a for a in absent)


@pytest.mark.parametrize("unit", ["ns", "ms", None])
def test_display_time_unit_does_not_scale_timestamps(tmp_path, unit):
    """Chrome trace `ts` is microseconds whatever displayTimeUnit says (it only sets the viewer's
    display); the reader must give the same nanoseconds for every setting."""
    obj = json.loads(gzip.decompress(KINETO_FLOWS.read_bytes()))
    obj.pop("displayTimeUnit", None)
    if unit:
        obj["displayTimeUnit"] = unit
    p = tmp_path / f"unit_{unit}.json"
    p.write_text(json.dumps(obj))
    data = kineto.read(p)
    ks = [e for e in events(KINETO_FLOWS) if e.get("cat") == "kernel"]
    assert data.kernels.column("start_ns").to_pylist() == sorted(ns(e["ts"]) for e in ks)
    assert data.trace_meta.get("displayTimeUnit") == unit


def test_base_time_is_kept_as_metadata_not_added(db):
    """PyTorch 2.x writes baseTimeNanoseconds; times stay on the trace's own clock (as schema.sql
    says) and the base is kept in trace_meta for whoever needs wall-clock time."""
    env = json.loads(gzip.decompress(KINETO_FLOWS.read_bytes()))
    rid = run_id(db, KINETO_FLOWS)
    base, first = db.con.execute(
        "SELECT (trace_meta->>'baseTimeNanoseconds')::BIGINT, (SELECT min(start_ns) FROM kernels WHERE run_id = ?) "
        "FROM runs WHERE run_id = ?", [rid, rid]).fetchone()
    assert base == env["baseTimeNanoseconds"]
    assert first == min(ns(e["ts"]) for e in events(KINETO_FLOWS) if e.get("cat") == "kernel")


def test_chrome_array_format_and_bom(tmp_path):
    """The bare-array form of the Chrome trace format, and a UTF-8 BOM, read like the object form."""
    ev = json.loads(gzip.decompress(KINETO_FLOWS.read_bytes()))["traceEvents"]
    arr = tmp_path / "array.json"
    arr.write_bytes(b"\xef\xbb\xbf" + json.dumps(ev).encode())
    got = kineto.read(arr).kernels
    assert got.num_rows == sum(1 for e in ev if e.get("cat") == "kernel")
