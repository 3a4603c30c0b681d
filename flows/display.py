"""Printing results on the terminal: tables as rich tables, CSV or JSON."""

from __future__ import annotations

import csv
import io
import json
import sys
from typing import Any

import pyarrow as pa


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, float | int | str | bool) or value is None:
        return value
    return str(value)  # timestamps, decimals, uuids


def cell_text(value: Any) -> str:
    """One value as text: lists and structs as JSON, NULL as empty."""
    if value is None:
        return ""
    if isinstance(value, dict | list | tuple):
        return json.dumps(_jsonable(value), ensure_ascii=False)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)


def render_json(table: pa.Table) -> str:
    return json.dumps([_jsonable(r) for r in table.to_pylist()], ensure_ascii=False, indent=1)


def render_csv(table: pa.Table) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.to_pylist():
        writer.writerow([cell_text(v) for v in row.values()])
    return out.getvalue()


def table_cell(value: Any, width: int = 80) -> str:
    if value is None:
        return "NULL"
    text = f"{value:.4g}" if isinstance(value, float) else cell_text(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def print_table(table: pa.Table, fmt: str = "table") -> None:
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
    return table_cell(value)
