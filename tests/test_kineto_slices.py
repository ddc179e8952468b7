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
