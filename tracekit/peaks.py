"""The machine's roofs: peak FLOP/s and memory bandwidth per GPU, chosen by the run's GPU name.

The figures live in `tracekit/data/gpu_peaks.toml` (datasheet dense rates, each with its source).
On every connection `install(con)` loads them into the TEMP table `gpu_peaks` (one row per part,
in match order, and a last catch-all row with no figures, so that every run finds a row) and a
one-row TEMP table `peak_override` (all NULL unless the user overrides). The view `run_peaks`
joins them to the runs. `override(con, ...)` replaces both for that connection: a user TOML's
[[gpu]] entries are tried before the built-in ones, and `--peak-tflops` / `--peak-tbps` (or the
TOML's top-level `tensor_tflops` / `hbm_tbps`) win over every match.
"""

from __future__ import annotations

import tomllib
from importlib import resources
from pathlib import Path
from typing import Any

from tracekit.errors import TracekitError

FIELDS = ("bf16_tflops", "fp16_tflops", "fp8_tflops", "tf32_tflops", "fp32_tflops", "hbm_tbps", "l2_mb")
_COLUMNS = ("ord INTEGER, name VARCHAR, pattern VARCHAR, bf16_flops_per_s DOUBLE, fp16_flops_per_s DOUBLE, "
            "fp8_flops_per_s DOUBLE, tf32_flops_per_s DOUBLE, fp32_flops_per_s DOUBLE, bytes_per_s DOUBLE, "
            "l2_bytes DOUBLE, source VARCHAR, measured VARCHAR")


def builtin_entries() -> list[dict[str, Any]]:
    text = resources.files("tracekit").joinpath("data", "gpu_peaks.toml").read_text()
    return tomllib.loads(text)["gpu"]


def load_file(path: str | Path) -> dict[str, Any]:
    """A user peaks file: optional [[gpu]] entries and optional top-level overrides."""
    try:
        data = tomllib.loads(Path(path).read_text())
    except OSError as exc:
        raise TracekitError(f"{path}: {exc.strerror or exc}") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise TracekitError(f"{path}: not a valid TOML file ({exc})") from None
    for i, e in enumerate(data.get("gpu", [])):
        if not isinstance(e, dict) or not isinstance(e.get("match"), str):
            raise TracekitError(f"{path}: [[gpu]] entry {i + 1} needs a `match` string")
        for f in FIELDS:
            if f in e and not isinstance(e[f], int | float):
                raise TracekitError(f"{path}: [[gpu]] entry {i + 1}: {f} must be a number")
    for f in ("tensor_tflops", "hbm_tbps"):
        if f in data and not isinstance(data[f], int | float):
            raise TracekitError(f"{path}: {f} must be a number")
    return data


def _rows(entries: list[dict[str, Any]]) -> list[tuple]:
    rows = []
    for i, e in enumerate(entries):
        per_s = [float(e[f]) * (1e6 if f == "l2_mb" else 1e12) if e.get(f) is not None else None
                 for f in FIELDS]
        rows.append((i, e.get("name", e["match"]), "(?i)" + e["match"], *per_s,
                     e.get("source"), e.get("measured")))
    rows.append((len(entries), None, ".*", None, None, None, None, None, None, None,
                 "no entry for this GPU: give --peak-tflops / --peak-tbps or --peaks FILE", None))
    return rows


def install(con, user: dict[str, Any] | None = None, tensor_tflops: float | None = None,
            hbm_tbps: float | None = None, source: str | None = None) -> None:
    """(Re)create the TEMP tables `gpu_peaks` and `peak_override` on this connection."""
    entries = list((user or {}).get("gpu", [])) + builtin_entries()
    rows = _rows(entries)
    # One statement for all rows: executemany costs ~2 ms a row, and this runs on every open.
    values = ", ".join("(" + ", ".join("?" * len(r)) + ")" for r in rows)
    con.execute(f"CREATE OR REPLACE TEMP TABLE gpu_peaks ({_COLUMNS})")
    con.execute(f"INSERT INTO gpu_peaks VALUES {values}", [v for r in rows for v in r])
    tf = tensor_tflops if tensor_tflops is not None else (user or {}).get("tensor_tflops")
    bw = hbm_tbps if hbm_tbps is not None else (user or {}).get("hbm_tbps")
    con.execute("CREATE OR REPLACE TEMP TABLE peak_override (tensor_flops_per_s DOUBLE, bytes_per_s DOUBLE, "
                "source VARCHAR)")
    con.execute("INSERT INTO peak_override VALUES (?, ?, ?)",
                [None if tf is None else float(tf) * 1e12, None if bw is None else float(bw) * 1e12,
                 source if (tf is not None or bw is not None) else None])


def override(con, peaks_file: str | None = None, tensor_tflops: float | None = None,
             hbm_tbps: float | None = None) -> None:
    """Apply the user's peaks (CLI flags and/or a TOML file) on this connection."""
    for v, flag in ((tensor_tflops, "--peak-tflops"), (hbm_tbps, "--peak-tbps")):
        if v is not None and not (v > 0):
            raise TracekitError(f"{flag}: must be a positive number")
    user = load_file(peaks_file) if peaks_file else None
    parts = []
    if tensor_tflops is not None or hbm_tbps is not None:
        parts.append("command line")
    if user and ("tensor_tflops" in user or "hbm_tbps" in user):
        parts.append(str(Path(peaks_file).name))
    install(con, user, tensor_tflops, hbm_tbps, source="user: " + ", ".join(parts) if parts else None)
