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
    from tracekit.outputs.format import terminal_safe

    click.echo(f"tracekit: error: {terminal_safe(message)}", err=True)
    sys.exit(1)


def open_db(path: str, read_only: bool = False):
    import tracekit

    try:
        return tracekit.open(path, read_only=read_only)
    except TracekitError as exc:
        fail(str(exc))


def require_runs(db, db_path: str) -> None:
    """Stop with one line (exit 1) when the database holds no runs: an analysis of nothing would
    print an empty table that reads like a result."""
    sql = "SELECT count(*) FROM runs"
    if not db.connection_for(sql).execute(sql).fetchall()[0][0]:
        db.close()
        fail(f"{db_path}: no runs in the database: import traces first (tracekit import TRACE... --db {db_path})")


def parse_meta(items: tuple[str, ...]) -> dict[str, str]:
    meta = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"expected key=value, got {item!r}", param_hint="--meta")
        meta[key.strip()] = value.strip()
    return meta


@click.command("import")
# readable=False: click would reject the whole command for one unreadable file; the importer
# reports it in its own line and imports the others.
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path, readable=False))
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
    Ctrl-C stops the batch (exit 130); the file being stored is rolled back.
    """
    import duckdb

    from tracekit.importer import expand
    from tracekit.outputs.format import terminal_safe

    meta_d = parse_meta(meta)
    files = expand(paths)
    if not files:
        fail(f"{', '.join(map(str, paths))}: no trace files found")
    db = open_db(db_path)
    counts = {"imported": 0, "replaced": 0, "skipped": 0, "failed": 0}
    done = [0]
    bar = _FileBar(len(files), done) if sys.stderr.isatty() and not quiet else None
    say = bar.echo if bar is not None else (lambda line: click.echo(line, err=True))

    def on_result(r) -> None:
        done[0] += 1
        counts[r.status] += 1
        prefix = f"[{done[0]}/{len(files)}]"
        path = terminal_safe(r.path)
        if r.status == "failed":
            say(f"tracekit: error: {terminal_safe(r.error or r.path)}")
        elif quiet:
            pass
        elif r.duplicate_of is not None:
            say(f"{prefix} {path}: same content as {terminal_safe(r.duplicate_of)} earlier in this import "
                "(one run; not imported twice)")
        elif r.status == "skipped":
            say(f"{prefix} {path}: already imported as run {r.run_id} (use --replace)")
        else:
            say(f"{prefix} {path}: {r.status} as run {r.run_id} ({r.n_kernels} kernels, {r.seconds:.2f}s)")

    try:
        db.import_paths(files, meta=meta_d, replace=replace, rules_dirs=list(rules_dirs), nsys=nsys,
                        jobs=jobs, on_result=on_result, on_phase=bar.phase if bar is not None else None,
                        group=group)
    except KeyboardInterrupt:
        if bar is not None:
            bar.stop()
        kept = counts["imported"] + counts["replaced"]
        click.echo(f"tracekit: error: interrupted: {kept} file(s) imported before it are kept; "
                   "the file being stored was rolled back, the rest were not imported", err=True)
        sys.exit(130)
    except TracekitError as exc:
        if bar is not None:
            bar.stop()
        fail(f"{db_path}: {exc}" if not str(exc).startswith(str(db_path)) else str(exc))
    except duckdb.Error as exc:  # a damaged database can open, then fail at a read
        if bar is not None:
            bar.stop()
        fail(f"{db_path}: cannot use this database ({_first_line(exc)})")
    finally:
        if bar is not None:
            bar.stop()
        db.close()
    if not quiet:
        click.echo(", ".join(f"{v} {k}" for k, v in counts.items() if v) or "nothing to do", err=True)
    if counts["failed"]:
        sys.exit(1)


class _FileBar:
    """A progress bar (rich) on a terminal: the current file going through the import's phases,
    with each file's result line printed above it. Never used when stderr is not a terminal."""

    PHASES = ("reading", "storing", "stages", "classifying")

    def __init__(self, total: int, done: list[int]) -> None:
        # rich loads only here: an import to a pipe, and every other command, never pay for it.
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

        self.total = total
        self.done = done  # files finished so far, kept by the caller
        self.progress = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(bar_width=24),
            TextColumn("{task.fields[phase]}", markup=False), TimeElapsedColumn(),
            console=Console(stderr=True, highlight=False), transient=True)
        self.task = self.progress.add_task("", total=len(self.PHASES) + 1, phase="")
        self.progress.start()
        self.stopped = False

    def phase(self, path: str, phase: str) -> None:
        from tracekit.outputs.format import terminal_safe

        step = self.PHASES.index(phase) + 1 if phase in self.PHASES else 0
        name = terminal_safe(Path(path).name)
        name = name if len(name) <= 48 else "…" + name[-47:]
        self.progress.update(self.task, description=f"[{self.done[0] + 1}/{self.total}] {name}",
                             completed=step, phase=f"{phase}…")
        self.progress.refresh()  # draw every phase, however short

    def echo(self, line: str) -> None:
        self.progress.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def stop(self) -> None:
        if not self.stopped:
            self.stopped = True
            self.progress.stop()


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
    import duckdb

    db = open_db(db_path, read_only=True)
    try:
        runs = db.runs()
    except duckdb.Error as exc:  # a damaged database can open, then fail at a read
        fail(f"{db_path}: cannot use this database ({_first_line(exc)})")
    finally:
        db.close()
    _print(runs, fmt)


@click.command("query")
@click.argument("sql")
@db_option
@format_option
def query_cmd(sql, db_path, fmt) -> None:
    """Run read-only SQL over the tables (runs, kernels, launches, ranges, ops, memops, run_meta) and views.

    The database is opened read-only and the query cannot touch other files (no COPY TO, no
    reading or writing paths, no extensions): SQL may come from a shared notebook or script.
    Any result prints in every format: repeated column names get _2, _3, ...; values of types
    other than numbers, strings and booleans (timestamps, intervals, lists, ...) as DuckDB's text.
    """
    import duckdb
    import polars as pl

    from tracekit.outputs.format import printable

    db = open_db(db_path, read_only=True)
    con = db.connection_for(sql)

    def run():
        rel = con.sql(sql)
        return None if rel is None else printable(rel).to_arrow_table()

    try:
        table = _interruptible(con, run)
        if table is None:
            fail("query: nothing to print: the SQL is empty or is a statement without a result")
        _print(pl.from_arrow(table), fmt)
    except KeyboardInterrupt:
        click.echo("tracekit: error: query: interrupted", err=True)
        sys.exit(130)
    except Exception as exc:
        from tracekit.importer import is_interrupt

        if is_interrupt(exc):  # Ctrl-C inside DuckDB: InterruptException, or duckdb 2's RuntimeError
            click.echo("tracekit: error: query: interrupted", err=True)
            sys.exit(130)
        if isinstance(exc, duckdb.Error):
            fail(f"query: {_first_line(exc)}")
        fail(f"query: the result cannot be printed as {fmt} ({type(exc).__name__}: {_first_line(exc)})")
    finally:
        try:
            db.close()
        except duckdb.Error:
            pass  # interrupted: the query's thread may still hold the connection; the process ends


def _interruptible(con, work):
    """work() (DuckDB calls on `con`), with Ctrl-C interrupting the query that runs. duckdb 2
    stops a query on SIGINT itself; duckdb 1.x does not look at signals while a query runs, so
    Python's handler, which writes the signal to a wakeup fd even then, wakes a thread here that
    interrupts the connection. The KeyboardInterrupt follows as soon as work() returns."""
    import signal
    import socket
    import threading

    if threading.current_thread() is not threading.main_thread():
        return work()
    r, w = socket.socketpair()
    w.setblocking(False)
    old = signal.set_wakeup_fd(w.fileno(), warn_on_full_buffer=False)

    def watch() -> None:
        while True:
            try:
                data = r.recv(64)
            except OSError:
                return
            if not data:
                return
            if signal.SIGINT in data:
                try:
                    con.interrupt()
                except Exception:
                    pass  # nothing running any more
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        return work()
    finally:
        signal.set_wakeup_fd(old)
        r.shutdown(socket.SHUT_RDWR)
        watcher.join(1)
        r.close()
        w.close()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


@click.command("meta")
@click.argument("run_id", type=int)
@click.argument("pairs", nargs=-1, metavar="KEY=VALUE...")
@db_option
def meta_cmd(run_id, pairs, db_path) -> None:
    """Show a run's metadata, or set KEY=VALUE pairs on it (e.g. model=llama2-7b batch=1)."""
    db = open_db(db_path, read_only=not pairs)
    # fetchall, not fetchone: duckdb 2 refuses the connection's next query while a result is unread.
    if db.con.execute("SELECT count(*) FROM runs WHERE run_id = ?", [run_id]).fetchall()[0][0] == 0:
        fail(f"{db_path}: no run {run_id}")
    for key, value in parse_meta(pairs).items():
        db.con.execute("INSERT OR REPLACE INTO run_meta VALUES (?, ?, ?, 'cli')", [run_id, key, value])
    _print(db.query("SELECT key, value, source FROM run_meta WHERE run_id = ? ORDER BY key", [run_id]), "table")
