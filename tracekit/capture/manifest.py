"""Capture manifests: a flat JSON sidecar beside every trace, named from the trace's stem.

`llama2-7b_b1_i64_o8.pt.trace.json.gz` -> `llama2-7b_b1_i64_o8.manifest.json`. This module is THE
naming rule: tracekit's importer imports it (capture never imports tracekit here), so that a GPU
machine can run capture without tracekit's dependencies and both sides always agree.

A job of several ranks (tensor parallel) writes one trace per rank, `x_tp2_rank0_b8.pt.trace.json.gz`,
and ONE manifest for the job, named from the stem without its rank token: `x_tp2_b8.manifest.json`.
"""

from __future__ import annotations

import json
import os
import platform
import re
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Any

# Stripped repeatedly from the end, in any order: `x.pt.trace.json.gz` -> `x`, `x.pt.json.gz` -> `x`.
TRACE_SUFFIXES = (".gz", ".json", ".trace", ".pt", ".sqlite", ".nsys-rep", ".qdstrm")
MANIFEST_SUFFIX = ".manifest.json"
# The rank of one process of a distributed job in a file name: `_rank3_`, `-rank-3.`, `_RANK3`
# (group 1: the separator before it, group 2: the number, or `*` in a job's label).
RANK_TOKEN = re.compile(r"(^|[_.-])rank[_-]?(\d+|\*)(?=[_.-]|$)", re.IGNORECASE)


def trace_stem(name: str) -> str:
    """The name of a trace file without its trace suffixes."""
    stem = name
    changed = True
    while changed:
        changed = False
        for suffix in TRACE_SUFFIXES:
            if stem.endswith(suffix) and len(stem) > len(suffix):
                stem = stem[: -len(suffix)]
                changed = True
    return stem


def manifest_path(trace: str | os.PathLike[str]) -> Path:
    """Where the manifest of a trace lives: same directory, stem + `.manifest.json`."""
    p = Path(trace)
    if p.name.endswith(MANIFEST_SUFFIX):  # a manifest-only run (profiler none) is its own manifest
        return p
    return p.with_name(trace_stem(p.name) + MANIFEST_SUFFIX)


def job_stem(name: str) -> str:
    """The stem shared by every rank's trace of one job: the trace stem without its rank token."""
    stem = trace_stem(name)
    return RANK_TOKEN.sub("", stem, count=1) or stem


def job_manifest_path(trace: str | os.PathLike[str]) -> Path:
    """The one manifest of the job a rank's trace belongs to (its own manifest when it has no rank)."""
    p = Path(trace)
    return p.with_name(job_stem(p.name) + MANIFEST_SUFFIX)


def manifest_candidates(trace: str | os.PathLike[str]) -> list[Path]:
    """Where a reader looks for a trace's manifest, in order: its own, then its job's."""
    own, job = manifest_path(trace), job_manifest_path(trace)
    return [own] if own == job else [own, job]


def _flat(value: Any) -> Any:
    # The importer stores manifest values as run_meta strings; nested values go in as JSON text
    # so that nothing is lost and the object stays flat.
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return json.dumps(value, sort_keys=True)


def flatten(fields: dict[str, Any]) -> dict[str, Any]:
    return {str(k): _flat(v) for k, v in fields.items()}


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    """Write JSON so that a reader (or a crash) never sees a half-written file."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", suffix=".tmp", dir=p.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, indent=1, sort_keys=True)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes it private; manifests are meant to be shared
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_manifest(trace: str | os.PathLike[str], fields: dict[str, Any]) -> Path:
    """Write the flat manifest beside `trace`; the trace's own file name is recorded too."""
    out = manifest_path(trace)
    body = flatten(fields)
    body.setdefault("trace_file", Path(trace).name)
    write_json_atomic(out, body)
    return out


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    p = Path(path)
    obj = json.loads(p.read_text())
    if not isinstance(obj, dict):
        raise ValueError(f"{p}: manifest is not a JSON object")
    return obj


def library_versions(names: tuple[str, ...] = ("torch", "transformers", "tensorrt_llm", "tensorrt")) -> dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


def gpu_facts() -> dict[str, Any]:
    """GPU name, driver and CUDA runtime as nvidia-smi (and torch, when loaded) report them."""
    facts: dict[str, Any] = {}
    try:
        line = subprocess.run(
            ["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
            capture_output=True, text=True, timeout=20, check=True,
        ).stdout.splitlines()[0]
        name, driver, mem = (x.strip() for x in line.split(","))
        facts.update(gpu=name, driver=driver, gpu_memory=mem)
    except (OSError, subprocess.SubprocessError, IndexError, ValueError):
        pass
    return facts


def environment() -> dict[str, Any]:
    """Facts about the machine a capture ran on (no paths of it)."""
    env: dict[str, Any] = {"host_python": platform.python_version()}
    env.update(gpu_facts())
    for lib, ver in library_versions().items():
        env[f"{lib}_version"] = ver
    return env
