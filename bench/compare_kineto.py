"""Compare the Kineto reader (and links) of this tree with the one of a git revision, value for value.

    .venv/bin/python bench/compare_kineto.py [--base main] [FILE ...]

Without files: every Kineto trace among the fixtures, ../shared/traces and bench/data. The base
revision's tracekit/readers/kineto.py is loaded as a separate module (same common.py), so both
readers run in this process on the same files; each file's TraceData tables (after
enrich.links.link), absent notes, envelope fields, or error text, must be equal. Tables are
compared after decoding dictionary columns to plain values (a reader may encode them
differently), column by column in chunks, so a 2 GB trace is compared without holding four
copies of it as Python objects. Prints one line per file; exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import pyarrow as pa  # noqa: E402

from tracekit.enrich.links import link  # noqa: E402
from tracekit.errors import TraceError  # noqa: E402
from tracekit.readers import kineto as current  # noqa: E402

TABLES = ("kernels", "launches", "ranges", "ops", "memops")
FIELDS = ("format", "gpu_name", "tool_versions", "trace_meta", "found_meta", "absent")


def load_base(rev: str):
    src = subprocess.run(["git", "-C", str(ROOT), "show", f"{rev}:tracekit/readers/kineto.py"],
                         check=True, capture_output=True).stdout
    tmp = Path(tempfile.mkdtemp()) / "kineto_base.py"
    tmp.write_bytes(src)
    spec = importlib.util.spec_from_file_location("kineto_base", tmp)
    mod = importlib.util.module_from_spec(spec)
    sys.modules["kineto_base"] = mod  # msgspec resolves the structs' annotations through it
    spec.loader.exec_module(mod)
    return mod


def outcome(reader, path: Path):
    try:
        return link(reader.read(path)), None
    except TraceError as exc:
        return None, str(exc)


def plain(col: pa.ChunkedArray | pa.Array) -> pa.Array:
    arr = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    if pa.types.is_dictionary(arr.type):
        arr = arr.cast(arr.type.value_type)
    return arr


def diff_tables(name: str, a: pa.Table, b: pa.Table) -> list[str]:
    if a.schema.names != b.schema.names:
        return [f"{name}: columns {a.schema.names} != {b.schema.names}"]
    if a.num_rows != b.num_rows:
        return [f"{name}: {a.num_rows} rows != {b.num_rows}"]
    out = []
    for col in a.schema.names:
        x, y = plain(a.column(col)), plain(b.column(col))
        if x.type != y.type:
            out.append(f"{name}.{col}: type {x.type} != {y.type}")
        elif not x.equals(y):
            out.append(f"{name}.{col}: values differ")
    return out


def compare(base, path: Path) -> list[str]:
    old, old_err = outcome(base, path)
    new, new_err = outcome(current, path)
    if old_err or new_err:
        return [] if old_err == new_err else [f"error {old_err!r} != {new_err!r}"]
    problems = []
    for f in FIELDS:
        if getattr(old, f) != getattr(new, f):
            problems.append(f"{f}: {getattr(old, f)!r} != {getattr(new, f)!r}")
    for t in TABLES:
        problems += diff_tables(t, getattr(old, t), getattr(new, t))
    return problems


def default_files() -> list[Path]:
    pats = ("*.json", "*.json.gz")
    roots = [ROOT / "fixtures", ROOT.parent / "shared" / "traces", ROOT / "bench" / "data"]
    files = sorted({p for r in roots if r.exists() for pat in pats for p in r.rglob(pat)
                    if not p.name.endswith(".manifest.json")})
    return files


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", default="main")
    ap.add_argument("files", nargs="*", type=Path)
    args = ap.parse_args()
    base = load_base(args.base)
    bad = 0
    for p in args.files or default_files():
        problems = compare(base, p)
        bad += bool(problems)
        print(("DIFF " if problems else "same ") + str(p) + "".join(f"\n    {x}" for x in problems[:10]), flush=True)
        gc.collect()
    print(f"{bad} files differ")
    sys.exit(1 if bad else 0)


if __name__ == "__main__":
    main()
