"""A big Kineto trace is decoded by two processes (kineto._Helper): the reading process and a
helper that decodes every other slice into columns. Whatever the helper does, the tables must be
the ones one process reads, row for row, and what it cannot settle alone (B/E pairs and rows
without correlation across slices, odd values, a slice that is not JSON, its own death) is redone
by the reading process. The fixtures are small, so the tests lower the size that calls for a
helper and the slice size, and wait for the helper to be ready (a forked child: at once)."""

from __future__ import annotations

import gzip
import json
from collections import Counter
from pathlib import Path

import pytest
from conftest import KINETO_L2, KINETO_L3

from tracekit.errors import TraceError
from tracekit.readers import kineto

TABLES = ("kernels", "launches", "ranges", "ops", "memops")


@pytest.fixture
def helper_on(monkeypatch):
    """Every file gets a helper, slices are small, and the reading starts once the helper is
    ready; yields a Counter of what happened (parts merged, slices redone here)."""
    seen: Counter = Counter()
    start, merge, redo = kineto._Helper.start, kineto._Tables.merge, kineto._Pending._redo

    def start_ready(path):
        h = start(path)
        assert h is not None and h.conn.poll(60)  # its "ready" is waiting
        return h

    def counted_merge(self, part):
        seen["merged"] += 1
        return merge(self, part)

    def counted_redo(self, text):
        seen["redone"] += 1
        return redo(self, text)

    monkeypatch.setattr(kineto, "_HELPER_MIN_BYTES", 0)
    monkeypatch.setattr(kineto, "_CHUNK", 16384)
    monkeypatch.setattr(kineto._Helper, "start", staticmethod(start_ready))
    monkeypatch.setattr(kineto._Tables, "merge", counted_merge)
    monkeypatch.setattr(kineto._Pending, "_redo", counted_redo)
    return seen


def _single(path: Path, monkeypatch) -> kineto.TraceData:
    with monkeypatch.context() as m:
        m.setattr(kineto, "_HELPER_MIN_BYTES", 1 << 62)
        m.setattr(kineto, "_CHUNK", 16384)
        return kineto.read(path)


def _same(a, b) -> None:
    for name in TABLES:
        assert a.table(name).equals(b.table(name)), name
    assert a.absent == b.absent and a.trace_meta == b.trace_meta and a.gpu_name == b.gpu_name


def _events(path: Path) -> tuple[dict, list[dict]]:
    doc = json.loads(gzip.decompress(path.read_bytes()))
    return doc, doc.pop("traceEvents")


def _write(path: Path, doc: dict, events: list[dict]) -> Path:
    # Kineto's layout: one event per line, so the stream is cut into slices.
    text = json.dumps(doc)[:-1] + ', "traceEvents": [\n' + ",\n".join(json.dumps(e) for e in events) + "\n]}"
    path.write_text(text)
    return path


@pytest.mark.parametrize("path", [KINETO_L2, KINETO_L3], ids=lambda p: p.name)
def test_helper_reads_what_one_process_reads(path, helper_on, monkeypatch):
    got = kineto.read(path)
    assert helper_on["merged"] > 10  # the helper did decode a good share of the slices
    _same(got, _single(path, monkeypatch))
    # And what a plain reading of the JSON says: every kernel, by name.
    _, events = _events(path)
    kernels = Counter(e["name"] for e in events if e.get("ph") == "X" and e.get("cat") == "kernel")
    assert Counter(got.kernels.column("name").to_pylist()) == kernels


def test_pairs_across_slices_and_odd_values_redone_in_order(tmp_path, helper_on, monkeypatch):
    """CPU ops written as B/E pairs whose E comes ~40 events later (so pairs span slices),
    and string `stream` values on some kernels (the checked decode, counted in absent)."""
    doc, events = _events(KINETO_L2)
    # An E closes the latest open B of its thread; at the trace's end, so every pair has a duration.
    end = max(e["ts"] + e.get("dur", 0) for e in events if "ts" in e)
    out, closing = [], []
    for i, e in enumerate(events):
        if e.get("ph") == "X" and e.get("cat") == "cpu_op":
            out.append({**e, "ph": "B"})
            closing.append((i + 40, {"ph": "E", "pid": e["pid"], "tid": e["tid"], "ts": end}))
            continue
        if e.get("cat") == "kernel" and i % 97 == 0:
            e = {**e, "args": {**e["args"], "stream": str(e["args"].get("stream"))}}
        out.append(e)
        while closing and closing[0][0] <= i:
            out.append(closing.pop(0)[1])
    out += [c for _, c in closing]
    f = _write(tmp_path / "pairs.json", doc, out)
    got = kineto.read(f)
    assert helper_on["merged"] > 0 and helper_on["redone"] > 0  # both ways were taken
    want = _single(f, monkeypatch)
    _same(got, want)
    assert any("args.stream (string)" in a for a in got.absent)
    # Every B was closed: as many ops as a plain reading finds B events.
    assert got.ops.num_rows == sum(1 for e in out if e["ph"] == "B")


def test_kernels_without_correlation(tmp_path, helper_on, monkeypatch):
    # Linked through ac2g flows, which the whole-text path reads: the helper's slices are redone.
    doc, events = _events(KINETO_L3)
    for e in events[::5]:
        if e.get("cat") == "kernel":
            e["args"].pop("correlation", None)
    f = _write(tmp_path / "no_corr.json", doc, events)
    _same(kineto.read(f), _single(f, monkeypatch))


def test_a_helper_that_dies_is_redone_here(helper_on, monkeypatch):
    send = kineto._Helper.send

    def send_then_die(self, text):
        sent = send(self, text)
        if helper_on["sent"] == 3:
            self.proc.kill()
            self.proc.wait()
        helper_on["sent"] += 1
        return sent

    monkeypatch.setattr(kineto._Helper, "send", send_then_die)
    got = kineto.read(KINETO_L2)
    assert helper_on["merged"] >= 2 and 1 <= helper_on["redone"] <= kineto._SLOTS  # the slices it held, then no more
    _same(got, _single(KINETO_L2, monkeypatch))


def test_broken_text_is_worded_as_without_helper(tmp_path, helper_on, monkeypatch):
    doc, events = _events(KINETO_L2)
    f = _write(tmp_path / "broken.json", doc, events)
    text = f.read_text().splitlines()
    text[len(text) // 2] = text[len(text) // 2][:-20]  # an event cut short, mid-file
    f.write_text("\n".join(text))
    with pytest.raises(TraceError) as with_helper:
        kineto.read(f)
    with pytest.raises(TraceError) as without:
        _single(f, monkeypatch)
    assert str(with_helper.value) == str(without.value) and "invalid JSON" in str(with_helper.value)


def test_who_gets_a_helper(monkeypatch):
    # By the JSON text's size (a gzipped file counts _GZ_RATIO times), with a second CPU, unless
    # turned off; not by the load average (it lags: an import right after another saw its own past).
    monkeypatch.setattr(kineto.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setattr(kineto.os, "getloadavg", lambda: (1.9, 1.9, 1.9))
    size = KINETO_L2.stat().st_size
    monkeypatch.setattr(kineto, "_HELPER_MIN_BYTES", size * kineto._GZ_RATIO)
    assert kineto._wants_helper(KINETO_L2)
    monkeypatch.setattr(kineto, "_HELPER_MIN_BYTES", size * kineto._GZ_RATIO + 1)
    assert not kineto._wants_helper(KINETO_L2)
    monkeypatch.setattr(kineto, "_HELPER_MIN_BYTES", 0)
    assert kineto._wants_helper(KINETO_L2)
    monkeypatch.setattr(kineto.os, "sched_getaffinity", lambda pid: {0})
    assert not kineto._wants_helper(KINETO_L2)
    monkeypatch.setattr(kineto.os, "sched_getaffinity", lambda pid: {0, 1})
    monkeypatch.setenv("TRACEKIT_KINETO_HELPER", "0")
    assert not kineto._wants_helper(KINETO_L2)
