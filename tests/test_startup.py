"""Start-up cost: what each entry point imports, asserted on the modules loaded, not on timings.

`tracekit import` has a ~1 s budget for a whole nsys trace; Python plus duckdb, pyarrow and numpy
already take ~0.3 s of it, so nothing else heavy may creep onto the path (polars alone is
0.1-0.2 s, altair more). Each check runs in a fresh interpreter: the test process itself has
everything loaded long ago.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pyarrow as pa
import pytest
from conftest import KINETO_L2, NSYS_L2, ROOT

# Only charts and reports need these.
CHART_ONLY = {"altair", "vl_convert", "jsonschema"}
# What a data command needs, and nothing before one runs.
DATA = {"duckdb", "pyarrow", "numpy", "polars", "msgspec", "adbc_driver_manager", "sqlite3"}
TWO_PROCESSES = ROOT / "fixtures" / "variants" / "nsys_two_processes_two_gpus.sqlite"


def _loaded_after(code: str) -> set[str]:
    """Top-level packages (and tracekit modules) loaded once `code` has run in a fresh process."""
    script = code + (
        "\nimport json, sys\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules}"
        " | {m for m in sys.modules if m.startswith('tracekit.')})))\n"
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    return set(json.loads(out.stdout.splitlines()[-1]))


def _cli(args: list[str]) -> str:
    return (
        "from tracekit.outputs.cli import main\n"
        "try:\n"
        f"    main({args!r})\n"
        "except SystemExit as exc:\n"
        "    assert not exc.code, exc.code\n"
    )


def test_import_tracekit_loads_no_data_libraries():
    loaded = _loaded_after("import tracekit")
    assert not loaded & (DATA | CHART_ONLY)
    assert "tracekit.api" not in loaded


def test_tracekit_open_still_reaches_the_api():
    loaded = _loaded_after(
        "import tracekit, tracekit.api\n"
        "assert tracekit.open is tracekit.api.open and tracekit.Database is tracekit.api.Database\n"
        "try:\n"
        "    tracekit.no_such_name\n"
        "except AttributeError:\n"
        "    pass\n"
        "else:\n"
        "    raise SystemExit('no AttributeError')\n"
    )
    assert "duckdb" in loaded


def test_cli_module_and_help_load_no_data_or_chart_libraries():
    assert not _loaded_after("import tracekit.outputs.cli") & (DATA | CHART_ONLY)
    loaded = _loaded_after(_cli(["--help"]))
    assert not loaded & (DATA | CHART_ONLY)
    # Every command module was still registered.
    for mod in ("cli_core", "cli_analysis", "cli_rules", "cli_charts", "cli_capture"):
        assert f"tracekit.outputs.{mod}" in loaded


def test_help_lists_every_command():
    out = subprocess.run([sys.executable, "-m", "tracekit.outputs.cli", "--help"], capture_output=True,
                         text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    for name in ("import", "runs", "query", "meta", "stages", "composition", "steps", "top", "rules",
                 "classify", "chart", "report", "diff", "capture", "sweep"):
        assert f"\n  {name} " in out.stdout, name


def test_kineto_import_loads_neither_polars_nor_charts_nor_the_sqlite_reader(tmp_path):
    db = tmp_path / "k.duckdb"
    loaded = _loaded_after(_cli(["import", "-q", str(KINETO_L2), "--db", str(db)]))
    assert "tracekit.readers.kineto" in loaded  # it did read the trace
    assert not loaded & (CHART_ONLY | {"polars", "adbc_driver_manager"})
    assert "tracekit.readers.nsys_sqlite" not in loaded
    assert not {m for m in loaded if m.startswith(("tracekit.outputs.charts", "tracekit.outputs.report"))}


def test_nsys_import_loads_no_charts_and_not_the_kineto_reader(tmp_path):
    db = tmp_path / "n.duckdb"
    loaded = _loaded_after(_cli(["import", "-q", str(NSYS_L2), "--db", str(db)]))
    assert "tracekit.readers.nsys_sqlite" in loaded
    # polars is not asserted here: adbc_driver_manager's DB-API module imports it when installed.
    assert not loaded & (CHART_ONLY | {"msgspec"})
    assert "tracekit.readers.kineto" not in loaded


@pytest.mark.parametrize("path", [NSYS_L2, TWO_PROCESSES], ids=lambda p: p.name)
def test_general_launch_join_agrees_with_the_kernels_own_ids(path):
    from tracekit.enrich.links import _link_general, _link_unique
    from tracekit.readers import read

    data = read(path)
    got, unresolved = _link_general(data.kernels, data.launches)
    assert unresolved == 0  # nsys kernels know their process
    fast = _link_unique(data.kernels, data.launches)
    if fast is not None:  # unique ids: both ways must give the same answer
        assert got.equals(fast)
    assert got.null_count < len(got)
    # Every linked kernel has its launch's correlation id and, where both know it, its pid.
    la = data.launches.to_pydict()
    k = data.kernels.to_pydict()
    for i, lid in enumerate(got.to_pylist()):
        if lid is None:
            continue
        assert la["correlation"][lid] == k["correlation"][i]
        assert None in (la["pid"][lid], k["pid"][i]) or la["pid"][lid] == k["pid"][i]


def test_repeated_correlation_ids_link_to_the_first_agreeing_launch():
    # Two processes reuse ids 7 and 8; a third launch with 7 has no known pid.
    launches = pa.table({
        "launch_id": pa.array([0, 1, 2, 3, 4], pa.int64()),
        "correlation": pa.array([7, 8, 7, 8, 7], pa.int64()),
        "pid": pa.array([100, 100, 200, 200, None], pa.int64()),
    })
    rows = pa.table({
        "correlation": pa.array([7, 7, 7, 8, 8, 9, None], pa.int64()),
        "pid": pa.array([200, 100, None, 300, 200, 100, 100], pa.int64()),
    })
    from tracekit.enrich.links import _link_to_launch

    # pid 200 -> launch 2 (its own process before the launch of unknown pid); pid 100 -> 0; unknown
    # pid: id 7 is used by processes 100 and 200 and nothing here tells which, so null and counted
    # (it used to be the first, 0: a silent guess); pid 300 with id 8: no launch of that process,
    # none unknown -> null; unknown id 9 and a null id -> null.
    links, unresolved = _link_to_launch(rows, launches)
    assert links.to_pylist() == [2, 0, None, None, 3, None, None]
    assert unresolved == 1
