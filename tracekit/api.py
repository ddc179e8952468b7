"""The Python API: one object over one DuckDB file, results as Polars or Arrow."""

from __future__ import annotations

import builtins
import re
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import duckdb

from tracekit import store
from tracekit.errors import TracekitError

if TYPE_CHECKING:
    import polars as pl
    import pyarrow as pa

    from tracekit.importer import ImportResult


def _reclassify_all(con: duckdb.DuckDBPyConnection) -> None:
    """How a tracekit 0.1 database is classified again when the store upgrades it: the default rules."""
    from tracekit.enrich.classify import classify
    from tracekit.enrich.rules import RuleSet

    classify(con, None, RuleSet.load())


class Database:
    """A tracekit database. `tracekit.open(path)` makes one.

    Views are TEMP views made on each connection. Those not made on open are made when `con` is
    handed out (any SQL may follow) or when SQL given to `query` / `arrow` / `connection_for` names
    one of them: on a database this open creates (nothing in it to check, and `import` reads no
    view) that is all of them; on any other, the ON_DEMAND ones (tracekit.views: the roofline's,
    which cost the most to bind), the others being made on open, which also checks that tracekit
    can read the database before anything is written to it."""

    def __init__(self, path: str | Path, read_only: bool = False, wait_s: float = 120.0) -> None:
        from tracekit import views

        self.path = str(path)
        self.read_only = read_only
        created = store.creates(path)
        self._con: duckdb.DuckDBPyConnection = store.connect(path, read_only=read_only, wait_s=wait_s,
                                                             reclassify=_reclassify_all)
        self._opened_views = not created
        if self._opened_views:
            self._views(lambda: views.create_views(self._con, on_demand=False))
            waiting = views.on_demand_names()
        else:
            waiting = views.view_names() + views.on_demand_names()
        # Names of the views not made yet (None: all are made).
        self._waiting: re.Pattern | None = re.compile(r"\b(?:" + "|".join(sorted(set(waiting))) + r")\b", re.I)

    def _views(self, create) -> None:
        try:
            create()
        except duckdb.Error as exc:
            # Tables of the same names but other columns: someone else's DuckDB file, or one
            # written by an incompatible tracekit. Stop before anything is written to it.
            self._con.close()
            raise TracekitError(f"{self.path}: not a tracekit database, or one from an incompatible "
                                f"version ({str(exc).splitlines()[0]})") from None

    def _all_views(self) -> None:
        if self._waiting is not None:
            from tracekit import views

            make = views.create_on_demand_views if self._opened_views else views.create_views
            self._views(lambda: make(self._con))
            self._waiting = None

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """The duckdb connection, with every view made (whatever SQL it runs next may read any)."""
        self._all_views()
        return self._con

    def connection_for(self, sql: str) -> duckdb.DuckDBPyConnection:
        """The duckdb connection, with the views `sql` reads made: those not made on open only
        when one of their names appears in it."""
        if self._waiting is not None and self._waiting.search(sql):
            self._all_views()
        return self._con

    def import_paths(
        self,
        paths: Iterable[str | Path],
        meta: dict[str, str] | None = None,
        replace: bool = False,
        rules_dirs: builtins.list[Path] | None = None,
        nsys: str | None = None,
        jobs: int = 1,
        on_result=None,
        on_phase=None,
        group: str | None = None,
    ) -> builtins.list[ImportResult]:
        # The readers and enrichment (numpy, the rules) load only when something is imported:
        # `tracekit runs`, `query` and the analysis commands never need them.
        from tracekit.importer import import_paths

        results = import_paths(self._con, paths, meta=meta, replace=replace, rules_dirs=rules_dirs,
                               nsys=nsys, jobs=jobs, on_result=on_result, on_phase=on_phase, group=group)
        return results

    def query(self, sql: str, params: builtins.list | None = None) -> pl.DataFrame:
        # polars costs ~0.1 s to import and an import never needs it: only results do.
        import polars as pl

        return pl.from_arrow(self.arrow(sql, params))

    def arrow(self, sql: str, params: builtins.list | None = None) -> pa.Table:
        return self.connection_for(sql).sql(sql, params=params or None).to_arrow_table()

    def runs(self) -> pl.DataFrame:
        return self.query(
            "SELECT r.run_id, r.source_name, r.format, r.gpu_name, r.n_kernels, r.kernel_time_ns, "
            "r.stage_method, r.iterations, r.world_size, r.ranks, "
            "(SELECT string_agg(m.key || '=' || m.value, ' ' ORDER BY m.key) FROM run_meta m "
            " WHERE m.run_id = r.run_id) AS meta FROM runs r ORDER BY r.run_id"
        )

    # -- notebooks (tracekit/outputs/notebook.py): views as polars frames, charts as Altair --

    def view(self, name: str, run_id: int | builtins.list[int] | None = None) -> pl.DataFrame:
        """An analysis view (stage_ratio, composition, steps, top_kernels, run_info, ...) as polars."""
        from tracekit.outputs import notebook

        return notebook.view(self, name, run_id)

    @property
    def views(self):
        """Attribute access to the views: `db.views.stage_ratio`."""
        from tracekit.outputs import notebook

        return notebook.Views(self)

    def chart(self, name: str, run_id: int | builtins.list[int] | None = None, **options):
        """A chart (heatmap, composition, steps, passes, stages, top) as an Altair chart, which a
        notebook renders inline."""
        from tracekit.outputs import notebook

        return notebook.chart(self, name, run_id, **options)

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> Database:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open(path: str | Path, read_only: bool = False, wait_s: float = 120.0) -> Database:  # noqa: A001
    """Open (creating if needed) a tracekit database."""
    return Database(path, read_only=read_only, wait_s=wait_s)
