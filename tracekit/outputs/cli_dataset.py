"""`tracekit dataset`: import traces into a Parquet dataset (one machine or a Dask cluster) and
attach a database of views to it, which every analysis command then reads with --db."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from tracekit.errors import TracekitError
from tracekit.outputs.cli_core import fail, parse_meta


@click.group("dataset")
def dataset_group() -> None:
    """A Parquet dataset of runs, written by many workers at once (see README, "Beyond one machine")."""


@dataset_group.command("import")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--to", "dataset", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Dataset directory (created if missing; on shared storage for a cluster).")
@click.option("--scheduler", default=None, metavar="ADDRESS",
              help="Dask scheduler to run on (tcp://host:8786); its workers must see the traces and the "
                   "dataset at the same paths.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(1, 4096),
              help="Without --scheduler: worker processes of a local Dask cluster (1: this process, no Dask).")
@click.option("--meta", "meta", multiple=True, metavar="KEY=VALUE", help="Metadata for every run of this import.")
@click.option("--rules", "rules_dirs", multiple=True, type=click.Path(path_type=Path, exists=True, file_okay=False),
              help="Extra rule directory layered over the built-in packs (repeatable).")
@click.option("--nsys", default=None, help="nsys executable for converting .nsys-rep files.")
@click.option("-q", "--quiet", is_flag=True, help="Print only errors.")
def dataset_import_cmd(paths, dataset, scheduler, workers, meta, rules_dirs, nsys, quiet) -> None:
    """Import trace files (or directories of them) into the dataset DIR, each run as its own
    immutable directory of Parquet files. Runs already there are skipped; a bad file is reported
    in one line, leaves nothing behind, and the other files still import."""
    from tracekit.dataset import import_to_dataset
    from tracekit.importer import expand

    meta_d = parse_meta(meta)
    files = expand(paths)
    if not files:
        fail(f"{', '.join(map(str, paths))}: no trace files found")
    counts = {"imported": 0, "skipped": 0, "failed": 0}
    done = [0]

    def on_result(r) -> None:
        done[0] += 1
        counts[r.status] += 1
        prefix = f"[{done[0]}/{len(files)}]"
        if r.status == "failed":
            click.echo(f"tracekit: error: {r.error}", err=True)
        elif quiet:
            return
        elif r.status == "skipped":
            click.echo(f"{prefix} {r.path}: already in the dataset as run_key={r.run_key}", err=True)
        else:
            click.echo(f"{prefix} {r.path}: imported as run_key={r.run_key} "
                       f"({r.n_kernels} kernels, {r.seconds:.2f}s)", err=True)

    try:
        import_to_dataset(files, dataset, scheduler=scheduler, workers=workers, meta=meta_d,
                          rules_dirs=list(rules_dirs), nsys=nsys, on_result=on_result)
    except TracekitError as exc:
        fail(str(exc))
    if not quiet:
        click.echo(", ".join(f"{v} {k}" for k, v in counts.items() if v) or "nothing to do", err=True)
    if counts["failed"]:
        sys.exit(1)


@dataset_group.command("attach")
@click.argument("dataset", type=click.Path(path_type=Path, file_okay=False))
@click.option("--db", "db_path", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="DuckDB file to write (new, or one attach made before for this dataset).")
def dataset_attach_cmd(dataset, db_path) -> None:
    """Copy the runs of DATASET into the DuckDB file FILE (for thousands of runs: as fast as an
    imported store); attaching again copies only the runs added since. To read the dataset in
    place instead, give its directory as --db to any reading command."""
    from tracekit.dataset import attach

    try:
        tables, copied = attach(dataset, db_path)
    except TracekitError as exc:
        fail(str(exc))
    click.echo(f"{db_path}: {copied} new run(s) copied from {dataset} ({', '.join(tables)})", err=True)
