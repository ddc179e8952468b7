"""Shared fixtures: real traces from fixtures/ imported into a real DuckDB file."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
SHARED = FIXTURES / "shared"

NSYS_L2 = SHARED / "nsys2024_llama2-7b-4L_b1_i64_o8.sqlite"
NSYS_L3_SHAPES = SHARED / "nsys2024_llama3-8b-2L_b4_i64_o8_shapes.sqlite"
NSYS_REP = SHARED / "nsys2024_llama2-7b-4L_b1_i64_o8.nsys-rep"
KINETO_L2 = SHARED / "kineto_llama2-7b-4L_b1_i64_o8.pt.trace.json.gz"
KINETO_L3 = SHARED / "kineto_llama3-8b-2L_b8_i128_o16.pt.trace.json.gz"
SHARED_TRACES = [KINETO_L2, KINETO_L3, NSYS_L2, NSYS_L3_SHAPES]
# What each shared trace is, as its README says: the metadata a user would pass with --meta.
SHARED_META = {
    KINETO_L2.name: {"model": "llama2-7b", "layers": "4", "batch": "1", "input_len": "64", "output_len": "8"},
    KINETO_L3.name: {"model": "llama3-8b", "layers": "2", "batch": "8", "input_len": "128", "output_len": "16"},
    NSYS_L2.name: {"model": "llama2-7b", "layers": "4", "batch": "1", "input_len": "64", "output_len": "8"},
    NSYS_L3_SHAPES.name: {"model": "llama3-8b", "layers": "2", "batch": "4", "input_len": "64", "output_len": "8"},
}


def import_shared(db_path: Path):
    """A database holding the four shared traces as runs 1..4, each with its metadata."""
    import tracekit

    db = tracekit.open(db_path)
    for trace in SHARED_TRACES:
        results = db.import_paths([trace], meta=SHARED_META[trace.name])
        assert results[0].status == "imported", results[0].error
    return db


@pytest.fixture(scope="session")
def shared_db_path(tmp_path_factory) -> Path:
    """Path of a DuckDB file with the shared traces imported (read it; copy it to change it)."""
    path = tmp_path_factory.mktemp("db") / "shared.duckdb"
    import_shared(path).close()
    return path


@pytest.fixture()
def shared_db_copy(shared_db_path, tmp_path) -> Path:
    """A private, writable copy of the shared database."""
    dst = tmp_path / "copy.duckdb"
    shutil.copy(shared_db_path, dst)
    return dst


def run_id_of(db_or_con, trace: Path) -> int:
    """The run imported from `trace` (by file name), given a Database or a DuckDB connection."""
    con = getattr(db_or_con, "con", db_or_con)
    return con.execute("SELECT run_id FROM runs WHERE source_name = ?", [trace.name]).fetchall()[0][0]


def tk(*args: str, env: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    """Run the real CLI in a fresh interpreter, as a user would."""
    return subprocess.run([sys.executable, "-m", "tracekit.outputs.cli", *args], capture_output=True, text=True,
                          env=env, timeout=timeout, cwd=ROOT)


# The project's shared traces beside the checkout (`../shared/traces`): real traces recorded on
# H100/H200s and public traces from other projects (provenance in external/README.md). CI lays
# them beside its clone; a checkout without them skips the tests that read them, except on CI.
SHARED_TRACES_DIR = ROOT.parent / "shared" / "traces"


def shared_trace(relpath: str) -> Path:
    """Path of a trace under ../shared/traces; skips (fails on CI) when it is not there."""
    import os

    path = SHARED_TRACES_DIR / relpath
    if not path.exists():
        if os.environ.get("CI"):
            pytest.fail(f"{path}: shared trace missing on CI")
        pytest.skip(f"{path}: ../shared/traces not beside this checkout")
    return path
