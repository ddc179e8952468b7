"""What every reader returns: the canonical tables of one trace, as Arrow, before a run_id exists."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa
import pycxxfilt

# Column order and types of each table as the store expects them (run_id is added on insert;
# enrich columns such as kernels.category are filled later, so readers never produce them).
KERNEL_SCHEMA = pa.schema([
    ("kernel_id", pa.int64()), ("name", pa.string()), ("short_name", pa.string()),
    ("start_ns", pa.int64()), ("end_ns", pa.int64()), ("dur_ns", pa.int64()),
    ("device", pa.int32()), ("context", pa.int64()), ("stream", pa.int64()),
    ("correlation", pa.int64()), ("pid", pa.int64()),
    ("grid_x", pa.int32()), ("grid_y", pa.int32()), ("grid_z", pa.int32()),
    ("block_x", pa.int32()), ("block_y", pa.int32()), ("block_z", pa.int32()),
    ("registers", pa.int32()), ("shared_static", pa.int64()), ("shared_dynamic", pa.int64()),
    ("graph_node_id", pa.int64()),
])
# Short name of a CUDA graph traced whole (nsys --cuda-graph-trace=graph): one kernel-like row per
# graph execution, its kernels unknown (readers/nsys_sqlite.py). Stage attribution and the views
# (composition: bucket 'CUDA graph (whole)') recognise those rows by it.
WHOLE_GRAPH_SHORT_NAME = "CUDA graph (whole)"
LAUNCH_SCHEMA = pa.schema([
    ("launch_id", pa.int64()), ("name", pa.string()), ("kind", pa.string()),
    ("start_ns", pa.int64()), ("end_ns", pa.int64()), ("dur_ns", pa.int64()),
    ("pid", pa.int64()), ("tid", pa.int64()), ("correlation", pa.int64()),
])
RANGE_SCHEMA = pa.schema([
    ("range_id", pa.int64()), ("name", pa.string()), ("kind", pa.string()), ("domain", pa.string()),
    ("start_ns", pa.int64()), ("end_ns", pa.int64()), ("dur_ns", pa.int64()),
    ("pid", pa.int64()), ("tid", pa.int64()),
])
OP_SCHEMA = pa.schema([
    ("op_id", pa.int64()), ("name", pa.string()), ("source", pa.string()),
    ("start_ns", pa.int64()), ("end_ns", pa.int64()), ("dur_ns", pa.int64()),
    ("pid", pa.int64()), ("tid", pa.int64()), ("external_id", pa.int64()),
    ("input_dims", pa.string()), ("input_types", pa.string()),
])
MEMOP_SCHEMA = pa.schema([
    ("memop_id", pa.int64()), ("kind", pa.string()), ("name", pa.string()),
    ("start_ns", pa.int64()), ("end_ns", pa.int64()), ("dur_ns", pa.int64()),
    ("bytes", pa.int64()), ("device", pa.int32()), ("stream", pa.int64()),
    ("correlation", pa.int64()), ("copy_kind", pa.string()),
])

SCHEMAS = {
    "kernels": KERNEL_SCHEMA, "launches": LAUNCH_SCHEMA, "ranges": RANGE_SCHEMA,
    "ops": OP_SCHEMA, "memops": MEMOP_SCHEMA,
}


def empty(table: str) -> pa.Table:
    return SCHEMAS[table].empty_table()


@dataclass
class TraceData:
    """One trace in canonical shape. Tables follow SCHEMAS; missing ones are empty."""

    format: str
    kernels: pa.Table
    launches: pa.Table = field(default_factory=lambda: empty("launches"))
    ranges: pa.Table = field(default_factory=lambda: empty("ranges"))
    ops: pa.Table = field(default_factory=lambda: empty("ops"))
    memops: pa.Table = field(default_factory=lambda: empty("memops"))
    gpu_name: str | None = None
    tool_versions: dict[str, str] = field(default_factory=dict)
    trace_meta: dict[str, object] = field(default_factory=dict)
    # Metadata key=values found in the trace (e.g. Kineto add_metadata_json) for run_meta.
    found_meta: dict[str, str] = field(default_factory=dict)
    absent: list[str] = field(default_factory=list)

    def table(self, name: str) -> pa.Table:
        return getattr(self, name)


def to_table(columns: dict[str, list], schema: pa.Schema) -> pa.Table:
    """Build a table from column lists, filling columns the reader does not know with nulls."""
    n = len(next(iter(columns.values()))) if columns else 0
    arrays = []
    for f in schema:
        col = columns.get(f.name)
        arrays.append(pa.nulls(n, f.type) if col is None else pa.array(col, type=f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def demangle(name: str) -> str:
    """An Itanium-mangled C++/HIP name (`_Z...`, as ROCm traces and some Kineto traces give
    them) demangled; any other name as it is.

    LLVM's demangler (pycxxfilt, built into the wheel) rather than the machine's libstdc++
    `__cxa_demangle` (cxxfilt): the result must not depend on the machine, and the GCC 12
    libstdc++ tried here fails on `DF16b` (std::bfloat16_t) in aiter / ck_tile kernels, which
    LLVM's demangler reads, as it reads the C++20 `Tn` template parameters of SGLang's HIP kernels.
    """
    if not name.startswith("_Z"):
        return name
    try:
        return pycxxfilt.itanium_demangle(name) or name
    except ValueError:  # starts like a mangled name but is not one
        return name


def short_name(demangled: str) -> str:
    """The bare function name of a demangled C++ kernel name, as nsys's shortName gives it.

    `void at::native::vectorized_gather_kernel<16, long>(char*, ...)` -> `vectorized_gather_kernel`.
    Template and call arguments may themselves contain `::`, so the name is cut at the first `<`
    or `(` (after dropping anonymous namespaces) before taking the last `::` component. A name
    still mangled (`_ZN5aiter24add_rmsnorm_quant_kernelI...`) is demangled first.
    """
    demangled = demangle(demangled)
    s = demangled.strip().replace("(anonymous namespace)::", "").replace("<unnamed>::", "")
    if s.startswith("void "):
        s = s[5:]
    cut = min((i for i in (s.find("<"), s.find("(")) if i >= 0), default=len(s))
    head = s[:cut].strip()
    # Return types other than void ("int foo<...>") leave a space-separated prefix.
    head = head.rsplit(" ", 1)[-1]
    return head.rsplit("::", 1)[-1] or demangled


def libc_function(name: str) -> Callable[..., int] | None:
    """A function of the C library (glibc's malloc_trim, Linux's prctl), or None where the
    process has none of that name. Looked up among the symbols the process has loaded, libc's
    among them: ctypes.util.find_library would run `ldconfig -p` in a subprocess (~10 ms) to
    name the same library."""
    import ctypes

    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError, TypeError):  # not there (TypeError: Windows has no CDLL(None))
        return None


def give_back_memory() -> None:
    """Return freed buffers to the OS. Otherwise glibc (many small ones, in its heap) and Arrow's
    allocator keep them, and what is allocated next (the next column, DuckDB's insert) stacks on
    top of them instead of reusing them."""
    pa.default_memory_pool().release_unused()
    global _malloc_trim
    if _malloc_trim is None:
        _malloc_trim = libc_function("malloc_trim") or False  # not glibc: nothing to trim
    if _malloc_trim:
        _malloc_trim(0)


_malloc_trim = None  # libc's malloc_trim once looked up; False where there is none
