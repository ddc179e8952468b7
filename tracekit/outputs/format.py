"""Printing result frames for the terminal or for other programs, and making strings from traces
safe to show: on a terminal (no control sequences) and in CSV files (no spreadsheet formulas)."""

from __future__ import annotations

import re
import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import duckdb
    import polars as pl

FORMATS = ("table", "csv", "json", "markdown")

# Wide enough that polars never wraps a cell over several lines: a long kernel or file name on
# one line reads (and greps) better than a column squeezed to fit the terminal.
_WIDE = 65_535  # polars keeps the table width in a u16

# C0 and C1 control characters, DEL, and the Unicode bidirectional overrides and isolates (they
# reorder what a terminal shows): a kernel name or metadata value can hold any of them.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
# The same but tab, newline and carriage return, which CSV quotes as data.
_CSV_CONTROL = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u200e\u200f\u202a-\u202e\u2066-\u2069]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}
# What a spreadsheet takes as the start of a formula (=HYPERLINK(...), +cmd|..., -2+3, @SUM):
# OWASP's list, tab and carriage return included.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_CSV_NEEDS = _CSV_CONTROL.pattern + "|^[=+@\t\r-]"


def _escape(m: re.Match) -> str:
    c = m.group(0)
    if c in _NAMED:
        return _NAMED[c]
    return f"\\x{ord(c):02x}" if ord(c) < 0x100 else f"\\u{ord(c):04x}"


def terminal_safe(text: str) -> str:
    """`text` with every control character shown as an escape (ESC -> \\x1b, newline -> \\n), so
    that a string from a trace can neither move the cursor nor recolour or retitle a terminal."""
    return _CONTROL.sub(_escape, text)


def csv_safe(text: str) -> str:
    """One CSV cell's text that a spreadsheet shows as text: a leading = + - @ (or tab/CR) gets a
    `'` before it, as OWASP advises, and control characters other than tab, newline and carriage
    return are escaped as in terminal_safe. The CSV writer still does the quoting."""
    text = _CSV_CONTROL.sub(_escape, text)
    return "'" + text if text.startswith(FORMULA_START) else text


def _strings_mapped(df: pl.DataFrame, fn, needs: str) -> pl.DataFrame:
    """`fn` applied to the column names and to every string cell of a column where some cell
    matches the regex `needs` (checked in polars first: most columns need nothing)."""
    import polars as pl

    df = df.rename({c: fn(c) for c in df.columns if fn(c) != c})
    cols = [name for name, dtype in df.schema.items()
            if dtype == pl.String and df.get_column(name).str.contains(needs).any()]
    if not cols:
        return df
    return df.with_columns(pl.col(c).map_elements(fn, return_dtype=pl.String) for c in cols)


def print_frame(df: pl.DataFrame, fmt: str = "table") -> None:
    """Print `df` as an aligned table, CSV, JSON (a list of row objects) or a Markdown table.

    Tables (and Markdown) show control characters escaped; CSV cells are csv_safe; JSON is
    written as JSON escapes it (control characters as \\u00XX)."""
    # polars is imported only to print: the CLI modules that import this one load for every command.
    import polars as pl

    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r} (expected one of {', '.join(FORMATS)})")
    out = sys.stdout
    if fmt == "csv":
        out.write(_strings_mapped(df, csv_safe, _CSV_NEEDS).write_csv())
    elif fmt == "json":
        out.write(df.write_json() + "\n")
    else:
        # ASCII_MARKDOWN: polars 1.0 has no "MARKDOWN" (the same output in later releases).
        style = {"tbl_formatting": "ASCII_MARKDOWN"} if fmt == "markdown" else {}
        with pl.Config(tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                       tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=_WIDE, tbl_width_chars=_WIDE,
                       **style):
            out.write(str(_strings_mapped(df, terminal_safe, _CONTROL.pattern)) + "\n")


# DuckDB types every output format prints as they are (polars takes them from Arrow and prints
# them in all four formats). Every other type — timestamps (which may be 'infinity'), intervals,
# unions, maps, lists, structs, blobs, enums, UUIDs, bit strings, 128-bit unsigned integers — is
# shown as DuckDB's own text for it, the same in every format.
_PLAIN_TYPES = frozenset({
    "boolean", "tinyint", "smallint", "integer", "bigint", "utinyint", "usmallint", "uinteger",
    "ubigint", "float", "double", "varchar", "decimal", "hugeint",
})


def printable(rel: duckdb.DuckDBPyRelation) -> duckdb.DuckDBPyRelation:
    """`rel` with unique column names (a repeated name gets _2, _3, ...) and every column of a type
    outside _PLAIN_TYPES cast to VARCHAR, so that any result DuckDB gives prints in every format."""
    seen: dict[str, int] = {}
    names = []
    for name in rel.columns:
        n = seen.get(name, 0) + 1
        seen[name] = n
        unique = name if n == 1 else f"{name}_{n}"
        while unique in rel.columns and n > 1:
            n += 1
            unique = f"{name}_{n}"
        names.append(unique)
    exprs = []
    for i, (name, dtype) in enumerate(zip(names, rel.types, strict=True), start=1):
        quoted = '"' + name.replace('"', '""') + '"'
        col = f"#{i}" if dtype.id in _PLAIN_TYPES else f"CAST(#{i} AS VARCHAR)"
        exprs.append(f"{col} AS {quoted}")
    return rel.project(", ".join(exprs))
