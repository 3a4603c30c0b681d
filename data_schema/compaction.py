"""Compaction: a table's parts merged into a deduplicated `current-*` snapshot and a `history-*` file.

Per table folder (see store.py): `part-*.parquet` (rows appended since the last compaction),
`history-*.parquet` (earlier parts, merged) and one `current-*.parquet` (the deduplicated current
rows, sorted by key). A major compaction (`compact`) writes a new snapshot and merges the parts
into one history file; a minor one (`merge_parts`) only merges parts. Both stream through DuckDB
under a memory limit, so they run in bounded memory at any size. Every file a merge writes records
the files it replaces in its Parquet metadata; a merge killed before removing them is finished by
the next one (roll forward), so no row is ever doubled.
"""

from __future__ import annotations

import json
import os
import posixpath
import uuid
from collections.abc import Iterable, Iterator

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from songmill.data_schema.layout import (
    CURRENT_PREFIX,
    HISTORY_PREFIX,
    MERGED_FROM_KEY,
    MERGED_SUFFIX,
    PART_PREFIX,
    PendingParquet,
    Store,
    bucket_count,
    rows_per_group,
    sql_literal,
    track_bucket,
    track_bucket_start,
    utcnow,
)
from songmill.data_schema.manifest_cache import refresh_delta, refresh_snapshot
from songmill.data_schema.tables import SCHEMA_VERSION, table_spec
from songmill.data_schema.views import (
    DedupRule,
    TableFiles,
    ViewSql,
    current_sql,
    dedup_rule,
    empty_select,
)

# Fewer parts than this never trigger an automatic compaction.
MIN_COMPACT_PARTS = 8
# Rows scattered into bucket files are held in memory up to this many bytes (then the largest
# bucket's are written out as a row group), whatever the number of buckets.
SCATTER_BUFFER_BYTES = 128 * 2**20
# Parquet files are read through a buffer of this size, page by page (not a column chunk at once).
READ_BUFFER_BYTES = 4 * 2**20


def compact(
    corpus: Store,
    table: str,
    min_parts: int = 1,
    memory_limit: str | None = None,
    manifest: bool = True,
) -> int:
    """Major compaction: a new `current-*` snapshot (old snapshot + parts, deduplicated,
    sorted by key) and the parts merged into one `history-*` file. Returns parts merged.

    Bounded memory from any state (one bulk run of millions of rows in unsorted parts, or many
    small runs): one pass reads every part in batches of about ROW_GROUP_BYTES, writing its rows
    to the history file and scattering them into per-bucket files by key (track_id ranges, or a
    hash of other keys); each bucket is then deduplicated and sorted alone, with its range of
    the old snapshot (sorted by track_id: its row-group statistics skip the rest), under DuckDB's
    memory limit, spilling into the corpus. Parts are read once, not once per bucket.

    Order matters for a kill at any point: the snapshot lands first (it covers the parts,
    which are still there, so views stay right), then the history file (listing the parts it
    replaces), then the catalog, then the parts go. A history file whose parts still exist is
    finished by the next compaction (`finish_merges`).
    """

    with corpus.exclusive_lock(table):
        finish_merges(corpus, table)
        files = corpus.table_files(table)
        if len(files.parts) < min_parts:
            return 0
        spec = table_spec(table)
        rule = dedup_rule(spec)
        names = [posixpath.basename(p) for p in files.parts]
        stamp = f"{utcnow():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}"
        history = corpus.pending_parquet(
            table,
            f"{HISTORY_PREFIX}{stamp}.parquet",
            _file_schema(table, {MERGED_FROM_KEY: json.dumps(names)}),
        )
        try:
            with corpus.spill_dir() as spill, corpus.bounded_connection(memory_limit, spill) as con:
                if rule is None:
                    _scatter(corpus, con, table, files.parts, history)
                else:
                    _write_snapshot(
                        corpus,
                        con,
                        table,
                        files,
                        rule,
                        f"{CURRENT_PREFIX}{stamp}.parquet",
                        history,
                        spill,
                        memory_limit,
                    )
            history.publish()
        finally:
            history.discard()
        corpus.refresh_catalog()
        for path in files.parts:
            corpus.fs.rm(path)
        if files.snapshot and rule is not None:
            corpus.fs.rm(files.snapshot)
        corpus.refresh_catalog()
    if manifest:
        refresh_snapshot(corpus)
    return len(files.parts)


def merge_parts(corpus: Store, table: str, memory_limit: str | None = None) -> int:
    """Minor compaction: many small parts -> one part (the snapshot is left alone), streamed
    in batches of about ROW_GROUP_BYTES. `memory_limit` is kept for callers: no DuckDB here."""
    del memory_limit
    with corpus.exclusive_lock(table):
        finish_merges(corpus, table)
        files = corpus.table_files(table)
        if len(files.parts) < 2:
            return 0
        names = [posixpath.basename(p) for p in files.parts]
        stamp = f"{utcnow():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}"
        merged = corpus.pending_parquet(
            table,
            f"{PART_PREFIX}{stamp}{MERGED_SUFFIX}",
            _file_schema(table, {MERGED_FROM_KEY: json.dumps(names)}),
        )
        try:
            for url in files.parts:
                for rows in _batches(corpus, table, url):
                    merged.write(rows)
            merged.publish()
        finally:
            merged.discard()
        for path in files.parts:
            corpus.fs.rm(path)
        return len(files.parts)


def compact_if_needed(
    corpus: Store, tables: Iterable[str], max_parts: int = 64, min_ratio: float = 0.25
) -> None:
    """Compact when the rows since the snapshot reach `min_ratio` of it (so a table is
    rewritten a bounded number of times as it grows: amortised linear), or merge parts
    when they pile up past `max_parts` (cheap: the snapshot is not touched). Then bring the
    manifest up to date: a new snapshot after a compaction, then a new delta for the parts
    since (of the tables not compacted, after one)."""
    compacted = False
    for table in tables:
        sizes = corpus.file_sizes(table)
        parts = {p: n for p, n in sizes.items() if posixpath.basename(p).startswith(PART_PREFIX)}
        if not parts:
            continue
        snapshot = sum(
            n for p, n in sizes.items() if posixpath.basename(p).startswith(CURRENT_PREFIX)
        )
        if len(parts) >= MIN_COMPACT_PARTS and sum(parts.values()) >= min_ratio * snapshot:
            compacted |= compact(corpus, table, manifest=False) > 0
        elif len(parts) > max_parts:
            merge_parts(corpus, table)
    if compacted:  # once per call, however many tables it compacted
        refresh_snapshot(corpus)
    # also after a snapshot: it holds no parts, and the tables not compacted may have many
    refresh_delta(corpus)


def finish_merges(corpus: Store, table: str) -> None:
    """Roll forward a merge that was killed before removing the files it replaced."""
    present = {posixpath.basename(p): p for p in corpus.list_files(table)}
    for name, path in present.items():
        if not (name.startswith(HISTORY_PREFIX) or name.endswith(MERGED_SUFFIX)):
            continue
        with corpus.fs.open(path, "rb") as f:
            meta = pq.read_metadata(f).metadata or {}
        merged = json.loads(meta.get(MERGED_FROM_KEY.encode(), b"[]"))
        for old in merged:
            if old in present and old != name:
                corpus.fs.rm(present[old])
    snapshots = sorted(n for n in present if n.startswith(CURRENT_PREFIX))
    for old in snapshots[:-1]:  # a newer snapshot covers everything an older one did
        corpus.fs.rm(present[old])


def _file_schema(table: str, metadata: dict[str, str] | None = None) -> pa.Schema:
    """The table's Arrow schema with songmill's file metadata (and `metadata`)."""
    meta = {"songmill.schema_version": str(SCHEMA_VERSION), "songmill.table": table} | (
        metadata or {}
    )
    return table_spec(table).schema.with_metadata({k.encode(): v.encode() for k, v in meta.items()})


def _batches(corpus: Store, table: str, url: str) -> Iterator[pa.Table]:
    """The rows of one Parquet file of `table`, as the table's schema, in batches of about
    ROW_GROUP_BYTES: read page by page (a buffered stream, no pre-buffering), so even a file
    written as one huge row group is read in bounded memory."""
    schema = table_spec(table).schema
    with corpus.fs.open(corpus.fs_path(url), "rb") as f:
        parquet = pq.ParquetFile(f, buffer_size=READ_BUFFER_BYTES, pre_buffer=False)
        meta = parquet.metadata
        row_bytes = sum(
            meta.row_group(i).total_byte_size for i in range(meta.num_row_groups)
        ) / max(1, meta.num_rows)
        present = [n for n in schema.names if n in parquet.schema_arrow.names]
        for batch in parquet.iter_batches(batch_size=rows_per_group(row_bytes), columns=present):
            rows = pa.Table.from_batches([batch])
            for field in schema:  # columns added to the schema after the file was written: NULL
                if field.name not in rows.column_names:
                    rows = rows.append_column(field, pa.nulls(rows.num_rows, field.type))
            yield rows.select(schema.names).cast(schema)


def _with_buckets(
    con: duckdb.DuckDBPyConnection, rows: pa.Table, rule: DedupRule, buckets: int
) -> tuple[pa.Table, np.ndarray]:
    """The rows and each one's bucket: the track_id range it falls in (track_bucket's ranges),
    or a hash of its key for other keys."""
    if rule.partition == ("track_id",):
        ids = rows.column("track_id")
        bucket = np.zeros(rows.num_rows, np.int32)
        for i in range(1, buckets):  # the number of range starts at or below the id
            bucket += pc.fill_null(
                pc.greater_equal(ids, track_bucket_start(i, buckets)), False
            ).to_numpy(zero_copy_only=False)
        return rows, bucket
    key = ", ".join(rule.partition)
    con.register("_scatter_rows", rows)
    try:  # rows and hashes from one query: its output order need not be the input's
        out = con.sql(
            f"SELECT (hash({key}) % {buckets})::INTEGER AS _bucket, * FROM _scatter_rows"
        ).to_arrow_table()
    finally:
        con.unregister("_scatter_rows")
    bucket = out.column("_bucket").to_numpy()
    return out.drop_columns(["_bucket"]).cast(rows.schema), bucket


def _scatter(
    corpus: Store,
    con: duckdb.DuckDBPyConnection,
    table: str,
    urls: Iterable[str],
    history: PendingParquet | None,
    rule: DedupRule | None = None,
    buckets: int = 0,
    spill: str | None = None,
    history_urls: Iterable[str] = (),
) -> list[str | None]:
    """One pass over the files `urls`: every row into `history` when that is given (only the
    rows of `history_urls` when those are given), and with `buckets`, into one spill file per
    bucket (`rule`'s key), holding at most SCATTER_BUFFER_BYTES of rows before the largest
    bucket's are written out. Returns each bucket's file (None: no rows)."""
    schema = table_spec(table).schema
    history_urls = set(history_urls) if history_urls else None
    held: list[list[pa.Table]] = [[] for _ in range(buckets)]
    held_bytes = np.zeros(buckets, np.int64)
    writers: dict[int, pq.ParquetWriter] = {}
    paths: list[str | None] = [None] * buckets

    def flush(b: int) -> None:
        if b not in writers:
            paths[b] = os.path.join(spill or "", f"bucket-{b:05d}.parquet")
            writers[b] = pq.ParquetWriter(paths[b], schema, compression="zstd")
        rows = pa.concat_tables(held[b])
        writers[b].write_table(rows, row_group_size=rows.num_rows)
        held[b], held_bytes[b] = [], 0

    try:
        for url in urls:
            for rows in _batches(corpus, table, url):
                if history is not None and (history_urls is None or url in history_urls):
                    history.write(rows)
                if not buckets:
                    continue
                rows, bucket = _with_buckets(con, rows, rule, buckets)  # type: ignore[arg-type]
                for b in np.unique(bucket):
                    part = rows.filter(pa.array(bucket == b))
                    held[b].append(part)
                    held_bytes[b] += part.nbytes
                while held_bytes.sum() > SCATTER_BUFFER_BYTES:
                    flush(int(held_bytes.argmax()))
        for b in range(buckets):
            if held[b]:
                flush(b)
    finally:
        for writer in writers.values():
            writer.close()
    return paths


def _write_snapshot(
    corpus: Store,
    con: duckdb.DuckDBPyConnection,
    table: str,
    files: TableFiles,
    rule: DedupRule,
    name: str,
    history: PendingParquet,
    spill: str,
    memory_limit: str,
) -> None:
    """The deduplicated snapshot, bucket by bucket, so memory stays bounded at any table size
    and in any state: the parts (and for keys other than track_id, the old snapshot, which is
    not sorted by them) scattered into bucket files in one pass that also writes `history`;
    then per bucket, its file and (track_id keys) its range of the old snapshot, deduplicated and
    sorted. The snapshot stays sorted by track_id, so its row-group statistics let each bucket
    of the next compaction, and the views, skip the rest of it."""

    spec = table_spec(table)
    sizes = corpus.file_sizes(table)
    inputs = [files.snapshot, *files.parts] if files.snapshot else list(files.parts)
    buckets = bucket_count(sum(sizes.get(corpus.fs_path(u), 0) for u in inputs), memory_limit)
    by_range = rule.partition == ("track_id",)
    scattered = (
        list(files.parts) if by_range or not files.snapshot else [files.snapshot, *files.parts]
    )
    bucket_files = _scatter(
        corpus, con, table, scattered, history, rule, buckets, spill, history_urls=files.parts
    )
    order = ", ".join(rule.partition)
    columns = ", ".join(f'"{n}"' for n in spec.schema.names)
    views = ViewSql({table: files})

    def bucket_sql(b: int) -> str:
        snapshot = None
        if files.snapshot and by_range:
            snapshot = f"SELECT * FROM ({views._read(table, (files.snapshot,))}) WHERE {track_bucket(b, buckets)}"
        delta = (
            f"SELECT * FROM read_parquet({sql_literal(bucket_files[b])})"
            if bucket_files[b]
            else None
        )
        if snapshot is None and delta is None:
            return f"SELECT {columns} FROM ({empty_select(spec)})"
        return f"SELECT {columns} FROM ({current_sql(rule, snapshot, delta, '')}) ORDER BY {order}"

    corpus.write_buckets(
        con,
        table,
        name,
        _file_schema(table),
        (bucket_sql(b) for b in range(buckets)),
        corpus.row_bytes(inputs),
    )
