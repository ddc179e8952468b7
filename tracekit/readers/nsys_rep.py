"""Reader for `.nsys-rep` reports: exported to SQLite by the user's own `nsys`, then read as such.

The report format is undocumented and version-bound, so tracekit never parses it itself; the
`nsys` that can open a report is the one that should export it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from tracekit.errors import TraceError

if TYPE_CHECKING:
    from tracekit.readers.common import TraceData

MAGIC = b"NVIDIA Tegra Profiler Report"


def looks_like(path: Path, head: bytes) -> bool:
    return head.startswith(MAGIC) or path.suffix == ".nsys-rep"


def find_nsys(explicit: str | None = None) -> str | None:
    for cand in (explicit, os.environ.get("TRACEKIT_NSYS")):
        if cand:
            return cand
    return shutil.which("nsys")


def read(path: Path, nsys: str | None = None) -> TraceData:
    exe = find_nsys(nsys)
    if exe is None:
        raise TraceError(
            path,
            "is an .nsys-rep report and no `nsys` was found (PATH, --nsys or $TRACEKIT_NSYS); "
            f"export it yourself with `nsys export --type sqlite -o {path.stem}.sqlite {path.name}` "
            "and import the .sqlite",
        )
    with tempfile.TemporaryDirectory(prefix="tracekit-nsys-") as tmp:
        out = Path(tmp) / (path.stem + ".sqlite")
        cmd = [exe, "export", "--type", "sqlite", "--force-overwrite", "true", "-o", str(out), str(path)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise TraceError(path, f"`nsys export` could not run ({exc})") from None
        if proc.returncode != 0 or not out.exists():
            last = (proc.stderr or proc.stdout).strip().splitlines()
            raise TraceError(path, f"`nsys export` failed: {last[-1] if last else f'exit {proc.returncode}'}")
        # Here, not at the top: detection reads MAGIC without loading the SQLite reader.
        from tracekit.readers import nsys_sqlite

        data = nsys_sqlite.read(out)
    data.format = "nsys-rep"
    return data
