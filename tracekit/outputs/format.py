"""Printing result frames for the terminal or for other programs."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import polars as pl

FORMATS = ("table", "csv", "json", "markdown")

# Wide enough that polars never wraps a cell over several lines: a long kernel or file name on
# one line reads (and greps) better than a column squeezed to fit the terminal.
_WIDE = 65_535  # polars keeps the table width in a u16


def print_frame(df: pl.DataFrame, fmt: str = "table") -> None:
    """Print `df` as an aligned table, CSV, JSON (a list of row objects) or a Markdown table."""
    # polars is imported only to print: the CLI modules that import this one load for every command.
    import polars as pl

    out = sys.stdout
    if fmt == "csv":
        out.write(df.write_csv())
    elif fmt == "json":
        out.write(df.write_json() + "\n")
    elif fmt in ("table", "markdown"):
        style = {"tbl_formatting": "MARKDOWN"} if fmt == "markdown" else {}
        with pl.Config(tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                       tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=_WIDE, tbl_width_chars=_WIDE,
                       **style):
            out.write(str(df) + "\n")
    else:
        raise ValueError(f"unknown output format {fmt!r} (expected one of {', '.join(FORMATS)})")
