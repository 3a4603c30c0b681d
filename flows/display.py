"""Printing results on the terminal: tables as rich tables, CSV or JSON."""

from __future__ import annotations

import sys

import pyarrow as pa


def print_table(table: pa.Table, fmt: str = "table") -> None:
    from songmill.flows.query import render_csv, render_json

    if fmt == "json":
        print(render_json(table))
    elif fmt == "csv":  # lists and structs as JSON text (pyarrow's CSV writer refuses them)
        sys.stdout.write(render_csv(table))
        sys.stdout.flush()
    else:
        from rich.console import Console
        from rich.table import Table
        from rich.text import Text

        # Text, not str: rich would read lyrics' `[verse]` / `[instrumental]` tags as markup.
        out = Table(show_lines=False)
        for name in table.column_names:
            out.add_column(Text(name), overflow="fold")
        for row in table.to_pylist():
            out.add_row(*[Text(_cell(v)) for v in row.values()])
        Console(width=max(120, Console().width)).print(out)
        print(f"({table.num_rows} rows)")


def _cell(value: object) -> str:
    from songmill.flows.query import table_cell

    return table_cell(value)
