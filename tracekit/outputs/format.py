"""Printing result frames for the terminal or for other programs."""

from __future__ import annotations

import sys

import polars as pl


def print_frame(df: pl.DataFrame, fmt: str = "table") -> None:
    out = sys.stdout
    if fmt == "csv":
        out.write(df.write_csv())
    elif fmt == "json":
        out.write(df.write_json() + "\n")
    elif fmt == "markdown":
        with pl.Config(tbl_formatting="MARKDOWN", tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True,
                       tbl_rows=-1, tbl_cols=-1, fmt_str_lengths=200, tbl_width_chars=10_000):
            out.write(str(df) + "\n")
    else:
        with pl.Config(tbl_rows=200, tbl_cols=-1, fmt_str_lengths=80, tbl_width_chars=200,
                       tbl_hide_column_data_types=True, tbl_hide_dataframe_shape=True):
            out.write(str(df) + "\n")
