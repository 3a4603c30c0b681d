"""Printing results on the terminal: tables as rich tables, CSV or JSON.

A table wider than the terminal is shown one record per block (psql's expanded display), and
long lists (beats, sections, embeddings) are abbreviated to their first items and their length.
"""

from __future__ import annotations

import csv
import io
import json
import shutil
import sys
import textwrap
from typing import Any

import pyarrow as pa

# In a pipe there is no terminal to measure: lay out for this many columns (or $COLUMNS).
FALLBACK_WIDTH = 120
LIST_ITEMS_SHOWN = 4
CELL_WIDTH = 60  # a value longer than this is cut in the grid (the expanded display folds it)
EXPANDED_VALUE_LINES = 6


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


def terminal_width() -> int:
    return shutil.get_terminal_size((FALLBACK_WIDTH, 24)).columns


def print_table(table: pa.Table, fmt: str = "table", width: int | None = None) -> None:
    if fmt == "json":
        print(render_json(table))
    elif fmt == "csv":  # lists and structs as JSON text (pyarrow's CSV writer refuses them)
        sys.stdout.write(render_csv(table))
        sys.stdout.flush()
    else:
        width = width or terminal_width()
        rows = [[display_value(v) for v in row.values()] for row in table.to_pylist()]
        if _grid_width(table.column_names, rows) <= width:
            _print_grid(table.column_names, rows, width)
        else:
            sys.stdout.write(expanded_text(table.column_names, rows, width))
        print(f"({table.num_rows} row{'' if table.num_rows == 1 else 's'})")


def _grid_width(names: list[str], rows: list[list[str]]) -> int:
    """The width a rich grid needs to show every column without folding (border + padding)."""
    total = 1
    for i, name in enumerate(names):
        widest = max([len(name)] + [min(len(r[i]), CELL_WIDTH) for r in rows])
        total += widest + 3
    return total


def _print_grid(names: list[str], rows: list[list[str]], width: int) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    # Text, not str: rich would read lyrics' `[verse]` / `[instrumental]` tags as markup.
    out = Table(show_lines=False)
    for name in names:
        out.add_column(Text(name), overflow="fold")
    for row in rows:
        out.add_row(*[Text(_cut(v, CELL_WIDTH)) for v in row])

    class _PipeAwareConsole(Console):
        def on_broken_pipe(self) -> None:
            # rich's own answer is SystemExit(1); the CLI treats a closed pipe as a quiet 0
            raise BrokenPipeError

    _PipeAwareConsole(width=width, file=sys.stdout, soft_wrap=False).print(out)


def expanded_text(names: list[str], rows: list[list[str]], width: int) -> str:
    """One block per record, `name | value` per line, values folded to the terminal width."""
    key_width = max((len(n) for n in names), default=0)
    value_width = max(20, width - key_width - 3)
    lines = []
    for number, row in enumerate(rows, 1):
        header = f"-[ RECORD {number} ]"
        lines.append(header + "-" * max(0, min(width, key_width + 3 + value_width) - len(header)))
        for name, value in zip(names, row, strict=True):
            folded = textwrap.wrap(
                value.replace("\n", " / "),
                value_width,
                break_long_words=True,
                break_on_hyphens=False,
            ) or [""]
            if len(folded) > EXPANDED_VALUE_LINES:
                folded = folded[:EXPANDED_VALUE_LINES]
                folded[-1] = _cut(folded[-1] + " ...", value_width)
            lines.append(f"{name:<{key_width}} | {folded[0]}")
            lines += [f"{'':<{key_width}} | {more}" for more in folded[1:]]
    return "\n".join(lines) + "\n"


def display_value(value: Any) -> str:
    """One value as a person reads it: NULL, short floats, long lists cut to their first items."""
    if value is None:
        return "NULL"
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, list | tuple | dict):
        return _compact(value)
    if isinstance(value, bytes):
        return value.hex() if len(value) <= 16 else f"{value[:16].hex()}... ({len(value)} bytes)"
    return str(value)


def _float(value: float) -> str:
    return f"{value:.1f}" if abs(value) >= 1000 else f"{value:.4g}"


def _compact(value: Any) -> str:
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_compact(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        shown = ", ".join(_compact(v) for v in value[:LIST_ITEMS_SHOWN])
        if len(value) > LIST_ITEMS_SHOWN:
            return f"[{shown}, ... ({len(value)} items)]"
        return f"[{shown}]"
    if isinstance(value, float):
        return _float(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    return "null" if value is None else str(value)


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
