"""Read-only SQL over the corpus catalog: `songmill query`, and the `--where` conditions of
annotate, reprocess and the manifest export.

The read-only guard rests on DuckDB itself: the parser (`extract_statements`, and
`json_serialize_sql`, which serialises only SELECT statements) admits exactly one SELECT, or an
EXPLAIN of one without ANALYZE (EXPLAIN ANALYZE runs its statement); the connection then runs
with external access off except for the corpus folder (no reading or writing other files, no
ATTACH, INSTALL or LOAD), and its configuration locked so the query cannot turn that back on.
"""

from __future__ import annotations

import json

import duckdb
import pyarrow as pa
from songmill.data_schema.store import Corpus
from songmill.data_schema.views import literal


class QueryRefused(ValueError):
    pass


class QueryFailed(ValueError):
    """The query is allowed but DuckDB could not run it (unknown column, type error...)."""


def read_only_connection(corpus: Corpus) -> duckdb.DuckDBPyConnection:
    """The corpus views on a connection that cannot reach any file outside the corpus."""
    con = corpus.connect()
    con.execute("SET autoinstall_known_extensions = false")
    con.execute("SET autoload_known_extensions = false")
    if corpus.is_local:
        # The views read the corpus folder; nothing else is reachable. (fsspec corpora are read
        # through a registered filesystem that this setting would block: there the parser
        # checks below are the guard.)
        con.execute(f"SET allowed_directories = [{literal(corpus.path.rstrip('/') + '/')}]")
        con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _is_plain_select(con: duckdb.DuckDBPyConnection, sql: str) -> bool:
    result = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
    return not result.get("error") and len(result.get("statements", [])) == 1


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """The one statement of `sql` if it only reads; raises QueryRefused otherwise."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"cannot parse query: {first_line(exc)}") from None
    if not statements:
        raise QueryRefused("empty query")
    if len(statements) > 1:
        raise QueryRefused(
            f"`songmill query` is read-only and runs one statement; got {len(statements)}"
        )
    statement = statements[0]
    text = statement.query
    if statement.type == duckdb.StatementType.EXPLAIN:
        tokens = duckdb.tokenize(text)
        words = [
            text[start:end].strip().upper()
            for (start, _), (end, _) in zip(tokens, [*tokens[1:], (len(text), None)], strict=True)
        ]
        if len(words) > 1 and words[1] == "ANALYZE":
            raise QueryRefused(
                "`songmill query` is read-only: EXPLAIN ANALYZE runs its statement; use EXPLAIN"
            )
        inner = text[tokens[1][0] :] if len(tokens) > 1 else ""
        if not _is_plain_select(con, inner):
            raise QueryRefused("`songmill query` is read-only: EXPLAIN only of a SELECT")
        return text
    if statement.type != duckdb.StatementType.SELECT or not _is_plain_select(con, text):
        raise QueryRefused(
            f"`songmill query` is read-only: a {statement.type.name} statement is not allowed "
            "(corpus tables change only through ingest / annotate / reprocess)."
        )
    return text


def first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def error_with_hints(exc: BaseException) -> str:
    """DuckDB's message on one line with its hint lines (`Did you mean "music"?`, candidate
    bindings), without the `LINE 1:` excerpt of the query that follows them."""
    lines = []
    for line in str(exc).strip().splitlines():
        if not line.strip() or line.startswith("LINE "):
            break
        lines.append(line.strip())
    return " ".join(lines) or type(exc).__name__


def run_query(corpus: Corpus, sql: str) -> pa.Table:
    """Run one SELECT (or EXPLAIN of one); anything that could write is refused before it runs."""
    con = read_only_connection(corpus)
    try:
        statement = check_read_only(con, sql)
        try:
            return con.sql(statement).to_arrow_table()
        except duckdb.PermissionException as exc:
            raise QueryRefused(
                f"`songmill query` reads only the corpus: {first_line(exc)}"
            ) from None
        except duckdb.Error as exc:
            raise QueryFailed(error_with_hints(exc)) from None
    finally:
        con.close()
