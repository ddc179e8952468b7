"""The Kineto reader decodes in slices (streamed, or cut from the whole text); every way must
read the same tables as one whole-document decode of the same file."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import msgspec
import pytest
from conftest import KINETO_L2, KINETO_L3

from tracekit.readers import kineto

TABLES = ("kernels", "launches", "ranges", "ops", "memops")


def _whole(path: Path):
    """Reference: the events array decoded at once (no slicing, no streaming)."""
    raw = kineto._load_bytes(path)
    top, span = kineto._split_envelope(path, raw)
    tables = kineto._Tables()
    tables.add(kineto._decode_whole(path, raw, span, exact=True), path, raw)
    return tables.finish(kineto._envelope(path, raw, top, tables.notes))


@pytest.mark.parametrize("path", [KINETO_L2, KINETO_L3], ids=lambda p: p.name)
@pytest.mark.parametrize("chunk", [16384, 262144])
def test_slices_read_what_one_decode_reads(path, chunk, monkeypatch):
    monkeypatch.setattr(kineto, "_CHUNK", chunk)
    ref = _whole(path)
    streamed = kineto._read_stream(path)
    raw = kineto._load_bytes(path)
    cut = kineto._read(path, raw, replaced=False)
    # Several slices, or the test would not test slicing.
    assert len(list(kineto._chunks(raw, kineto._split_envelope(path, raw)[1]))) > 3
    for name in TABLES:
        assert streamed.table(name).equals(ref.table(name)), name
        assert cut.table(name).equals(ref.table(name)), name
    assert streamed.absent == ref.absent and streamed.trace_meta == ref.trace_meta


def test_one_line_json_is_decoded_whole(tmp_path, monkeypatch):
    # No newlines: nowhere to cut, so the events are decoded in one piece at the end.
    monkeypatch.setattr(kineto, "_CHUNK", 16384)
    doc = json.loads(gzip.decompress(KINETO_L2.read_bytes()))
    one = tmp_path / "one_line.json"
    one.write_bytes(msgspec.json.encode(doc))
    raw = kineto._load_bytes(one)
    assert b"\n" not in raw
    got = kineto.read(one)
    ref = _whole(KINETO_L2)
    for name in TABLES:
        assert got.table(name).equals(ref.table(name)), name


def test_events_array_not_last_key(tmp_path, monkeypatch):
    # A writer that puts an envelope list after the events: the `]` search must not take the
    # list's bracket for the end of the events.
    monkeypatch.setattr(kineto, "_CHUNK", 16384)
    doc = json.loads(gzip.decompress(KINETO_L2.read_bytes()))
    events = doc.pop("traceEvents")
    lines = ",\n".join(json.dumps(e) for e in events)
    tail = json.dumps({"deviceProperties": doc.pop("deviceProperties")})[1:-1]
    text = json.dumps(doc)[:-1] + ', "traceEvents": [\n' + lines + "\n],\n" + tail.replace("}, {", "},\n{") + "}"
    f = tmp_path / "late_envelope.json"
    f.write_text(text)
    got = kineto.read(f)
    ref = _whole(KINETO_L2)
    assert got.gpu_name == ref.gpu_name == "NVIDIA H100 80GB HBM3"
    for name in TABLES:
        assert got.table(name).equals(ref.table(name)), name


def test_decode_falls_back_only_for_values_of_another_type():
    """The one decode step (_Events.decode): text that is not JSON is None (callers check it);
    a value a typed decoder does not take goes to the next step, and only such a value. Checked
    at every msgspec release CI installs (0.18 and the newest): the fallback rests on
    ValidationError being a DecodeError of its own class."""
    assert issubclass(msgspec.ValidationError, msgspec.DecodeError)
    ev = kineto._Events()
    # A cut inside an event, a truncated array, a non-array: None, not an exception.
    assert ev.decode(b'[{"ph": "X", "args": {') is None
    assert ev.decode(b'[{"ph": "X"},') is None
    assert ev.decode(b'{"ph": "X"}') is None
    # Known phase and category: the literal fast path (one shared string per value).
    (known,) = ev.decode(b'[{"ph": "X", "cat": "kernel", "ts": 1.5}]')
    assert isinstance(known, kineto._KnownEvent) and known.cat == "kernel"
    # An unknown category: Event, its value kept as written.
    (other,) = ev.decode(b'[{"ph": "X", "cat": "my_cat", "ts": 1.5}]')
    assert type(other) is kineto.Event and other.cat == "my_cat"
    # A value of another type (string stream): checked field by field, the field left out and counted.
    notes = kineto._Notes()
    (checked,) = ev.decode(b'[{"ph": "X", "cat": "kernel", "ts": 1.5, "args": {"stream": "7", "device": 0}}]', notes)
    assert checked.args.stream is None and checked.args.device == 0 and checked.ts == 1.5
    assert notes.ignored == {("kernel", "args.stream", "string"): 1}


@pytest.mark.parametrize("rows", [
    [(5, 9, "a"), (1, 3, "b"), (1, 4, "c"), (5, 9, "d"), (0, 0, "e"), (1, 4, "f")],  # out of order, ties
    [(0, 9, "a"), (0, 3, "b"), (1, 1, "c"), (1, 1, "d"), (2, 5, "e")],  # in order already
    [(3, 4, "a")],
])
def test_rows_sorted_by_start_then_longest_first_stably(rows):
    """_sorted_with_ids, whether it sorts (a column at a time) or finds the rows in order: the
    order Python's stable sort gives on (start, -end), ids 0..n-1."""
    import pyarrow as pa

    t = pa.table({"x_id": pa.nulls(len(rows), pa.int64()), "start_ns": [r[0] for r in rows],
                  "end_ns": [r[1] for r in rows], "name": pa.array([r[2] for r in rows]).dictionary_encode()})
    out = kineto._sorted_with_ids(t, "x_id")
    want = sorted(rows, key=lambda r: (r[0], -r[1]))
    assert out.column("name").to_pylist() == [r[2] for r in want]
    assert out.column("start_ns").to_pylist() == [r[0] for r in want]
    assert out.column("x_id").to_pylist() == list(range(len(rows)))
