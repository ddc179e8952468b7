"""The nsys reader against an earlier version of itself, value for value (issue 15).

    .venv/bin/python bench/compare_nsys.py [--ref main] [FILE.sqlite ...]

Loads tracekit/readers/nsys_sqlite.py as it is at git ref `--ref` beside the working tree's, reads
each export with both, links both with the working tree's enrich.links (which keeps only the calls
that launched GPU work: a reader may drop others early, and the linked tables show it dropped no
launch), and compares every table (columns decoded from dictionaries, nulls included), the row
order, gpu_name, tool_versions, trace_meta and `absent`; a file one version refuses must be refused
by the other with the same message. Without FILEs: every nsys export in
fixtures/ and the shared traces, the hostile variants the robustness tests make, and the bench
exports that exist. Exits 1 on the first difference.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

import pyarrow as pa

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tracekit.enrich.links import link  # noqa: E402
from tracekit.errors import TraceError  # noqa: E402
from tracekit.readers import nsys_sqlite as new  # noqa: E402


def old_reader(ref: str):
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:tracekit/readers/nsys_sqlite.py"],
                         check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="tk-old-reader-")) / "nsys_sqlite_old.py"
    path.write_text(src)
    spec = importlib.util.spec_from_file_location("nsys_sqlite_old", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def plain(t: pa.Table) -> pa.Table:
    """Dictionary columns as their values: the codes may differ, the strings may not."""
    cols = [c.cast(c.type.value_type) if pa.types.is_dictionary(c.type) else c for c in t.columns]
    return pa.Table.from_arrays(cols, names=t.column_names).combine_chunks()


def outcome(reader, path: Path):
    try:
        return link(reader.read(path))
    except TraceError as exc:
        return f"TraceError: {exc}"


def compare(path: Path, old, verbose: bool = True) -> list[str]:
    a, b = outcome(old, path), outcome(new, path)
    if isinstance(a, str) or isinstance(b, str):
        return [] if a == b else [f"{path}: outcome differs: {a!r:.300} vs {b!r:.300}"]
    diffs = []
    for name in ("kernels", "launches", "ranges", "ops", "memops"):
        ta, tb = plain(a.table(name)), plain(b.table(name))
        if ta.schema != tb.schema:
            diffs.append(f"{path}: {name}: schema {ta.schema} vs {tb.schema}")
        elif not ta.equals(tb):
            for c in ta.column_names:
                if not ta.column(c).equals(tb.column(c)):
                    diffs.append(f"{path}: {name}.{c} differs ({ta.num_rows} vs {tb.num_rows} rows)")
    for attr in ("format", "gpu_name", "tool_versions", "trace_meta", "found_meta", "absent"):
        if getattr(a, attr) != getattr(b, attr):
            diffs.append(f"{path}: {attr}: {getattr(a, attr)!r:.300} vs {getattr(b, attr)!r:.300}")
    if verbose:
        print(f"{'ok ' if not diffs else 'DIFF'} {path} ({a.kernels.num_rows} kernels, {a.launches.num_rows} launches)")
    return diffs


def default_files() -> list[Path]:
    shared = ROOT.parent / "shared" / "traces"
    if not shared.exists():
        shared = ROOT / "fixtures" / "shared"
    files = sorted({p.resolve() for d in (ROOT / "fixtures", shared) for p in d.rglob("*.sqlite")})
    return files + sorted((ROOT / "bench" / "data").glob("nsys_*.sqlite"))


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--ref", default="main")
    ap.add_argument("files", nargs="*", type=Path)
    args = ap.parse_args()
    old = old_reader(args.ref)
    files = args.files or default_files()
    diffs = []
    for f in files:
        diffs += compare(f, old)
    for d in diffs:
        print(d)
    print(f"{len(files)} files, {len(diffs)} differences")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
