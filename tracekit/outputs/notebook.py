"""The notebook side of the Python API: every analysis view as a polars frame, every chart as an
Altair chart (which Jupyter renders inline), on a `tracekit.open(...)` database.

    db = tracekit.open("study.duckdb")
    db.view("stage_ratio")          # polars DataFrame; db.views.stage_ratio is the same
    db.chart("heatmap")             # altair chart: shown inline, .save("x.html"), .to_dict()
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tracekit.errors import TracekitError

if TYPE_CHECKING:
    import altair as alt
    import polars as pl

    from tracekit.outputs.charts import Queryable


def view_names() -> list[str]:
    from tracekit.views import view_names as names

    return names()


def view(db: Queryable, name: str, run_id: int | list[int] | None = None) -> pl.DataFrame:
    """The view `name` (see view_names()) as a polars frame, optionally for some runs only."""
    import polars as pl

    from tracekit.outputs.charts import query

    if name not in view_names():
        raise TracekitError(f"no view {name!r}; the views are: {', '.join(view_names())}")
    # The name is one of tracekit's own views (checked above), never free text.
    frame = query(db, f'SELECT * FROM "{name}"')
    if run_id is not None:
        # Filtered here rather than in SQL: a WHERE run_id filter over views with LEFT JOINs to
        # empty tables gives wrong sums on DuckDB 2.0.1 (see `issues stops`, stop 9).
        ids = [run_id] if isinstance(run_id, int) else list(run_id)
        frame = frame.filter(pl.col("run_id").is_in(ids))
    return frame


class Views:
    """Attribute access to the views: `db.views.stage_ratio`; `dir(db.views)` lists them."""

    def __init__(self, db: Queryable) -> None:
        self._db = db

    def __getattr__(self, name: str) -> pl.DataFrame:
        if name.startswith("_"):
            raise AttributeError(name)
        try:
            return view(self._db, name)
        except TracekitError as exc:
            raise AttributeError(str(exc)) from None

    def __dir__(self) -> list[str]:
        return view_names()


def chart_names() -> list[str]:
    from tracekit.outputs.charts import CHARTS

    return list(CHARTS)


def chart(db: Queryable, name: str, run_id: int | list[int] | None = None, **options: Any) -> alt.TopLevelMixin:
    """The chart `name` (heatmap, composition, steps, passes, stages, top) as an Altair chart.
    `run_id` limits the steps chart to some runs; `max_runs` caps the per-run charts."""
    from tracekit.outputs import charts

    if name not in charts.CHARTS:
        raise TracekitError(f"no chart {name!r}; the charts are: {', '.join(charts.CHARTS)}")
    if name == "steps" and run_id is not None:
        ids = [run_id] if isinstance(run_id, int) else list(run_id)
        return charts.steps_chart(charts.steps_data(db, ids))
    chart_obj, _ = charts.build(db, name, max_runs=options.get("max_runs"))
    return chart_obj
