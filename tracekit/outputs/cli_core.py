"""Core commands: import traces, list runs, run SQL, show run metadata."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from tracekit.errors import TracekitError


def default_db() -> str:
    return os.environ.get("TRACEKIT_DB", "tracekit.duckdb")


db_option = click.option(
    "--db", "db_path", default=default_db, show_default="$TRACEKIT_DB or tracekit.duckdb",
    help="DuckDB database file.",
)


def fail(message: str) -> None:
    """One line on stderr, exit status 1: the form of every user-facing error."""
    click.echo(f"tracekit: error: {message}", err=True)
    sys.exit(1)


def open_db(path: str, read_only: bool = False):
    import tracekit

    try:
        return tracekit.open(path, read_only=read_only)
    except TracekitError as exc:
        fail(str(exc))


def parse_meta(items: tuple[str, ...]) -> dict[str, str]:
    meta = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected key=value, got {item!r}", param_hint="--meta")
        meta[key.strip()] = value.strip()
    return meta


@click.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@db_option
@click.option("--meta", "meta", multiple=True, metavar="KEY=VALUE",
              help="Metadata for every run of this import (model=, batch=, input_len=, output_len=, ...).")
@click.option("--replace", is_flag=True, help="Re-import files whose content is already in the database.")
@click.option("--rules", "rules_dirs", multiple=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Extra rule directory layered over the built-in packs (repeatable).")
@click.option("--nsys", default=None, help="nsys executable for converting .nsys-rep files.")
@click.option("-j", "--jobs", default=1, show_default=True, type=click.IntRange(1, 256),
              help="Parse this many files in parallel processes.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
@click.option("--group", default=None, metavar="NAME",
              help="The files are the rank traces of ONE job: import them as one run named NAME.")
def import_cmd(paths, db_path, meta, replace, rules_dirs, nsys, jobs, quiet, group) -> None:
    """Import trace files (nsys .sqlite / .nsys-rep, Kineto .json / .json.gz) or directories of them.

    Each file is one atomic transaction: a bad file is reported in one line and leaves the
    database as it was; the other files still import. The same content twice is one run.
    """
    from tracekit.importer import expand

    meta_d = parse_meta(meta)
    files = expand(paths)
    if not files:
        fail(f"{', '.join(map(str, paths))}: no trace files found")
    db = open_db(db_path)
    counts = {"imported": 0, "replaced": 0, "skipped": 0, "failed": 0}
    done = [0]
    bar = _FileBar(len(files), done) if sys.stderr.isatty() and not quiet else None

    def on_result(r) -> None:
        done[0] += 1
        counts[r.status] += 1
        if bar is not None:
            bar.clear()
        prefix = f"[{done[0]}/{len(files)}]"
        if r.status == "failed":
            click.echo(f"tracekit: error: {r.error}", err=True)
        elif not quiet:
            if r.status == "skipped":
                click.echo(f"{prefix} {r.path}: already imported as run {r.run_id} (use --replace)", err=True)
            else:
                click.echo(f"{prefix} {r.path}: {r.status} as run {r.run_id} "
                           f"({r.n_kernels} kernels, {r.seconds:.2f}s)", err=True)

    try:
        db.import_paths(files, meta=meta_d, replace=replace, rules_dirs=list(rules_dirs), nsys=nsys,
                        jobs=jobs, on_result=on_result, on_phase=bar.phase if bar is not None else None,
                        group=group)
    except TracekitError as exc:
        fail(str(exc))
    finally:
        db.close()
    if not quiet:
        click.echo(", ".join(f"{v} {k}" for k, v in counts.items() if v) or "nothing to do", err=True)
    if counts["failed"]:
        sys.exit(1)


class _FileBar:
    """One progress line per file on a terminal: a bar through the import's phases, replaced by
    the file's result line when it is done."""

    PHASES = ("reading", "storing", "stages", "classifying")
    WIDTH = 24

    def __init__(self, total: int, done: list[int]) -> None:
        self.total = total
        self.done = done  # files finished so far, kept by the caller

    def phase(self, path: str, phase: str) -> None:
        step = self.PHASES.index(phase) + 1 if phase in self.PHASES else 0
        filled = self.WIDTH * step // (len(self.PHASES) + 1)
        name = Path(path).name
        name = name if len(name) <= 48 else "…" + name[-47:]
        sys.stderr.write(f"\r\033[K[{self.done[0] + 1}/{self.total}] {name} "
                         f"[{'#' * filled}{'.' * (self.WIDTH - filled)}] {phase}…")
        sys.stderr.flush()

    def clear(self) -> None:
        sys.stderr.write("\r\033[K")
        sys.stderr.flush()


def _print(df, fmt: str) -> None:
    from tracekit.outputs.format import print_frame

    print_frame(df, fmt)


format_option = click.option("--format", "fmt", type=click.Choice(["table", "csv", "json", "markdown"]),
                             default="table", show_default=True)


@click.command("runs")
@db_option
@format_option
def runs_cmd(db_path, fmt) -> None:
    """List imported runs with their metadata."""
    db = open_db(db_path, read_only=True)
    _print(db.runs(), fmt)


@click.command("query")
@click.argument("sql")
@db_option
@format_option
def query_cmd(sql, db_path, fmt) -> None:
    """Run read-only SQL over the tables (runs, kernels, launches, ranges, ops, memops, run_meta) and views.

    The database is opened read-only and the query cannot touch other files (no COPY TO, no
    reading or writing paths, no extensions): SQL may come from a shared notebook or script.
    """
    import duckdb

    db = open_db(db_path, read_only=True)
    db.con.execute("SET enable_external_access = false")
    db.con.execute("SET lock_configuration = true")
    try:
        df = db.query(sql)
    except duckdb.Error as exc:
        fail(f"query: {str(exc).splitlines()[0]}")
    _print(df, fmt)


@click.command("meta")
@click.argument("run_id", type=int)
@click.argument("pairs", nargs=-1, metavar="KEY=VALUE...")
@db_option
def meta_cmd(run_id, pairs, db_path) -> None:
    """Show a run's metadata, or set KEY=VALUE pairs on it (e.g. model=llama2-7b batch=1)."""
    db = open_db(db_path, read_only=not pairs)
    if db.con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchone()[0] == 0:
        fail(f"{db_path}: no run {run_id}")
    for key, value in parse_meta(pairs).items():
        db.con.execute("INSERT OR REPLACE INTO run_meta VALUES (?, ?, ?, 'cli')", [run_id, key, value])
    _print(db.query("SELECT key, value, source FROM run_meta WHERE run_id = ? ORDER BY key", [run_id]), "table")
