"""Compare the databases that a git revision's tracekit and this tree's store, table for table.

    .venv/bin/python bench/compare_store.py [--base main] [FILE ...]

Without files: every trace among fixtures/ (and ../shared/traces). Each file is imported alone into
a fresh database by the base revision (its tree from `git archive`, run as a subprocess) and by this
tree; every table of both databases must hold the same rows (as multisets: EXCEPT ALL both ways),
`runs.imported_at` and `importer_version` aside. Prints one line per file; exits 1 on any difference.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
IGNORED = {"runs": ("imported_at", "importer_version")}


def base_tree(rev: str, into: Path) -> Path:
    archive = into / "base.tar"
    subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), rev], check=True)
    with tarfile.open(archive) as t:
        t.extractall(into / "base", filter="data")
    return into / "base"


def import_with(pythonpath: Path, trace: Path, db: Path) -> str:
    code = ("import sys; from tracekit.outputs.cli import main; "
            "sys.argv = ['tracekit', 'import', sys.argv[1], '--db', sys.argv[2]]; main()")
    p = subprocess.run([sys.executable, "-c", code, str(trace), str(db)], capture_output=True, text=True,
                       env={"PYTHONPATH": str(pythonpath), "PATH": "/usr/bin:/bin"})
    return (p.stdout + p.stderr).strip().splitlines()[-1] if (p.stdout + p.stderr).strip() else f"rc {p.returncode}"


def differences(a: Path, b: Path) -> list[str]:
    con = duckdb.connect()
    con.execute(f"ATTACH '{a}' AS a (READ_ONLY)")
    con.execute(f"ATTACH '{b}' AS b (READ_ONLY)")
    tables = lambda db: {r[0] for r in con.execute(  # noqa: E731
        "SELECT table_name FROM duckdb_tables() WHERE database_name = ?", [db]).fetchall()}
    ta, tb = tables("a"), tables("b")
    out = [f"tables only in {w}: {sorted(s)}" for w, s in (("base", ta - tb), ("this tree", tb - ta)) if s]
    for t in sorted(ta & tb):
        skip = IGNORED.get(t, ())
        cols = [r[0] for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE database_name = 'a' AND table_name = ? "
            "ORDER BY column_index", [t]).fetchall() if r[0] not in skip]
        sel = ", ".join(f'"{c}"' for c in cols)
        n_a, n_b = (con.execute(f"SELECT count(*) FROM {d}.{t}").fetchall()[0][0] for d in ("a", "b"))
        only = [con.execute(f"SELECT count(*) FROM (SELECT {sel} FROM {x}.{t} EXCEPT ALL SELECT {sel} FROM {y}.{t})"
                            ).fetchall()[0][0] for x, y in (("a", "b"), ("b", "a"))]
        if n_a != n_b or any(only):
            out.append(f"{t}: {n_a} vs {n_b} rows, {only[0]} only in base, {only[1]} only in this tree")
    con.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--base", default="main")
    ap.add_argument("files", nargs="*", type=Path)
    args = ap.parse_args()
    files = args.files or sorted(
        p for d in (ROOT / "fixtures", ROOT.parent / "shared" / "traces") if d.is_dir() for p in d.rglob("*")
        if p.is_file() and (p.name.endswith((".json", ".json.gz", ".sqlite"))))
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        base = base_tree(args.base, Path(tmp))
        for i, f in enumerate(files):
            dbs = [Path(tmp) / f"{i}_{w}.duckdb" for w in ("base", "this")]
            said = [import_with(tree, f, db) for tree, db in zip((base, ROOT), dbs, strict=True)]
            diff = differences(*dbs) if all(db.exists() for db in dbs) else (
                [] if said[0] == said[1] else [f"outcome: {said[0]!r} vs {said[1]!r}"])
            bad += bool(diff)
            print(f"{'DIFF' if diff else 'same'} {f}" + "".join(f"\n    {d}" for d in diff), flush=True)
            for db in dbs:
                db.unlink(missing_ok=True)
    print(f"{len(files)} files, {bad} with differences")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
