"""tracekit benchmarks (issues 6 and 15): each goal as a group measured with its comparison in the
same run; raw figures go to bench/results.json (or --results FILE), read into bench/RESULTS.md.

    .venv/bin/python bench/run.py                 # make inputs if missing, run everything
    .venv/bin/python bench/run.py --only kineto   # one group: kineto, nsys, classify, views, jobs, scale, startup
    .venv/bin/python bench/run.py --only jobs --jobs 1,2,4,8 --jobs-files 16 --results other-machine.json

Every measurement runs in a fresh child process, so its peak RSS (from wait4) is its own and no
import or cache is shared between repeats; wall and CPU (user+sys) seconds are both recorded,
because this 2-core machine is shared and wall time varies with load (the 1-minute load average
is recorded with every measurement, and each group says when and on which host it ran). Inputs
are made by bench/make_inputs.py under bench/data/. Comparisons: HTA (holistictraceanalysis, from
a throwaway venv given by --hta-python), `nsys stats` (--nsys), `import -j 1` and
`dataset import --workers 1`, measured in the same run on the same files.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "bench" / "data"
PY = sys.executable
KINETO = DATA / "kineto_llama2-7b-32L_64steps.pt.trace.json.gz"
NSYS = DATA / "nsys_llama2-7b_x112.sqlite"
# Issue 15's large export (make_inputs.scale_nsys with 1120 copies); measured when present.
NSYS_BIG = DATA / "nsys_llama2-7b_x1120.sqlite"
JOBS_DIR = DATA / "jobs"


# ---------------------------------------------------------------- children (run in a fresh process)

def _child(name: str, args: list[str]) -> dict:
    sys.path.insert(0, str(ROOT))
    return CHILDREN[name](*args)


def c_gunzip(path: str, lib: str = "zlib") -> dict:
    """The file read and inflated whole: by the system zlib, or by zlib-ng (`lib` "zlib-ng"), the
    reader's own inflater."""
    if lib == "zlib-ng":
        from zlib_ng import zlib_ng as zlib
    else:
        import zlib

    t = time.perf_counter()
    raw = Path(path).read_bytes()
    out = zlib.decompress(raw, 16 + zlib.MAX_WBITS)
    return {"gunzip": time.perf_counter() - t, "bytes": len(out)}


def c_decode(path: str) -> dict:
    """The decode floor: gunzip, then msgspec into a minimal typed event struct, GC paused."""
    import gc
    import zlib

    import msgspec

    opt_str, opt_float = str | None, float | None
    ev = msgspec.defstruct("Ev", [("ph", opt_str, None), ("cat", opt_str, None), ("name", opt_str, None),
                                  ("ts", opt_float, None), ("dur", opt_float, None)], gc=False)
    tr_type = msgspec.defstruct("Tr", [("traceEvents", list[ev])], gc=False)

    t = time.perf_counter()
    out = zlib.decompress(Path(path).read_bytes(), 16 + zlib.MAX_WBITS)
    t1 = time.perf_counter()
    gc.disable()
    tr = msgspec.json.decode(out, type=tr_type)
    return {"gunzip": t1 - t, "decode": time.perf_counter() - t1, "events": len(tr.traceEvents)}


def c_read(path: str) -> dict:
    from tracekit.readers import read

    t = time.perf_counter()
    d = read(Path(path))
    return {"read": time.perf_counter() - t, "kernels": d.kernels.num_rows}


def c_stages(path: str, db: str) -> dict:
    """The importer's steps one by one, each timed (same calls as importer._parse/_store)."""
    from tracekit.enrich import stages
    from tracekit.enrich.links import link
    from tracekit.importer import file_hash
    from tracekit.readers import read
    from tracekit.store import connect, insert_run

    out: dict[str, float] = {}

    def peak(step: str) -> None:
        """Peak RSS so far (VmHWM) after each step: where the process's peak is reached. (Not
        reset per step: a reset would also lower the peak wait4 reports for the process.)"""
        try:
            status = dict(ln.split(":", 1) for ln in Path("/proc/self/status").read_text().splitlines())
            out[f"peak_mb {step}"] = int(status["VmHWM"].split()[0]) / 1024
        except (OSError, KeyError, ValueError):
            pass  # not Linux: no per-step peaks

    peak("imports")
    t = time.perf_counter()
    data = read(Path(path))
    out["read"] = time.perf_counter() - t
    peak("read")
    t = time.perf_counter()
    data = link(data)
    out["link"] = time.perf_counter() - t
    peak("link")
    h = file_hash(Path(path))
    con = connect(db)
    from tracekit.enrich.classify import classify, plan_kernel_follows
    from tracekit.enrich.rules import RuleSet
    from tracekit.store import refresh_rollups

    rules = RuleSet.load([])
    classified: list[int] = []

    def follows(con, run_id: int, kernels: str):
        classified.append(run_id)
        return plan_kernel_follows(con, run_id, kernels, rules)

    t = time.perf_counter()
    con.execute("BEGIN TRANSACTION")
    # As the importer does (importer._store/_enrich): stages planned and verdicts decided while the
    # kernel rows are written, then the rollups; classify only when insert_run could not.
    run_id = insert_run(con, data, source_path=path, content_hash=h, importer_version="bench", meta={},
                        stages=stages, follows=follows)
    out["insert+stages+classify"] = time.perf_counter() - t
    peak("insert+stages")
    t = time.perf_counter()
    refresh_rollups(con, [run_id])
    if not classified:
        classify(con, [run_id], rules)
    out["rollups"] = time.perf_counter() - t
    t = time.perf_counter()
    con.execute("COMMIT")
    out["commit"] = time.perf_counter() - t
    peak("classify+commit")
    out["kernels"] = data.kernels.num_rows
    return out


def c_sqlite_names(path: str) -> dict:
    import sqlite3

    t = time.perf_counter()
    con = sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True)
    rows = con.execute('SELECT k."start", k."end", k.correlationId, s.value FROM CUPTI_ACTIVITY_KIND_KERNEL k '
                       "JOIN StringIds s ON s.id = k.demangledName").fetchall()
    return {"sqlite3": time.perf_counter() - t, "rows": len(rows)}


def c_duckdb_names(path: str) -> dict:
    import duckdb

    ext = next(Path(p) for p in sys.path if (Path(p) / "duckdb_extension_sqlite_scanner").exists())
    ext_file = next((ext / "duckdb_extension_sqlite_scanner").rglob("*.duckdb_extension"))
    t = time.perf_counter()
    con = duckdb.connect()
    con.execute(f"LOAD '{ext_file}'")
    con.execute(f"ATTACH '{path}' AS n (TYPE sqlite, READ_ONLY)")
    tbl = con.execute('SELECT k."start", k."end", k.correlationId, s.value FROM n.CUPTI_ACTIVITY_KIND_KERNEL k '
                      "JOIN n.StringIds s ON s.id = k.demangledName").fetchnumpy()
    return {"duckdb_scanner": time.perf_counter() - t, "rows": len(tbl["value"]), "duckdb": duckdb.__version__}


def c_classify(db: str, mode: str) -> dict:
    """Re-classify every kernel. mode 'all-change': verdicts are cleared first (untimed), so every
    row is written, as after an edit that touches every kernel; 'one-rule': the verdicts of the
    rule that decides the most kernels are cleared, as after editing that one rule;
    'no-change': same rules again."""
    import duckdb

    from tracekit.enrich.classify import classify
    from tracekit.enrich.rules import RuleSet

    con = duckdb.connect(db)
    n = con.execute("SELECT count(*) FROM kernels").fetchone()[0]
    # Verdicts live per (run, kernel context) in kernel_verdicts; split-K reduces' per kernel.
    if mode == "all-change":
        con.execute("UPDATE kernel_verdicts SET category = NULL, rule_id = NULL, evidence = NULL")
        con.execute("UPDATE kernel_rows SET follow_category = NULL, follow_evidence = NULL")
    elif mode == "one-rule":
        con.execute("UPDATE kernel_verdicts SET category = NULL, rule_id = NULL, evidence = NULL WHERE rule_id = "
                    "(SELECT rule_id FROM kernels GROUP BY 1 ORDER BY count(*) DESC LIMIT 1)")
    # A rules edit meets a database at rest (imports commit and DuckDB checkpoints), not one
    # whose rows still carry the clearing UPDATE's versions.
    con.execute("CHECKPOINT")
    rules = RuleSet.load([])
    t = time.perf_counter()
    con.execute("BEGIN TRANSACTION")
    classify(con, None, rules)
    con.execute("COMMIT")
    return {"classify": time.perf_counter() - t, "kernels": n}


def c_views(db: str) -> dict:
    import tracekit

    out: dict[str, float] = {}
    t = time.perf_counter()
    d = tracekit.open(db, read_only=True)
    out["open"] = time.perf_counter() - t
    for view in ("stage_ratio", "composition"):
        t = time.perf_counter()
        tbl = d.arrow(f"SELECT * FROM {view}")
        out[view] = time.perf_counter() - t
        out[f"{view}_rows"] = tbl.num_rows
    out["runs"] = d.con.execute("SELECT count(*) FROM runs").fetchone()[0]
    return out


def c_views_per_kernel(db: str) -> dict:
    """The comparison for c_views, on the same database: stage_ratio and composition as they were
    defined before the per-run rollups (every kernel read through the `kernels` view; kept as the
    tests' oracle in tests/per_kernel_views.sql)."""
    import tracekit
    from tracekit.views import _with_partition

    out: dict[str, float] = {}
    t = time.perf_counter()
    d = tracekit.open(db, read_only=True)
    d.con.execute(_with_partition((ROOT / "tests" / "per_kernel_views.sql").read_text()))
    out["open"] = time.perf_counter() - t
    for view in ("stage_ratio", "composition"):
        t = time.perf_counter()
        tbl = d.arrow(f"SELECT * FROM {view}_oracle")
        out[view] = time.perf_counter() - t
        out[f"{view}_rows"] = tbl.num_rows
    return out


def c_build_runs(db: str, runs: str, only: str = "") -> dict:
    build_many_runs_db(Path(db), int(runs), tuple(only.split(",")) if only else None)
    return {}


def c_build_dataset(ds: str, runs: str) -> dict:
    return {"runs": build_many_runs_dataset(Path(ds), int(runs))}


def c_views_dataset(ds: str) -> dict:
    """As c_views, over the Parquet dataset: an in-memory DuckDB of views (tracekit.dataset)."""
    from tracekit.dataset import connect_dataset

    out: dict[str, float] = {}
    t = time.perf_counter()
    con = connect_dataset(ds)
    out["open"] = time.perf_counter() - t
    for view in ("stage_ratio", "composition"):
        t = time.perf_counter()
        tbl = con.sql(f"SELECT * FROM {view}").to_arrow_table()
        out[view] = time.perf_counter() - t
        out[f"{view}_rows"] = tbl.num_rows
    out["runs"] = con.execute("SELECT count(*) FROM runs").fetchone()[0]
    return out


def c_build_kernels(db: str, n: str) -> dict:
    return {"kernels": build_kernels_db(Path(db), int(n))}


def c_attach_copy(ds: str, db: str) -> dict:
    from tracekit.dataset import attach

    t = time.perf_counter()
    n = attach(ds, db)[1]
    return {"attach_copy": time.perf_counter() - t, "runs": n}


def c_dask_start(workers: str) -> dict:
    """What `dataset import --workers N` pays before the first file: a local Dask cluster of N
    worker processes started and stopped."""
    import logging

    import dask
    from dask.distributed import Client, LocalCluster

    t = time.perf_counter()
    with dask.config.set({"distributed.worker.profile.enabled": False}):  # as tracekit.dataset starts it
        cluster = LocalCluster(n_workers=int(workers), threads_per_worker=1, processes=True,
                               dashboard_address=None, silence_logs=logging.ERROR)
    client = Client(cluster)
    client.wait_for_workers(int(workers))
    up = time.perf_counter() - t
    client.close()
    cluster.close()
    return {"start": up, "start+stop": time.perf_counter() - t}


def c_machine() -> dict:
    return machine()


def _proc_cpu(pid: int) -> float | None:
    """CPU seconds (user+sys) a live process has used so far, from /proc/PID/stat."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def c_jobs_profile(db: str, jobs: str, *files: str) -> dict:
    """`import -j N` in this process, taken apart: the parent's CPU (hashing, unpickling, storing),
    each parser worker's CPU (read from /proc just before the pool shuts down), and the wall
    seconds the parent spent storing (from each file's "storing" phase to its result), i.e. the
    serial part that no number of workers shortens."""
    import resource
    from concurrent.futures import ProcessPoolExecutor

    import tracekit.importer as imp
    from tracekit.store import connect

    workers: dict[int, float | None] = {}

    class MeasuredPool(ProcessPoolExecutor):
        def shutdown(self, *a, **kw):  # the workers are still alive here: read their CPU
            for pid in list(getattr(self, "_processes", None) or {}):
                workers[pid] = _proc_cpu(pid)
            return super().shutdown(*a, **kw)

    imp.ProcessPoolExecutor = MeasuredPool  # bench only: the importer's own pool, measured
    paths = [Path(f) for f in files]
    t = time.perf_counter()
    for f in paths:
        imp.file_hash(f)
    hash_s = time.perf_counter() - t
    started: dict[str, float] = {}
    store = [0.0]

    def on_phase(path: str, phase: str) -> None:
        if phase == "storing":
            started[path] = time.perf_counter()

    def on_result(r) -> None:
        if r.path in started:
            store[0] += time.perf_counter() - started.pop(r.path)

    con = connect(db)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    t = time.perf_counter()
    results = imp.import_paths(con, paths, jobs=int(jobs), on_phase=on_phase, on_result=on_result)
    wall = time.perf_counter() - t
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    con.close()
    assert all(r.status == "imported" for r in results), [r.error for r in results]
    cpu = sorted(v for v in workers.values() if v is not None)
    return {"import_wall": wall, "parent_cpu": ru1.ru_utime + ru1.ru_stime - ru0.ru_utime - ru0.ru_stime,
            "parent_store_wall": store[0], "hash_all_files": hash_s, "workers": len(workers),
            "workers_cpu_sum": sum(cpu), "worker_cpu_min": cpu[0] if cpu else 0.0,
            "worker_cpu_max": cpu[-1] if cpu else 0.0, "files": len(paths)}


def c_pickle(path: str) -> dict:
    """What -j adds per file: the parsed TraceData pickled in the worker and unpickled in the parent."""
    import pickle

    from tracekit.importer import _parse

    data = _parse(Path(path), None)
    t = time.perf_counter()
    blob = pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)
    t1 = time.perf_counter()
    pickle.loads(blob)
    return {"dumps": t1 - t, "loads": time.perf_counter() - t1, "mb": len(blob) / 1e6}


CHILDREN = {
    "build_runs": c_build_runs, "build_dataset": c_build_dataset, "views_dataset": c_views_dataset,
    "attach_copy": c_attach_copy, "dask_start": c_dask_start,
    "build_kernels": c_build_kernels, "machine": c_machine, "jobs_profile": c_jobs_profile, "pickle": c_pickle,
    "gunzip": c_gunzip, "decode": c_decode, "read": c_read, "stages": c_stages,
    "sqlite_names": c_sqlite_names, "duckdb_names": c_duckdb_names, "classify": c_classify, "views": c_views, "views_per_kernel": c_views_per_kernel,
}

HTA_SCRIPT = """
import json, sys, time
t = time.perf_counter()
from hta.trace_analysis import TraceAnalysis
t1 = time.perf_counter()
a = TraceAnalysis(trace_dir=sys.argv[1])
df = a.t.get_trace(0)
print(json.dumps({"import": t1 - t, "load": time.perf_counter() - t1, "events": len(df)}))
"""


# ---------------------------------------------------------------- parent: spawn, measure, report

def spawn_rusage(cmd: list[str], env: dict | None = None, cwd: Path | None = None) -> dict:
    """spawn(), plus CPU seconds and peak RSS of the child (its largest process)."""
    t = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, cwd=cwd or ROOT)
    # Read pipes until EOF, then reap with wait4 to get this child's own rusage.
    out = p.stdout.read()
    err = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}): {err.decode()[-2000:]}")
    res: dict = {"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "rss_mb": ru.ru_maxrss / 1024}
    lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
    if lines:
        res.update(json.loads(lines[-1]))
    return res


def child_cmd(name: str, *args: str) -> list[str]:
    return [PY, str(Path(__file__)), "--child", name, *map(str, args)]


def repeat(label: str, cmd_fn, n: int, results: dict, prepare=None) -> dict:
    """Run cmd_fn() n times, each a fresh process: wall, CPU, peak RSS of each, and the 1-minute
    load average when each started (`load1`), so every figure carries the load it was taken at.
    The group's dict is stamped with when and where it was measured (the first measurement's)."""
    runs = []
    for _ in range(n):
        if prepare:
            prepare()
        load1 = os.getloadavg()[0]
        runs.append({**spawn_rusage(cmd_fn()), "load1": load1})
    return summarize(label, runs, results)


def summarize(label: str, runs: list[dict], results: dict) -> dict:
    """Store and print the figures of `runs` (spawn_rusage's, with load1) under `label`."""
    results.setdefault("when", time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    results.setdefault("host", host())
    keys = sorted({k for r in runs for k, v in r.items() if isinstance(v, (int, float))})
    summary = {k: [r[k] for r in runs if k in r] for k in keys}
    results[label] = summary
    wall = summary["wall"]
    print(f"  {label:<42} wall min {min(wall):6.2f}  med {statistics.median(wall):6.2f}  max {max(wall):6.2f}"
          f"  cpu med {statistics.median(summary['cpu']):6.2f}  rss max {max(summary['rss_mb']):6.0f} MB"
          f"  load {min(summary['load1']):.1f}-{max(summary['load1']):.1f}", flush=True)
    return summary


def nsys_for_stats(nsys: Path, tmp: Path) -> Path:
    """An nsys whose `stats` works. The install here pairs target-linux-x64/nsys with
    host-linux-x64/reports, whose python/lib lacks nsysstats.py (it sits in the target's python/lib),
    so every report fails with "No module named 'nsysstats'". A mirror of the install made of
    symlinks, plus that module linked in and the binary copied (it finds its tree from its own
    path), runs the stock reports unchanged."""
    root = nsys.resolve().parents[1]
    host_lib = root / "host-linux-x64" / "python" / "lib"
    target_lib = root / "target-linux-x64" / "python" / "lib"
    if (host_lib / "nsysstats.py").exists() or not (target_lib / "nsysstats.py").exists():
        return nsys
    mirror = tmp / "nsys"
    if not mirror.exists():
        mirror.mkdir()
        for part in ("host-linux-x64", "target-linux-x64"):
            subprocess.run(["cp", "-rs", str(root / part), str(mirror)], check=True)
        exe = mirror / nsys.resolve().relative_to(root)
        exe.unlink()
        shutil.copy2(nsys.resolve(), exe)
        for mod in ("nsysstats.py", "gpustats.py"):
            link = mirror / "host-linux-x64" / "python" / "lib" / mod
            if not link.exists():
                link.symlink_to(target_lib / mod)
    return mirror / nsys.resolve().relative_to(root)


def load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def cpu_model() -> str:
    return next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                 if ln.startswith("model name")), platform.processor())


def host() -> str:
    """Which machine a figure comes from: a figure is only comparable with others of the same host."""
    return f"{platform.node()}: {cpu_model()}, {os.cpu_count()} cores"


def machine() -> dict:
    cpu = cpu_model()
    mem = next((ln.split()[1] for ln in Path("/proc/meminfo").read_text().splitlines()
                if ln.startswith("MemTotal")), "0")
    import importlib.metadata as md

    versions = {}
    for pkg in ("duckdb", "pyarrow", "polars", "msgspec", "numpy", "dask", "distributed"):
        try:
            versions[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            versions[pkg] = None
    return {
        "cpu_model": cpu, "cores": os.cpu_count(), "cores_usable": len(os.sched_getaffinity(0)),
        "mem_gb": round(int(mem) / 1024**2, 1), "host": host(),
        "os": platform.platform(), "python": platform.python_version(), "versions": versions,
    }


def cli_import(paths: list[Path], db: Path, jobs: int = 1) -> list[str]:
    return [PY, "-m", "tracekit.outputs.cli", "import", *map(str, paths), "--db", str(db), "-j", str(jobs), "-q"]


def cli_dataset_import(paths: list[Path], ds: Path, workers: int) -> list[str]:
    return [PY, "-m", "tracekit.outputs.cli", "dataset", "import", *map(str, paths), "--to", str(ds),
            "--workers", str(workers), "-q"]


def fresh_dir(d: Path):
    def go() -> None:
        shutil.rmtree(d, ignore_errors=True)
    return go


def fresh(db: Path):
    def go() -> None:
        for suffix in ("", ".wal"):
            Path(str(db) + suffix).unlink(missing_ok=True)
    return go


def ensure_inputs(groups: set[str]) -> None:
    for kind, path in (("kineto", KINETO), ("nsys", NSYS)):
        if kind in groups and not path.exists():
            subprocess.run([PY, str(ROOT / "bench" / "make_inputs.py"), "--only", kind], check=True)


def kineto_scaled(spec: str) -> Path:
    """A scaled Kineto input "LAYERSxSTEPS" (made once, kept in bench/data/), or a path."""
    if "x" in spec and not Path(spec).exists():
        layers, steps = spec.split("x")
        path = DATA / f"kineto_llama2-7b-{layers}L_{steps}steps.pt.trace.json.gz"
        if not path.exists():
            subprocess.run([PY, str(ROOT / "bench" / "make_inputs.py"), "--only", "kineto", "--layers", layers,
                            "--steps", steps], check=True)
        return path
    return Path(spec)


def ensure_jobs_inputs(n: int) -> list[Path]:
    """n distinct files with the same content: a 32-layer x 16-step trace, each given one more
    empty gzip member so its content hash (and so its run) differs."""
    import gzip

    sys.path.insert(0, str(ROOT / "bench"))
    from make_inputs import KINETO_SRC, scale_kineto  # stdlib + msgspec only: the parent stays small

    JOBS_DIR.mkdir(parents=True, exist_ok=True)
    base = JOBS_DIR / "base.pt.trace.json.gz"
    if not base.exists():
        scale_kineto(KINETO_SRC, base, 32, 16)
    files = []
    for i in range(n):
        f = JOBS_DIR / f"copy{i:02d}.pt.trace.json.gz"
        if not f.exists():
            shutil.copy(base, f)
            with f.open("ab") as out:
                out.write(gzip.compress(b" " * (i + 1)))
        files.append(f)
    return files


def build_many_runs_db(db: Path, runs: int, only: tuple[str, ...] | None = None) -> None:
    """A database with `runs` runs: the four shared fixtures imported, then every table's rows
    copied with new run_ids (and content hashes) until there are `runs` runs."""
    import duckdb

    sys.path.insert(0, str(ROOT))
    import tracekit

    fresh(db)()
    shared = sorted((ROOT / "fixtures" / "shared").glob("*.sqlite")) + sorted(
        (ROOT / "fixtures" / "shared").glob("*.json.gz"))
    d = tracekit.open(db)
    d.import_paths(shared)
    d.close()
    con = duckdb.connect(str(db))
    base = con.execute("SELECT count(*), max(run_id) FROM runs").fetchone()
    n0, top = base
    tables = [r[0] for r in con.execute(
        "SELECT DISTINCT table_name FROM duckdb_columns() WHERE column_name = 'run_id' AND NOT internal "
        "AND database_name = current_database() AND table_name IN (SELECT table_name FROM duckdb_tables())"
    ).fetchall()]
    if only:
        tables = [t for t in tables if t in only]
    copies = -(-runs // n0) - 1
    con.execute("BEGIN TRANSACTION")
    for t in tables:
        cols = [r[0] for r in con.execute(
            "SELECT column_name FROM duckdb_columns() WHERE table_name = ? AND database_name = current_database() "
            "ORDER BY column_index", [t]).fetchall()]
        sel = ", ".join(
            f"x.run_id + k.k * {top} AS run_id" if c == "run_id"
            else "x.content_hash || '-' || k.k" if c == "content_hash" else f"x.{c}"
            for c in cols)
        con.execute(f"INSERT INTO {t} SELECT {sel} FROM {t} x, range(1, {copies + 1}) k(k) "
                    f"WHERE x.run_id <= {top}")
    for t in tables:
        con.execute(f"DELETE FROM {t} WHERE run_id > {runs}")
    con.execute("COMMIT")
    con.close()


def build_many_runs_dataset(ds: Path, runs: int) -> int:
    """A Parquet dataset with `runs` runs: the four shared fixtures imported (tracekit.dataset,
    in process), then the tables the stage_ratio / composition views read (runs, kernels, passes)
    copied under new run keys, one directory per run as an import writes them. The other tables
    have no files: the dataset's views stand in empty ones for them."""
    import duckdb

    sys.path.insert(0, str(ROOT))
    from tracekit.dataset import RUN_DIR_PREFIX, import_to_dataset

    shutil.rmtree(ds, ignore_errors=True)
    shared = sorted((ROOT / "fixtures" / "shared").glob("*.sqlite")) + sorted(
        (ROOT / "fixtures" / "shared").glob("*.json.gz"))
    assert all(r.status == "imported" for r in import_to_dataset(shared, ds))
    con = duckdb.connect()
    staging = ds.parent / (ds.name + ".staging")
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    base = sorted(ds.glob(f"{RUN_DIR_PREFIX}*"))
    keys = ", ".join(f"('{d.name.split('=', 1)[1]}', {b})" for b, d in enumerate(base))
    con.execute(f"CREATE TABLE base(run_key VARCHAR, b BIGINT); INSERT INTO base VALUES {keys}")
    for t in ("runs", "kernels", "passes", "kernel_sums", "stage_spans"):
        src = ", ".join(f"'{d / (t + '.parquet')}'" for d in base)
        # copy i is of base run i % 4, under key printf('%013x', i): distinct, and its run_id is that number
        hashes = ", x.content_hash || '-' || k.i AS content_hash" if t == "runs" else ""
        con.execute(
            f"COPY (SELECT x.* EXCLUDE (run_key, b) REPLACE (k.i AS run_id{hashes}), printf('%013x', k.i) AS run_key "
            f"FROM (SELECT * FROM read_parquet([{src}], hive_partitioning = true, hive_types = {{'run_key': VARCHAR}}) "
            f"JOIN base USING (run_key)) x JOIN (SELECT i, i % {len(base)} AS b FROM range({runs}) r(i)) k USING (b)) "
            f"TO '{staging / t}' (FORMAT parquet, PARTITION_BY (run_key), COMPRESSION zstd)")
    for d in base:
        shutil.rmtree(d)
    for part in sorted((staging / "runs").iterdir()):
        final = ds / part.name
        final.mkdir()
        for t in ("runs", "kernels", "passes", "kernel_sums", "stage_spans"):
            files = list((staging / t / part.name).glob("*.parquet"))
            if files:
                os.rename(files[0], final / f"{t}.parquet")
    shutil.rmtree(staging)
    return len(list(ds.glob(f"{RUN_DIR_PREFIX}*")))


def build_kernels_db(db: Path, n_kernels: int) -> int:
    """A database holding about n_kernels kernels: the shared fixtures' runs, kernel rows, verdict
    rows and ops (what classification reads) copied under new run_ids."""
    build_many_runs_db(db, 4)
    import duckdb

    con = duckdb.connect(str(db))
    per = con.execute("SELECT count(*) FROM kernels").fetchone()[0]
    runs = max(4, round(n_kernels / per * 4))
    con.close()
    build_many_runs_db(db, runs, only=("runs", "kernel_rows", "kernel_verdicts", "ops", "kernel_totals",
                                       "follow_totals", "kernel_sums", "stage_spans"))
    con = duckdb.connect(str(db))
    n = con.execute("SELECT count(*) FROM kernels").fetchone()[0]
    con.close()
    return n


def repeat_tracekit(trace: Path, db: Path, n: int, g: dict) -> None:
    """tracekit's own figures for one input: the reader alone, the importer's steps, the CLI."""
    repeat("tracekit reader only", lambda: child_cmd("read", trace), n, g)
    repeat("tracekit stages (read/link/insert/...)", lambda: child_cmd("stages", trace, db), n, g,
           prepare=fresh(db))
    repeat("tracekit import (CLI, end to end)", lambda: cli_import([trace], db), n, g, prepare=fresh(db))


def startup_group(base: str, n: int, tmp: Path, g: dict) -> None:
    """The fixed cost of every invocation on a tiny trace (the 944-kernel nsys fixture): import into
    a new database, into one that holds a run already, and `stages` on that database; the same
    commands with the code of git revision `base`, alternating with this tree's run by run (so both
    see the same load), and a bare `python -c "import duckdb, pyarrow"`, the floor under any of
    them. Python writes bytecode caches here (as an installed package has them), one warm-up run
    of each tree first."""
    trace = ROOT / "fixtures" / "h100" / "gemma-7b-2L_b1_i32_o8.sqlite"
    other = ROOT / "fixtures" / "h100" / "gemma-2b-2L_b8_i64_o8.sqlite"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    base_dir = tmp / "startup-base"
    base_dir.mkdir()
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", base], check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(base_dir)], input=archive, check=True)
    g["base"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", base], check=True,
                               capture_output=True, text=True).stdout.strip()
    cli = [PY, "-m", "tracekit.outputs.cli"]
    sides = {"this tree": ROOT, f"base {base}": base_dir}
    cases = []
    for side, cwd in sides.items():
        new, held, template = (tmp / f"{cwd.name}-{x}.duckdb" for x in ("new", "held", "template"))
        for db in (new, held, template):
            db.unlink(missing_ok=True)
        # The held database: one run imported by this side's code; each import into it starts from a copy.
        spawn_rusage([*cli, "import", "-q", str(other), "--db", str(template)], env=env, cwd=cwd)
        spawn_rusage([*cli, "stages", "--db", str(template)], env=env, cwd=cwd)  # warm-up: bytecode written
        cases += [
            (f"{side}: import into a new database", [*cli, "import", "-q", str(trace), "--db", str(new)], cwd,
             fresh(new)),
            (f"{side}: import into a database with a run", [*cli, "import", "-q", str(trace), "--db", str(held)],
             cwd, lambda t=template, h=held: (fresh(h)(), shutil.copy(t, h))),
            (f"{side}: stages on that database", [*cli, "stages", "--db", str(template)], cwd, None),
        ]
    cases.append(("python -c 'import duckdb, pyarrow' (floor)", [PY, "-c", "import duckdb, pyarrow"], ROOT, None))
    runs: dict[str, list[dict]] = {label: [] for label, *_ in cases}
    for _ in range(n):
        for label, cmd, cwd, prepare in cases:
            if prepare:
                prepare()
            load1 = os.getloadavg()[0]
            runs[label].append({**spawn_rusage(cmd, env=env, cwd=cwd), "load1": load1})
    for label, measured in runs.items():
        summarize(label, measured, g)


def int_list(v: str) -> list[int]:
    return [int(x) for x in v.split(",") if x.strip()]


def main() -> None:
    ap = argparse.ArgumentParser(description="tracekit benchmarks")
    ap.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--only", action="append",
                    choices=["kineto", "nsys", "classify", "views", "jobs", "scale", "startup"])
    ap.add_argument("--scale-runs", type=lambda v: [int(x) for x in v.split(",")], default=[1_000, 10_000],
                    help="run counts for the views-over-many-runs figures (store, dataset, dataset copy)")
    ap.add_argument("--hta-python", default=os.environ.get("HTA_PYTHON", ""),
                    help="python of a throwaway venv with holistictraceanalysis installed")
    ap.add_argument("--hta-repeat", type=int, default=2)
    ap.add_argument("--kineto-scaled", default="",
                    help="kineto group: also import these larger inputs once each, for peak RSS against size "
                         "(comma-separated LAYERSxSTEPS specs for make_inputs, e.g. 32x640 = 2.27 GB, or paths)")
    ap.add_argument("--duckdb-sqlite-python", default=os.environ.get("DUCKDB_SQLITE_PYTHON", ""),
                    help="python of a throwaway venv with duckdb + duckdb-extension-sqlite-scanner of one version")
    ap.add_argument("--classify-kernels", type=lambda v: [int(x) for x in v.split(",")],
                    default=[1_000_000, 10_000_000], help="kernel counts for the re-classification runs")
    ap.add_argument("--nsys", default=os.environ.get("NSYS") or shutil.which("nsys") or "",
                    help="nsys binary for the `nsys stats` comparison")
    ap.add_argument("--jobs", type=int_list, default=[1, 2],
                    help="-j values for the jobs group (each on the same files, in the same run; '' for none)")
    ap.add_argument("--dataset-workers", type=int_list, default=[1, 2],
                    help="jobs group: `dataset import --workers N` values ('' for none)")
    ap.add_argument("--jobs-files", type=int, default=8, help="files the jobs group imports")
    ap.add_argument("--startup-base", default="main",
                    help="startup group: the git revision whose code the same commands are compared with")
    ap.add_argument("--results", type=Path, default=ROOT / "bench" / "results.json",
                    help="where the figures go (merged by group; use another file for another machine)")
    args = ap.parse_args()
    if args.child:
        print(json.dumps(_child(args.child[0], args.child[1:])))
        return
    groups = set(args.only or ["kineto", "nsys", "classify", "views", "jobs", "scale", "startup"])
    if groups & {"kineto", "nsys"}:
        ensure_inputs(groups)
    results: dict = json.loads(args.results.read_text()) if args.results.exists() else {}
    # The parent stays small: a forked child's peak RSS (wait4) counts the parent's RSS at fork,
    # so everything heavy, building databases included, happens in children.
    results["machine"] = spawn_rusage(child_cmd("machine"))
    for k in ("wall", "cpu", "rss_mb"):
        results["machine"].pop(k, None)
    res = results.setdefault("figures", {})
    n = args.repeat
    tmp = Path(tempfile.mkdtemp(prefix="tracekit-bench-"))
    db = tmp / "bench.duckdb"
    results["load_before"] = load()
    print(f"machine: {results['machine']['cpu_model']}, {results['machine']['cores']} cores; load {load()}")
    try:
        if "kineto" in groups:
            print(f"kineto: {KINETO.name} ({KINETO.stat().st_size / 1e6:.1f} MB gz)")
            res["kineto"] = {"load": load()}
            g = res["kineto"]
            repeat("gunzip (zlib)", lambda: child_cmd("gunzip", KINETO), n, g)
            repeat("gunzip (zlib-ng, the reader's)", lambda: child_cmd("gunzip", KINETO, "zlib-ng"), n, g)
            repeat("gunzip + msgspec minimal decode (floor)", lambda: child_cmd("decode", KINETO), n, g)
            repeat_tracekit(KINETO, db, n, g)
            if args.hta_python and Path(args.hta_python).exists():
                hta_dir = tmp / "hta"
                hta_dir.mkdir(exist_ok=True)
                link = hta_dir / KINETO.name
                if not link.exists():
                    os.symlink(KINETO, link)
                repeat("HTA 0.5.0 TraceAnalysis (load)", lambda: [args.hta_python, "-c", HTA_SCRIPT, str(hta_dir)],
                       args.hta_repeat, g)
            # Memory against trace size: the same pipeline on larger scaled traces, once each.
            for spec in filter(None, args.kineto_scaled.split(",")):
                big = kineto_scaled(spec)
                sg = g.setdefault("scaled", {}).setdefault(big.name, {"gz_mb": big.stat().st_size / 1e6,
                                                                      "load": load()})
                print(f"  {big.name} ({big.stat().st_size / 1e6:.0f} MB gz)")
                repeat("tracekit stages (read/link/insert/...)", lambda b=big: child_cmd("stages", b, db), 1, sg,
                       prepare=fresh(db))
                repeat("tracekit import (CLI, end to end)", lambda b=big: cli_import([b], db), 1, sg,
                       prepare=fresh(db))
                # The comparison for the reader's helper process (readers/kineto.py _Helper): the
                # same import decoded by one process. Peak RSS is the larger process's (wait4),
                # so the helper's own (~100-150 MB) is not in the first figure.
                repeat("tracekit import (CLI, one decoding process)",
                       lambda b=big: ["env", "TRACEKIT_KINETO_HELPER=0", *cli_import([b], db)], 1, sg,
                       prepare=fresh(db))
                sg["load_after"] = load()
            g["load_after"] = load()
        if "nsys" in groups:
            print(f"nsys: {NSYS.name} ({NSYS.stat().st_size / 1e6:.1f} MB)")
            res["nsys"] = {"load": load()}
            g = res["nsys"]
            repeat("sqlite3: kernels with names", lambda: child_cmd("sqlite_names", NSYS), n, g)
            if args.duckdb_sqlite_python and Path(args.duckdb_sqlite_python).exists():
                repeat("duckdb sqlite scanner: kernels with names",
                       lambda: [args.duckdb_sqlite_python, str(Path(__file__)), "--child", "duckdb_names", str(NSYS)],
                       n, g)
            repeat_tracekit(NSYS, db, n, g)
            if args.nsys and Path(args.nsys).exists():
                out = tmp / "nsys_stats"
                nsys = nsys_for_stats(Path(args.nsys), tmp)

                def stats_cmd() -> list[str]:
                    shutil.rmtree(out, ignore_errors=True)
                    out.mkdir()
                    return [str(nsys), "stats", "--report", "cuda_gpu_kern_sum", "--format", "csv", "--output",
                            str(out / "r"), "--force-overwrite", "true", str(NSYS)]

                repeat("nsys stats --report cuda_gpu_kern_sum", stats_cmd, n, g)
                # nsys exits 0 even when a report fails: count what it wrote.
                rows = (out / "r_cuda_gpu_kern_sum.csv").read_text().count("\n") - 1
                g["nsys stats --report cuda_gpu_kern_sum"]["csv_rows"] = [rows]
                print(f"    nsys stats wrote {rows} kernel-name rows")
            if NSYS_BIG.exists():
                # Issue 15: 3.75M kernels / 10.4M runtime calls <= 10 s, <= 1.5 GB. Once each: ~30 s.
                print(f"nsys: {NSYS_BIG.name} ({NSYS_BIG.stat().st_size / 1e6:.1f} MB); load {load()}")
                big = res.setdefault("nsys_big", {"load": load()})
                # The reader alone: its CPU and its own peak, apart from the store's.
                repeat("tracekit reader only", lambda: child_cmd("read", NSYS_BIG), 1, big)
                repeat("tracekit stages (read/link/insert/...)", lambda: child_cmd("stages", NSYS_BIG, db), 1, big,
                       prepare=fresh(db))
                repeat("tracekit import (CLI, end to end)", lambda: cli_import([NSYS_BIG], db), 1, big,
                       prepare=fresh(db))
                big["load_after"] = load()
            g["load_after"] = load()
        if "classify" in groups:
            res["classify"] = {"load": load()}
            for size in args.classify_kernels:
                big = tmp / f"kernels{size}.duckdb"
                t = time.perf_counter()
                nk = spawn_rusage(child_cmd("build_kernels", big, size))["kernels"]
                print(f"classify: {nk:,} kernels (db built in {time.perf_counter() - t:.0f}s)")
                reps = n
                try:
                    for mode in ("all-change", "one-rule", "no-change"):
                        repeat(f"re-classify {nk:,} kernels ({mode})", lambda m=mode, b=big: child_cmd("classify", b, m),
                               reps, res["classify"])
                except RuntimeError as exc:
                    res["classify"][f"error {size}"] = str(exc)[-500:]
                    print("  classify failed:", str(exc)[-300:])
                big.unlink(missing_ok=True)
        if "views" in groups:
            many = tmp / "runs1000.duckdb"
            spawn_rusage(child_cmd("build_runs", many, 1000))
            print("views: 1,000 runs")
            res["views"] = {"load": load()}
            repeat("stage_ratio + composition over 1,000 runs", lambda: child_cmd("views", many), n, res["views"])
            repeat("per-kernel views (before the rollups) over 1,000 runs", lambda: child_cmd("views_per_kernel", many),
                   n, res["views"])
        if "jobs" in groups:
            # Goal "import throughput scales with cores (-j N), measured at 1 and 2": the same
            # files at each -j in this run; the comparison is -j 1. The serial part (the parent
            # hashes, unpickles and stores every file, one writer) is measured on its own
            # (jobs_profile), and so is the per-file pickling a worker adds (pickle).
            files = ensure_jobs_inputs(args.jobs_files)
            print(f"jobs: {len(files)} files of {files[0].stat().st_size / 1e6:.1f} MB gz; -j {args.jobs}")
            g = res["jobs"] = {"load": load(), "files": len(files), "jobs": args.jobs,
                               "usable_cores": len(os.sched_getaffinity(0))}
            for j in args.jobs:
                repeat(f"import {len(files)} files --jobs {j}", lambda j=j: cli_import(files, db, j), n, g,
                       prepare=fresh(db))
            for j in args.jobs:
                repeat(f"profile: import {len(files)} files --jobs {j} (in process)",
                       lambda j=j: child_cmd("jobs_profile", db, j, *files), 1, g, prepare=fresh(db))
            # One file's steps (the same calls as the importer): read+link is what workers take
            # off the parent; insert+stages, classify and commit stay in it.
            repeat("one file's steps (read/link | insert+stages/classify/commit)",
                   lambda: child_cmd("stages", files[0], db), n, g, prepare=fresh(db))
            if args.jobs:
                repeat("pickle one parsed file (dumps + loads)", lambda: child_cmd("pickle", files[0]), n, g)
            # The same files into the Parquet dataset: in this process (1), then local Dask
            # clusters of N worker processes, whose start-up is measured on its own.
            ds = tmp / "jobs_ds"
            for w in args.dataset_workers:
                repeat(f"dataset import {len(files)} files --workers {w}",
                       lambda w=w: cli_dataset_import(files, ds, w), n, g, prepare=fresh_dir(ds))
            for w in (w for w in args.dataset_workers if w > 1):
                repeat(f"local Dask cluster of {w} workers: start (+stop)", lambda w=w: child_cmd("dask_start", w), n, g)
            g["load_after"] = load()
        if "startup" in groups:
            print(f"startup: the 944-kernel nsys fixture, this tree vs {args.startup_base}; load {load()}")
            g = res["startup"] = {"load": load()}
            startup_group(args.startup_base, n, tmp, g)
            g["load_after"] = load()
        if "scale" in groups:
            # Views over many runs: the DuckDB store; the Parquet dataset read live; its copy.
            res["scale"] = {"load": load(), "when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
            g = res["scale"]
            for runs in args.scale_runs:
                label = f"{runs:,} runs"
                store = tmp / f"store{runs}.duckdb"
                t = time.perf_counter()
                spawn_rusage(child_cmd("build_runs", store, runs, "runs,run_meta,kernel_rows,kernel_verdicts,passes,kernel_totals,follow_totals,kernel_sums,stage_spans"))
                print(f"scale: store of {label} built in {time.perf_counter() - t:.0f}s; load {load()}")
                repeat(f"store: stage_ratio + composition, {label}", lambda s=store: child_cmd("views", s), n, g)
                repeat(f"store, per-kernel views (before the rollups): stage_ratio + composition, {label}",
                       lambda s=store: child_cmd("views_per_kernel", s), n, g)
                store.unlink()
                ds = tmp / f"ds{runs}"
                t = time.perf_counter()
                spawn_rusage(child_cmd("build_dataset", ds, runs))
                print(f"scale: dataset of {label} built in {time.perf_counter() - t:.0f}s; load {load()}")
                live = 1 if runs > 1000 else n  # each live query opens every run's files: slow, run once
                repeat(f"dataset views: stage_ratio + composition, {label}", lambda d=ds: child_cmd("views_dataset", d),
                       live, g)
                copy = tmp / f"copy{runs}.duckdb"
                repeat(f"dataset attach (copy), {label}", lambda d=ds, c=copy: child_cmd("attach_copy", d, c), 1, g,
                       prepare=fresh(copy))
                repeat(f"dataset copy: stage_ratio + composition, {label}", lambda c=copy: child_cmd("views", c), n, g)
                copy.unlink()
                shutil.rmtree(ds)
            g["load_after"] = load()
    finally:
        # Written even when a group fails or is interrupted (Ctrl-C, `timeout -s INT`): what was
        # measured before stays, each group with its own load and time stamps.
        shutil.rmtree(tmp, ignore_errors=True)
        results["load_after"] = load()
        results["when"] = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
        args.results.write_text(json.dumps(results, indent=1))
        print(f"wrote {args.results}")


if __name__ == "__main__":
    main()
