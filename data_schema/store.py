"""The corpus on disk: Parquet part files per table, written atomically, read through DuckDB.

A corpus is a directory (or fsspec URL) holding `songmill.json` (the schema version) and one
folder per table. Every write is one new part file, written under a temporary name and renamed
into place, so a killed process leaves no partial part and readers never see half a batch.
Nothing is updated in place: "latest" is resolved in the DuckDB views (see views.py).

Per table folder: `part-*.parquet` (rows appended since the last compaction), `history-*.parquet`
(earlier parts, merged) and one `current-*.parquet` (the deduplicated current rows, sorted by key).
This module is the store: the layout, atomic writes, schema versions, listings and DuckDB
connections. Merging parts is compaction.py's job; the joined manifest kept on disk is
manifest_cache.py's. `Corpus` keeps their entry points (`compact`, `refresh_manifest_snapshot`...).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
import songmill.data_schema.compaction as compaction
import songmill.data_schema.layout as layout
import songmill.data_schema.manifest_cache as manifest_cache
from songmill.data_schema.layout import (
    CATALOG_FILE,
    COMPACT_THREADS,
    CORPUS_FILE,
    CURRENT_PREFIX,
    HISTORY_PREFIX,
    LOCK_FILE,
    MERGED_FROM_KEY,  # noqa: F401  re-exported
    MERGED_SUFFIX,  # noqa: F401  re-exported
    PART_GLOB,
    PART_PREFIX,
    STALE_TMP_S,
    TMP_PREFIX,
    PendingParquet,
    rows_per_group,
    sql_literal,
    utcnow,
)
from songmill.data_schema.tables import SCHEMA_VERSION, SUPPORTED_SCHEMA_VERSIONS, table_spec

if TYPE_CHECKING:
    from songmill.data_schema.views import ManifestDelta, TableFiles


class CorpusError(RuntimeError):
    """The corpus cannot be used as asked (unknown schema version, not a corpus...)."""


def default_corpus_root() -> str:
    return os.environ.get("SONGMILL_CORPUS", "./corpus")


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
    def join_path(self, *parts: str) -> str:
        return (
            os.path.join(self.path, *parts) if self.is_local else posixpath.join(self.path, *parts)
        )

    def table_dir(self, table: str) -> str:
        return self.join_path(table)

    def url(self, path: str) -> str:
        """A path inside the corpus as DuckDB / fsspec should see it."""
        return path if self.is_local else self.fs.unstrip_protocol(path)

    def _check_or_init(self, create: bool) -> None:
        meta_path = self.join_path(CORPUS_FILE)
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
        if self.fs.glob(self.join_path("*", PART_GLOB)):
            raise CorpusError(
                f"{self.root} holds Parquet tables but no {CORPUS_FILE}: not a songmill corpus, or one "
                "written before schema versions existed. Refusing to guess its layout."
            )
        if not create:
            raise CorpusError(
                f"no corpus at {self.root}: name one with --corpus DIR or $SONGMILL_CORPUS "
                "(default ./corpus), or create it with `songmill ingest SOURCE`"
            )
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
        self.rename_into_place(tmp, dest)

    def rename_into_place(self, src: str, dest: str) -> None:
        if self.is_local:
            os.replace(src, dest)  # atomic on POSIX
        else:
            self.fs.mv(src, dest)

    def write(self, table: str, rows: Iterable[Mapping[str, Any]] | pa.Table) -> str | None:
        """Append rows to `table` as one new part file. Returns its path (None if no rows)."""
        spec = table_spec(table)
        data = (
            rows
            if isinstance(rows, pa.Table)
            else pa.Table.from_pylist(list(rows), schema=spec.schema)
        )
        if data.num_rows == 0:
            return None
        for f in spec.schema:  # columns the writer does not know of (lineage...) are NULL
            if f.name not in data.column_names:
                data = data.append_column(f, pa.nulls(data.num_rows, f.type))
        data = data.select(spec.schema.names).cast(spec.schema)
        if self.schema_version != SCHEMA_VERSION:
            self._upgrade_schema_version()
        data = data.replace_schema_metadata(
            {"songmill.schema_version": str(SCHEMA_VERSION), "songmill.table": table}
        )
        folder = self.table_dir(table)
        self.fs.makedirs(folder, exist_ok=True)
        name = f"part-{utcnow():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}.parquet"
        tmp, dest = self.join_path(table, TMP_PREFIX + name), self.join_path(table, name)
        with self.fs.open(tmp, "wb") as f:
            pq.write_table(
                data,
                f,
                compression="zstd",
                row_group_size=rows_per_group(data.nbytes / data.num_rows),
            )
            if self.is_local:
                f.flush()
                os.fsync(f.fileno())
        self.rename_into_place(tmp, dest)
        self._catalog_after_write(table)
        return dest

    def _catalog_after_write(self, table: str) -> None:
        """The catalog reads parts through a glob, so only a table's first part needs a rebuild."""
        if not self.is_local:
            return
        from songmill.data_schema.catalog import catalog_has_parts

        if not catalog_has_parts(self, table):
            self.refresh_catalog()

    def _upgrade_schema_version(self) -> None:
        """The first write into an older (still readable) corpus marks it with this version, so
        that an older songmill, which would ignore the new columns, refuses it."""
        meta_path = self.join_path(CORPUS_FILE)
        with self.fs.open(meta_path, "r") as f:
            meta = json.load(f)
        meta.setdefault("upgraded_from", []).append(meta.get("schema_version"))
        meta["schema_version"] = SCHEMA_VERSION
        meta["upgraded_at"] = utcnow().isoformat()
        self._atomic_write_bytes(meta_path, json.dumps(meta, indent=2).encode())
        self.schema_version = SCHEMA_VERSION

    def write_bytes(self, relpath: str, data: bytes) -> str:
        """Write a blob (a stem, a feature shard) atomically under the corpus; returns its URL."""
        dest = self.join_path(*relpath.split("/"))
        self.fs.makedirs(posixpath.dirname(dest), exist_ok=True)
        self._atomic_write_bytes(dest, data)
        return self.url(dest)

    # -- compaction --------------------------------------------------------------------------
    # -- compaction (compaction.py) and the manifest cache (manifest_cache.py) --------------
    def compact(
        self, table: str, min_parts: int = 1, memory_limit: str | None = None, manifest: bool = True
    ) -> int:
        """Major compaction of `table` (see compaction.compact). Returns parts merged."""
        return compaction.compact(self, table, min_parts, memory_limit, manifest)

    def merge_parts(self, table: str, memory_limit: str | None = None) -> int:
        """Minor compaction: many small parts -> one part (see compaction.merge_parts)."""
        return compaction.merge_parts(self, table, memory_limit)

    def compact_if_needed(
        self, tables: Iterable[str], max_parts: int = 64, min_ratio: float = 0.25
    ) -> None:
        """The end-of-run compaction check (see compaction.compact_if_needed)."""
        compaction.compact_if_needed(self, tables, max_parts, min_ratio)

    def manifest_dir(self) -> str:
        return manifest_cache.manifest_dir(self)

    def manifest_snapshot(self, files: Mapping[str, TableFiles] | None = None) -> str | None:
        """The manifest snapshot right for these table files (see manifest_cache.manifest_snapshot)."""
        return manifest_cache.manifest_snapshot(self, files)

    def manifest_base(
        self, files: Mapping[str, TableFiles] | None = None
    ) -> tuple[str, ManifestDelta | None] | None:
        """The manifest snapshot and delta right for these table files (see manifest_cache.manifest_base)."""
        return manifest_cache.manifest_base(self, files)

    def refresh_manifest_snapshot(self, memory_limit: str | None = None) -> str | None:
        """Write the manifest snapshot (see manifest_cache.refresh_snapshot); returns its path."""
        return manifest_cache.refresh_snapshot(self, memory_limit)

    def refresh_manifest_delta(self, memory_limit: str | None = None) -> str | None:
        """Write the manifest delta (see manifest_cache.refresh_delta); returns its path."""
        return manifest_cache.refresh_delta(self, memory_limit)

    # -- store primitives for compaction and the manifest cache ------------------------------
    def parquet_rows(self, path: str) -> int:
        with self.fs.open(path, "rb") as f:
            return pq.read_metadata(f).num_rows

    def row_bytes(self, urls: Iterable[str]) -> float:
        """Uncompressed bytes per row of these Parquet files (from their footers): what sizes
        batches and row groups by bytes, not rows (a row of beat lists weighs 1.4 kB)."""
        rows = size = 0
        for url in urls:
            with self.fs.open(self.fs_path(url), "rb") as f:
                meta = pq.read_metadata(f)
            rows += meta.num_rows
            size += sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        return size / rows if rows else 1.0

    def pending_parquet(self, folder: str, name: str, schema: pa.Schema) -> PendingParquet:
        """A Parquet file for `folder/name`, written under a temporary name and put in place
        only by its `publish()` (so a killed writer leaves nothing a reader sees)."""
        return PendingParquet(self, folder, name, schema)

    def write_buckets(
        self,
        con: duckdb.DuckDBPyConnection,
        folder: str,
        name: str,
        schema: pa.Schema,
        queries: Iterable[str],
        row_bytes: float,
    ) -> None:
        """Write the rows of each query in `queries` (the buckets, in order) into `folder/name`,
        streamed in batches of about ROW_GROUP_BYTES (one row group each), atomically."""
        out = self.pending_parquet(folder, name, schema)
        try:
            for query in queries:
                for batch in con.sql(query).to_arrow_reader(rows_per_group(row_bytes)):
                    out.write(pa.Table.from_batches([batch]))
            out.publish()
        finally:
            out.discard()

    @contextlib.contextmanager
    def spill_dir(self) -> Iterator[str]:
        """A scratch folder for one compaction (DuckDB's spill, bucket files): inside a local
        corpus (its disk has room for the corpus; songmill's own, named as a temporary, so
        `clean_stale_temporaries` removes one a kill left), else the system's temporary folder."""
        if self.is_local:
            path = self.join_path(f"{TMP_PREFIX}spill-{uuid.uuid4().hex}")
            os.makedirs(path)
        else:
            path = tempfile.mkdtemp(prefix="songmill-spill-")
        try:
            yield path
        finally:
            shutil.rmtree(path, ignore_errors=True)

    @contextlib.contextmanager
    def bounded_connection(
        self, memory_limit: str | None = None, spill: str | None = None
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        """An in-memory DuckDB connection under `memory_limit` (COMPACT_MEMORY_LIMIT when not
        given), spilling past it into `spill` (a spill_dir of its own when not given)."""
        with contextlib.ExitStack() as stack:
            folder = spill if spill is not None else stack.enter_context(self.spill_dir())
            con = duckdb.connect(":memory:")
            stack.callback(con.close)
            con.execute(
                f"SET memory_limit = {sql_literal(memory_limit or layout.COMPACT_MEMORY_LIMIT)}"
            )
            con.execute(f"SET temp_directory = {sql_literal(folder)}")
            con.execute("SET preserve_insertion_order = false")
            con.execute(f"SET threads = {COMPACT_THREADS}")
            con.execute("SET enable_progress_bar = false")
            if not self.is_local:
                con.register_filesystem(self.fs)
            yield con

    def fs_path(self, url: str) -> str:
        return url if self.is_local else self.fs._strip_protocol(url)

    @contextlib.contextmanager
    def exclusive_lock(self, table: str) -> Iterator[None]:
        """One compaction per table at a time (two would both merge the same parts)."""
        if not self.is_local:  # object stores have no locks: compaction there is one writer's job
            yield
            return
        os.makedirs(self.table_dir(table), exist_ok=True)
        with open(self.join_path(table, LOCK_FILE), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def clean_stale_temporaries(self, older_than_s: float = STALE_TMP_S) -> int:
        """Remove temporaries left by killed runs. Readers never look at them anyway."""
        removed = 0
        now = time.time()
        for path in [
            *self.fs.glob(self.join_path(f"{TMP_PREFIX}*")),
            *self.fs.glob(self.join_path("*", f"{TMP_PREFIX}*")),
        ]:
            try:
                mtime = self.fs.modified(path).timestamp()
            except Exception:  # some filesystems do not report mtimes
                continue
            if now - mtime > older_than_s:
                self.fs.rm(path, recursive=True)  # a spill folder too
                removed += 1
        return removed

    # -- reads ------------------------------------------------------------------------------
    def list_files(self, table: str) -> list[str]:
        if self.is_local:  # a plain listing: fsspec's glob costs more than the query at times
            folder = self.join_path(table)
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                return []
            return sorted(
                os.path.join(folder, n)
                for n in names
                if n.endswith(".parquet") and not n.startswith(".")
            )
        return sorted(self.fs.glob(self.join_path(table, "*.parquet")))

    def file_sizes(self, table: str) -> dict[str, int]:
        folder = self.table_dir(table)
        if not self.fs.exists(folder):
            return {}
        return {
            e["name"]: int(e.get("size") or 0)
            for e in self.fs.ls(folder, detail=True)
            if e["name"].endswith(".parquet")
            and not posixpath.basename(e["name"]).startswith(TMP_PREFIX)
        }

    def table_files(self, table: str) -> TableFiles:
        """The table's snapshot, history files and parts since the snapshot, as URLs."""
        from songmill.data_schema.views import TableFiles

        snapshot, history, parts = None, [], []
        for path in self.list_files(table):
            name = posixpath.basename(path)
            if name.startswith(CURRENT_PREFIX):
                snapshot = path  # sorted: the newest wins (an older one is debris of a kill)
            elif name.startswith(HISTORY_PREFIX):
                history.append(path)
            elif name.startswith(PART_PREFIX):
                parts.append(path)
        return TableFiles(
            self.url(snapshot) if snapshot else None,
            tuple(self.url(p) for p in history),
            tuple(self.url(p) for p in parts),
        )

    def part_files(self, table: str) -> list[str]:
        """Every file holding raw rows of the table (history + parts), oldest first."""
        return [
            p
            for p in self.list_files(table)
            if posixpath.basename(p).startswith((HISTORY_PREFIX, PART_PREFIX))
        ]

    def part_glob_url(self, table: str) -> str:
        return self.url(self.join_path(table, PART_GLOB))

    def connect(self) -> duckdb.DuckDBPyConnection:
        """A DuckDB connection with a view per table and the joined `manifest`: for a local
        corpus the catalog `songmill.duckdb` (checked against a listing of the table folders,
        rebuilt when stale), so a call builds no view; otherwise views built in memory."""
        if self.is_local:
            from songmill.data_schema.catalog import open_catalog

            try:
                return open_catalog(self)
            except (OSError, duckdb.IOException, duckdb.PermissionException):
                pass  # a read-only mount with a stale catalog: views in memory, as below
        return self.connect_in_memory()

    def connect_in_memory(self) -> duckdb.DuckDBPyConnection:
        """An in-memory connection with every view built for the files present now."""
        from songmill.data_schema.tables import TABLES
        from songmill.data_schema.views import create_views

        files = {name: self.table_files(name) for name in TABLES}
        con = duckdb.connect(":memory:")
        if not self.is_local:
            con.register_filesystem(self.fs)
        snapshot, delta = self.manifest_base(files) or (None, None)
        create_views(con, files, manifest_snapshot=snapshot, manifest_delta=delta)
        return con

    # -- catalog -----------------------------------------------------------------------------
    @property
    def catalog_path(self) -> str:
        return self.join_path(CATALOG_FILE)

    def refresh_catalog(self) -> str | None:
        """Rebuild `<corpus>/songmill.duckdb` (local corpora; see catalog.py)."""
        if not self.is_local:
            return None
        from songmill.data_schema.catalog import write_catalog

        return write_catalog(self)

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
