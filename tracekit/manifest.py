"""Capture manifests: the sidecar JSON a capture script writes next to each trace.

The naming rule (trace name -> manifest name) is tracekit.capture.manifest's, imported from there:
one rule for the writer and the reader; the capture side imports nothing else of tracekit.
"""

from __future__ import annotations

import json
from pathlib import Path

from tracekit.capture.manifest import manifest_candidates, manifest_path  # noqa: F401  (manifest_path: API)


def read_manifest(trace: Path) -> dict[str, str]:
    """The manifest's keys as strings (nested values as JSON), or {} when there is none.

    A rank's trace of a multi-rank job without a manifest of its own takes the job's one manifest."""
    p = next((c for c in manifest_candidates(trace) if c.is_file()), None)
    if p is None:
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
