"""Child process that renders charts with vl-convert: `python -m tracekit.outputs.render`.

vl-convert aborts its process (a Rust panic: SIGABRT) on some inputs instead of raising, so
tracekit never renders in its own process: `charts.render_images` sends the jobs here as JSON on
stdin, and this prints `ok I` or `error I REASON` per job, in order, flushing each line, so the
parent knows which chart was being drawn when the process died.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main() -> int:
    from tracekit.outputs.charts import _render_one

    request = json.loads(sys.stdin.read())
    scale = float(request.get("scale", 2.0))
    for i, job in enumerate(request["jobs"]):
        try:
            for p in job["paths"]:
                _render_one(job["spec"], Path(p), scale)
        except Exception as exc:  # one line back to the parent; the next job still runs
            reason = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
            print(f"error {i} {reason}", flush=True)
        else:
            print(f"ok {i}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
