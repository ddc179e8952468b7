"""Capture manifests: the sidecar JSON a capture script writes next to each trace."""

from __future__ import annotations

import json
from pathlib import Path

# Suffixes stripped, in any order, to find a trace's stem: run.pt.trace.json.gz -> run.
_TRACE_SUFFIXES = (".gz", ".json", ".trace", ".pt", ".sqlite", ".nsys-rep", ".qdstrm")


def manifest_path(trace: Path) -> Path:
    name = trace.name
    changed = True
    while changed:
        changed = False
        for suf in _TRACE_SUFFIXES:
            if name.endswith(suf) and len(name) > len(suf):
                name = name[: -len(suf)]
                changed = True
    return trace.with_name(name + ".manifest.json")


def read_manifest(trace: Path) -> dict[str, str]:
    """The manifest's keys as strings (nested values as JSON), or {} when there is none."""
    p = manifest_path(trace)
    if not p.is_file():
        return {}
    try:
        obj = json.loads(p.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        # RecursionError: JSON nested deeper than the parser's stack; one line, like any bad manifest.
        from tracekit.errors import TraceError

        raise TraceError(p, f"unreadable capture manifest ({type(exc).__name__ if isinstance(exc, RecursionError) else exc})") from None
    if not isinstance(obj, dict):
        return {}
    return {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in obj.items() if v is not None}
