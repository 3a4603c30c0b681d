"""The file layout of a corpus, shared by the store, compaction and the manifest cache: file
names, row-group and bucket sizing, atomic Parquet writes, and `Store`, what compaction.py and
manifest_cache.py use of a corpus (store.Corpus; they do not import the store, which calls them).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq

if TYPE_CHECKING:
    from songmill.data_schema.views import TableFiles

CORPUS_FILE = "songmill.json"
CATALOG_FILE = "songmill.duckdb"
PART_PREFIX = "part-"
HISTORY_PREFIX = "history-"
CURRENT_PREFIX = "current-"
PART_GLOB = "part-*.parquet"
MERGED_SUFFIX = "-merged.parquet"
MERGED_FROM_KEY = "songmill.merged_from"
LOCK_FILE = ".compact.lock"
TMP_PREFIX = ".tmp-"
# Compaction runs under this DuckDB memory limit and spills to disk past it.
COMPACT_MEMORY_LIMIT = "1GB"
COMPACT_THREADS = 2
ROW_GROUP_SIZE = 122_880
# ... and at most about this many uncompressed bytes: a reader holds a whole column chunk of a row
# group in memory (a 50 k-row group of beat lists is 70 MB), so row groups are bounded in bytes.
ROW_GROUP_BYTES = 32 * 2**20
# Snapshots are rebuilt in buckets of about this many uncompressed bytes (Parquet on disk
# expands about this much in memory), so a compaction's memory does not grow with the table.
SNAPSHOT_BUCKET_BYTES = 256 * 2**20
PARQUET_EXPANSION = 4
BUCKETS_PER_MEMORY_LIMIT = 4
# Stale temporaries older than this are debris of killed runs; younger ones may be in flight.
STALE_TMP_S = 6 * 3600


def utcnow() -> datetime:
    return datetime.now(UTC)


def sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def track_bucket_start(i: int, n: int) -> str:
    """The i-th of n equal boundaries in the space of hex track ids (sha256 digests)."""
    return f"{(i * 16**8) // n:08x}"


def track_bucket(bucket: int, buckets: int) -> str:
    """The SQL condition of one of `buckets` equal track_id ranges."""
    if buckets == 1:
        return "true"
    lo, hi = track_bucket_start(bucket, buckets), track_bucket_start(bucket + 1, buckets)
    return (
        " AND ".join(
            ([f"track_id >= {sql_literal(lo)}"] if bucket > 0 else [])
            + ([f"track_id < {sql_literal(hi)}"] if bucket < buckets - 1 else [])
        )
        or "true"
    )


_MANIFEST_OF: dict[str, Any] = {}


def memory_bytes(limit: str) -> int:
    """A DuckDB memory limit ('1GB', '512MiB') in bytes."""
    text = limit.strip().upper().replace(" ", "")
    for suffix, scale in (
        ("KIB", 2**10),
        ("MIB", 2**20),
        ("GIB", 2**30),
        ("TIB", 2**40),
        ("KB", 10**3),
        ("MB", 10**6),
        ("GB", 10**9),
        ("TB", 10**12),
        ("B", 1),
    ):
        if text.endswith(suffix):
            return int(float(text[: -len(suffix)]) * scale)
    return int(float(text))


def buckets_for(expanded_bytes: float, memory_limit: str | None = None) -> int:
    """How many buckets a rewrite of `expanded_bytes` (in memory) takes: each about
    SNAPSHOT_BUCKET_BYTES, and at most a BUCKETS_PER_MEMORY_LIMIT-th of DuckDB's memory limit
    (a bucket is deduplicated or joined, and sorted, in memory: rows, window, sort)."""
    bucket_bytes = min(
        SNAPSHOT_BUCKET_BYTES,
        memory_bytes(memory_limit or COMPACT_MEMORY_LIMIT) // BUCKETS_PER_MEMORY_LIMIT,
    )
    return max(1, math.ceil(expanded_bytes / max(1, bucket_bytes)))


def bucket_count(on_disk: int, memory_limit: str | None = None) -> int:
    """buckets_for `on_disk` Parquet bytes (expanding about PARQUET_EXPANSION times in memory)."""
    return buckets_for(on_disk * PARQUET_EXPANSION, memory_limit)


def rows_per_group(row_bytes: float) -> int:
    """Rows per row group (and per batch) for rows of `row_bytes` uncompressed bytes each."""
    return max(1024, min(ROW_GROUP_SIZE, int(ROW_GROUP_BYTES / max(row_bytes, 1.0))))


class Store(Protocol):
    """What compaction and the manifest cache use of a corpus (store.Corpus)."""

    fs: Any
    is_local: bool
    path: str

    def join_path(self, *parts: str) -> str: ...
    def url(self, path: str) -> str: ...
    def fs_path(self, url: str) -> str: ...
    def rename_into_place(self, src: str, dest: str) -> None: ...
    def list_files(self, table: str) -> list[str]: ...
    def file_sizes(self, table: str) -> dict[str, int]: ...
    def table_files(self, table: str) -> TableFiles: ...
    def parquet_rows(self, path: str) -> int: ...
    def row_bytes(self, urls: Iterable[str]) -> float: ...
    def pending_parquet(self, folder: str, name: str, schema: pa.Schema) -> PendingParquet: ...
    def write_buckets(
        self,
        con: duckdb.DuckDBPyConnection,
        folder: str,
        name: str,
        schema: pa.Schema,
        queries: Iterable[str],
        row_bytes: float,
    ) -> None: ...
    def spill_dir(self) -> AbstractContextManager[str]: ...
    def bounded_connection(
        self, memory_limit: str | None = None, spill: str | None = None
    ) -> AbstractContextManager[duckdb.DuckDBPyConnection]: ...
    def exclusive_lock(self, table: str) -> AbstractContextManager[None]: ...
    def refresh_catalog(self) -> str | None: ...


class PendingParquet:
    """A Parquet file being written under a temporary name; `publish()` renames it into place
    (for an object store: a local file, uploaded, then renamed there), `discard()` drops it."""

    def __init__(self, corpus: Store, folder: str, name: str, schema: pa.Schema):
        self.corpus, self.schema = corpus, schema
        corpus.fs.makedirs(corpus.join_path(folder), exist_ok=True)
        self.dest = corpus.join_path(folder, name)
        self.remote_tmp = corpus.join_path(folder, TMP_PREFIX + name)
        self.local = (
            self.remote_tmp
            if corpus.is_local
            else tempfile.NamedTemporaryFile(suffix=".parquet", delete=False).name
        )
        self.writer: pq.ParquetWriter | None = pq.ParquetWriter(
            self.local, schema, compression="zstd"
        )
        self.rows = 0

    def write(self, rows: pa.Table) -> None:
        """Append `rows` as one row group."""
        assert self.writer is not None
        if rows.num_rows:
            self.writer.write_table(rows.cast(self.schema), row_group_size=rows.num_rows)
            self.rows += rows.num_rows

    def publish(self) -> str:
        assert self.writer is not None
        self.writer.close()
        self.writer = None
        if self.corpus.is_local:
            with open(self.local, "rb+") as f:
                os.fsync(f.fileno())
        else:
            self.corpus.fs.put_file(self.local, self.remote_tmp)
            os.remove(self.local)
        self.corpus.rename_into_place(self.remote_tmp, self.dest)
        return self.dest

    def discard(self) -> None:
        """Drop the file unless published (safe to call after `publish`)."""
        if self.writer is not None:
            self.writer.close()
            self.writer = None
            if os.path.exists(self.local):
                os.remove(self.local)
