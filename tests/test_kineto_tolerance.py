"""The Kineto reader's one decode path: invalid UTF-8 is checked and repaired before any decoder
sees it, and a field of unexpected type is ignored and counted, in both framings (streamed slices
and whole text). Inputs are a real trace (fixtures/shared) edited by the test itself."""

from __future__ import annotations

import codecs
import gzip
import json
from pathlib import Path

import msgspec
import pytest
from conftest import KINETO_L2

from tracekit.readers import kineto


def load() -> dict:
    return json.loads(gzip.decompress(KINETO_L2.read_bytes()))


def write_lines(p: Path, doc: dict) -> Path:
    """Kineto's own layout (one event per line), which the streamed framing reads."""
    events = doc.pop("traceEvents")
    body = ",\n".join(json.dumps(e) for e in events)
    p.write_text(json.dumps(doc)[:-1] + ', "traceEvents": [\n' + body + "\n]}")
    doc["traceEvents"] = events
    return p


def kernels(doc: dict) -> list[dict]:
    return [e for e in doc["traceEvents"] if isinstance(e, dict) and e.get("ph") == "X" and e.get("cat") == "kernel"]


class Spy:
    """Wraps a decoder; records whether every text it was given was valid UTF-8."""

    def __init__(self, inner, seen: list[bool]) -> None:
        self.inner, self.seen = inner, seen

    def decode(self, text):
        try:
            codecs.utf_8_decode(bytes(text), "strict", True)
            self.seen.append(True)
        except UnicodeDecodeError:
            self.seen.append(False)
        return self.inner.decode(text)


@pytest.mark.parametrize("layout", ["lines", "one_line"])
def test_invalid_utf8_is_repaired_before_any_decoder_sees_it(tmp_path, monkeypatch, layout):
    monkeypatch.setattr(kineto, "_CHUNK", 32768)
    seen: list[bool] = []
    for attr in ("known", "any", "untyped"):
        monkeypatch.setattr(kineto._EVENTS, attr, Spy(getattr(kineto._EVENTS, attr), seen))
    doc = load()
    target = kernels(doc)[len(kernels(doc)) // 2]["name"]
    p = tmp_path / "bad.json"
    if layout == "lines":
        write_lines(p, doc)
    else:
        p.write_text(json.dumps(doc))
    raw = p.read_bytes()
    p.write_bytes(raw.replace(target.encode(), target.encode() + b"\xc3\x28\xff", 1))
    data = kineto.read(p) if layout == "one_line" else kineto._read_stream(p)
    names = data.kernels.column("name").to_pylist()
    assert names.count(target + "\ufffd(\ufffd") == 1
    assert len(names) == len(kernels(doc))
    assert any("invalid UTF-8" in a for a in data.absent)
    assert seen and all(seen)


ODD = {
    # (event selector, edit): a value of another type in a field tracekit reads somewhere.
    "runtime stream string": ("cuda_runtime", lambda e: e["args"].__setitem__("stream", "0x7f00")),
    "runtime bytes string": ("cuda_runtime", lambda e: e["args"].__setitem__("bytes", "4096")),
    "op grid string": ("cpu_op", lambda e: e["args"].__setitem__("grid", "(16, 1, 1)")),
    "op dims not a list": ("cpu_op", lambda e: e["args"].__setitem__("Input Dims", "n/a")),
    "op name a number": ("cpu_op", lambda e: e.__setitem__("name", 5)),
    "op args a list": ("cpu_op", lambda e: e.__setitem__("args", [1, 2])),
    "kernel registers string": ("kernel", lambda e: e["args"].__setitem__("registers per thread", "many")),
    "kernel grid of strings": ("kernel", lambda e: e["args"].__setitem__("grid", ["1", "2", "3"])),
    "kernel external id a list": ("kernel", lambda e: e["args"].__setitem__("External id", [1])),
}


@pytest.mark.parametrize("layout", ["lines", "one_line"])
def test_fields_of_unexpected_type_are_ignored_and_counted(tmp_path, monkeypatch, layout):
    monkeypatch.setattr(kineto, "_CHUNK", 32768)
    doc = load()
    evs = doc["traceEvents"]
    edited = {}
    for label, (cat, edit) in ODD.items():
        e = next(e for e in evs[len(evs) // 3:] if e.get("cat") == cat and e.get("ph") == "X"
                 and isinstance(e.get("args"), dict) and id(e) not in edited.values())
        edit(e)
        edited[label] = id(e)
    evs.insert(len(evs) // 2, 7)  # not an event at all
    doc["deviceProperties"] = "unknown"
    p = tmp_path / "odd.json"
    if layout == "lines":
        write_lines(p, doc)
    else:
        p.write_text(json.dumps(doc))
    data = kineto.read(p)
    want = kernels(doc)
    assert data.kernels.num_rows == len(want)
    assert sum(data.kernels.column("dur_ns").to_pylist()) == sum(round(e["dur"] * 1000) for e in want)
    # The kernel whose registers were a string keeps every other value; registers become NULL.
    regs = data.kernels.column("registers").to_pylist()
    assert regs.count(None) == 1
    [line] = [a for a in data.absent if a.startswith("fields of unexpected type")]
    for words in ("args.stream (string) on 1 cuda_runtime", "args.bytes (string) on 1 cuda_runtime",
                  "args.grid (string) on 1 cpu_op", "args.Input Dims (not an array) on 1 cpu_op",
                  "name (number) on 1 cpu_op", "args (array) on 1 cpu_op",
                  "args.registers per thread (string) on 1 kernel", "args.grid (array) on 1 kernel",
                  "args.External id (array) on 1 kernel", "traceEvents[] (number) on 1 non-object",
                  "deviceProperties (string) on 1 envelope"):
        assert words in line, (words, line)


def test_not_json_is_still_an_error_with_its_offset(tmp_path):
    p = tmp_path / "broken.json"
    text = json.dumps(load())
    cut = text.index('"ts": ', len(text) // 2) + 6
    p.write_text(text[:cut] + "@" + text[cut:])
    with pytest.raises(Exception, match=r"invalid JSON \(.*byte"):
        kineto.read(p)


def test_decoders_exceptions_carry_no_meaning_beyond_failure(tmp_path, monkeypatch):
    """The fallbacks are chosen by what the text holds: a typed decoder that fails with an
    exception of any DecodeError type (as msgspec releases differ) leads to the same tables."""
    doc = load()
    p = write_lines(tmp_path / "t.json", doc)
    ref = kineto.read(p)

    class Refuses:
        def decode(self, text):
            raise msgspec.ValidationError("refused")

    monkeypatch.setattr(kineto._EVENTS, "known", Refuses())
    monkeypatch.setattr(kineto._EVENTS, "any", Refuses())
    got = kineto.read(p)
    for name in ("kernels", "launches", "ranges", "ops", "memops"):
        assert got.table(name).equals(ref.table(name)), name


def _as_begin_end(e: dict) -> list[dict]:
    b = {k: v for k, v in e.items() if k != "dur"} | {"ph": "B"}
    end = {"ph": "E", "pid": e["pid"], "tid": e["tid"], "ts": e["ts"] + e["dur"]}
    return [b, end]


@pytest.mark.parametrize("layout", ["lines", "one_line"])
def test_kernels_written_as_begin_end_pairs_are_read(tmp_path, monkeypatch, layout):
    """Chrome's B/E form of a duration event: each kernel written as a B and an E is one kernel,
    with the X form's values (kernels of one stream never overlap, so pairs nest trivially)."""
    monkeypatch.setattr(kineto, "_CHUNK", 32768)
    doc = load()
    ref = kineto.read(write_lines(tmp_path / "x.json", doc))
    events = []
    for e in doc["traceEvents"]:
        events += _as_begin_end(e) if e.get("ph") == "X" and e.get("cat") in ("kernel", "cpu_op") else [e]
    doc["traceEvents"] = events
    p = tmp_path / "be.json"
    if layout == "lines":
        write_lines(p, doc)
    else:
        p.write_text(json.dumps(doc))
    got = kineto.read(p)
    for name in ("kernels", "launches", "ops"):
        assert got.table(name).equals(ref.table(name)), name


def test_unpaired_begin_end_events_are_counted(tmp_path):
    doc = load()
    k = kernels(doc)[0]
    doc["traceEvents"] += [{"ph": "B", "cat": "kernel", "name": "never ends", "pid": 0, "tid": 999, "ts": 1.0},
                           {"ph": "E", "pid": 0, "tid": 998, "ts": 2.0}]
    data = kineto.read(write_lines(tmp_path / "t.json", doc))
    assert data.kernels.num_rows == len(kernels(doc))
    assert any("1 B never closed, 1 E with no open B" in a for a in data.absent), data.absent
    assert k["name"] in data.kernels.column("name").to_pylist()


def test_kernels_without_any_correlation_are_said_to_be_unlinkable(tmp_path):
    doc = load()
    for e in doc["traceEvents"]:
        if isinstance(e.get("args"), dict):
            e["args"].pop("correlation", None)
    doc["traceEvents"] = [e for e in doc["traceEvents"] if e.get("cat") != "ac2g"]
    data = kineto.read(write_lines(tmp_path / "t.json", doc))
    n = len(kernels(doc))
    assert any(f"correlation on {n} of {n} kernels" in a for a in data.absent), data.absent


@pytest.mark.parametrize("layout", ["lines", "one_line"])
@pytest.mark.parametrize("second", ["empty", "other"])
def test_duplicate_trace_events_keys_last_one_wins_in_every_framing(tmp_path, layout, second):
    """JSON.parse (Chrome's and Perfetto's viewers) and Python's json keep the last of duplicate
    keys; so does every framing of the reader."""
    doc = load()
    evs = doc.pop("traceEvents")
    other = [] if second == "empty" else [e for e in evs if e.get("cat") != "kernel" or e["ts"] < kernels({"traceEvents": evs})[50]["ts"]]
    sep = "\n" if layout == "lines" else ""
    first = f",{sep}".join(json.dumps(e) for e in evs)
    last = f",{sep}".join(json.dumps(e) for e in other)
    text = json.dumps(doc)[:-1] + f', "traceEvents": [{sep}{first}{sep}], "traceEvents": [{sep}{last}{sep}]}}'
    p = tmp_path / "dup.json"
    p.write_text(text)
    assert len(kernels(json.loads(text))) == len([e for e in other if e.get("cat") == "kernel"])
    if second == "empty":
        with pytest.raises(Exception, match="no GPU kernels"):
            kineto.read(p)
    else:
        assert kineto.read(p).kernels.num_rows == 50


def test_xpu_runtime_events_are_launches(tmp_path):
    doc = load()
    ref = kineto.read(write_lines(tmp_path / "cuda.json", doc))
    for e in doc["traceEvents"]:
        if e.get("cat") == "cuda_runtime":
            e["cat"] = "xpu_runtime"
    got = kineto.read(write_lines(tmp_path / "xpu.json", doc))
    assert got.launches.num_rows == ref.launches.num_rows > 0
    assert got.launches.column("correlation").to_pylist() == ref.launches.column("correlation").to_pylist()
