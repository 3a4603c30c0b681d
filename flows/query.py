"""Read-only SQL over the corpus, its rendering, and the manifest export the trainer reads.

The read-only guard rests on DuckDB itself: the parser (`extract_statements`, and
`json_serialize_sql`, which serialises only SELECT statements) admits exactly one SELECT, or an
EXPLAIN of one without ANALYZE (EXPLAIN ANALYZE runs its statement); the connection then runs
with external access off except for the corpus folder (no reading or writing other files, no
ATTACH, INSTALL or LOAD), and its configuration locked so the query cannot turn that back on.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

import duckdb
import pyarrow as pa
from songmill.data_schema.store import Corpus, utcnow

# DuckDB's default row-group size: large groups keep scans fast and files small.
MANIFEST_ROW_GROUP_SIZE = 122_880


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
        con.execute(f"SET allowed_directories = [{_literal(corpus.path.rstrip('/') + '/')}]")
        con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _is_plain_select(con: duckdb.DuckDBPyConnection, sql: str) -> bool:
    result = json.loads(con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()[0][0])
    return not result.get("error") and len(result.get("statements", [])) == 1


def check_read_only(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """The one statement of `sql` if it only reads; raises QueryRefused otherwise."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as exc:
        raise QueryRefused(f"cannot parse query: {_first_line(exc)}") from None
    if not statements:
        raise QueryRefused("empty query")
    if len(statements) > 1:
        raise QueryRefused(f"`songmill query` is read-only and runs one statement; got {len(statements)}")
    statement = statements[0]
    text = statement.query
    if statement.type == duckdb.StatementType.EXPLAIN:
        tokens = duckdb.tokenize(text)
        words = [text[start:end].strip().upper() for (start, _), (end, _) in zip(tokens, [*tokens[1:], (len(text), None)], strict=True)]
        if len(words) > 1 and words[1] == "ANALYZE":
            raise QueryRefused("`songmill query` is read-only: EXPLAIN ANALYZE runs its statement; use EXPLAIN")
        inner = text[tokens[1][0]:] if len(tokens) > 1 else ""
        if not _is_plain_select(con, inner):
            raise QueryRefused("`songmill query` is read-only: EXPLAIN only of a SELECT")
        return text
    if statement.type != duckdb.StatementType.SELECT or not _is_plain_select(con, text):
        raise QueryRefused(
            f"`songmill query` is read-only: a {statement.type.name} statement is not allowed "
            "(corpus tables change only through ingest / annotate / reprocess)."
        )
    return text


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def run_query(corpus: Corpus, sql: str) -> pa.Table:
    """Run one SELECT (or EXPLAIN of one); anything that could write is refused before it runs."""
    con = read_only_connection(corpus)
    try:
        statement = check_read_only(con, sql)
        try:
            return con.sql(statement).to_arrow_table()
        except duckdb.PermissionException as exc:
            raise QueryRefused(f"`songmill query` reads only the corpus: {_first_line(exc)}") from None
        except duckdb.Error as exc:
            raise QueryFailed(_first_line(exc)) from None
    finally:
        con.close()


# -- rendering ------------------------------------------------------------------------------------
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


# -- manifest -------------------------------------------------------------------------------------
SIDECAR_SUFFIX = ".json"
MANIFEST_META_KEY = "songmill.manifest"


class ManifestError(ValueError):
    pass


@dataclass
class ManifestResult:
    rows: int
    out: str
    sidecar: str
    splits: dict[str, int] = field(default_factory=dict)


def parse_split(text: str | None) -> list[tuple[str, float]]:
    """`val=0.02,test=0.01` -> [("val", 0.02), ("test", 0.01)]; the rest is `train`."""
    if not text:
        return []
    out = []
    for item in text.split(","):
        name, _, share = item.partition("=")
        try:
            value = float(share)
        except ValueError:
            raise ManifestError(f"--split wants NAME=SHARE[,NAME=SHARE...], got {item!r}") from None
        if not name.strip() or not 0 < value < 1 or name.strip() == "train":
            raise ManifestError(f"--split {item!r}: a name other than train and a share in (0, 1)")
        out.append((name.strip(), value))
    if sum(v for _, v in out) >= 1:
        raise ManifestError("--split shares must sum to less than 1 (the rest is train)")
    return out


def export_columns(available: list[str], columns: str | None) -> list[str]:
    """The columns an export writes. Default: every manifest column but the tables' bulk
    columns (beat lists: most of a manifest's bytes and read by no trainer); `all`: every one;
    otherwise a comma-separated list (track_id always first)."""
    from songmill.data_schema.tables import TABLES

    if columns is None or columns.strip() == "default":
        bulk = {c for spec in TABLES.values() for c in spec.bulk_columns}
        return [c for c in available if c not in bulk]
    if columns.strip() == "all":
        return list(available)
    wanted = [c.strip() for c in columns.split(",") if c.strip()]
    unknown = [c for c in wanted if c not in available]
    if not wanted:
        raise ManifestError("--columns: empty list (default, all, or a comma-separated list of manifest columns)")
    if unknown:
        raise ManifestError(f"--columns: the manifest has no column {', '.join(map(repr, unknown))}")
    return ["track_id", *dict.fromkeys(c for c in wanted if c != "track_id")]


def manifest_sql(available: list[str], where: str | None, split: list[tuple[str, float]], seed: int, columns: list[str] | None = None) -> str:
    """The export query. A split hashes the duplicate cluster (the track itself when it has
    none) with the seed, so every member of a cluster lands on the same side."""
    from songmill.data_schema.views import quote

    clause = f"WHERE ({where})" if where else ""
    select = ", ".join(quote(c) for c in columns) if columns is not None else "*"
    if not split:
        return f"SELECT {select} FROM manifest {clause} ORDER BY track_id"
    group = "coalesce(dup_cluster, track_id)" if "dup_cluster" in available else "track_id"
    unit = f"('0x' || substr(md5({_literal(str(seed) + ':')} || {group}), 1, 12))::UBIGINT / 281474976710656.0"
    cases, edge = [], 0.0
    for name, share in split:
        edge += share
        cases.append(f"WHEN _u < {edge!r} THEN {_literal(name)}")
    return (
        f"SELECT * EXCLUDE (_u), CASE {' '.join(cases)} ELSE 'train' END AS split "
        f"FROM (SELECT {select}, {unit} AS _u FROM manifest {clause}) ORDER BY track_id"
    )


def corpus_state(con: duckdb.DuckDBPyConnection, corpus: Corpus) -> dict[str, Any]:
    """What the export was cut from: per table the newest row time and the row count, and the
    files (so `--reproduce` can rebuild the views as of then, and say when it cannot)."""
    from songmill.data_schema.tables import TABLES
    from songmill.data_schema.views import quote, time_column

    tables = {}
    for name, spec in TABLES.items():
        files = corpus.table_files(name)
        if not files.raw:
            continue
        column = time_column(spec)
        newest, rows = con.execute(f"SELECT max({quote(column)})::VARCHAR, count(*) FROM raw_{name}").fetchall()[0] if column else (None, None)
        names = [os.path.basename(p) for p in ((files.snapshot,) if files.snapshot else ()) + files.raw]
        tables[name] = {"as_of": newest, "raw_rows": rows, "files": names}
    blob = json.dumps(tables, sort_keys=True).encode()
    return {"state_id": hashlib.sha256(blob).hexdigest()[:16], "tables": tables}


def _ids_digest(path: str) -> str:
    """sha256 of the file's track ids in file order, joined by newlines (in DuckDB: a Python
    list of 600 k ids costs most of a second)."""
    with duckdb.connect(":memory:") as con:
        return con.execute(
            "SELECT sha256(coalesce(string_agg(track_id, chr(10) ORDER BY file_row_number), '')) "
            "FROM read_parquet(?, file_row_number = true)", [path]
        ).fetchall()[0][0]


def _copy(con: duckdb.DuckDBPyConnection, sql: str, out: str, meta: dict[str, Any]) -> str:
    """The query's rows to one Parquet file through a temporary file and an atomic rename.

    Streamed through Arrow into pyarrow's writer, a row group a batch, in bounded memory: for the
    manifest's beat lists that is ~1.5x faster than DuckDB's COPY ... TO (2.45 s against 1.6 s
    for 120 k rows, benchmarks/bench_corpus_scale.py measures the whole export)."""
    import pyarrow.parquet as pq

    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    tmp = os.path.join(os.path.dirname(out), f".tmp-{uuid.uuid4().hex}-{os.path.basename(out)}")
    try:
        reader = con.sql(sql).to_arrow_reader(MANIFEST_ROW_GROUP_SIZE)
        schema = reader.schema.with_metadata({MANIFEST_META_KEY: json.dumps(meta)})
        with pq.ParquetWriter(tmp, schema, compression="zstd") as writer:
            for batch in reader:
                writer.write_batch(batch, row_group_size=MANIFEST_ROW_GROUP_SIZE)
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return out


def _export_connection(corpus: Corpus) -> duckdb.DuckDBPyConnection:
    con = corpus.connect()
    con.execute("SET preserve_insertion_order = false")
    return con


def write_manifest(
    corpus: Corpus, out: str, where: str | None = None, split: str | None = None, seed: int = 0, columns: str | None = None
) -> ManifestResult:
    """Write the manifest rows (optionally filtered, optionally with a `split` column) to one
    Parquet file atomically, with what it was cut from in its metadata and a sidecar JSON.
    `columns`: see `export_columns` (default: all but the beat lists)."""
    splits = parse_split(split)
    con = _export_connection(corpus)
    try:
        if where:
            check_where(con, where)
        available = [row[0] for row in con.execute("DESCRIBE manifest").fetchall()]
        chosen = export_columns(available, columns)
        sql = manifest_sql(available, where, splits, seed, None if chosen == available else chosen)
        state = corpus_state(con, corpus)
        meta = {
            "sql": sql, "where": where, "split": split, "seed": seed, "columns": columns or "default",
            "songmill_version": _version(), "schema_version": corpus.schema_version,
            "corpus": corpus.root, "corpus_state": state, "created_at": utcnow().isoformat(),
        }
        try:
            path = _copy(con, sql, out, {k: v for k, v in meta.items() if k != "corpus_state"} | {"state_id": state["state_id"]})
        except duckdb.Error as exc:
            raise ManifestError(f"manifest query failed: {_first_line(exc)}") from None
        counts = dict(con.execute(f"SELECT {'split' if splits else chr(39) + 'all' + chr(39)}, count(*) FROM read_parquet({_literal(path)}) GROUP BY ALL").fetchall())
    finally:
        con.close()
    meta |= {"rows": int(sum(counts.values())), "splits": counts, "track_ids_sha256": _ids_digest(path), "out": path}
    sidecar = _write_sidecar(path, meta)
    return ManifestResult(int(sum(counts.values())), path, sidecar, counts if splits else {})


def _write_sidecar(path: str, meta: dict[str, Any]) -> str:
    sidecar = path + SIDECAR_SUFFIX
    tmp = f"{sidecar}.tmp-{uuid.uuid4().hex}"
    with open(tmp, "w") as f:
        json.dump(meta, f, indent=1, default=str)
    os.replace(tmp, sidecar)
    return sidecar


def check_where(con: duckdb.DuckDBPyConnection, where: str) -> None:
    """A --where condition is one expression over the manifest, nothing else."""
    try:
        check_read_only(con, f"SELECT 1 FROM manifest WHERE ({where})")
    except QueryRefused as exc:
        raise ManifestError(f"--where {where!r} is not one SQL condition: {exc}") from None


def reproduce_manifest(corpus: Corpus, sidecar: str, out: str) -> ManifestResult:
    """Write the rows a sidecar describes again: the views are rebuilt as of the recorded row
    times (compaction keeps every raw row in history files), and the result is checked against
    the recorded track ids."""
    try:
        with open(sidecar) as f:
            meta = json.load(f)
        tables = meta["corpus_state"]["tables"]
        sql = meta["sql"]
    except (OSError, ValueError, KeyError) as exc:
        raise ManifestError(f"cannot read manifest sidecar {sidecar}: {exc}") from None
    import duckdb as _duckdb
    from songmill.data_schema.tables import TABLES
    from songmill.data_schema.views import create_views

    as_of = {name: (tables[name]["as_of"] if name in tables and tables[name]["as_of"] else "-infinity") for name in TABLES}
    con = _duckdb.connect(":memory:")
    try:
        if not corpus.is_local:
            con.register_filesystem(corpus.fs)
        create_views(con, {name: corpus.table_files(name) for name in TABLES}, as_of=as_of)
        for name, state in tables.items():
            if state.get("raw_rows") is None or name not in TABLES:
                continue
            rows = con.execute(f"SELECT count(*) FROM raw_{name}").fetchall()[0][0]
            if rows != state["raw_rows"]:
                raise ManifestError(
                    f"cannot reproduce {sidecar}: table {name} now has {rows} rows dated up to "
                    f"{state['as_of']}, the manifest was cut from {state['raw_rows']} (rows were removed, "
                    "or written late with earlier timestamps)"
                )
        path = _copy(con, sql, out, {k: v for k, v in meta.items() if k not in ("corpus_state", "out")} | {"reproduced_from": os.path.abspath(sidecar)})
        counts = dict(con.execute(f"SELECT {'split' if meta.get('split') else chr(39) + 'all' + chr(39)}, count(*) FROM read_parquet({_literal(path)}) GROUP BY ALL").fetchall())
    finally:
        con.close()
    if _ids_digest(path) != meta.get("track_ids_sha256"):
        os.remove(path)
        raise ManifestError(f"cannot reproduce {sidecar}: the rows differ from the recorded ones")
    # the same description (it reproduces again), saying where it came from
    written = _write_sidecar(path, meta | {"out": path, "reproduced_from": os.path.abspath(sidecar), "reproduced_at": utcnow().isoformat()})
    return ManifestResult(int(sum(counts.values())), path, written, counts if meta.get("split") else {})


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("songmill")
    except PackageNotFoundError:
        return "unknown"


def export_manifest(
    corpus: Corpus, out: str, where: str | None = None, split: str | None = None, seed: int = 0, reproduce: str | None = None,
    columns: str | None = None,
) -> int:
    """Write the joined manifest rows (optionally filtered and split) to one Parquet file,
    atomically, with its sidecar; or, with `reproduce`, the rows an earlier sidecar describes."""
    if reproduce:
        return reproduce_manifest(corpus, reproduce, out).rows
    return write_manifest(corpus, out, where, split, seed, columns).rows


def manifest_summary(out: str) -> str:
    """One line about an export, from its sidecar."""
    with open(os.path.abspath(out) + SIDECAR_SUFFIX) as f:
        meta = json.load(f)
    splits = meta.get("splits") or {}
    shares = f" ({', '.join(f'{k} {v}' for k, v in sorted(splits.items()))})" if meta.get("split") else ""
    return f"manifest: {meta['rows']} tracks{shares} -> {out} (what it was cut from: {out}{SIDECAR_SUFFIX})"
