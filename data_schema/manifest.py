"""The manifest: the join of every table's current rows that training reads, in one place.

- its typed record (`ManifestRecord`, the columns the trainer uses) and the one-pass reader
  (`read_manifest`) that hands the trainer those records;
- the export (`write_manifest`: filter, split, columns, an atomic Parquet file with what it was
  cut from in its metadata and a sidecar JSON) and its reproduction (`reproduce_manifest`);
- `ManifestError`, the one error of all of it.

Where the columns come from (add a column in one of these places, and nowhere else):
- the `manifest` view: every column of every stage table (`register_table` in data_schema/, e.g.
  music's in data_schema/tables.py) plus the registered joins (`register_manifest_join`); the view
  SQL is `views.py::manifest_sql`, beside the other views it is built from, kept fast by the
  manifest snapshot;
- an export: all of those but the tables' `bulk_columns` (beat lists), unless `--columns` says;
- the trainer: the fields of `ManifestRecord` below.
"""

from __future__ import annotations

import gc
import hashlib
import json
import os
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import duckdb
from songmill.data_schema.query import QueryRefused, check_read_only, first_line
from songmill.data_schema.store import Corpus, utcnow
from songmill.data_schema.views import literal as sql_literal


# -- the typed record the trainer reads ---------------------------------------------------------
class ManifestRecord(NamedTuple):
    """One manifest row as the trainer sees it: the columns it reads, typed. A column the trainer
    starts to read is added here (and nowhere else); every other manifest column stays in the
    Parquet file, unread by the trainer. (A NamedTuple: immutable, and built several times faster
    than a frozen dataclass, which counts at millions of rows.)"""

    track_id: str
    uri: str
    duration_s: float
    features_url: str | None = None  # the cached features shard (the `features` stage)
    lyrics: str | None = None  # the matched canonical lyrics (the `lyrics` stage)
    # A window row (data_schema/windows.py): where it starts in the track; duration_s is the window's.
    offset_s: float | None = None


# Read, besides the record's columns: rows failing QC are left out of training.
QC_COLUMN = "qc_pass"
RECORD_COLUMNS: tuple[str, ...] = ManifestRecord._fields
ALWAYS_REQUIRED: tuple[str, ...] = ("track_id", "uri", "duration_s")


def read_manifest(path: str, require: Sequence[str] = ALWAYS_REQUIRED) -> list[ManifestRecord]:
    """The trainable records of a manifest Parquet, in one pass over only the columns the trainer
    reads: rows with qc_pass false are left out, and so are rows lacking a `require`d value
    (track_id, uri and duration_s are always required)."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    required = list(dict.fromkeys([*ALWAYS_REQUIRED, *require]))
    try:
        available = pq.read_schema(path).names
    except (OSError, ValueError) as exc:
        raise ManifestError(f"cannot read manifest {path}: {exc}") from None
    missing = [c for c in required if c not in available]
    if missing:
        raise ManifestError(
            f"manifest {path} lacks column(s) {missing}; export it with `songmill manifest --out FILE`"
            + (" after running the features stage" if "features_url" in missing else "")
        )
    table = pq.read_table(path, columns=[c for c in (*RECORD_COLUMNS, QC_COLUMN) if c in available])
    keep = (
        pc.fill_null(table[QC_COLUMN].cast(pa.bool_()), True)
        if QC_COLUMN in available
        else pa.scalar(True)
    )
    for column in required:
        keep = pc.and_(keep, pc.is_valid(table[column]))
    table = table.filter(keep) if table.num_rows else table
    columns = [
        table[c].to_pylist() if c in available else [None] * table.num_rows for c in RECORD_COLUMNS
    ]
    del table
    collecting = gc.isenabled()
    gc.disable()  # millions of new tuples would set off full collections that find nothing to free
    try:
        records = list(map(ManifestRecord, *columns))
    finally:
        if collecting:
            gc.enable()
    if not records:
        raise ManifestError(f"manifest {path} has no usable rows (need non-null {required})")
    return records


def features_count(path: str) -> tuple[int, int]:
    """(rows with a features_url, all rows) of a manifest, from the Parquet footer's null counts
    (reading the column only where a writer left no statistics)."""
    import pyarrow.parquet as pq

    meta = pq.ParquetFile(path).metadata
    # The row groups index leaf columns: a nested column (beats, bpm_estimates) before
    # features_url holds several leaves, so its top-level position is not its leaf index.
    leaves = [meta.schema.column(i).path for i in range(meta.num_columns)]
    if "features_url" not in leaves:
        return 0, meta.num_rows
    index = leaves.index("features_url")
    nulls = 0
    for g in range(meta.num_row_groups):
        stats = meta.row_group(g).column(index).statistics
        if stats is None or not stats.has_null_count:
            column = pq.read_table(path, columns=["features_url"]).column(0)
            return meta.num_rows - column.null_count, meta.num_rows
        nulls += stats.null_count
    return meta.num_rows - nulls, meta.num_rows


# DuckDB's default row-group size: large groups keep scans fast and files small.
MANIFEST_ROW_GROUP_SIZE = 122_880


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
        raise ManifestError(
            "--columns: empty list (default, all, or a comma-separated list of manifest columns)"
        )
    if unknown:
        raise ManifestError(
            f"--columns: the manifest has no column {', '.join(map(repr, unknown))}"
        )
    return ["track_id", *dict.fromkeys(c for c in wanted if c != "track_id")]


def export_sql(
    available: list[str],
    where: str | None,
    split: list[tuple[str, float]],
    seed: int,
    columns: list[str] | None = None,
) -> str:
    """The export query. A split hashes the duplicate cluster (the track itself when it has
    none) with the seed, so every member of a cluster lands on the same side."""
    from songmill.data_schema.views import quote

    clause = f"WHERE ({where})" if where else ""
    select = ", ".join(quote(c) for c in columns) if columns is not None else "*"
    if not split:
        return f"SELECT {select} FROM manifest {clause} ORDER BY track_id"
    group = "coalesce(dup_cluster, track_id)" if "dup_cluster" in available else "track_id"
    unit = f"('0x' || substr(md5({sql_literal(str(seed) + ':')} || {group}), 1, 12))::UBIGINT / 281474976710656.0"
    cases, edge = [], 0.0
    for name, share in split:
        edge += share
        cases.append(f"WHEN _u < {edge!r} THEN {sql_literal(name)}")
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
        newest, rows = (
            con.execute(
                f"SELECT max({quote(column)})::VARCHAR, count(*) FROM raw_{name}"
            ).fetchall()[0]
            if column
            else (None, None)
        )
        names = [
            os.path.basename(p) for p in ((files.snapshot,) if files.snapshot else ()) + files.raw
        ]
        tables[name] = {"as_of": newest, "raw_rows": rows, "files": names}
    blob = json.dumps(tables, sort_keys=True).encode()
    return {"state_id": hashlib.sha256(blob).hexdigest()[:16], "tables": tables}


def _ids_digest(path: str) -> str:
    """sha256 of the file's track ids in file order, joined by newlines (in DuckDB: a Python
    list of 600 k ids costs most of a second)."""
    with duckdb.connect(":memory:") as con:
        return con.execute(
            "SELECT sha256(coalesce(string_agg(track_id, chr(10) ORDER BY file_row_number), '')) "
            "FROM read_parquet(?, file_row_number = true)",
            [path],
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


def _write_rows(con: duckdb.DuckDBPyConnection, sql: str, out: str, meta: dict[str, Any]) -> str:
    """`_copy`, or with `meta["window"]` the query's rows cut into windows (data_schema/windows.py)."""
    if not meta.get("window"):
        return _copy(con, sql, out, meta)
    from songmill.data_schema.windows import WindowOptions, window_parquet

    out = os.path.abspath(out)
    os.makedirs(os.path.dirname(out), exist_ok=True)
    window_parquet(con, sql, out, WindowOptions(**meta["window"]), meta)
    return out


def _is_songmill_manifest(path: str) -> bool:
    """True when `path` is a Parquet file holding songmill's manifest metadata (one we wrote)."""
    import pyarrow.parquet as pq

    try:
        metadata = pq.read_schema(path).metadata or {}
    except Exception:  # not Parquet, unreadable: not ours
        return False
    return MANIFEST_META_KEY.encode() in metadata


def _is_songmill_sidecar(path: str) -> bool:
    """True when `path` is a JSON sidecar songmill wrote beside a manifest."""
    try:
        with open(path) as f:
            meta = json.load(f)
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and {"sql", "corpus_state", "track_ids_sha256"} <= meta.keys()


def check_out_path(out: str) -> None:
    """Refuse an --out (or its sidecar) that exists and is not a manifest songmill wrote: never
    overwrite a user's file. Replacing songmill's own earlier manifest is fine."""
    out = os.path.abspath(out)
    if os.path.lexists(out) and not (os.path.isfile(out) and _is_songmill_manifest(out)):
        kind = "a directory" if os.path.isdir(out) else "not a manifest songmill wrote"
        raise ManifestError(
            f"refusing to overwrite {out}: it exists and is {kind}; choose another --out"
        )
    sidecar = out + SIDECAR_SUFFIX
    if os.path.lexists(sidecar) and not (os.path.isfile(sidecar) and _is_songmill_sidecar(sidecar)):
        raise ManifestError(
            f"refusing to overwrite {sidecar}: it exists and is not a sidecar songmill wrote; choose another --out"
        )


def _export_connection(corpus: Corpus) -> duckdb.DuckDBPyConnection:
    con = corpus.connect()
    con.execute("SET preserve_insertion_order = false")
    return con


def write_manifest(
    corpus: Corpus,
    out: str,
    where: str | None = None,
    split: str | None = None,
    seed: int = 0,
    columns: str | None = None,
    window: Any = None,
) -> ManifestResult:
    """Write the manifest rows (optionally filtered, optionally with a `split` column) to one
    Parquet file atomically, with what it was cut from in its metadata and a sidecar JSON.
    `columns`: see `export_columns` (default: all but the beat lists). `window`: a
    data_schema.windows.WindowOptions: one row per window cut on musical boundaries."""
    splits = parse_split(split)
    check_out_path(out)
    con = _export_connection(corpus)
    try:
        if where:
            check_where(con, where)
        available = [row[0] for row in con.execute("DESCRIBE manifest").fetchall()]
        chosen = export_columns(available, columns)
        if window is not None:  # what cutting reads
            chosen += [
                c
                for c in ("duration_s", "bpm", "is_instrumental", "lyrics_source")
                if c in available and c not in chosen
            ]
        sql = export_sql(available, where, splits, seed, None if chosen == available else chosen)
        state = corpus_state(con, corpus)
        meta = {
            "sql": sql,
            "where": where,
            "split": split,
            "seed": seed,
            "columns": columns or "default",
            "songmill_version": _version(),
            "schema_version": corpus.schema_version,
            "corpus": corpus.root,
            "corpus_state": state,
            "created_at": utcnow().isoformat(),
        }
        if window is not None:
            meta["window"] = window.to_dict()
        try:
            path = _write_rows(
                con,
                sql,
                out,
                {k: v for k, v in meta.items() if k != "corpus_state"}
                | {"state_id": state["state_id"]},
            )
        except duckdb.Error as exc:
            raise ManifestError(f"manifest query failed: {first_line(exc)}") from None
        counts = dict(
            con.execute(
                f"SELECT {'split' if splits else chr(39) + 'all' + chr(39)}, count(*) FROM read_parquet({sql_literal(path)}) GROUP BY ALL"
            ).fetchall()
        )
    finally:
        con.close()
    meta |= {
        "rows": int(sum(counts.values())),
        "splits": counts,
        "track_ids_sha256": _ids_digest(path),
        "out": path,
    }
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
    check_out_path(out)
    import duckdb as _duckdb
    from songmill.data_schema.tables import TABLES
    from songmill.data_schema.views import create_views

    as_of = {
        name: (tables[name]["as_of"] if name in tables and tables[name]["as_of"] else "-infinity")
        for name in TABLES
    }
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
        # Written to a temporary file of our own beside --out and checked there: a mismatch
        # removes only that file, and whatever was at --out stays as it was.
        path = os.path.abspath(out)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = os.path.join(
            os.path.dirname(path), f".tmp-{uuid.uuid4().hex}-{os.path.basename(path)}"
        )
        try:
            _write_rows(
                con,
                sql,
                tmp,
                {k: v for k, v in meta.items() if k not in ("corpus_state", "out")}
                | {"reproduced_from": os.path.abspath(sidecar)},
            )
            counts = dict(
                con.execute(
                    f"SELECT {'split' if meta.get('split') else chr(39) + 'all' + chr(39)}, count(*) FROM read_parquet({sql_literal(tmp)}) GROUP BY ALL"
                ).fetchall()
            )
            if _ids_digest(tmp) != meta.get("track_ids_sha256"):
                raise ManifestError(
                    f"cannot reproduce {sidecar}: the rows differ from the recorded ones; {path} was left as it was"
                )
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
    finally:
        con.close()
    # the same description (it reproduces again), saying where it came from
    written = _write_sidecar(
        path,
        meta
        | {
            "out": path,
            "reproduced_from": os.path.abspath(sidecar),
            "reproduced_at": utcnow().isoformat(),
        },
    )
    return ManifestResult(
        int(sum(counts.values())), path, written, counts if meta.get("split") else {}
    )


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("songmill")
    except PackageNotFoundError:
        return "unknown"


def export_manifest(
    corpus: Corpus,
    out: str,
    where: str | None = None,
    split: str | None = None,
    seed: int = 0,
    reproduce: str | None = None,
    columns: str | None = None,
    window: Any = None,
) -> int:
    """Write the joined manifest rows (optionally filtered and split) to one Parquet file,
    atomically, with its sidecar; or, with `reproduce`, the rows an earlier sidecar describes."""
    if reproduce:
        return reproduce_manifest(corpus, reproduce, out).rows
    return write_manifest(corpus, out, where, split, seed, columns, window).rows


def manifest_summary(out: str) -> str:
    """One line about an export, from its sidecar."""
    with open(os.path.abspath(out) + SIDECAR_SUFFIX) as f:
        meta = json.load(f)
    splits = meta.get("splits") or {}
    shares = (
        f" ({', '.join(f'{k} {v}' for k, v in sorted(splits.items()))})"
        if meta.get("split")
        else ""
    )
    unit = "windows" if meta.get("window") else "tracks"
    return f"manifest: {meta['rows']} {unit}{shares} -> {out} (what it was cut from: {out}{SIDECAR_SUFFIX})"
