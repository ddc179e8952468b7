"""Sweeps: expand a TOML spec into runs, skip the ones already done, run the rest, survive crashes.

A run is done exactly when its manifest exists, parses, and names a trace file that exists (or
none, for profiler 'none'): runners write the trace first and the manifest last, each through a
temporary file and an atomic rename, so a crash at any point leaves the run not done and it is
simply run again. `sweep-state.json` in the output directory adds attempts and the last error.

Spec:
    name = "study"
    backend = "hf"                      # hf | trtllm
    out_dir = "out/sweeps/study"        # relative to the working directory; --out-dir overrides
    [options]                           # runner options for every run (profiler, dtype, layers, ...)
    profiler = "torch"
    [[grid]]
    name = "fig6"
    models = ["llama2-7b", "gemma-2b"]
    batch = [1, 8]
    input_len = [1, 16, 256]
    output_len = [4, 64, 1024]
    [grid.options]                      # per-grid overrides of [options]
    layers = 4
"""

from __future__ import annotations

import datetime as _dt
import itertools
import json
import os
import shlex
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tracekit.capture.manifest import manifest_path, trace_stem, write_json_atomic
from tracekit.capture.models import run_name

STATE_FILE = "sweep-state.json"
BACKENDS = ("hf", "trtllm")
# Options a spec may set, with the runner flag each becomes; anything else is a spec error.
OPTION_FLAGS: dict[str, str] = {
    "profiler": "--profiler", "dtype": "--dtype", "layers": "--layers", "attn": "--attn",
    "compile": "--compile", "warmup": "--warmup", "warmup_output_len": "--warmup-output-len",
    "iterations": "--iterations", "kernel_sums": "--kernel-sums", "emit_nvtx": "--emit-nvtx",
    "nsys_capture": "--nsys-capture", "seed": "--seed", "nsys": "--nsys",
    # trtllm only
    "tp": "--tp", "max_batch": "--max-batch", "engine_dir": "--engine-dir", "trtllm_root": "--trtllm-root",
}
GRID_KEYS = {"name", "models", "batch", "input_len", "output_len", "options"}
TRACE_EXT = {"torch": ".pt.trace.json.gz", "nsys": ".nsys-rep", "none": ".manifest.json"}


class SpecError(ValueError):
    """A sweep spec is unusable; the message names the file and the problem."""


@dataclass(frozen=True)
class Run:
    name: str
    grids: tuple[str, ...]
    model: str
    batch: int
    input_len: int
    output_len: int
    options: tuple[tuple[str, Any], ...]

    @property
    def opts(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def profiler(self) -> str:
        return str(self.opts.get("profiler", "torch"))

    def output(self, out_dir: Path) -> Path:
        return out_dir / f"{self.name}{TRACE_EXT.get(self.profiler, '.nsys-rep')}"


@dataclass
class Spec:
    path: Path
    name: str
    backend: str
    out_dir: Path
    runs: list[Run] = field(default_factory=list)


def _int_list(path: Path, grid: str, key: str, value: Any) -> list[int]:
    vals = value if isinstance(value, list) else [value]
    if not vals or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in vals):
        raise SpecError(f"{path}: grid {grid!r}: {key} must be a list of positive integers")
    return vals


def _check_options(path: Path, where: str, opts: Any) -> dict[str, Any]:
    if not isinstance(opts, dict):
        raise SpecError(f"{path}: {where}: options must be a table")
    unknown = sorted(set(opts) - set(OPTION_FLAGS))
    if unknown:
        raise SpecError(f"{path}: {where}: unknown option(s) {', '.join(unknown)}")
    return dict(opts)


def load_spec(path: str | os.PathLike[str], out_dir: str | None = None) -> Spec:
    """Parse and expand a spec; the same cell named by two grids becomes one run."""
    p = Path(path)
    try:
        raw = tomllib.loads(p.read_text())
    except OSError as exc:
        raise SpecError(f"{p}: cannot read ({exc.strerror})") from None
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{p}: not valid TOML ({exc})") from None
    backend = raw.get("backend", "hf")
    if backend not in BACKENDS:
        raise SpecError(f"{p}: backend must be one of {', '.join(BACKENDS)}, not {backend!r}")
    grids = raw.get("grid")
    if not isinstance(grids, list) or not grids:
        raise SpecError(f"{p}: no [[grid]] tables")
    base = _check_options(p, "[options]", raw.get("options", {}))
    spec = Spec(path=p, name=str(raw.get("name", p.stem)), backend=backend,
                out_dir=Path(out_dir or raw.get("out_dir") or f"out/sweeps/{p.stem}"))
    by_name: dict[str, Run] = {}
    for i, g in enumerate(grids):
        gname = str(g.get("name", f"grid{i}"))
        unknown = sorted(set(g) - GRID_KEYS)
        if unknown:
            raise SpecError(f"{p}: grid {gname!r}: unknown key(s) {', '.join(unknown)}")
        models = g.get("models")
        if not isinstance(models, list) or not models or not all(isinstance(m, str) for m in models):
            raise SpecError(f"{p}: grid {gname!r}: models must be a list of names")
        opts = dict(base, **_check_options(p, f"grid {gname!r}", g.get("options", {})))
        layers = opts.get("layers")
        axes = [_int_list(p, gname, k, g.get(k)) for k in ("batch", "input_len", "output_len")]
        for model, b, i_len, o_len in itertools.product(models, *axes):
            name = run_name(Path(model).name if ("/" in model) else model, b, i_len, o_len, layers)
            opt_items = tuple(sorted(opts.items()))
            if name in by_name:
                prev = by_name[name]
                if prev.options != opt_items:
                    raise SpecError(f"{p}: run {name} appears in grids {prev.grids[0]!r} and {gname!r} "
                                    "with different options")
                by_name[name] = Run(**{**prev.__dict__, "grids": prev.grids + (gname,)})
                continue
            by_name[name] = Run(name, (gname,), model, b, i_len, o_len, opt_items)
    spec.runs = list(by_name.values())
    return spec


def is_done(run: Run, out_dir: Path) -> bool:
    """True when the run's manifest is complete and its trace is there."""
    m = manifest_path(run.output(out_dir))
    try:
        body = json.loads(m.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    if not isinstance(body, dict):
        return False
    trace = body.get("trace_file")
    if trace is None:
        return run.profiler == "none"
    return (out_dir / str(trace)).is_file() and trace_stem(str(trace)) == run.name


def clean_partial(out_dir: Path, names: Iterable[str]) -> list[Path]:
    """Remove what a crashed run left: temporary files and traces without a manifest."""
    removed = []
    wanted = set(names)
    for f in out_dir.iterdir() if out_dir.is_dir() else []:
        if f.name.startswith(".") and (f.name.endswith(".tmp") or ".tmp" in f.name or f.name.endswith(".json")):
            stem = trace_stem(f.name.lstrip(".").split(".")[0])
            if stem in wanted:
                f.unlink()
                removed.append(f)
        elif not f.name.endswith(".manifest.json") and trace_stem(f.name) in wanted and not manifest_path(f).exists():
            f.unlink()
            removed.append(f)
    return removed


class State:
    """Attempts and errors per run, kept beside the outputs; rewritten atomically."""

    def __init__(self, out_dir: Path, spec_name: str) -> None:
        self.path = out_dir / STATE_FILE
        try:
            self.data = json.loads(self.path.read_text())
        except (OSError, json.JSONDecodeError):
            self.data = {}
        self.data.setdefault("spec", spec_name)
        self.data.setdefault("runs", {})

    def get(self, name: str) -> dict[str, Any]:
        return self.data["runs"].setdefault(name, {"status": "pending", "attempts": 0})

    def mark(self, names: Iterable[str], status: str, error: str | None = None) -> None:
        now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        for name in names:
            r = self.get(name)
            if status == "running":
                r["attempts"] = r.get("attempts", 0) + 1
            elif status == "failed":
                # Only a runner that ran and left the run unfinished counts against it; a sweep
                # killed midway leaves its runs 'running', and those are simply run again.
                r["failures"] = r.get("failures", 0) + 1
            r["status"] = status
            r["updated"] = now
            if error:
                r["error"] = error
            elif status == "done":
                r.pop("error", None)
        self.save()

    def save(self) -> None:
        write_json_atomic(self.path, self.data)


@dataclass
class Plan:
    done: list[Run]
    pending: list[Run]
    skipped_failed: list[Run]


def plan(spec: Spec, max_attempts: int = 2, only: Iterable[str] = (), models: Iterable[str] = ()) -> Plan:
    state = State(spec.out_dir, spec.name)
    only, models = set(only), set(models)
    done, pending, failed = [], [], []
    for r in spec.runs:
        if only and not only.intersection(r.grids):
            continue
        if models and r.model not in models:
            continue
        if is_done(r, spec.out_dir):
            done.append(r)
        elif state.get(r.name).get("failures", 0) >= max_attempts:
            failed.append(r)
        else:
            pending.append(r)
    return Plan(done, pending, failed)


# ---------------------------------------------------------------- commands

def _option_args(opts: dict[str, Any], backend: str) -> list[str]:
    args: list[str] = []
    for key, value in sorted(opts.items()):
        flag = OPTION_FLAGS[key]
        if isinstance(value, bool):
            if value:
                args.append(flag)
        elif value is not None:
            args += [flag, str(value)]
    return args


def runner_script(backend: str) -> Path:
    return Path(__file__).resolve().parent / ("hf_pytorch.py" if backend == "hf" else "trtllm.py")


def batches(spec: Spec, runs: list[Run]) -> list[list[Run]]:
    """Runs that one process can do: hf runs of one model and options share a loaded model,
    except under nsys (one report per process) and for trtllm (one engine run per command)."""
    if spec.backend != "hf":
        return [[r] for r in runs]
    groups: dict[tuple[Any, ...], list[Run]] = {}
    out = []
    for r in runs:
        if r.profiler == "nsys":
            out.append([r])
        else:
            groups.setdefault((r.model, r.options), []).append(r)
    return list(groups.values()) + out


def command(spec: Spec, group: list[Run], runner: list[str], cells_file: Path | None) -> list[str]:
    first = group[0]
    cmd = [*runner, "--model", first.model, "--out-dir", str(spec.out_dir), *_option_args(first.opts, spec.backend)]
    if cells_file is not None:
        return cmd + ["--cells", str(cells_file)]
    return cmd + ["--batch", str(first.batch), "--input-len", str(first.input_len),
                  "--output-len", str(first.output_len)]


def execute(spec: Spec, runs: list[Run], runner: list[str] | None = None, max_attempts: int = 2,
            echo: Callable[[str], None] = print, dry_run: bool = False) -> tuple[int, int]:
    """Run pending runs; returns (done, failed). Each group's outcome is judged from the files."""
    runner = runner or [sys.executable, str(runner_script(spec.backend))]
    if not dry_run:
        spec.out_dir.mkdir(parents=True, exist_ok=True)
        state = State(spec.out_dir, spec.name)
        for stale in spec.out_dir.glob(".cells-*.json"):  # left by a sweep that was killed
            stale.unlink()
    n_done = n_failed = 0
    for group in batches(spec, runs):
        names = [r.name for r in group]
        cells_file = None
        if len(group) > 1 or (spec.backend == "hf" and group[0].profiler != "nsys"):
            cells = [{"batch": r.batch, "input_len": r.input_len, "output_len": r.output_len} for r in group]
            if dry_run:  # nothing is written in a dry run: show the cells instead of a file
                echo(shlex.join(command(spec, group, runner, Path("CELLS.json"))))
                echo(f"  CELLS.json = {json.dumps(cells)}")
                continue
            fd, tmp = tempfile.mkstemp(prefix=".cells-", suffix=".json", dir=spec.out_dir)
            with os.fdopen(fd, "w") as f:
                json.dump(cells, f)
            cells_file = Path(tmp)
        cmd = command(spec, group, runner, cells_file)
        if dry_run:
            echo(shlex.join(cmd))
            continue
        clean_partial(spec.out_dir, names)
        state.mark(names, "running")
        echo(f"sweep: {len(group)} run(s): {', '.join(names[:4])}{' ...' if len(names) > 4 else ''}")
        try:
            rc = subprocess.run(cmd).returncode
        finally:
            if cells_file:
                cells_file.unlink(missing_ok=True)
        for r in group:
            if is_done(r, spec.out_dir):
                state.mark([r.name], "done")
                n_done += 1
            else:
                state.mark([r.name], "failed", f"runner exit status {rc}")
                n_failed += 1
    return n_done, n_failed


# ---------------------------------------------------------------- command line

def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`--set key=value`: values parsed as TOML scalars (1, true, "x"), bare words as strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or key not in OPTION_FLAGS:
            raise SpecError(f"--set {item}: expected KEY=VALUE with KEY one of {', '.join(sorted(OPTION_FLAGS))}")
        try:
            out[key] = tomllib.loads(f"v = {value}")["v"]
        except tomllib.TOMLDecodeError:
            out[key] = value
    return out


def build_parser(prog: str = "sweep.py"):
    import argparse

    p = argparse.ArgumentParser(prog=prog, description="Run a capture sweep spec (TOML); skips runs already done.")
    p.add_argument("spec", help="sweep spec (TOML), e.g. tracekit/capture/sweeps/study.toml")
    p.add_argument("--out-dir", default=None, help="where traces and manifests go (default: the spec's out_dir)")
    p.add_argument("--grid", action="append", default=[], help="only runs of this grid (repeatable)")
    p.add_argument("--models", default="", help="only these models, comma-separated")
    p.add_argument("--outputs", default="", help="only these output lengths, comma-separated")
    p.add_argument("--max-attempts", type=int, default=2, help="give up on a run after this many failed attempts")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a runner option for this invocation (e.g. iterations=0); run names do not change")
    p.add_argument("--dry-run", action="store_true", help="print the plan and the runner commands; run nothing")
    p.add_argument("--runner", default=None,
                   help="python script used in place of the backend's runner (same arguments)")
    return p


def main(argv: list[str] | None = None, prog: str = "sweep.py") -> int:
    args = build_parser(prog).parse_args(argv)
    try:
        spec = load_spec(args.spec, args.out_dir)
    except SpecError as exc:
        print(f"tracekit: error: {exc}", file=sys.stderr)
        return 1
    try:
        overrides = parse_overrides(args.set)
    except SpecError as exc:
        print(f"tracekit: error: {exc}", file=sys.stderr)
        return 2
    if overrides:
        spec.runs = [Run(**{**r.__dict__, "options": tuple(sorted({**r.opts, **overrides}.items()))})
                     for r in spec.runs]
    models = [m for m in args.models.split(",") if m]
    if args.outputs:
        keep = {int(x) for x in args.outputs.split(",") if x}
        spec.runs = [r for r in spec.runs if r.output_len in keep]
    pl = plan(spec, args.max_attempts, args.grid, models)
    print(f"sweep {spec.name}: {len(pl.done)} done, {len(pl.pending)} to run, "
          f"{len(pl.skipped_failed)} given up after {args.max_attempts} attempts; out: {spec.out_dir}", flush=True)
    runner = [sys.executable, args.runner] if args.runner else None
    n_done, n_failed = execute(spec, pl.pending, runner, args.max_attempts, dry_run=args.dry_run,
                               echo=lambda s: print(s, flush=True))
    if not args.dry_run:
        print(f"sweep {spec.name}: {n_done} run(s) completed, {n_failed} failed", flush=True)
    return 1 if n_failed else 0


if __name__ == "__main__":
    sys.exit(main())
