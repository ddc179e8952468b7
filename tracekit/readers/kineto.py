"""Reader for PyTorch profiler / Kineto Chrome traces (`.json`, `.json.gz`, `.pt.trace.json`).

One path (see read): frame the text into slices of whole events -> check each slice's UTF-8 and
repair it (_utf8) -> decode it (_Events.decode: typed fast paths, then an untyped decode whose
values are checked field by field) -> route the events into Arrow columns (_Tables). Each
fallback is chosen by what the input holds, never by which exception a decoder raises: framing
streams when the file is laid out as Kineto writes it and parses the whole text otherwise;
decoding falls back from typed to checked values when a typed decoder does not take the text.
What was tolerated on the way (odd fields, repaired UTF-8, unpaired B/E) goes to runs.absent.

Speed and memory on traces of hundreds of MB come from these choices:
- The events array is decoded in slices of about `_CHUNK` bytes, cut at event boundaries, into
  small typed msgspec structs that are turned into Arrow columns and dropped before the next
  slice: memory holds one slice of text and of structs plus the kept columns, which are
  concatenated at the end one column at a time, each column's slices freed as it is built. A streamed slice
  is decoded in place in its buffer (no copy), and a second thread inflates the next ones.
- The structs opt out of the garbage collector and collection is paused while they are built;
  otherwise every few hundred allocations CPython walks all live objects (5x the decode time).
- Phases and categories are decoded as literals (one shared string each, see _PHASE), so the
  hundreds of thousands of flow and op events allocate and free two strings fewer each.
- Per-event work is done per column: timestamps are converted with numpy, repeated strings
  (kernel short names, input shapes) are computed once each, and string columns stay
  dictionary-encoded (one dictionary per column for the whole trace, codes per slice): no
  per-row string copies, and sorting moves int32 codes.
- A trace of 512 MB of JSON or more (_HELPER_MIN_BYTES) is decoded by two processes: a helper
  process (_Helper, _helper_main; forked, so it starts at once) turns streamed slices into
  columns whenever it has room while this one decodes the others, and its columns are merged
  in file order (_Pending), so the tables are the ones one process reads; what only an in-order reading can settle is redone here from the
  slice's text. msgspec holds the GIL, so a thread could not do this. Not inside `-j` / Dask
  workers (already parallel), not with one CPU, not with TRACEKIT_KINETO_HELPER=0.
Chrome-trace timestamps are microseconds with nanosecond decimals; they are converted to integer
nanoseconds by splitting off the fraction first, which is exact for the 3-decimal values Kineto
writes (see _ns and _ns_array).
"""

from __future__ import annotations

import codecs
import gc
import json
import math
import mmap
import multiprocessing
import os
import pickle
import queue
import signal
import socket
import threading
import time
import warnings
from collections import Counter, deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from zlib_ng import zlib_ng

from tracekit.errors import TraceError
from tracekit.readers.common import (
    KERNEL_SCHEMA,
    LAUNCH_SCHEMA,
    MEMOP_SCHEMA,
    OP_SCHEMA,
    RANGE_SCHEMA,
    TraceData,
    give_back_memory,
    short_name,
)

# Decompressed size limits: a gzip bomb must fail cleanly, not exhaust memory. Real Kineto
# traces inflate ~12-20x (a 14.5 MB .gz holds 246 MB); bombs inflate ~1000x. A file may expand
# to MAX_RATIO times its size (at least MIN_ALLOWED). The whole-text read (_load_bytes) holds
# all of it, so there neither the text nor the file may pass MAX_DECOMPRESSED; the streaming read holds a
# slice at a time, so a 10 GB trace (800 MB gzipped) is not refused for its size.
MAX_DECOMPRESSED = 8 * 1024**3
MAX_RATIO = 200
MIN_ALLOWED = 256 * 1024**2


def inflate_limit(compressed_size: int, whole_text: bool) -> int:
    by_ratio = max(MIN_ALLOWED, MAX_RATIO * compressed_size)
    return min(MAX_DECOMPRESSED, by_ratio) if whole_text else by_ratio


def _bomb(path: Path, limit: int, whole_text: bool) -> TraceError:
    cap = f" or {MAX_DECOMPRESSED / 2**30:g} GiB read whole" if whole_text else ""
    return TraceError(path, f"gzip expands beyond {limit / 2**20:,.0f} MiB (over {MAX_RATIO}x its size{cap}); "
                            "refusing (zip bomb?)")
# Largest |ts| or dur (µs) kept: 2^62 ns, so that start + dur still fits a signed 64-bit column.
_MAX_US = 4.6e15
_UTF8_BOM = b"\xef\xbb\xbf"
# Inflated by zlib-ng (the zlib API, same bytes and errors), ~2.5x faster than the system zlib:
# 0.12 vs 0.29-0.33 CPU-s for the 230 MB bench trace.
_GZIP = 16 + zlib_ng.MAX_WBITS
# Bytes of event text decoded at once: big enough that per-slice overhead vanishes, small
# enough that one slice of structs stays a few tens of MB.
_CHUNK = 8 << 20
_WS = b" \t\r\n"


_ABSENT = msgspec.Raw(b"")


# Integers as wide as the columns they go to: a value out of that range is a value of
# unexpected shape, ignored and counted like one of the wrong type (see _Events).
_I64_RANGE = (-(1 << 63), (1 << 63) - 1)
_I32_RANGE = (-(1 << 31), (1 << 31) - 1)
I64 = Annotated[int, msgspec.Meta(ge=_I64_RANGE[0], le=_I64_RANGE[1])]
I32 = Annotated[int, msgspec.Meta(ge=_I32_RANGE[0], le=_I32_RANGE[1])]


class Args(msgspec.Struct, omit_defaults=True, gc=False):
    external_id: I64 | str | None = msgspec.field(default=None, name="External id")
    # PyTorch 1.8-1.9 wrote the key in lower case on GPU events.
    external_id_old: I64 | str | None = msgspec.field(default=None, name="external id")
    correlation: I64 | None = None
    device: I32 | None = None
    context: I64 | None = None
    stream: I64 | None = None
    registers: I32 | None = msgspec.field(default=None, name="registers per thread")
    shared: I64 | None = msgspec.field(default=None, name="shared memory")
    grid: list[I64] | None = None  # only x, y, z are kept (int32 columns): see _xyz
    block: list[I64] | None = None
    # Shapes and types are kept as JSON text: left raw, each distinct value is converted once.
    # An absent key is the empty Raw (no JSON value is empty): rows stay Raw, so their lengths
    # and bytes can be gathered in C (see _json_codes).
    input_dims: msgspec.Raw = msgspec.field(default=_ABSENT, name="Input Dims")
    input_dims_old: msgspec.Raw = msgspec.field(default=_ABSENT, name="Input dims")
    input_type: msgspec.Raw = msgspec.field(default=_ABSENT, name="Input type")
    nbytes: I64 | None = msgspec.field(default=None, name="bytes")


class Event(msgspec.Struct, gc=False):
    ph: str | None = None
    id: I64 | str | None = None  # flow events (ph s/f) carry the correlation id here
    cat: str | None = None
    name: str | None = None
    pid: I64 | str | None = None
    tid: I64 | str | None = None
    ts: float | None = None
    dur: float | None = None
    args: Args | None = None


class _Shape(msgspec.Struct):
    """The top level of a Chrome trace; used only to word the error for a document that is not one."""

    traceEvents: list[msgspec.Raw]


# The phases of the Chrome trace format and the categories PyTorch profilers write. Decoded as
# literals they are one shared string each instead of two new ones per event: decoding and
# freeing do less, and routing reuses their cached hashes. A slice with any other value is decoded again
# with Event, so values and errors are Event's.
_PHASE = Literal["X", "B", "E", "i", "I", "C", "b", "n", "e", "s", "t", "f", "P", "N", "O", "D", "M",
                 "V", "v", "R", "c", "(", ")"]
_CAT = Literal[
    "cpu_op", "kernel", "cuda_runtime", "cuda_driver", "ac2g", "user_annotation", "gpu_user_annotation",
    "gpu_memcpy", "gpu_memset", "python_function", "cpu_instant_event", "overhead", "Trace", "fwdbwd",
    "external_correlation", "cuda_sync", "cuda_profiler_range", "collective_comm", "mtia_runtime",
    "mtia_ccp_events", "hpu_op", "xpu_runtime", "xpu_driver", "privateuse1_runtime",
    "privateuse1_driver", "glow_runtime", "Kernel", "Runtime", "Memcpy", "Memset", "Operator", "operator"]


class _KnownEvent(msgspec.Struct, gc=False):
    """Event, for traces whose phases and categories are all known ones (see _PHASE)."""

    ph: _PHASE | None = None
    id: I64 | str | None = None
    cat: _CAT | None = None
    name: str | None = None
    pid: I64 | str | None = None
    tid: I64 | str | None = None
    ts: float | None = None
    dur: float | None = None
    args: Args | None = None


class _Events:
    """The one place that turns a slice of event text into Events. Fallbacks, cheapest first:

    1. _KnownEvent: phases and categories as literals (the fast path for PyTorch's own traces);
    2. Event: any phase or category string;
    3. untyped: the text decoded to plain values, each field checked against what Event takes.
       A value of another type (ROCm's string `stream` / `bytes` on hipMemcpy events, Triton's
       string `grid`) is dropped and counted in `notes`, never fatal: most fields of most events
       are not needed, and a kernel whose needed field is unusable is skipped and counted.

    Which step applies is decided by what the text holds: the next step is taken only for
    well-formed JSON holding a value the step's type does not take (msgspec.ValidationError, a
    DecodeError of its own class in every release this package allows: checked by a test).
    Text that is not JSON is answered by None at once, not decoded three times, and no msgspec
    exception leaves this class: callers check for None (a slice cut inside an event, or a
    broken file). Invalid UTF-8 never reaches a decoder (see _utf8): that is where releases
    disagree (msgspec < 0.19 raised UnicodeDecodeError, later ones DecodeError).
    """

    def __init__(self) -> None:
        self.known = msgspec.json.Decoder(list[_KnownEvent])
        self.any = msgspec.json.Decoder(list[Event])
        self.untyped = msgspec.json.Decoder()

    def decode(self, text: bytes | bytearray | memoryview, notes: _Notes | None = None) -> list[Event] | None:
        """The events of a JSON array of events, or None when the text is not JSON."""
        for typed in (self.known, self.any):
            try:
                return typed.decode(text)
            except msgspec.ValidationError:
                continue  # well-formed, with a value this type does not take: the next step
            except msgspec.DecodeError:
                return None  # not JSON
        try:
            values = self.untyped.decode(text)
        except msgspec.DecodeError:
            return None
        if not isinstance(values, list):
            return None  # not an array of events (callers pass `[...]`: not reached)
        return _checked_events(values, notes if notes is not None else _Notes())


class _Notes:
    """What a read tolerated, for runs.absent: fields of unexpected type, repaired UTF-8."""

    def __init__(self) -> None:
        self.ignored: Counter[tuple[str, str, str]] = Counter()  # (category, field, JSON type) -> events
        self.utf8_repaired = 0  # slices of text with invalid UTF-8 replaced by U+FFFD

    def lines(self) -> list[str]:
        out = []
        if self.utf8_repaired:
            out.append("invalid UTF-8 in names (replaced with U+FFFD)")
        if self.ignored:
            parts = [f"{f} ({t}) on {n} {c} events" for (c, f, t), n in sorted(self.ignored.items())]
            shown = "; ".join(parts[:16]) + (f"; and {len(parts) - 16} more" if len(parts) > 16 else "")
            out.append(f"fields of unexpected type, ignored: {shown}")
        return out


def _json_type(v: object) -> str:
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, float)):
        return "number"
    if isinstance(v, str):
        return "string"
    return "array" if isinstance(v, list) else "object"


def _is_any_int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _unexpected(v: object, wants_list: bool = False) -> str:
    """How a value that an integer field (or list of integers) did not take is named in absent."""
    if (_is_any_int(v) and not wants_list) or (wants_list and isinstance(v, list) and v and all(map(_is_any_int, v))):
        return "integer out of range"
    return _json_type(v)


def _is_int(v: object, bounds: tuple[int, int] = _I64_RANGE) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and bounds[0] <= v <= bounds[1]


def _is_num(v: object) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_int_list(v: object) -> bool:
    return isinstance(v, list) and all(_is_int(x) for x in v)


# Event and Args fields: the check a plain JSON value must pass to be kept.
_EVENT_FIELDS: dict[str, Callable[[object], bool]] = {
    "ph": lambda v: isinstance(v, str), "cat": lambda v: isinstance(v, str),
    "name": lambda v: isinstance(v, str), "id": lambda v: _is_int(v) or isinstance(v, str),
    "pid": lambda v: _is_int(v) or isinstance(v, str), "tid": lambda v: _is_int(v) or isinstance(v, str),
    "ts": _is_num, "dur": _is_num,
}
_INT_ARGS = {"correlation": "correlation", "context": "context", "stream": "stream",
             "shared memory": "shared", "bytes": "nbytes"}
_INT32_ARGS = {"device": "device", "registers per thread": "registers"}
_ID_ARGS = {"External id": "external_id", "external id": "external_id_old"}
_LIST_ARGS = {"grid": "grid", "block": "block"}
_RAW_ARGS = {"Input Dims": "input_dims", "Input dims": "input_dims_old", "Input type": "input_type"}


def _checked_events(values: list, notes: _Notes) -> list[Event]:
    """Events from untyped JSON values: a field whose value Event does not take is left out
    (as if absent) and counted; an array element that is not an object is skipped and counted."""
    out = []
    ignored = notes.ignored
    for v in values:
        if not isinstance(v, dict):
            ignored[("non-object", "traceEvents[]", _json_type(v))] += 1
            continue
        cat = v.get("cat")
        where = cat if isinstance(cat, str) else "uncategorised"
        kw: dict[str, object] = {}
        for key, ok in _EVENT_FIELDS.items():
            x = v.get(key)
            if x is None:
                continue
            if ok(x):
                kw[key] = float(x) if key in ("ts", "dur") else x
            else:
                ignored[(where, key, _unexpected(x) if key in ("id", "pid", "tid") else _json_type(x))] += 1
        a = v.get("args")
        if isinstance(a, dict):
            kw["args"] = _checked_args(a, where, ignored)
        elif a is not None:
            ignored[(where, "args", _json_type(a))] += 1
        out.append(Event(**kw))
    return out


def _checked_args(a: dict, where: str, ignored: Counter) -> Args:
    kw: dict[str, object] = {}
    for table, ok in ((_INT_ARGS, _is_int), (_INT32_ARGS, lambda x: _is_int(x, _I32_RANGE)),
                      (_ID_ARGS, lambda x: _is_int(x) or isinstance(x, str)), (_LIST_ARGS, _is_int_list)):
        for key, field_ in table.items():
            x = a.get(key)
            if x is None:
                continue
            if ok(x):
                kw[field_] = x
            else:
                ignored[(where, f"args.{key}", _unexpected(x, table is _LIST_ARGS))] += 1
    for key, field_ in _RAW_ARGS.items():
        if key in a:
            kw[field_] = msgspec.Raw(msgspec.json.encode(a[key]))
    return Args(**kw)


_NO_ARGS = Args()
_EVENTS = _Events()
_KERNEL_CATS = {"kernel", "Kernel"}
# CUDA and ROCm builds both write cuda_runtime/cuda_driver (hip* calls included); Intel XPU and
# out-of-tree (PrivateUse1) backends write their own launches the same way under their names.
_RUNTIME_CATS = {"cuda_runtime": "runtime", "Runtime": "runtime", "cuda_driver": "driver",
                 "xpu_runtime": "runtime", "xpu_driver": "driver", "privateuse1_runtime": "runtime",
                 "privateuse1_driver": "driver", "mtia_runtime": "runtime"}
_MEM_CATS = {"gpu_memcpy": "memcpy", "Memcpy": "memcpy", "gpu_memset": "memset", "Memset": "memset"}
_OP_CATS = {"cpu_op", "Operator", "operator"}
_RANGE_CATS = {"user_annotation", "gpu_user_annotation"}


class _BadCut(Exception):
    """A slice did not decode: decode the events array whole instead."""


class _SplitWrong(Exception):
    """The quick guess of where the events array lies was wrong: find it by a full parse."""


def looks_like(path: Path, head: bytes) -> bool:
    if head[:2] == b"\x1f\x8b":
        return True
    return head.removeprefix(_UTF8_BOM).lstrip()[:1] in (b"{", b"[")


def _load_bytes(path: Path) -> bytearray:
    """The whole text (the file's, inflated when gzipped): the same pieces the streaming read
    takes, held together, so under the whole-text caps (it holds every byte)."""
    size = path.stat().st_size
    if size > MAX_DECOMPRESSED:
        # Past the cap either way: plain text is held as is; gzip inflates to at least its size.
        raise TraceError(path, f"{size / 2**30:.1f} GiB that must be read whole (not laid out one event "
                               f"per line as Kineto writes it); refusing beyond {MAX_DECOMPRESSED / 2**30:g} GiB")
    # A bytearray, returned as is: a bytes() copy would double the peak memory.
    out = bytearray()
    for piece in _pieces(path, whole_text=True):
        out += piece
    return out


def _ns(us: float | None) -> int | None:
    # us * 1000 would round twice at ~4.5e15 and be off by a nanosecond; the fraction alone
    # scales exactly. Exact while the double still resolves 0.5 ns (timestamps < ~8.8e12 µs).
    if us is None:
        return None
    whole = math.floor(us)
    return int(whole) * 1000 + round((us - whole) * 1000)


def _ns_array(us: np.ndarray) -> np.ndarray:
    # _ns, vectorised: the same float operations, and np.rint rounds half to even like round().
    whole = np.floor(us)
    return whole.astype(np.int64) * 1000 + np.rint((us - whole) * 1000).astype(np.int64)


def _int_or_none(v: object) -> int | None:
    if isinstance(v, int):
        return v
    if isinstance(v, str) and v.lstrip("-").isdigit():
        return int(v)
    return None


def read(path: Path) -> TraceData:
    """One path: the text is framed into slices of whole events, each slice is checked for
    UTF-8 (_utf8) and decoded (_Events.decode), and the events go into Arrow tables (_Tables).
    Framing has one explicit fallback, chosen by checking the layout, not by a decoder's error:
    streamed slices when the file is laid out as Kineto writes it (the events array opened
    within the first slices, one event per line); else the whole text, framed by a full parse."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            return _read_stream(path)
        except _SplitWrong:
            pass  # not laid out as Kineto writes it (or broken): frame it from the whole text
        raw, repaired = _utf8(_load_bytes(path))
        return _read(path, raw, replaced=repaired)
    finally:
        if enabled:
            gc.enable()
        give_back_memory()


def _utf8(text: bytes | bytearray | memoryview) -> tuple[bytes | bytearray | memoryview, bool]:
    """(text, False) when it is valid UTF-8, else (text with each invalid sequence replaced by
    U+FFFD, True). Kernel and annotation names are copied raw from C++ strings, so a trace may
    hold invalid UTF-8; decoders disagree between releases on how to report it (msgspec < 0.19
    raised UnicodeDecodeError, 0.19+ DecodeError), so it is checked here before decoding.

    Nearly all traces are ASCII: a vectorised max over the bytes settles that without a copy;
    only text with non-ASCII bytes pays for a full UTF-8 check."""
    if not len(text) or int(np.frombuffer(text, np.uint8).max()) < 0x80:
        return text, False
    try:
        codecs.utf_8_decode(text, "strict", True)
        return text, False
    except UnicodeDecodeError:
        return codecs.utf_8_decode(text, "replace", True)[0].encode(), True




def _read_stream(path: Path) -> TraceData:
    """Decompress and decode together, slice by slice: the decompressed text is never whole in
    memory. Raises _SplitWrong when the file is not laid out as Kineto writes it (events one per
    line, the array closed by `]` after the last event), or is broken: the whole-text path then
    reads it, or words the error exactly."""
    helper = _Helper.start(path) if _wants_helper(path) else None
    pieces = _read_ahead(_pieces(path))
    try:
        return _decode_stream(path, pieces, helper)
    finally:
        pieces.close()  # stops the inflating thread at once when a slice did not decode
        if helper is not None:
            helper.close()


def _decode_stream(path: Path, pieces: Iterator[bytes], helper: _Helper | None = None) -> TraceData:
    buf = bytearray()
    start = -1
    for piece in pieces:
        buf += piece
        start = _events_start(buf)
        if start >= 0 or len(buf) > 8 * _CHUNK:
            break
    if start < 0 or _first_byte(buf, 0) != ord("{"):
        raise _SplitWrong()
    prefix, repaired = _utf8(bytes(buf[:start]))
    # buf keeps the events' own `[` in front, and a slice's closing `]` is written over the comma
    # after its last event: each slice is decoded in place, never copied out.
    del buf[:start]
    tables = _Tables()
    tables.notes.utf8_repaired += repaired
    misses = 0
    # With a helper: the slices not yet added to tables, in file order (see _Pending).
    pending = _Pending(helper, tables, path) if helper is not None else None
    with _errors_as_trace_error(path):
        for piece in pieces:
            buf += piece
            if len(buf) < _CHUNK:
                continue
            cut = _last_cut(buf)
            if cut is None:
                continue
            comma, nxt = cut
            buf[comma] = ord("]")
            text, repaired = _utf8(memoryview(buf)[:comma + 1])
            if pending is not None:
                pending.drain(wait=False)
            if pending is not None and pending.to_helper(text):
                tables.notes.utf8_repaired += repaired
            else:
                local = pending.local() if pending is not None and pending.queue else tables
                events = _EVENTS.decode(text, local.notes)
                if events is None:  # not JSON: a cut inside an event, or a broken file
                    del text  # a view of buf: it must go before buf is resized
                    buf[comma] = ord(",")
                    misses += 1  # a cut inside an event: keep reading and cut further on
                    if misses > 4:
                        raise _SplitWrong()
                    continue
                tables.notes.utf8_repaired += repaired
                local.add(events, path, None)
                del events
                if local is not tables:
                    pending.add_part(local, text)  # behind the helper's slice: added after it
            del text  # a view of buf (and the events' Raw values): it must go before buf is resized
            del buf[:nxt - 1]
            buf[0] = ord("[")
        if pending is not None:
            pending.drain(wait=True)
        del buf[:1]
        top, end = _close_events(prefix, buf)
        tail, repaired = _utf8(b"[" + bytes(buf[:end]) + b"]")
        del buf
        tables.notes.utf8_repaired += repaired
        events = _EVENTS.decode(tail, tables.notes) if _first_byte(tail, 1) != ord("]") else []
        if events is None:
            raise _SplitWrong()  # not JSON where the layout promised events: the whole-text path words it
        tables.add(events, path, None)
        del events, tail
        if tables.need_flow:
            raise _SplitWrong()  # ac2g flows are matched in a second pass over the whole text
        return _finish(path, tables, _envelope(path, None, top, tables.notes))


@contextmanager
def _errors_as_trace_error(path: Path) -> Iterator[None]:
    try:
        yield
    except msgspec.DecodeError:
        raise _SplitWrong() from None  # not JSON where the layout promised events: the whole-text path words it
    except (OverflowError, pa.ArrowInvalid) as exc:
        # An integer field beyond 64 bits (or a grid beyond 32) is not something a profiler writes.
        raise TraceError(path, f"value out of range in trace ({exc})") from None


_DONE = object()


def _read_ahead(items: Iterator[bytes]) -> Iterator[bytes]:
    """items, produced by a second thread up to two ahead: zlib inflates and the file is read
    without the GIL, so on a second core inflating overlaps decoding (~0.12 s of the 230 MB
    bench trace's 1 s). Its errors (TraceError for a broken gzip) are raised here, in order."""
    q: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()

    def put(item: object) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.05)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in items:
                put(item)
                if stop.is_set():
                    return
            put(_DONE)
        except BaseException as exc:  # noqa: BLE001 - handed to the reading thread, raised there
            put(exc)
        finally:
            items.close()

    worker = threading.Thread(target=produce, name="tracekit-inflate", daemon=True)
    worker.start()
    try:
        while (item := q.get()) is not _DONE:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        worker.join()


# Traces of at least this much JSON text get a second decoding process (_Helper): the 2.27 GB
# bench trace imported in 12.0-13.4 s with it (then started as a fresh interpreter), 14.6-14.8 s
# without (quiet 2-core machine). Below it the helper's overhead (the slices' copies and
# answers, the fork's copied pages) is not won back even though the fork starts at once: the
# 230 MB trace's reading took 1.39-1.63 s wall, 1.41-1.52 CPU-s with it, 1.13-1.26 s wall,
# 1.13-1.22 CPU-s without (2-core machine, load 2.7, at nice -20).
# A gzipped file is taken for _GZ_RATIO times its size (Kineto's JSON deflates ~12x).
_HELPER_MIN_BYTES = 512 << 20
_GZ_RATIO = 12
# Shared memory for each slice a helper holds, and again for its answer: a slice is _CHUNK plus
# at most one inflated piece; its columns take a fraction of its text.
_SHARED_BYTES = 32 << 20
_SLOTS = 2


def _wants_helper(path: Path) -> bool:
    """A helper process pays off on a big file, with a second CPU to run on, and not inside
    a worker process (`import -j`, Dask: the files are already parsed in parallel there).
    TRACEKIT_KINETO_HELPER=0 turns it off (one process, ~100 MB less; the bench's comparison).

    The machine's load does not decide: the 1-minute load lags, so an import right after
    another (the user's own previous one) read its own past as a busy machine, and the 2.27 GB
    trace then took 13.5 s instead of 9.9-10.2 s on an idle 2-core machine. On a machine truly
    busy with other work the helper costs some more CPU; the tables are the same either way."""
    if os.environ.get("TRACEKIT_KINETO_HELPER") == "0":
        return False
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    if cpus < 2 or multiprocessing.parent_process() is not None or not hasattr(os, "memfd_create"):
        return False
    try:
        with path.open("rb") as f:
            gz = f.read(2) == b"\x1f\x8b"
            size = os.fstat(f.fileno()).st_size
    except OSError:
        return False  # _pieces words the error
    return size * (_GZ_RATIO if gz else 1) >= _HELPER_MIN_BYTES


class _Helper:
    """A second process that decodes slices of events into columns (_helper_main) while this
    one decodes others: msgspec holds the GIL, so a thread could not.

    Its columns (_Tables.part) are merged in file order (_Pending), so the tables are the ones
    one process reads. What it cannot decide alone is redone here, in order, from the slice's
    text: a B/E pair or a missing correlation spanning slices, a slice that did not decode, any
    error (so errors are this process's own), a helper that died. A helper that does not start is
    simply never used. It is a plain fork (not multiprocessing's, whose spawn would import the
    caller's __main__ again, or a fresh interpreter, whose imports took ~0.3 CPU-s): the child
    runs only _helper_main, which decodes with this module (msgspec, numpy, pyarrow) and leaves
    by os._exit, so nothing of the caller (a DuckDB connection, atexit hooks, buffered output)
    runs or is flushed twice.

    It holds up to _SLOTS slices, so it never waits for this process to hand it the next one.
    Slices and its answers (pickled parts) go through shared memory (a memfd both map: slot i
    is the slice, then the answer, _SHARED_BYTES each); the socket carries only their sizes, so
    neither process blocks on the other's reading (8 MB through the socket also cost more than a
    tenth of decoding it)."""

    def __init__(self, proc: _Forked, conn: Connection, shared: mmap.mmap) -> None:
        self.proc = proc
        self.conn = conn
        self.shared = shared
        self.ready = False
        self.broken = False
        self.sent: deque[tuple[int, int]] = deque()  # (slot, bytes) of the slices it holds, in order

    @classmethod
    def start(cls, path: Path) -> _Helper | None:
        ours, theirs = socket.socketpair()
        mem = os.memfd_create("tracekit-slice")
        size = 2 * _SLOTS * _SHARED_BYTES
        try:
            os.ftruncate(mem, size)  # pages are only allocated as slices are written
            shared = mmap.mmap(mem, size)
            with warnings.catch_warnings():
                # Python 3.12+ warns of forking a process with threads (the caller's DuckDB
                # pool): their locks are never taken in the child, which runs only _helper_main.
                warnings.simplefilter("ignore", DeprecationWarning)
                pid = os.fork()
        except OSError:
            ours.close()
            theirs.close()
            os.close(mem)
            return None
        if pid == 0:
            try:  # the helper: it must never return into the caller's code
                ours.close()
                _helper_main(theirs.detach(), mem, str(path))
            finally:
                os._exit(0)
        theirs.close()
        os.close(mem)
        proc = _Forked(pid)
        return cls(proc, Connection(ours.detach()), shared)

    def idle(self) -> bool:
        """Ready for a slice: started (never waited for) and a slot free."""
        if self.broken or len(self.sent) >= _SLOTS:
            return False
        if not self.ready:
            try:
                if not self.conn.poll():
                    return False  # still importing: this process decodes meanwhile
                self.ready = self.conn.recv() == "ready"
            except (EOFError, OSError):
                self.ready = False
            self.broken = not self.ready
        return self.ready

    def send(self, text: memoryview) -> bool:
        """Hand the helper a slice; False (nothing sent) when it does not fit a slot."""
        n = len(text)
        if n > _SHARED_BYTES:
            return False
        slot = min(set(range(_SLOTS)) - {s for s, _ in self.sent})
        at = 2 * slot * _SHARED_BYTES
        self.shared[at:at + n] = text
        self.sent.append((slot, n))
        try:
            self.conn.send((slot, n))
        except OSError:
            self.broken = True  # died: the slice is redone here when taken
        return True

    def answered(self) -> bool:
        """Whether the oldest slice's answer is there (answers come in the order sent)."""
        try:
            return self.broken or self.conn.poll()
        except OSError:
            return True  # result() finds it broken

    def result(self) -> tuple[bytes, dict | None]:
        """The oldest slice sent: (b"", its part), or (its text, None): redo it here."""
        slot, n = self.sent.popleft()
        at = 2 * slot * _SHARED_BYTES
        part = None
        if not self.broken:
            try:
                size = self.conn.recv()
                if size is not None:
                    part = pickle.loads(self.shared[at + _SHARED_BYTES:at + _SHARED_BYTES + size])
            except (EOFError, OSError):
                self.broken = True
        return (self.shared[at:at + n] if part is None else b""), part

    def close(self) -> None:
        try:
            self.conn.send(None)  # the helper's signal to exit
        except OSError:
            pass
        self.conn.close()
        if not self.proc.wait(timeout=5):
            self.proc.kill()
            self.proc.wait()


class _Forked:
    """The helper's process: waited for, or killed, by its pid."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.reaped = False

    def wait(self, timeout: float | None = None) -> bool:
        """Whether it has exited (and is reaped); with a timeout, polled until then."""
        until = None if timeout is None else time.monotonic() + timeout
        while not self.reaped:
            try:
                self.reaped = os.waitpid(self.pid, 0 if until is None else os.WNOHANG)[0] != 0
            except ChildProcessError:  # reaped already (an application ignoring SIGCHLD)
                self.reaped = True
            if not self.reaped:
                if time.monotonic() > until:
                    return False
                time.sleep(0.005)
        return True

    def kill(self) -> None:
        if not self.reaped:
            os.kill(self.pid, signal.SIGKILL)


class _Pending:
    """Slices read but not yet added to the reader's tables, in file order: the helper's slice
    (until it answers) and the slices this process decoded after it, each as a part (its own
    _Tables, merged later), so that neither process waits for the other. A part that cannot be
    made alone (see _Tables.part) keeps its text and is decoded again when its turn comes."""

    _HELPER = object()
    _MAX = 8  # parts held at most before waiting for the helper: memory stays bounded

    def __init__(self, helper: _Helper, tables: _Tables, path: Path) -> None:
        self.helper = helper
        self.tables = tables
        self.path = path
        self.queue: deque = deque()

    def to_helper(self, text: memoryview) -> bool:
        """Hand the slice to the helper if it is free (and the queue is not full of its parts)."""
        if len(self.queue) >= self._MAX:
            self.drain(wait=True)
        if self.helper.idle() and self.helper.send(text):
            self.queue.append(self._HELPER)
            return True
        return False

    def local(self) -> _Tables:
        """A _Tables for one slice decoded here while earlier ones are pending."""
        local = _Tables()
        local.json_text = self.tables.json_text  # text of each distinct shape: the same for every slice
        return local

    def add_part(self, local: _Tables, text: memoryview) -> None:
        part = local.part()
        self.queue.append(part if part is not None else bytes(text))

    def drain(self, wait: bool) -> None:
        """Add the pending slices at the front of the queue, up to the helper's unanswered one
        (`wait`: all, waiting for the helper's answer)."""
        while self.queue:
            item = self.queue[0]
            if item is self._HELPER:
                if not wait and not self.helper.answered():
                    return
                text, part = self.helper.result()
                if part is not None:
                    self.tables.merge(part)
                else:
                    self._redo(text)
            elif isinstance(item, dict):
                self.tables.merge(item)
            else:
                self._redo(item)
            self.queue.popleft()

    def _redo(self, text: bytes) -> None:
        events = _EVENTS.decode(text, self.tables.notes)
        if events is None:
            raise _SplitWrong()  # a cut inside an event, or not JSON: the whole-text path reads or words it
        self.tables.add(events, self.path, None)


def _helper_main(fd: int, mem: int, path: str) -> None:
    """The helper process (see _Helper): each slice of text (slot and length in the shared
    memory) is answered with the length of its pickled columns (_Tables.part) in the slot's
    answer half, or None where the reading process must do it itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the reading process's to handle
    gc.disable()
    conn = Connection(fd)
    shared = memoryview(mmap.mmap(mem, 2 * _SLOTS * _SHARED_BYTES))
    json_text: dict[tuple[int, bytes], str | None] = {}  # distinct shapes and types, kept across slices
    try:
        conn.send("ready")
        while (msg := conn.recv()) is not None:
            slot, n = msg
            at = 2 * slot * _SHARED_BYTES
            text = shared[at:at + n]  # decoded in place; the events' Raw values are views of it until dropped
            tables = _Tables()
            tables.json_text = json_text
            answer = None
            try:
                events = _EVENTS.decode(text, tables.notes)
                if events is not None:
                    tables.add(events, Path(path), None)
                    part = tables.part()
                    if part is not None:
                        answer = pickle.dumps(part, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception:  # noqa: BLE001 - redone by the reading process, which raises it there
                answer = None
            if answer is not None and len(answer) <= _SHARED_BYTES:
                shared[at + _SHARED_BYTES:at + _SHARED_BYTES + len(answer)] = answer
                conn.send(len(answer))
            else:
                conn.send(None)
            events = tables = text = answer = part = None
    except (EOFError, OSError):
        pass  # the reading process is gone, or stopped early: nothing left to do
    # Nothing to clean up that the OS does not: skipping the interpreter's teardown (tens of ms
    # of freeing modules) lets the reading process reap it at once.
    os._exit(0)


def _pieces(path: Path, whole_text: bool = False) -> Iterator[bytes]:
    """The file's text in blocks of about _CHUNK bytes, inflated on the fly when gzipped (with an
    output cap instead of gzip.decompress, which has none: inflate_limit; `whole_text`: for a
    reader that holds every block). A UTF-8 BOM (Windows editors prepend one; JSON parsers
    reject it, the content is fine) is dropped."""
    try:
        f = path.open("rb")
    except OSError as exc:
        raise TraceError(path, f"cannot read ({exc.strerror or exc})") from None
    with f:
        first = True
        if f.read(2) != b"\x1f\x8b":
            f.seek(0)
            while block := f.read(_CHUNK):
                yield block.removeprefix(_UTF8_BOM) if first else block
                first = False
            return
        f.seek(0)
        d = zlib_ng.decompressobj(_GZIP)
        limit = inflate_limit(os.fstat(f.fileno()).st_size, whole_text)
        total = 0
        try:
            while data := f.read(1 << 20):
                while data:
                    if d.eof:
                        # Concatenated gzip members are legal; continue with the next one.
                        d = zlib_ng.decompressobj(_GZIP)
                    out = d.decompress(data, _CHUNK)
                    total += len(out)
                    if total > limit:
                        raise _bomb(path, limit, whole_text)
                    data = d.unconsumed_tail or (d.unused_data if d.eof else b"")
                    if out:
                        yield out.removeprefix(_UTF8_BOM) if first else out
                        first = False
            if not d.eof:
                raise TraceError(path, "truncated gzip (file ends before the compressed stream does)")
        except zlib_ng.error as exc:
            raise TraceError(path, f"corrupt gzip ({exc})") from None


def _events_start(buf: bytearray) -> int:
    """Offset of the `[` opening the traceEvents array, or -1 while not (yet) seen."""
    key = buf.find(b'"traceEvents"')
    if key < 0:
        return -1
    colon = _skip_ws(buf, key + len(b'"traceEvents"'))
    if colon >= len(buf) or buf[colon] != ord(":"):
        return -1
    start = _skip_ws(buf, colon + 1)
    return start if start < len(buf) and buf[start] == ord("[") else -1


def _last_cut(buf: bytearray) -> tuple[int, int] | None:
    """(offset of the `,` ending an event, offset of the `{` starting the next) for the last
    event boundary in buf, where a newline separates them (see _chunks)."""
    end = len(buf)
    for _ in range(64):
        nl = buf.rfind(b"\n", 0, end)
        if nl <= 0:
            return None
        before = nl - 1
        while before > 0 and buf[before] in _WS:
            before -= 1
        after = _skip_ws(buf, nl + 1)
        if buf[before] == ord(",") and after < len(buf) and buf[after] == ord("{"):
            return before, after
        end = nl
    return None


# Stands in for the events array while the envelope around it is decoded. It is not `[]`, so a
# second top-level traceEvents key after it is told apart: then the last one is the events
# array, as JSON.parse (Chrome's and Perfetto's trace viewers) and Python's json read it.
_SLOT = b'"tracekit: events array"'


def _close_events(prefix: bytes, rest: bytearray) -> tuple[dict[str, msgspec.Raw], int]:
    """The envelope (decoded around an empty traceEvents) and where the events end in rest."""
    pos = len(rest)
    for _ in range(8):
        close = rest.rfind(b"]", 0, pos)
        if close < 0:
            break
        pos = close
        before = close - 1
        while before >= 0 and rest[before] in _WS:
            before -= 1
        if before >= 0 and rest[before] != ord("}"):
            continue
        try:
            top = msgspec.json.decode(prefix + _SLOT + bytes(rest[close + 1:]), type=dict[str, msgspec.Raw])
        except msgspec.DecodeError:
            continue
        ev = top.pop("traceEvents", None)
        if ev is None or bytes(ev) != _SLOT:  # a later traceEvents key: it is the one read
            break
        return top, close
    raise _SplitWrong()


def _read(path: Path, raw: bytes | bytearray, replaced: bool) -> TraceData:
    """The whole-text path; raw is valid UTF-8 (see _utf8), `replaced` says whether it was repaired."""
    try:
        built = None
        quick = _split_quick(raw)
        if quick is not None:
            try:
                built = _build(path, raw, *quick, exact=False)
            except _SplitWrong:
                built = None
        if built is None:
            built = _build(path, raw, *_split_envelope(path, raw), exact=True)
        tables, envelope = built
        tables.notes.utf8_repaired += replaced
        return _finish(path, tables, envelope)
    except (OverflowError, pa.ArrowInvalid) as exc:
        # An integer field beyond 64 bits (or a grid beyond 32) is not something a profiler writes.
        raise TraceError(path, f"value out of range in trace ({exc})") from None


def _finish(path: Path, tables: _Tables, envelope: dict) -> TraceData:
    data = tables.finish(envelope)
    if data is None:
        bad_ts = tables.bad_ts
        why = f" ({bad_ts} events skipped for missing, NaN, negative or out-of-range times)" if bad_ts else ""
        raise TraceError(path, f"trace has no GPU kernels{why} (was the profiler run with CUDA activities?)")
    return data


def _build(path: Path, raw: bytes | bytearray, top: dict[str, msgspec.Raw], span: tuple[int, int],
           exact: bool) -> tuple[_Tables, dict]:
    tables = _Tables()
    envelope = _envelope(path, raw, top, tables.notes)
    try:
        for chunk in _chunks(raw, span, tables.notes):
            tables.add(chunk, path, raw)
    except _BadCut:
        tables = _Tables()
        envelope = _envelope(path, raw, top, tables.notes)
        tables.add(_decode_whole(path, raw, span, exact, tables.notes), path, raw)
    if tables.need_flow:
        # Rare (correlation args missing): a second pass reads the ac2g flows.
        try:
            for chunk in _chunks(raw, span):
                tables.add_flows(chunk)
        except _BadCut:
            tables.add_flows(_decode_whole(path, raw, span, exact))
    return tables, envelope


def _canonical_error(path: Path, raw: bytes | bytearray | None) -> TraceError:
    """The error for a document that cannot be read: invalid JSON (with its byte offset), or a
    document whose top level is not a Chrome trace's. raw is valid UTF-8 (see _utf8)."""
    if raw is None:
        raise _SplitWrong()  # streaming: the whole-text path will word it
    try:
        msgspec.json.decode(raw, type=msgspec.Raw)  # well-formed JSON? (values are skipped, not built)
    except msgspec.DecodeError as exc:
        return TraceError(path, f"invalid JSON ({exc})")
    try:
        if _first_byte(raw, 0) == ord("["):
            msgspec.json.decode(raw, type=list[msgspec.Raw])
        else:
            msgspec.json.decode(raw, type=_Shape)
    except msgspec.DecodeError as exc:
        return TraceError(path, f"not a Chrome/Kineto trace ({exc})")
    return TraceError(path, "not a Chrome/Kineto trace (unexpected event fields)")


def _skip_ws(buf: bytes | bytearray, pos: int) -> int:
    n = len(buf)
    while pos < n and buf[pos] in _WS:
        pos += 1
    return pos


def _first_byte(buf: bytes | bytearray, pos: int) -> int:
    pos = _skip_ws(buf, pos)
    return buf[pos] if pos < len(buf) else -1


def _offset(view: memoryview, buf: bytes | bytearray) -> int:
    # Where a msgspec.Raw slice starts inside the text it was decoded from.
    return np.frombuffer(view, np.uint8).ctypes.data - np.frombuffer(buf, np.uint8).ctypes.data


def _split_quick(raw: bytes | bytearray) -> tuple[dict[str, msgspec.Raw], tuple[int, int]] | None:
    """Where the events array lies, found without parsing the whole text (a full parse costs as
    much as a third of decoding): the `"traceEvents": [` key and a closing `]` after an event,
    confirmed by the envelope around them decoding with traceEvents as that empty slot. The
    events themselves are validated as they are decoded; if they do not decode, _SplitWrong."""
    if _first_byte(raw, 0) != ord("{"):
        return None
    key = raw.find(b'"traceEvents"')
    if key < 0:
        return None
    colon = _skip_ws(raw, key + len(b'"traceEvents"'))
    if colon >= len(raw) or raw[colon] != ord(":"):
        return None
    start = _skip_ws(raw, colon + 1)
    if start >= len(raw) or raw[start] != ord("["):
        return None
    pos = len(raw)
    for _ in range(8):
        close = raw.rfind(b"]", start, pos)
        if close < 0:
            return None
        pos = close
        before = close - 1
        while before > start and raw[before] in _WS:
            before -= 1
        if raw[before] not in b"}[":
            continue
        head = bytes(raw[:start]) + _SLOT + bytes(raw[close + 1:])
        try:
            top = msgspec.json.decode(head, type=dict[str, msgspec.Raw])
        except msgspec.DecodeError:
            continue
        ev = top.pop("traceEvents", None)
        if ev is None or bytes(ev) != _SLOT:  # a later traceEvents key: it is the one read
            return None
        return top, (start, close + 1)
    return None


def _split_envelope(path: Path, raw: bytes | bytearray) -> tuple[dict[str, msgspec.Raw], tuple[int, int]]:
    """Top-level keys (events left raw) and the byte span of the events array in raw."""
    if _first_byte(raw, 0) == ord("["):
        # The Chrome "JSON Array Format": bare events, no envelope.
        try:
            msgspec.json.decode(raw, type=msgspec.Raw)
        except msgspec.DecodeError:
            raise _canonical_error(path, raw) from None
        start = _skip_ws(raw, 0)
        end = len(raw)
        while end > start and raw[end - 1] in _WS:
            end -= 1
        return {}, (start, end)
    try:
        top = msgspec.json.decode(raw, type=dict[str, msgspec.Raw])
    except msgspec.DecodeError:
        raise _canonical_error(path, raw) from None
    ev = top.pop("traceEvents", None)
    if ev is None or (len(memoryview(ev)) == 4 and bytes(ev) == b"null"):
        if "nodes" in top and "schema" in top:
            # torch.profiler.ExecutionTraceObserver writes operators and their inputs, no GPU activity.
            raise TraceError(path, "JSON has no traceEvents: a PyTorch execution trace (operator graph, no GPU "
                                   "kernels), not a Chrome/Kineto trace; import the Kineto trace recorded with it")
        raise TraceError(path, "JSON has no traceEvents: not a Chrome/Kineto trace")
    view = memoryview(ev)
    if not len(view) or view[0] != ord("["):
        raise _canonical_error(path, raw)
    start = _offset(view, raw)
    return top, (start, start + len(view))


def _chunks(raw: bytes | bytearray, span: tuple[int, int], notes: _Notes | None = None) -> Iterator[list[Event]]:
    """Decode the events array [start, end) in slices cut between two events.

    A cut is made only where a newline separates `,` from `{`: a newline cannot occur inside a
    JSON string, and a cut that lands inside an event (nested objects) leaves a bracket unclosed,
    which the decoder rejects (_BadCut: the caller then decodes the array whole).
    """
    start, end = span
    inner, stop = start + 1, end - 1  # between the brackets
    cuts = []
    pos = inner + _CHUNK
    while pos < stop:
        nl = raw.find(b"\n", pos, stop)
        if nl < 0:
            break
        before = nl - 1
        while before > inner and raw[before] in _WS:
            before -= 1
        after = nl + 1
        while after < stop and raw[after] in _WS:
            after += 1
        if raw[before] == ord(",") and after < stop and raw[after] == ord("{"):
            cuts.append((before, after))
            pos = after + _CHUNK
        else:
            pos = nl + 1
    if not cuts:
        raise _BadCut()
    lo = inner
    pieces = []
    for comma, nxt in cuts:
        pieces.append((lo, comma))
        lo = nxt
    pieces.append((lo, stop))
    for a, b in pieces:
        buf = bytearray(b"[")
        buf += memoryview(raw)[a:b]
        buf += b"]"
        events = _EVENTS.decode(buf, notes)
        if events is None:
            raise _BadCut()  # a cut inside an event, or not JSON
        del buf
        yield events


def _decode_whole(path: Path, raw: bytes | bytearray, span: tuple[int, int], exact: bool,
                  notes: _Notes | None = None) -> list[Event]:
    events = _EVENTS.decode(memoryview(raw)[span[0]:span[1]], notes)
    if events is None:
        if not exact:
            raise _SplitWrong()
        raise _canonical_error(path, raw)
    return events


class _Codes(dict):
    """Value -> dictionary code, shared by every slice of one string column: the batches hold
    int32 codes and the column is assembled once at the end, with no unifying and no cast back
    to plain strings (readers may return dictionary columns)."""

    def __init__(self, none_as: str | None = None) -> None:
        super().__init__()
        self.values: list[str] = []
        self.none_as = none_as  # names: a missing name is stored as "" (the old `name or ""`)

    def __missing__(self, key: str | None) -> int:
        if key is None and self.none_as is not None:
            code = self[self.none_as]
        else:
            code = len(self.values)
            self.values.append(key)
        self[key] = code
        return code

    def encode(self, vals: list) -> np.ndarray:
        return np.fromiter(map(self.__getitem__, vals), np.int32, len(vals))

    def column(self, codes: pa.Array) -> pa.Array:
        return pa.DictionaryArray.from_arrays(codes, pa.array(self.values, pa.string()))


_DICT = pa.dictionary(pa.int32(), pa.string())


def _coded(schema: pa.Schema, names: tuple[str, ...]) -> tuple[pa.Schema, pa.Schema]:
    """(schema of the per-slice batches: those string columns as int32 codes, output schema)."""
    batch, out = schema, schema
    for n in names:
        i = schema.get_field_index(n)
        batch = batch.set(i, pa.field(n, pa.int32()))
        out = out.set(i, pa.field(n, _DICT))
    return batch, out


_K_COLS = ("name", "short_name")
_LA_COLS = ("name", "kind")
_O_COLS = ("name", "source", "input_dims", "input_types")
_K_BATCH, _K_OUT = _coded(KERNEL_SCHEMA, _K_COLS)
_LA_BATCH, _LA_OUT = _coded(LAUNCH_SCHEMA, _LA_COLS)
_O_BATCH, _O_OUT = _coded(OP_SCHEMA, _O_COLS)


# The tables a helper's part carries (_Tables attributes), and their columns holding codes of
# _Tables.codes (short_name holds the name's codes until finish).
_PART_TABLES = ("k", "la", "r", "o", "m")
_PART_CODES = {"k": {"name": "k.name", "short_name": "k.name"}, "la": {"name": "la.name", "kind": "la.kind"},
               "o": {"name": "o.name", "source": "o.source", "input_dims": "o.input_dims",
                     "input_types": "o.input_types"}}


class _Tables:
    """Accumulates each kept table as Arrow record batches, one per slice of events."""

    def __init__(self) -> None:
        self.k = _Columns(_K_BATCH)
        self.la = _Columns(_LA_BATCH)
        self.r = _Columns(RANGE_SCHEMA)
        self.o = _Columns(_O_BATCH)
        self.m = _Columns(MEMOP_SCHEMA)
        self.bad_ts = 0
        self.notes = _Notes()
        self.open_b: dict[tuple, list[Event]] = {}  # (pid, tid) -> B events not yet closed
        self.lone_e = 0
        self.json_text: dict[tuple[int, bytes], str | None] = {}
        self.codes = {
            "k.name": _Codes(""), "la.name": _Codes(""), "la.kind": _Codes(), "o.name": _Codes(""),
            "o.source": _Codes(), "o.input_dims": _Codes(), "o.input_types": _Codes(),
        }
        # Rows that lacked `correlation`: (table, row number, (pid, tid, ts)) for the ac2g fallback.
        self.need_flow: list[tuple[str, int, tuple]] = []
        self.flow_s: dict[tuple, int] = {}
        self.flow_f: dict[tuple, int] = {}
        self.rows = {"k": 0, "la": 0}

    def add(self, events: list[Event], path: Path, raw: bytes | bytearray) -> None:
        kern: list[Event] = []
        launch: list[Event] = []
        ops: list[Event] = []
        rngs: list[Event] = []
        mem: list[Event] = []
        # Each category's list, so the loop below does one dict lookup per event, in file order.
        route = dict.fromkeys(_KERNEL_CATS, kern) | dict.fromkeys(_RUNTIME_CATS, launch)
        route |= dict.fromkeys(_OP_CATS, ops) | dict.fromkeys(_RANGE_CATS, rngs) | dict.fromkeys(_MEM_CATS, mem)
        get = route.get
        for e in events:
            ph = e.ph
            if ph == "X":
                target = get(e.cat)
                if target is not None:
                    target.append(e)
            elif ph == "B" or ph == "E":
                e = self._paired(e)
                if e is not None:
                    target = get(e.cat)
                    if target is not None:
                        target.append(e)
        if kern:
            self._kernels(kern)
        if launch:
            self._launches(launch)
        if ops:
            self._ops(ops, path, raw)
        if rngs:
            self._ranges(rngs)
        if mem:
            self._memops(mem)

    def part(self) -> dict | None:
        """This one slice's columns for another _Tables (merge), or None when the slice holds
        what only the reader of every slice in order can settle: a B/E pair left open or an E
        without its B (pairs across slices), rows without correlation (their row numbers)."""
        if any(self.open_b.values()) or self.lone_e or self.need_flow:
            return None
        cols = {t: {name: parts[0] for name, parts in getattr(self, t).parts.items() if parts} for t in _PART_TABLES}
        return {"cols": cols, "codes": {k: c.values for k, c in self.codes.items()},
                "bad_ts": self.bad_ts, "ignored": self.notes.ignored}

    def merge(self, part: dict) -> None:
        """Append a part (another _Tables' slice) as if its events had been added here: its
        dictionary codes mapped to this reader's (new values get codes in the order they first
        appear, as add gives them)."""
        remap = {k: pa.array(np.fromiter(map(self.codes[k].__getitem__, vals), np.int32, len(vals)), pa.int32())
                 for k, vals in part["codes"].items()}
        for t in _PART_TABLES:
            cols = part["cols"][t]
            if not cols:
                continue
            coded = _PART_CODES.get(t, {})
            cols = {name: pc.take(remap[coded[name]], arr) if name in coded else arr for name, arr in cols.items()}
            getattr(self, t).append(cols)
            if t in self.rows:
                self.rows[t] += len(cols["start_ns"])
        self.bad_ts += part["bad_ts"]
        self.notes.ignored.update(part["ignored"])

    def _paired(self, e: Event) -> Event | None:
        """Duration events as B/E pairs (the Chrome format's other way to write an X event): an E
        closes the latest open B of its thread. Returns the complete event at E, else None."""
        key = (e.pid, e.tid)
        if e.ph == "B":
            a = e.args
            if a is not None and (a.input_dims or a.input_dims_old or a.input_type):
                # Raw values are views of the slice's text, which the next slice replaces.
                a.input_dims, a.input_dims_old, a.input_type = (
                    msgspec.Raw(bytes(r)) for r in (a.input_dims, a.input_dims_old, a.input_type))
            self.open_b.setdefault(key, []).append(e)
            return None
        stack = self.open_b.get(key)
        if not stack:
            self.lone_e += 1
            return None
        b = stack.pop()
        dur = None if b.ts is None or e.ts is None else e.ts - b.ts
        return Event(ph="X", id=b.id, cat=b.cat if b.cat is not None else e.cat,
                     name=b.name if b.name is not None else e.name, pid=b.pid, tid=b.tid, ts=b.ts, dur=dur,
                     args=b.args if b.args is not None else e.args)

    def add_flows(self, events: list[Event]) -> None:
        for e in events:
            ph = e.ph
            if e.cat == "ac2g" and (ph == "s" or ph == "f"):
                fid = _int_or_none(e.id)
                if fid is not None and e.ts is not None:
                    # First binding wins: a duplicated or cyclic flow id cannot rebind an event.
                    (self.flow_s if ph == "s" else self.flow_f).setdefault((e.pid, e.tid, e.ts), fid)

    def _times(self, evs: list[Event]) -> tuple[list[Event], np.ndarray, np.ndarray]:
        ts, dur = _floats([e.ts for e in evs]), _floats([e.dur for e in evs])
        with np.errstate(invalid="ignore"):
            # NaN (also from a missing value) fails every comparison, so it lands in bad.
            good = (np.abs(ts) <= _MAX_US) & (dur >= 0) & (dur <= _MAX_US)
        if not good.all():
            self.bad_ts += int((~good).sum())  # unplaceable extents have no place on a timeline
            evs = [e for e, g in zip(evs, good.tolist(), strict=True) if g]
            ts, dur = ts[good], dur[good]
        start, d = _ns_array(ts), _ns_array(dur)
        end = start + d
        if (end < start).any():
            raise OverflowError("start + dur beyond 64 bits")
        return evs, start, np.stack([end, d])

    def _no_corr(self, table: str, corr: pa.Array, evs: list[Event]) -> None:
        base = self.rows[table]
        if corr.null_count:
            for i in np.flatnonzero(corr.is_null().to_numpy(zero_copy_only=False)).tolist():
                e = evs[i]
                self.need_flow.append((table, base + i, (e.pid, e.tid, e.ts)))
        self.rows[table] += len(evs)

    def _kernels(self, evs: list[Event]) -> None:
        evs, start, ed = self._times(evs)
        if not evs:
            return
        n = len(evs)
        args = [e.args or _NO_ARGS for e in evs]
        device = pa.array([a.device for a in args], pa.int32())
        if device.null_count:
            device = pa.array([a.device if a.device is not None else _int_or_none(e.pid)
                               for a, e in zip(args, evs, strict=True)], pa.int32())
        stream = pa.array([a.stream for a in args], pa.int64())
        if stream.null_count:
            stream = pa.array([a.stream if a.stream is not None else _stream_of(e.tid)
                               for a, e in zip(args, evs, strict=True)], pa.int64())
        corr = pa.array([a.correlation for a in args], pa.int64())
        self._no_corr("k", corr, evs)
        names = self.codes["k.name"].encode([e.name for e in evs])
        null64 = pa.nulls(n, pa.int64())
        cols = {
            "kernel_id": null64, "name": names, "short_name": names,
            "start_ns": start, "end_ns": ed[0], "dur_ns": ed[1], "device": device,
            "context": [a.context for a in args], "stream": stream, "correlation": corr,
            "pid": null64, "registers": [a.registers for a in args], "shared_static": [a.shared for a in args],
            "shared_dynamic": null64, "graph_node_id": null64,
        }
        for key, vals in (("grid", [a.grid for a in args]), ("block", [a.block for a in args])):
            xyz, wide = _xyz(vals)
            cols.update(zip((f"{key}_x", f"{key}_y", f"{key}_z"), xyz, strict=True))
            if wide:
                self.notes.ignored[("kernel", f"args.{key}", "integer out of range")] += wide
        self.k.append(cols)

    def _launches(self, evs: list[Event]) -> None:
        evs, start, ed = self._times(evs)
        if not evs:
            return
        corr = pa.array([(e.args or _NO_ARGS).correlation for e in evs], pa.int64())
        self._no_corr("la", corr, evs)
        self.la.append({
            "launch_id": pa.nulls(len(evs), pa.int64()), "name": self.codes["la.name"].encode([e.name for e in evs]),
            "kind": self.codes["la.kind"].encode([_RUNTIME_CATS[e.cat] for e in evs]),
            "start_ns": start, "end_ns": ed[0], "dur_ns": ed[1],
            "pid": _ints([e.pid for e in evs]), "tid": _ints([e.tid for e in evs]), "correlation": corr,
        })

    def _ops(self, evs: list[Event], path: Path, raw: bytes | bytearray) -> None:
        evs, start, ed = self._times(evs)
        if not evs:
            return
        n = len(evs)
        args = [e.args or _NO_ARGS for e in evs]
        ext = _ints([a.external_id for a in args])
        if ext.null_count:  # PyTorch 1.8-1.9 spelled the key in lower case
            ext = _ints([a.external_id if a.external_id is not None else a.external_id_old for a in args])
        self.o.append({
            "op_id": pa.nulls(n, pa.int64()), "name": self.codes["o.name"].encode([e.name for e in evs]),
            "source": np.full(n, self.codes["o.source"]["kineto"], np.int32),
            "start_ns": start, "end_ns": ed[0], "dur_ns": ed[1],
            "pid": _ints([e.pid for e in evs]), "tid": _ints([e.tid for e in evs]),
            "external_id": ext,
            "input_dims": self._json_codes([a.input_dims for a in args], 0, path, raw, args),
            "input_types": self._json_codes([a.input_type for a in args], 1, path, raw),
        })

    def _json_codes(self, vals: list[msgspec.Raw], style: int, path: Path, raw: bytes | bytearray,
                    old_key_of: list[Args] | None = None) -> pa.Array:
        """Shapes (style 0, compact) and types (style 1, json.dumps default) as codes of JSON text.

        A few hundred distinct values repeat over hundreds of thousands of ops: the raw texts are
        copied into one Arrow binary column in C (join + lengths, no bytes object per row), each
        distinct text is converted once, and rows get the code of their converted text."""
        n = len(vals)
        lens = np.fromiter(map(len, vals), np.int64, n)
        if old_key_of is not None and not lens.all():
            # Rows without "Input Dims" may carry PyTorch 1.8-1.9's "Input dims".
            for i in np.flatnonzero(lens == 0).tolist():
                vals[i] = old_key_of[i].input_dims_old
                lens[i] = len(vals[i])
        offsets = np.zeros(n + 1, np.int64)
        np.cumsum(lens, out=offsets[1:])
        data = b"".join(vals)
        enc = pa.Array.from_buffers(pa.large_binary(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
        enc = enc.dictionary_encode()
        cache = self.json_text
        codes = self.codes["o.input_dims" if style == 0 else "o.input_types"]
        remap: list[int] = []
        bad: list[int] = []
        for b in enc.dictionary.to_pylist():
            if not b:  # the empty default: the key is absent
                remap.append(-1)
                continue
            key = (style, b)
            if key not in cache:
                cache[key] = _json_text(b, style)
            text = cache[key]
            remap.append(-1 if text is None or text is _NotAList else codes[text])
            if text is _NotAList:
                bad.append(len(remap) - 1)
        idx = np.array(remap, np.int32)[enc.indices.to_numpy()] if remap else np.zeros(0, np.int32)
        if bad:
            n_bad = int(np.isin(enc.indices.to_numpy(), bad).sum())
            self.notes.ignored[("cpu_op", "args.Input Dims" if style == 0 else "args.Input type", "not an array")] += n_bad
        return pa.array(idx, pa.int32(), mask=idx < 0)

    def _ranges(self, evs: list[Event]) -> None:
        evs, start, ed = self._times(evs)
        if not evs:
            return
        self.r.append({
            "range_id": pa.nulls(len(evs), pa.int64()), "name": [e.name or "" for e in evs],
            "kind": [e.cat for e in evs], "domain": pa.nulls(len(evs), pa.string()),
            "start_ns": start, "end_ns": ed[0], "dur_ns": ed[1],
            "pid": _ints([e.pid for e in evs]), "tid": _ints([e.tid for e in evs]),
        })

    def _memops(self, evs: list[Event]) -> None:
        evs, start, ed = self._times(evs)
        if not evs:
            return
        args = [e.args or _NO_ARGS for e in evs]
        kinds = [_MEM_CATS[e.cat] for e in evs]
        self.m.append({
            "memop_id": pa.nulls(len(evs), pa.int64()), "kind": kinds, "name": [e.name for e in evs],
            "start_ns": start, "end_ns": ed[0], "dur_ns": ed[1], "bytes": [a.nbytes for a in args],
            "device": [a.device for a in args], "stream": [a.stream for a in args],
            "correlation": [a.correlation for a in args],
            "copy_kind": [_copy_kind(e.name) if k == "memcpy" else None for e, k in zip(evs, kinds, strict=True)],
        })

    def finish(self, envelope: dict) -> TraceData | None:
        if not self.k.rows:
            return None
        c = self.codes
        kname = c["k.name"]
        # short_name from each distinct kernel name once; its own dictionary keeps values unique.
        shorts = _Codes()
        remap = np.array([shorts[short_name(v)] for v in kname.values], np.int32)
        name_idx = self.k.column("name")
        short_idx = pa.array(remap[name_idx.to_numpy()], pa.int32())
        # Each table is assembled a column at a time, each column's slices freed as it is built:
        # the peak is the kept columns plus one column, not twice the tables.
        kernels = self.k.table(_K_OUT, {"name": kname, "short_name": shorts},
                               given={"name": name_idx, "short_name": short_idx})
        del name_idx, short_idx
        launches = self.la.table(_LA_OUT, {"name": c["la.name"], "kind": c["la.kind"]})
        flow_used = 0
        if self.need_flow:
            kernels, launches, flow_used = self._apply_flows(kernels, launches)
        ops = self.o.table(_O_OUT, {"name": c["o.name"], "source": c["o.source"],
                                     "input_dims": c["o.input_dims"], "input_types": c["o.input_types"]})
        absent = []
        if flow_used:
            absent.append(f"correlation args on {flow_used} kernels (linked through ac2g flows instead)")
        no_corr = kernels.column("correlation").null_count
        if no_corr:
            absent.append(f"correlation on {no_corr} of {kernels.num_rows} kernels (neither args nor ac2g flows): "
                          "those kernels cannot be linked to their launches")
        unclosed = sum(len(v) for v in self.open_b.values())
        if unclosed or self.lone_e:
            absent.append(f"B/E duration events without their pair: {unclosed} B never closed, "
                          f"{self.lone_e} E with no open B (skipped)")
        if self.bad_ts:
            absent.append(f"{self.bad_ts} events with missing, NaN or negative timestamps (skipped)")
        if not ops.num_rows:
            absent.append("cpu_op events")
        elif ops.column("input_dims").null_count == ops.num_rows:
            absent.append("Input Dims (record_shapes was off)")
        if not launches.num_rows:
            absent.append("cuda_runtime events")
        absent += self.notes.lines()
        return TraceData(
            format="kineto",
            kernels=_sorted_with_ids(kernels, "kernel_id"),
            launches=_sorted_with_ids(launches, "launch_id"),
            ranges=_sorted_with_ids(self.r.table(RANGE_SCHEMA, {}), "range_id"),
            ops=_sorted_with_ids(ops, "op_id"),
            memops=_sorted_with_ids(self.m.table(MEMOP_SCHEMA, {}), "memop_id"),
            gpu_name=envelope["gpu_name"],
            tool_versions=envelope["tool_versions"],
            trace_meta=envelope["trace_meta"],
            found_meta=envelope["found_meta"],
            absent=absent,
        )

    def _apply_flows(self, kernels: pa.Table, launches: pa.Table) -> tuple[pa.Table, pa.Table, int]:
        """Kineto draws a flow from each launch to its kernel; a trace whose events lost their
        `correlation` args (older exporters, trimming tools) still links through these."""
        fix: dict[str, dict[int, int]] = {"k": {}, "la": {}}
        for table, row, key in self.need_flow:
            fid = (self.flow_f if table == "k" else self.flow_s).get(key)
            if fid is not None:
                fix[table][row] = fid

        def patched(t: pa.Table, rows: dict[int, int]) -> pa.Table:
            if not rows:
                return t
            corr = t.column("correlation").to_pylist()
            for i, v in rows.items():
                corr[i] = v
            return t.set_column(t.schema.get_field_index("correlation"), "correlation", pa.array(corr, pa.int64()))

        return patched(kernels, fix["k"]), patched(launches, fix["la"]), len(fix["k"])


def _json_text(text: bytes, style: int) -> str | None | type[_NotAList]:
    # text is a value the events decoder already took as JSON, so it decodes.
    val = msgspec.json.decode(text)
    if val is None:
        return None
    if not isinstance(val, list):
        return _NotAList  # shapes and types are lists; another value is ignored, and counted
    return json.dumps(val, separators=(",", ":")) if style == 0 else json.dumps(val)


def _xyz(vals: list[list[int] | None]) -> tuple[tuple, int]:
    """grid/block lists as three int32 columns, and how many x/y/z values were beyond int32
    (left NULL, as a missing or short list leaves them)."""
    try:
        lists = pa.array(vals, pa.list_(pa.int32()))
    except (pa.ArrowInvalid, OverflowError):
        lists = None  # maybe only past the third value, which is not kept: decide per axis below
    if lists is not None and len(lists) and not lists.null_count:
        lens = lists.value_lengths().to_numpy()
        if (lens == 3).all():  # the usual [x, y, z]: split the flat values, no Python per row
            flat = lists.flatten().to_numpy().reshape(-1, 3)
            return (pa.array(flat[:, 0]), pa.array(flat[:, 1]), pa.array(flat[:, 2])), 0
    seqs = [v or () for v in vals]
    lo, hi = _I32_RANGE
    axes = tuple([s[i] if i < len(s) and lo <= s[i] <= hi else None for s in seqs] for i in range(3))
    wide = sum(1 for s in seqs for x in s[:3] if not lo <= x <= hi)
    return axes, wide


def _floats(vals: list[float | None]) -> np.ndarray:
    # numpy reads the list twice as fast as pyarrow converts it, and reads None as NaN, which is
    # what pyarrow's nulls became in to_numpy.
    return np.fromiter(vals, np.float64, len(vals))


def _ints(vals: list) -> pa.Array:
    # pid/tid are ints in Kineto 2.x, numeric strings in some 1.x rows, labels ("Spans") elsewhere.
    try:
        return pa.array(vals, pa.int64())
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        pass
    return pa.array([v if type(v) is int else _int_or_none(v) for v in vals], pa.int64())


class _Columns:
    """One table's columns as lists of per-slice arrays (typed as `schema`), assembled at the end."""

    def __init__(self, schema: pa.Schema) -> None:
        self.schema = schema
        self.parts: dict[str, list[pa.Array]] = {f.name: [] for f in schema}
        self.rows = 0

    def append(self, cols: dict[str, object]) -> None:
        n = None
        for f in self.schema:
            v = cols[f.name]
            arr = v if isinstance(v, pa.Array) else pa.array(v, type=f.type)
            if arr.type != f.type or (n is not None and len(arr) != n):
                raise TypeError(f"column {f.name}: {arr.type}[{len(arr)}], not {f.type}[{n}]")  # a reader bug
            n = len(arr)
            self.parts[f.name].append(arr)
        self.rows += n or 0

    def column(self, name: str) -> pa.Array:
        """One column whole, its slices let go."""
        parts = self.parts.pop(name)
        if not parts:
            return pa.array([], self.schema.field(name).type)
        if len(parts) == 1:
            return parts[0]
        whole = pa.concat_arrays(parts)
        del parts
        # The slices' buffers are small, so malloc keeps them in its heap once freed; trimmed
        # here, the next column reuses that memory instead of adding to the peak.
        give_back_memory()
        return whole

    def table(self, out: pa.Schema, coded: dict[str, _Codes], given: dict[str, pa.Array] | None = None) -> pa.Table:
        """The table with `out`'s columns: those in `coded` become dictionary columns of their codes."""
        arrays = []
        for f in out:
            col = given[f.name] if given and f.name in given else self.column(f.name)
            arrays.append(coded[f.name].column(col) if f.name in coded else col)
        self.parts.clear()
        return pa.Table.from_arrays(arrays, schema=out)


def _stream_of(tid: int | str | None) -> int | None:
    # PyTorch 1.x names GPU rows "stream 7"; 2.x uses the bare number.
    if isinstance(tid, str) and tid.startswith("stream "):
        return _int_or_none(tid[7:].strip())
    return _int_or_none(tid)


def _copy_kind(name: str | None) -> str | None:
    # Kineto names copies like "Memcpy HtoD (Pageable -> Device)".
    if not name:
        return None
    parts = name.split()
    return parts[1] if len(parts) > 1 else None


def _sorted_with_ids(t: pa.Table, id_col: str) -> pa.Table:
    """Rows by (start, end descending), stable (events with the same extent keep their order in
    the file), numbered 0..n-1 in id_col."""
    t = t.combine_chunks()  # take() on one chunk per column is several times faster
    if t.num_rows:
        start = t.column("start_ns").to_numpy()
        end = t.column("end_ns").to_numpy()
        # Kineto writes most tables in order already: checked first, that costs a few bytes per
        # row, where the sort would cost two int64 arrays and its scratch.
        ordered = bool(np.all((start[1:] > start[:-1]) | ((start[1:] == start[:-1]) & (end[1:] <= end[:-1]))))
        if not ordered:
            order = pa.array(np.lexsort((-end, start)))
            del start, end
            # A column at a time: the old column goes before the next is taken.
            for i in range(t.num_columns):
                t = t.set_column(i, t.schema.field(i), t.column(i).take(order))
    return t.set_column(t.schema.get_field_index(id_col), id_col, pa.array(np.arange(t.num_rows), pa.int64()))


class _NotAList:
    """_json_text's answer for a shape or type value that is not a JSON array."""


def _envelope(path: Path, raw: bytes | bytearray | None, top: dict[str, msgspec.Raw], notes: _Notes) -> dict:
    """Top-level keys other than traceEvents: device properties, versions, user metadata.
    A deviceProperties of another shape than a list of objects is ignored (and noted)."""
    meta: dict[str, object] = {}
    for key, val in top.items():
        try:
            meta[key] = msgspec.json.decode(val)
        except msgspec.DecodeError:
            continue
    devices = meta.pop("deviceProperties", None) or []
    if not isinstance(devices, list) or not all(isinstance(d, dict) for d in devices):
        notes.ignored[("envelope", "deviceProperties", _json_type(devices))] += 1
        devices = [d for d in devices if isinstance(d, dict)] if isinstance(devices, list) else []
    gpu_names = sorted({d.get("name") for d in devices if isinstance(d, dict) and d.get("name")})
    tool_versions = {}
    for key in ("cuda_runtime_version", "cuda_driver_version", "cupti_version", "schemaVersion"):
        if key in meta:
            tool_versions[key] = str(meta[key])
    found: dict[str, str] = {}
    # Capture scripts store their run description with prof.add_metadata_json(key, json).
    for key, val in list(meta.items()):
        if key in ("tracekit_run", "tracekit") and isinstance(val, (str, dict)):
            try:
                obj = json.loads(val) if isinstance(val, str) else val
            except ValueError:
                continue  # a malformed description is the user's metadata, not a reason to fail
            if isinstance(obj, dict):
                found.update({k: _scalar(v) for k, v in obj.items()})
    meta["deviceProperties"] = devices
    return {
        "gpu_name": ", ".join(gpu_names) or None,
        "tool_versions": tool_versions,
        "trace_meta": meta,
        "found_meta": found,
    }


def _scalar(v: object) -> str:
    return v if isinstance(v, str) else json.dumps(v)

