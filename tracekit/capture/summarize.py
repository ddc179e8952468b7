"""Summarize a timing sweep (profiler 'none' manifests) into a CSV and generation-share heat-maps.

Timing-only runs have no trace to import, so their numbers live in their manifests: per-stage
kernel time from a CUDA-only profiler pass (kernel_*), and, when the sweep measured it, per-stage
wall time from CUDA events (summarization_ms / generation_ms).

    python tracekit/capture/summarize.py out/sweeps/h100-reduced --csv results/h100_stage_share.csv \
        --heatmap results/h100_heatmap_kernel.png --heatmap-wall results/h100_heatmap_wall.png
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path
from typing import Any

COLUMNS = [
    "model", "batch", "input_len", "output_len", "layers", "kernel_summarization_ms", "kernel_generation_ms",
    "kernel_gen_ratio", "kernels_summarization", "kernels_generation", "wall_summarization_ms",
    "wall_generation_ms", "wall_gen_ratio", "gpu", "torch_version", "transformers_version", "captured_at",
]


def collect(directory: Path) -> list[dict[str, Any]]:
    """One row per manifest that has per-stage kernel or wall times, sorted by cell."""
    rows = []
    for m in sorted(directory.glob("*.manifest.json")):
        body = json.loads(m.read_text())
        ks, kg = body.get("kernel_summarization_ms"), body.get("kernel_generation_ms")
        ws, wg = body.get("summarization_ms"), body.get("generation_ms")
        if ks is None and ws is None:
            continue
        row = {k: body.get(k) for k in COLUMNS}
        row["kernel_gen_ratio"] = kg / (ks + kg) if ks is not None and (ks + kg) else None
        row["wall_summarization_ms"], row["wall_generation_ms"] = ws, wg
        row["wall_gen_ratio"] = wg / (ws + wg) if ws is not None and (ws + wg) else None
        rows.append(row)
    rows.sort(key=lambda r: (r["model"], r["batch"], r["input_len"], r["output_len"]))
    return rows


def write_csv(rows: list[dict[str, Any]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:
            w.writerow({k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()})


def heatmap(rows: list[dict[str, Any]], ratio: str, path: Path, title: str) -> int:
    """Draw with tracekit's own heat-map, so sweep and trace charts look alike. Returns cells drawn."""
    import polars as pl

    from tracekit.outputs.charts import ChartData, heatmap_chart, to_spec, write_image

    cells = [r for r in rows if r[ratio] is not None]
    frame = pl.DataFrame({
        "model": [r["model"] for r in cells], "batch": [r["batch"] for r in cells],
        "input_len": [r["input_len"] for r in cells], "output_len": [r["output_len"] for r in cells],
        "gen_ratio": [r[ratio] for r in cells], "n_runs": [1] * len(cells), "runs": ["sweep"] * len(cells),
    })
    chart = heatmap_chart(ChartData(frame)).properties(title=title)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_image(to_spec(chart), path)
    return len(cells)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="summarize.py", description=__doc__.splitlines()[0])
    p.add_argument("directory", type=Path, nargs="+", help="sweep output directories")
    p.add_argument("--csv", type=Path, required=True)
    p.add_argument("--heatmap", type=Path, default=None, help="heat-map of the kernel-time generation share")
    p.add_argument("--heatmap-wall", type=Path, default=None, help="heat-map of the wall-time generation share")
    a = p.parse_args(argv)
    rows = []
    for d in a.directory:
        if not d.is_dir():
            print(f"tracekit: error: {d}: not a directory", file=sys.stderr)
            return 1
        rows += collect(d)
    if not rows:
        print(f"tracekit: error: {', '.join(map(str, a.directory))}: no manifests with stage times", file=sys.stderr)
        return 1
    rows.sort(key=lambda r: (r["model"], r["batch"], r["input_len"], r["output_len"]))
    write_csv(rows, a.csv)
    print(f"{a.csv}: {len(rows)} runs")
    if a.heatmap:
        n = heatmap(rows, "kernel_gen_ratio", a.heatmap, "Generation share of GPU kernel time (H100, HF eager)")
        print(f"{a.heatmap}: {n} cells")
    if a.heatmap_wall:
        n = heatmap(rows, "wall_gen_ratio", a.heatmap_wall, "Generation share of wall time (H100, HF eager)")
        print(f"{a.heatmap_wall}: {n} cells")
    return 0


if __name__ == "__main__":
    if __package__ in (None, ""):
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
