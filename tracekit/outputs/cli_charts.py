"""Commands `chart`, `report` and `diff`."""

from __future__ import annotations

from pathlib import Path

import click

from tracekit.errors import TracekitError
from tracekit.outputs.cli_core import db_option, fail, format_option, open_db, require_runs

CHART_SUFFIXES = (".png", ".svg", ".html")


def _check_out(out: Path) -> None:
    if out.suffix.lower() not in CHART_SUFFIXES:
        raise click.BadParameter(f"{out}: the file name must end in {', '.join(CHART_SUFFIXES)}",
                                 param_hint="--out")


def _write_chart(chart, out: Path, title: str) -> None:
    from tracekit.outputs import charts, report

    spec = charts.to_spec(chart)
    if out.suffix.lower() == ".html":
        out.write_text(report.chart_page(spec, title), encoding="utf-8")
    else:
        charts.write_image(spec, out)


def _run(db_path: str, action):
    """Run `action(db)` on a read-only database; database errors become one line."""
    import duckdb

    db = open_db(db_path, read_only=True)
    require_runs(db, db_path)
    try:
        return action(db)
    except TracekitError as exc:
        fail(f"{db_path}: {exc}")
    except duckdb.Error as exc:
        fail(f"{db_path}: {str(exc).splitlines()[0]}")
    except OSError as exc:
        fail(f"{exc.filename or db_path}: {exc.strerror or exc}")
    finally:
        db.close()


@click.group("chart")
def chart_group() -> None:
    """Draw one chart to a PNG, SVG or (offline) HTML file."""


def _chart_command(name: str, help_text: str, title: str) -> click.Command:
    @click.command(name, help=help_text)
    @db_option
    @click.option("--out", required=True, type=click.Path(path_type=Path, dir_okay=False),
                  help="Output file: .png, .svg or .html.")
    @click.option("--run", "run_ids", multiple=True, type=int,
                  help="Only these runs (repeatable; the steps chart only).", hidden=name != "steps")
    def cmd(db_path: str, out: Path, run_ids: tuple[int, ...]) -> None:
        from tracekit.outputs import charts

        _check_out(out)

        def action(db) -> None:
            if name == "steps":
                data = charts.steps_data(db, list(run_ids) or None)
                chart = charts.steps_chart(data)
            else:
                chart, data = charts.build(db, name)
            _write_chart(chart, out, title)
            for line in data.subtitle():
                click.echo(f"tracekit: {charts.printable(line)}", err=True)
            click.echo(f"wrote {out}", err=True)

        _run(db_path, action)

    return cmd


for _name, _help, _title in [
    ("heatmap", "Generation-stage share by input × output length, one panel per model × batch.",
     "Generation share"),
    ("composition", "Stacked 100% bars of kernel-time buckets per run, one facet per batch size.",
     "Composition"),
    ("steps", "Kernel time per forward pass (step 0 = summarization) stacked by bucket.", "Per-step timeline"),
    ("passes", "Kernel time and wall-clock time of each forward pass.", "Per-pass times"),
    ("stages", "Kernel time per stage for each run.", "Stage split"),
    ("top", "The kernels with the most time in each run.", "Top kernels"),
]:
    chart_group.add_command(_chart_command(_name, _help, _title))


@click.command("report")
@db_option
@click.option("--out", "out_dir", required=True, type=click.Path(path_type=Path, file_okay=False),
              help="Directory for index.html, charts (PNG, SVG) and tables (CSV).")
@click.option("--title", default="tracekit report", show_default=True)
def report_cmd(db_path: str, out_dir: Path, title: str) -> None:
    """Write an offline HTML report (no network needed to view it) with every table and chart."""
    from tracekit.outputs.report import write_report

    index = _run(db_path, lambda db: write_report(db, out_dir, title=title))
    click.echo(f"wrote {index}", err=True)


@click.command("diff")
@click.argument("a")
@click.argument("b")
@db_option
@click.option("--out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also draw the deltas to this .png, .svg or .html file.")
@click.option("--top", default=15, show_default=True, type=click.IntRange(1, 10_000),
              help="How many kernels to list.")
@click.option("--fail-if", "fail_if", multiple=True, metavar="THRESHOLD",
              help="Exit 1 when the change from A to B breaches THRESHOLD (repeatable), e.g. "
                   "'gen_ratio>+0.02', 'bucket:Gen GEMV:time>+10%', 'kernel:nvjet*:time>+5%'. "
                   "Grammar: tracekit diff --help-thresholds.")
@click.option("--markdown", "md_out", type=click.Path(path_type=Path, dir_okay=False), default=None,
              help="Also write the diff (and threshold results) as markdown, e.g. for a pull-request comment.")
@click.option("--help-thresholds", is_flag=True, is_eager=True, expose_value=False,
              callback=lambda ctx, _p, v: _print_grammar(ctx) if v else None,
              help="Print the --fail-if grammar and exit.")
@format_option
def diff_cmd(a: str, b: str, db_path: str, out: Path | None, top: int, fail_if: tuple[str, ...],
             md_out: Path | None, fmt: str) -> None:
    """Compare B with A: per-bucket and per-kernel changes (B minus A).

    A and B are run ids (3, or 3,5 for a group) or metadata selectors for groups
    (model=llama2-7b,batch=1). Groups are compared by their mean per run.

    As a CI gate: each --fail-if THRESHOLD that B breaches prints one line
    `tracekit: threshold breached: ...` on stderr, and the exit status is 1.
    """
    import polars as pl

    from tracekit.outputs import charts, diff
    from tracekit.outputs.format import print_frame

    if out is not None:
        _check_out(out)
    gates = []
    for text in fail_if:
        try:
            gates.append(diff.parse_gate(text))
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--fail-if") from None
    breached: list[str] = []

    def action(db) -> None:
        side_a, side_b = diff.resolve(db, a), diff.resolve(db, b)
        buckets = diff.bucket_deltas(db, side_a, side_b)
        kernels = diff.kernel_deltas(db, side_a, side_b)
        if buckets.is_empty() and kernels.is_empty():
            raise TracekitError("nothing to compare: the runs have no composition or kernel data")
        click.echo(f"A = {side_a.label}\nB = {side_b.label}\n\nbuckets (mean per run; B - A):")
        ms = [pl.col(c) / 1e6 for c in ("time_a_ns", "time_b_ns", "delta_ns")]
        shown = buckets.select(
            "bucket", *[(pl.col(c) * 100).round(2).alias(n) for c, n in
                        (("share_a", "A %"), ("share_b", "B %"), ("delta_share", "delta pp"))],
            *[m.round(3).alias(n) for m, n in zip(ms, ("A ms", "B ms", "delta ms"), strict=True)],
        ) if fmt == "table" else buckets
        print_frame(shown, fmt)
        click.echo(f"\nkernels with the largest change (top {top}):")
        k = kernels.head(top)
        shown_k = k.select(
            "short_name", "category",
            *[m.round(3).alias(n) for m, n in zip(ms, ("A ms", "B ms", "delta ms"), strict=True)],
        ) if fmt == "table" else k
        print_frame(shown_k, fmt)
        if out is not None:
            chart = charts.diff_chart(buckets, kernels, side_a.label, side_b.label, top=top)
            _write_chart(chart, out, "tracekit diff")
            click.echo(f"wrote {out}", err=True)
        results = diff.evaluate_gates(db, side_a, side_b, gates, buckets, kernels)
        if md_out is not None:
            md_out.write_text(diff.markdown(side_a, side_b, buckets, kernels, results, top=top) + "\n",
                              encoding="utf-8")
            click.echo(f"wrote {md_out}", err=True)
        for r in results:
            if r.breached:
                breached.append(f"tracekit: threshold breached: {r.gate.text}: {r.describe()}")
        if results and not breached:
            click.echo(f"tracekit: all {len(results)} thresholds passed", err=True)

    _run(db_path, action)
    if breached:
        from tracekit.outputs.charts import printable

        for line in breached:
            click.echo(printable(line), err=True)
        raise SystemExit(1)


def _print_grammar(ctx: click.Context) -> None:
    from tracekit.outputs.diff import GATE_GRAMMAR

    click.echo(GATE_GRAMMAR)
    ctx.exit(0)


@click.group("export")
def export_group() -> None:
    """Write a run out for other tools."""


@export_group.command("perfetto")
@click.argument("run_id", type=int)
@db_option
@click.option("-o", "--out", required=True, type=click.Path(path_type=Path, dir_okay=False),
              help="Output file: .json or .json.gz (Chrome JSON), .pftrace (Perfetto protobuf).")
@click.option("--format", "fmt", type=click.Choice(["json", "proto"]), default=None,
              help="Chrome JSON (default; `tracekit import` reads it back) or Perfetto protobuf "
                   "(needs the perfetto package); by default from the file name.")
def export_perfetto_cmd(run_id: int, db_path: str, out: Path, fmt: str | None) -> None:
    """Write RUN for ui.perfetto.dev: the original kernels, launches, operators and ranges on
    their threads and streams, plus tracekit's stage, pass, category, rule and evidence (in each
    kernel's args and on `tracekit` tracks). Beside a JSON export, the run's metadata is written
    as its capture manifest (unless one is there), so `tracekit import` reads both back."""
    from tracekit.outputs import perfetto

    if fmt is None:
        fmt = "proto" if out.name.endswith(perfetto.PROTO_SUFFIXES) else "json"
    def action(db) -> tuple[int, Path | None]:
        if fmt == "proto":
            return perfetto.export_proto(db, run_id, out), None
        return perfetto.export(db, run_id, out), perfetto.write_manifest(db, run_id, out)

    n, manifest = _run(db_path, action)
    click.echo(f"wrote {out} ({n:,} {'packets' if fmt == 'proto' else 'events'})", err=True)
    if manifest is not None:
        click.echo(f"wrote {manifest} (the run's metadata, read by `tracekit import`)", err=True)
