"""One reader per trace format; `detect` picks by content, not by suffix alone."""

from __future__ import annotations

from pathlib import Path

from tracekit.errors import TraceError
from tracekit.readers import kineto, nsys_rep, nsys_sqlite
from tracekit.readers.common import TraceData

# Suffixes a directory walk picks up; single files are tried whatever their name.
TRACE_SUFFIXES = (".sqlite", ".nsys-rep", ".json", ".json.gz", ".pt.trace.json", ".pt.trace.json.gz")
_IGNORED_SUFFIXES = (".manifest.json",)


def is_trace_name(path: Path) -> bool:
    name = path.name
    if name.endswith(_IGNORED_SUFFIXES) or name.startswith("."):
        return False
    return name.endswith(TRACE_SUFFIXES)


def detect(path: Path) -> str:
    try:
        with path.open("rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise TraceError(path, f"cannot read ({exc.strerror or exc})") from None
    if not head:
        raise TraceError(path, "empty file")
    if nsys_sqlite.looks_like(path, head):
        return "nsys-sqlite"
    if head.startswith(nsys_rep.MAGIC):
        return "nsys-rep"
    if path.suffix == ".qdstrm":
        raise TraceError(path, "is a raw .qdstrm capture; convert it with QdstrmImporter -i FILE first")
    if kineto.looks_like(path, head):
        return "kineto"
    if path.suffix == ".nsys-rep":
        raise TraceError(path, "has the .nsys-rep suffix but not the Nsight Systems report header")
    raise TraceError(path, "unknown format (expected nsys SQLite export, .nsys-rep, or Kineto JSON)")


def read(path: Path, nsys: str | None = None) -> TraceData:
    fmt = detect(path)
    if fmt == "nsys-sqlite":
        return nsys_sqlite.read(path)
    if fmt == "nsys-rep":
        return nsys_rep.read(path, nsys=nsys)
    return kineto.read(path)
