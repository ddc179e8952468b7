"""The Kineto reader's columns, checked against the trace's own JSON events read independently here
(plain json, no reader code): values row by row, including the rows that leave the reader's
vectorised paths (legacy keys, short or missing grids, label pids), and the read-ahead thread."""

from __future__ import annotations

import gzip
import json
import threading
from pathlib import Path

import pyarrow as pa
import pytest
from conftest import FIXTURES, KINETO_L2, KINETO_L3

from tracekit.errors import TraceError
from tracekit.readers import kineto
from tracekit.readers.common import short_name

DICT = pa.dictionary(pa.int32(), pa.string())


def load(path: Path) -> dict:
    return json.loads(gzip.decompress(path.read_bytes()))


def write_kineto(path: Path, doc: dict, indent: int | None = None) -> Path:
    """Kineto's layout: envelope first, then one event per line (or pretty-printed events)."""
    env = {k: v for k, v in doc.items() if k != "traceEvents"}
    events = ",\n".join(json.dumps(e, indent=indent) for e in doc["traceEvents"])
    path.write_text(json.dumps(env)[:-1] + ', "traceEvents": [\n' + events + "\n]}")
    return path


def kept(doc: dict, cats: set[str]) -> list[dict]:
    return [e for e in doc["traceEvents"] if e.get("ph") == "X" and e.get("cat") in cats]


def as_int(v: object) -> int | None:
    if isinstance(v, int) and not isinstance(v, bool):
        return v
    if isinstance(v, str) and v.lstrip("-").isdigit():
        return int(v)
    return None


def expected_kernels(doc: dict) -> list[tuple]:
    rows = []
    for e in kept(doc, {"kernel", "Kernel"}):
        a = e.get("args") or {}
        grid, block = a.get("grid") or [], a.get("block") or []
        xyz = [(g[i] if i < len(g) else None) for g in (grid, block) for i in range(3)]
        device = a.get("device") if a.get("device") is not None else as_int(e.get("pid"))
        stream, tid = a.get("stream"), e.get("tid")
        if stream is None:  # PyTorch 1.x names the GPU row "stream 7", 2.x gives the number
            stream = as_int(tid[7:].strip() if isinstance(tid, str) and tid.startswith("stream ") else tid)
        rows.append((e.get("name") or "", a.get("correlation"), device, stream, *xyz))
    return sorted(rows, key=repr)


def got_kernels(t: pa.Table) -> list[tuple]:
    cols = ["name", "correlation", "device", "stream", "grid_x", "grid_y", "grid_z", "block_x", "block_y", "block_z"]
    return sorted(zip(*(t.column(c).to_pylist() for c in cols), strict=True), key=repr)


def expected_ops(doc: dict) -> list[tuple]:
    rows = []
    for e in kept(doc, {"cpu_op", "Operator", "operator"}):
        a = e.get("args") or {}
        dims = a["Input Dims"] if "Input Dims" in a else a.get("Input dims")
        types = a.get("Input type")
        ext = a["External id"] if a.get("External id") is not None else a.get("external id")
        rows.append((e.get("name") or "", as_int(e.get("pid")), as_int(e.get("tid")), as_int(ext),
                     None if dims is None else json.dumps(dims, separators=(",", ":")),
                     None if types is None else json.dumps(types)))
    return sorted(rows, key=repr)


def got_ops(t: pa.Table) -> list[tuple]:
    cols = ["name", "pid", "tid", "external_id", "input_dims", "input_types"]
    return sorted(zip(*(t.column(c).to_pylist() for c in cols), strict=True), key=repr)


@pytest.mark.parametrize("path", [KINETO_L2, KINETO_L3], ids=lambda p: p.name)
def test_kernel_and_op_columns_are_the_events_values(path):
    doc = load(path)
    data = kineto.read(path)
    assert got_kernels(data.kernels) == expected_kernels(doc)
    assert got_ops(data.ops) == expected_ops(doc)
    assert data.kernels.column("short_name").to_pylist() == [short_name(n) for n in data.kernels.column("name").to_pylist()]


def test_string_columns_are_dictionaries_of_distinct_values():
    data = kineto.read(KINETO_L2)
    for table, col in (("kernels", "name"), ("kernels", "short_name"), ("launches", "name"), ("launches", "kind"),
                       ("ops", "name"), ("ops", "source"), ("ops", "input_dims"), ("ops", "input_types")):
        arr = data.table(table).column(col).combine_chunks()
        assert arr.type == DICT, (table, col)
        values = arr.dictionary.to_pylist()
        assert len(values) == len(set(values)), (table, col)
        assert set(arr.unique().dictionary.to_pylist()) <= set(values)
    assert set(data.ops.column("source").to_pylist()) == {"kineto"}


def test_rows_off_the_fast_paths_keep_their_values(tmp_path, monkeypatch):
    """Every few events take the per-row path: lower-case legacy keys next to current ones, grids
    that are short, empty, missing or carry an out-of-range 4th value (not kept), label pids."""
    monkeypatch.setattr(kineto, "_CHUNK", 32768)  # several slices, some with odd rows, some without
    doc = load(KINETO_L2)
    ops = kept(doc, {"cpu_op"})
    kernels = kept(doc, {"kernel"})
    for i, e in enumerate(ops[::7]):
        a = e["args"]
        if i % 3 == 0 and "Input Dims" in a:
            a["Input dims"] = a.pop("Input Dims")
        elif i % 3 == 1:
            a.pop("Input Dims", None)
            a.pop("Input type", None)
        if i % 4 == 0:
            a["external id"] = a.pop("External id", None)
        e["pid"] = ["Spans", "12", 12][i % 3]
    grids = [[4, 2], [], None, [1, 2, 3, 2**40], [7]]
    for i, e in enumerate(kernels[::11]):
        g = grids[i % len(grids)]
        if g is None:
            e["args"].pop("grid", None)
            e["args"].pop("stream", None)  # stream then comes from the GPU row's tid
        else:
            e["args"]["grid"] = g
    path = write_kineto(tmp_path / "mixed.json", doc)
    data = kineto._read_stream(path)  # the streaming path itself, not a fallback
    assert got_ops(data.ops) == expected_ops(doc)
    assert got_kernels(data.kernels) == expected_kernels(doc)
    assert None in data.kernels.column("grid_y").to_pylist()
    assert None in data.ops.column("pid").to_pylist() and 12 in data.ops.column("pid").to_pylist()


def test_cut_inside_an_event_is_undone_and_read_further_on(tmp_path, monkeypatch):
    # Pretty-printed events: `,` newline `{` also occurs inside an event's list of objects. One
    # event spanning a block boundary gets a list longer than a slice, so several blocks end
    # inside it and their cut lands there: the comma overwritten by `]` must be put back and the
    # slice extended, giving the same tables as the one-event-per-line file.
    chunk = 65536
    monkeypatch.setattr(kineto, "_CHUNK", chunk)
    doc = load(KINETO_L2)
    text = write_kineto(tmp_path / "probe.json", doc, indent=1).read_text()
    ops = kept(doc, {"cpu_op"})
    boundary = 3 * chunk
    pos = 0
    for e in ops:  # the op whose text spans the boundary (each op's text is unique: ts differs)
        block = json.dumps(e, indent=1)
        pos = text.index(block, pos)
        if pos < boundary < pos + len(block):
            e["args"]["Extra"] = [{"a": i} for i in range(3 * chunk // 20)]
            break
    else:
        pytest.fail("no op spans the boundary")
    pretty = write_kineto(tmp_path / "pretty.json", doc, indent=1)
    assert len(pretty.read_text()) > boundary + 2 * chunk
    streamed = kineto._read_stream(pretty)  # raises _SplitWrong if the cut were not undone
    flat = kineto.read(write_kineto(tmp_path / "flat.json", doc))
    for name in ("kernels", "launches", "ranges", "ops", "memops"):
        assert streamed.table(name).equals(flat.table(name)), name


def inflating_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "tracekit-inflate"]


def test_gzip_cut_short_is_one_error_and_stops_the_inflating_thread(tmp_path):
    gz = KINETO_L3.read_bytes()
    cut = tmp_path / "cut.json.gz"
    cut.write_bytes(gz[: len(gz) * 2 // 3])
    with pytest.raises(TraceError, match="truncated gzip") as err:
        kineto.read(cut)
    assert "cut.json.gz" in str(err.value)
    assert not inflating_threads()


def test_fallback_to_the_whole_text_stops_the_inflating_thread():
    # ac2g-only links make the streamed read give up part way (flows need a second pass).
    data = kineto.read(FIXTURES / "variants" / "kineto_ac2g_flows_only.pt.trace.json.gz")
    assert data.kernels.num_rows and data.kernels.column("correlation").null_count == 0
    assert not inflating_threads()


def test_unknown_phases_and_categories_fall_back_to_the_open_event_type(tmp_path, monkeypatch):
    """Phases and categories are decoded as literals from a known list; a slice holding any other
    value (or a non-string one) is decoded again with the open Event type: the same rows come out,
    and those events are still skipped as before."""
    monkeypatch.setattr(kineto, "_CHUNK", 32768)
    doc = load(KINETO_L2)
    events = doc["traceEvents"]
    odd = [{"ph": "X", "cat": "my_extension", "name": "x", "pid": 1, "tid": 1, "ts": 1.0, "dur": 1.0},
           {"ph": "Z", "cat": "kernel", "name": "not a complete event", "pid": 1, "tid": 1, "ts": 1.0, "dur": 1.0},
           {"cat": "cpu_op", "name": "no phase", "pid": 1, "tid": 1, "ts": 1.0, "dur": 1.0}]
    for i, e in enumerate(odd):
        events.insert(len(events) * (i + 1) // 4, e)
    seen = []
    known = kineto._EVENTS.known

    class Spy:
        def decode(self, text):
            try:
                out = known.decode(text)
            except Exception:
                seen.append("fallback")
                raise
            seen.append("known")
            return out

    monkeypatch.setattr(kineto._EVENTS, "known", Spy())
    data = kineto._read_stream(write_kineto(tmp_path / "odd.json", doc))
    assert got_kernels(data.kernels) == expected_kernels(doc)
    assert got_ops(data.ops) == expected_ops(doc)
    # The two slices with an unlisted value fell back (a missing phase is None, no fallback); the
    # other slices were decoded with the literals.
    assert seen.count("fallback") == 2
    assert seen.count("known") > 10
