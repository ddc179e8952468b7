"""Paths and helpers shared by the robustness tests (named uniquely: pytest imports test dirs flat)."""

from __future__ import annotations

from pathlib import Path

from conftest import tk  # noqa: F401  (re-exported: one CLI runner for every test)

ROOT = Path(__file__).resolve().parents[2]
VARIANTS = ROOT / "fixtures" / "variants"
NSYS_LEGACY = VARIANTS / "nsys_legacy_inline_strings.sqlite"
NSYS_REGISTERED = VARIANTS / "nsys_registered_strings_newcols.sqlite"
NSYS_MULTI = VARIANTS / "nsys_two_processes_two_gpus.sqlite"
NSYS_GRAPH_NODES = VARIANTS / "nsys_cuda_graph_nodes.sqlite"
NSYS_GRAPH_WHOLE = VARIANTS / "nsys_cuda_graph_whole.sqlite"
KINETO_TORCH1 = VARIANTS / "kineto_torch1_legacy.json.gz"
KINETO_FLOWS = VARIANTS / "kineto_ac2g_flows_only.pt.trace.json.gz"
ALL_VARIANTS = [NSYS_LEGACY, NSYS_REGISTERED, NSYS_MULTI, NSYS_GRAPH_NODES, NSYS_GRAPH_WHOLE,
                KINETO_TORCH1, KINETO_FLOWS]



def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("tracekit: error:")]


def gtid_pid(g: int | None) -> int | None:
    # Independent of the reader's helper: nsys documents globalTid as 0x00HH_PPPPPP_TTTTTT.
    return None if g is None else (g // (1 << 24)) % (1 << 24)
