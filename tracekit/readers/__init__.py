"""One reader per trace format; `detect` picks by content, not by suffix alone."""

from __future__ import annotations

import importlib
import stat
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING

from tracekit.errors import TraceError

if TYPE_CHECKING:
    from tracekit.readers.common import TraceData

# The format readers are imported when a file needs them: an nsys import never loads the Kineto
# decoder (msgspec, ctypes) and `tracekit --help` loads neither.
_READERS = ("kineto", "nsys_rep", "nsys_sqlite")
# SQLite's own file header: only files that start with it are offered to the nsys SQLite reader,
# whose import (sqlite3, pyarrow.compute) a Kineto import then never pays.
_SQLITE_MAGIC = b"SQLite format 3\x00"


def __getattr__(name: str) -> ModuleType:
    if name in _READERS:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

# Suffixes a directory walk picks up; single files are tried whatever their name.
TRACE_SUFFIXES = (".sqlite", ".nsys-rep", ".json", ".json.gz", ".pt.trace.json", ".pt.trace.json.gz")
_IGNORED_SUFFIXES = (".manifest.json",)


def is_trace_name(path: Path) -> bool:
    name = path.name
    if name.endswith(_IGNORED_SUFFIXES) or name.startswith("."):
        return False
    return name.endswith(TRACE_SUFFIXES)


def require_regular_file(path: Path) -> None:
    """TraceError unless path is a regular file (after symlinks): a FIFO blocks on open, and
    /dev/zero or /dev/urandom never end. Call it before anything reads the file (hashing too)."""
    try:
        mode = path.stat().st_mode
    except OSError as exc:
        raise TraceError(path, f"cannot read ({exc.strerror or exc})") from None
    if not stat.S_ISREG(mode):
        raise TraceError(path, "not a regular file (a device, FIFO or socket): a trace is a file")


def detect(path: Path) -> str:
    from tracekit.readers import nsys_rep

    require_regular_file(path)
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise TraceError(path, f"cannot read ({exc.strerror or exc})") from None
    if not head:
        raise TraceError(path, "empty file")
    if head.startswith(_SQLITE_MAGIC):
        from tracekit.readers import nsys_sqlite

        if nsys_sqlite.looks_like(path, head):
            return "nsys-sqlite"
    if head.startswith(nsys_rep.MAGIC):
        return "nsys-rep"
    if path.suffix == ".qdstrm":
        raise TraceError(path, "is a raw .qdstrm capture; convert it with QdstrmImporter -i FILE first")
    from tracekit.readers import kineto

    if kineto.looks_like(path, head):
        return "kineto"
    if path.suffix == ".nsys-rep":
        raise TraceError(path, "has the .nsys-rep suffix but not the Nsight Systems report header")
    raise TraceError(path, "unknown format (expected nsys SQLite export, .nsys-rep, or Kineto JSON)")


def read(path: Path, nsys: str | None = None) -> TraceData:
    fmt = detect(path)
    if fmt == "nsys-sqlite":
        from tracekit.readers import nsys_sqlite

        return nsys_sqlite.read(path)
    if fmt == "nsys-rep":
        from tracekit.readers import nsys_rep

        return nsys_rep.read(path, nsys=nsys)
    from tracekit.readers import kineto

    return kineto.read(path)
