"""The corpus on disk: Parquet part files per table, written atomically, read through DuckDB.

A corpus is a directory (or fsspec URL) holding `songmill.json` (the schema version) and one
folder per table. Every write is one new part file, written under a temporary name and renamed
into place, so a killed process leaves no partial part and readers never see half a batch.
Nothing is updated in place: "latest" is resolved in the DuckDB views (see views.py).
"""

from __future__ import annotations

import json
import os
import posixpath
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from songmill.data_schema.tables import SCHEMA_VERSION, SUPPORTED_SCHEMA_VERSIONS, table_spec

CORPUS_FILE = "songmill.json"
PART_GLOB = "part-*.parquet"
TMP_PREFIX = ".tmp-"
# Stale temporaries older than this are debris of killed runs; younger ones may be in flight.
STALE_TMP_S = 6 * 3600


class CorpusError(RuntimeError):
    """The corpus cannot be used as asked (unknown schema version, not a corpus...)."""


def default_corpus_root() -> str:
    return os.environ.get("SONGMILL_CORPUS", "./corpus")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_run_id() -> str:
    return f"{utcnow():%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"


class Corpus:
    """Handle on a corpus root. Cheap to create; all state lives in the files."""

    def __init__(self, root: str | os.PathLike[str], *, create: bool = True):
        root = os.fspath(root)
        self.fs, path = fsspec.core.url_to_fs(root)
        self.is_local = isinstance(self.fs, fsspec.implementations.local.LocalFileSystem)
        self.path = os.path.abspath(path) if self.is_local else path.rstrip("/")
        self.root = self.path if self.is_local else self.fs.unstrip_protocol(self.path)
        self._check_or_init(create)

    # -- layout -----------------------------------------------------------------------------
    def _join(self, *parts: str) -> str:
        return os.path.join(self.path, *parts) if self.is_local else posixpath.join(self.path, *parts)

    def table_dir(self, table: str) -> str:
        return self._join(table)

    def url(self, path: str) -> str:
        """A path inside the corpus as DuckDB / fsspec should see it."""
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def _check_or_init(self, create: bool) -> None:
        meta_path = self._join(CORPUS_FILE)
        if self.fs.exists(meta_path):
            with self.fs.open(meta_path, "r") as f:
                meta = json.load(f)
            version = meta.get("schema_version")
            if version not in SUPPORTED_SCHEMA_VERSIONS:
                raise CorpusError(
                    f"corpus {self.root} was written with schema version {version!r}; this songmill "
                    f"reads versions {sorted(SUPPORTED_SCHEMA_VERSIONS)}. Use the songmill release "
                    "that wrote it, or re-ingest into a new corpus."
                )
            self.schema_version = version
            return
        if self.fs.glob(self._join("*", PART_GLOB)):
            raise CorpusError(
                f"{self.root} holds Parquet tables but no {CORPUS_FILE}: not a songmill corpus, or one "
                "written before schema versions existed. Refusing to guess its layout."
            )
        if not create:
            raise CorpusError(f"no corpus at {self.root} (run `songmill ingest` first)")
        self.fs.makedirs(self.path, exist_ok=True)
        meta = {"schema_version": SCHEMA_VERSION, "created_at": utcnow().isoformat()}
        self._atomic_write_bytes(meta_path, json.dumps(meta, indent=2).encode())
        self.schema_version = SCHEMA_VERSION

    # -- writes -----------------------------------------------------------------------------
    def _atomic_write_bytes(self, dest: str, data: bytes) -> None:
        tmp = posixpath.join(posixpath.dirname(dest), f"{TMP_PREFIX}{uuid.uuid4().hex}")
        with self.fs.open(tmp, "wb") as f:
            f.write(data)
            if self.is_local:
                f.flush()
                os.fsync(f.fileno())
        self._rename(tmp, dest)

    def _rename(self, src: str, dest: str) -> None:
        if self.is_local:
            os.replace(src, dest)  # atomic on POSIX
        else:
            self.fs.mv(src, dest)

    def write(self, table: str, rows: Iterable[Mapping[str, Any]] | pa.Table) -> str | None:
        """Append rows to `table` as one new part file. Returns its path (None if no rows)."""
        spec = table_spec(table)
        data = rows if isinstance(rows, pa.Table) else pa.Table.from_pylist(list(rows), schema=spec.schema)
        if data.num_rows == 0:
            return None
        data = data.select(spec.schema.names).cast(spec.schema)
        data = data.replace_schema_metadata(
            {"songmill.schema_version": str(SCHEMA_VERSION), "songmill.table": table}
        )
        folder = self.table_dir(table)
        self.fs.makedirs(folder, exist_ok=True)
        name = f"part-{utcnow():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}.parquet"
        tmp, dest = self._join(table, TMP_PREFIX + name), self._join(table, name)
        with self.fs.open(tmp, "wb") as f:
            pq.write_table(data, f, compression="zstd")
            if self.is_local:
                f.flush()
                os.fsync(f.fileno())
        self._rename(tmp, dest)
        return dest

    def write_bytes(self, relpath: str, data: bytes) -> str:
        """Write a blob (a stem, a feature shard) atomically under the corpus; returns its URL."""
        dest = self._join(*relpath.split("/"))
        self.fs.makedirs(posixpath.dirname(dest), exist_ok=True)
        self._atomic_write_bytes(dest, data)
        return self.url(dest)

    def compact(self, table: str, min_parts: int = 2) -> int:
        """Merge a table's part files into one. Every batch writes a part, and DuckDB reads the
        metadata of every part on each query, so a long-lived corpus needs this now and then.

        The merged part is renamed into place before the old parts are removed, so a reader (or a
        kill) in between sees rows twice in `raw_<table>`, never missing; the views deduplicate.
        Parts written while this runs are left alone. Returns the number of parts merged.
        """
        parts = self.part_files(table)
        if len(parts) < min_parts:
            return 0
        spec = table_spec(table)
        con = duckdb.connect(":memory:")
        try:
            if not self.is_local:
                con.register_filesystem(self.fs)
            urls = [self.url(p) for p in parts]
            merged = con.sql("SELECT * FROM read_parquet(?, union_by_name = true)", params=[urls]).to_arrow_table()
        finally:
            con.close()
        for f in spec.schema:  # columns added to the schema after old parts were written
            if f.name not in merged.column_names:
                merged = merged.append_column(f, pa.nulls(merged.num_rows, f.type))
        self.write(table, merged)
        for p in parts:
            self.fs.rm(p)
        return len(parts)

    def compact_if_needed(self, tables: Iterable[str], max_parts: int = 256) -> None:
        for table in tables:
            if len(self.part_files(table)) > max_parts:
                self.compact(table)

    def clean_stale_temporaries(self, older_than_s: float = STALE_TMP_S) -> int:
        """Remove temporaries left by killed runs. Readers never look at them anyway."""
        removed = 0
        now = time.time()
        for path in self.fs.glob(self._join("*", f"{TMP_PREFIX}*")):
            try:
                mtime = self.fs.modified(path).timestamp()
            except Exception:  # some filesystems do not report mtimes
                continue
            if now - mtime > older_than_s:
                self.fs.rm(path)
                removed += 1
        return removed

    # -- reads ------------------------------------------------------------------------------
    def part_files(self, table: str) -> list[str]:
        return sorted(self.fs.glob(self._join(table, PART_GLOB)))

    def part_glob_url(self, table: str) -> str:
        return self.url(self._join(table, PART_GLOB))

    def connect(self) -> duckdb.DuckDBPyConnection:
        """An in-memory DuckDB connection with a view per table and the joined `manifest`."""
        from songmill.data_schema.views import create_views

        con = duckdb.connect(":memory:")
        if not self.is_local:
            con.register_filesystem(self.fs)
        create_views(con, self)
        return con

    def sql(self, query: str, params: list[Any] | None = None) -> pa.Table:
        """Run one query on a fresh connection and return the result as Arrow."""
        con = self.connect()
        try:
            return con.sql(query, params=params).to_arrow_table()
        finally:
            con.close()

    def read(self, table: str) -> pa.Table:
        """All raw rows of a table (every part), as Arrow."""
        return self.sql(f"SELECT * FROM raw_{table}")
