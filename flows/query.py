"""Read-only SQL over the corpus, and the manifest export the trainer reads."""

from __future__ import annotations

import os
import uuid

import duckdb
import pyarrow as pa
from songmill.data_schema.store import Corpus

READ_ONLY_STATEMENTS = {duckdb.StatementType.SELECT, duckdb.StatementType.EXPLAIN}
# DuckDB's default row-group size: large groups keep scans fast and files small.
MANIFEST_ROW_GROUP_SIZE = 122_880


class QueryRefused(ValueError):
    pass


def read_only_connection(corpus: Corpus) -> duckdb.DuckDBPyConnection:
    con = corpus.connect()
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET lock_configuration = true")
    return con


def run_query(corpus: Corpus, sql: str) -> pa.Table:
    """Run SELECT / EXPLAIN statements; anything that could write is refused before it runs."""
    con = read_only_connection(corpus)
    try:
        try:
            statements = con.extract_statements(sql)
        except duckdb.Error as exc:
            raise QueryRefused(f"cannot parse query: {exc}") from None
        if not statements:
            raise QueryRefused("empty query")
        for statement in statements:
            if statement.type not in READ_ONLY_STATEMENTS:
                kind = statement.type.name
                raise QueryRefused(
                    f"`songmill query` is read-only: a {kind} statement is not allowed "
                    "(corpus tables change only through ingest / annotate / reprocess)."
                )
        for statement in statements[:-1]:
            con.execute(statement).fetchall()
        return con.sql(statements[-1].query).to_arrow_table()
    finally:
        con.close()


def export_manifest(corpus: Corpus, out: str, where: str | None = None) -> int:
    """Write the joined manifest rows (optionally filtered) to one Parquet file, atomically."""
    con = read_only_connection(corpus)
    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = os.path.join(os.path.dirname(out), f".tmp-{uuid.uuid4().hex}-{os.path.basename(out)}")
    clause = f"WHERE ({where})" if where else ""
    try:
        n = con.execute(f"SELECT count(*) FROM manifest {clause}").fetchone()[0]
        con.execute(
            f"COPY (SELECT * FROM manifest {clause} ORDER BY track_id) TO '{tmp}' "
            f"(FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {MANIFEST_ROW_GROUP_SIZE})"
        )
        os.replace(tmp, out)
    finally:
        con.close()
        if os.path.exists(tmp):
            os.remove(tmp)
    return int(n)
