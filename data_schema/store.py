"""The corpus on disk: Parquet part files per table, written atomically, read through DuckDB.

A corpus is a directory (or fsspec URL) holding `songmill.json` (the schema version) and one
folder per table. Every write is one new part file, written under a temporary name and renamed
into place, so a killed process leaves no partial part and readers never see half a batch.
Nothing is updated in place: "latest" is resolved in the DuckDB views (see views.py).

Per table folder: `part-*.parquet` (rows appended since the last compaction), `history-*.parquet`
(earlier parts, merged) and one `current-*.parquet` (the deduplicated current rows, sorted by key).
Compaction streams through DuckDB under a memory limit, so it runs in bounded memory at any size.
Every file written by a merge records the files it replaces in its Parquet metadata; a merge killed
before removing them is finished by the next one (roll forward), so no row is ever doubled.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import posixpath
import shutil
import tempfile
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import duckdb
import fsspec
import pyarrow as pa
import pyarrow.parquet as pq
from songmill.data_schema.tables import SCHEMA_VERSION, SUPPORTED_SCHEMA_VERSIONS, table_spec

if TYPE_CHECKING:
    from songmill.data_schema.views import DedupRule, ManifestDelta, TableFiles, ViewSql

CORPUS_FILE = "songmill.json"
CATALOG_FILE = "songmill.duckdb"
PART_PREFIX = "part-"
HISTORY_PREFIX = "history-"
CURRENT_PREFIX = "current-"
PART_GLOB = "part-*.parquet"
MERGED_SUFFIX = "-merged.parquet"
MERGED_FROM_KEY = "songmill.merged_from"
LOCK_FILE = ".compact.lock"
# The manifest snapshot: the joined current rows of every table, written after compaction.
MANIFEST_DIR = "_manifest"
MANIFEST_PREFIX = "manifest-"
MANIFEST_OF_KEY = "songmill.manifest_of"
# The manifest delta: the tracks that parts written since the snapshot touch, re-joined.
MANIFEST_DELTA_PREFIX = "delta-"
# Past this share of a table's snapshot in parts that no manifest delta covers, the manifest is
# joined in full instead (and the end of a run writes a new delta).
MANIFEST_MAX_DELTA = 0.02
# A new delta copies the previous one: written for parts under MANIFEST_MAX_DELTA only while
# that copy is at most this many times their bytes, so the delta grows geometrically and the
# copies of a compaction cycle add up to a bounded multiple of its rows (amortised linear).
MANIFEST_DELTA_COPY_RATIO = 8
TMP_PREFIX = ".tmp-"
# Compaction runs under this DuckDB memory limit and spills to disk past it.
COMPACT_MEMORY_LIMIT = "1GB"
COMPACT_THREADS = 2
ROW_GROUP_SIZE = 122_880
# Snapshots are rebuilt in buckets of about this many uncompressed bytes (Parquet on disk
# expands about this much in memory), so a compaction's memory does not grow with the table.
SNAPSHOT_BUCKET_BYTES = 256 * 2**20
PARQUET_EXPANSION = 4
# Fewer parts than this never trigger an automatic compaction.
MIN_COMPACT_PARTS = 8
# Stale temporaries older than this are debris of killed runs; younger ones may be in flight.
STALE_TMP_S = 6 * 3600


class CorpusError(RuntimeError):
    """The corpus cannot be used as asked (unknown schema version, not a corpus...)."""


def default_corpus_root() -> str:
    return os.environ.get("SONGMILL_CORPUS", "./corpus")


def utcnow() -> datetime:
    return datetime.now(UTC)


def _sql_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _hex_bound(i: int, n: int) -> str:
    """The i-th of n equal boundaries in the space of hex track ids (sha256 digests)."""
    return f"{(i * 16**8) // n:08x}"


def _track_bucket(bucket: int, buckets: int) -> str:
    """The SQL condition of one of `buckets` equal track_id ranges."""
    if buckets == 1:
        return "true"
    lo, hi = _hex_bound(bucket, buckets), _hex_bound(bucket + 1, buckets)
    return " AND ".join(
        ([f"track_id >= {_sql_literal(lo)}"] if bucket > 0 else [])
        + ([f"track_id < {_sql_literal(hi)}"] if bucket < buckets - 1 else [])
    ) or "true"


_MANIFEST_OF: dict[str, Any] = {}


def _manifest_of(corpus: Corpus, path: str) -> Any:
    """What a manifest snapshot or delta was built from (its Parquet metadata; files never change)."""
    if path not in _MANIFEST_OF:
        with corpus.fs.open(path, "rb") as f:
            meta = pq.read_metadata(f).metadata or {}
        _MANIFEST_OF[path] = json.loads(meta.get(MANIFEST_OF_KEY.encode(), b"null"))
    return _MANIFEST_OF[path]


def _past_max_delta(uncovered: Mapping[str, tuple[int, int]]) -> bool:
    """Whether any table's parts outside the delta pass MANIFEST_MAX_DELTA of its snapshot
    (`uncovered`: Corpus._uncovered_parts)."""
    return any(parts > MANIFEST_MAX_DELTA * snapshot for parts, snapshot in uncovered.values())


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
        tmp, dest = self._join(table, TMP_PREFIX + name), self._join(table, name)
        with self.fs.open(tmp, "wb") as f:
            pq.write_table(data, f, compression="zstd")
            if self.is_local:
                f.flush()
                os.fsync(f.fileno())
        self._rename(tmp, dest)
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
        meta_path = self._join(CORPUS_FILE)
        with self.fs.open(meta_path, "r") as f:
            meta = json.load(f)
        meta.setdefault("upgraded_from", []).append(meta.get("schema_version"))
        meta["schema_version"] = SCHEMA_VERSION
        meta["upgraded_at"] = utcnow().isoformat()
        self._atomic_write_bytes(meta_path, json.dumps(meta, indent=2).encode())
        self.schema_version = SCHEMA_VERSION

    def write_bytes(self, relpath: str, data: bytes) -> str:
        """Write a blob (a stem, a feature shard) atomically under the corpus; returns its URL."""
        dest = self._join(*relpath.split("/"))
        self.fs.makedirs(posixpath.dirname(dest), exist_ok=True)
        self._atomic_write_bytes(dest, data)
        return self.url(dest)

    # -- compaction --------------------------------------------------------------------------
    def compact(self, table: str, min_parts: int = 1, memory_limit: str = COMPACT_MEMORY_LIMIT, manifest: bool = True) -> int:
        """Major compaction: a new `current-*` snapshot (old snapshot + parts, deduplicated,
        sorted by key) and the parts merged into one `history-*` file. Returns parts merged.

        Order matters for a kill at any point: the snapshot lands first (it covers the parts,
        which are still there, so views stay right), then the history file (listing the parts it
        replaces), then the catalog, then the parts go. A history file whose parts still exist is
        finished by the next compaction (`_finish_merges`).
        """
        from songmill.data_schema.views import ViewSql, dedup_rule

        with self._compaction_lock(table):
            self._finish_merges(table)
            files = self.table_files(table)
            if len(files.parts) < min_parts:
                return 0
            spec = table_spec(table)
            rule = dedup_rule(spec)
            names = [posixpath.basename(p) for p in files.parts]
            stamp = f"{utcnow():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}"
            with self._bounded_connection(memory_limit) as con:
                views = ViewSql({table: files})
                if rule is not None:
                    self._write_snapshot(con, table, files, views, rule, f"current-{stamp}.parquet")
                self._copy_to(
                    con, views._read(table, files.parts), table, f"history-{stamp}.parquet",
                    {MERGED_FROM_KEY: json.dumps(names)},
                )
            self.refresh_catalog()
            for path in files.parts:
                self.fs.rm(path)
            if files.snapshot and rule is not None:
                self.fs.rm(files.snapshot)
            self.refresh_catalog()
        if manifest:
            self.refresh_manifest_snapshot()
        return len(files.parts)

    def merge_parts(self, table: str, memory_limit: str = COMPACT_MEMORY_LIMIT) -> int:
        """Minor compaction: many small parts -> one part (the snapshot is left alone)."""
        with self._compaction_lock(table):
            self._finish_merges(table)
            files = self.table_files(table)
            if len(files.parts) < 2:
                return 0
            from songmill.data_schema.views import ViewSql

            names = [posixpath.basename(p) for p in files.parts]
            stamp = f"{utcnow():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}"
            with self._bounded_connection(memory_limit) as con:
                self._copy_to(
                    con, ViewSql({table: files})._read(table, files.parts), table,
                    f"part-{stamp}{MERGED_SUFFIX}", {MERGED_FROM_KEY: json.dumps(names)},
                )
            for path in files.parts:
                self.fs.rm(path)
            return len(files.parts)

    def compact_if_needed(self, tables: Iterable[str], max_parts: int = 64, min_ratio: float = 0.25) -> None:
        """Compact when the rows since the snapshot reach `min_ratio` of it (so a table is
        rewritten a bounded number of times as it grows: amortised linear), or merge parts
        when they pile up past `max_parts` (cheap: the snapshot is not touched). Then bring the
        manifest up to date: a new snapshot after a compaction, then a new delta for the parts
        since (of the tables not compacted, after one)."""
        compacted = False
        for table in tables:
            sizes = self._file_sizes(table)
            parts = {p: n for p, n in sizes.items() if posixpath.basename(p).startswith(PART_PREFIX)}
            if not parts:
                continue
            snapshot = sum(n for p, n in sizes.items() if posixpath.basename(p).startswith(CURRENT_PREFIX))
            if len(parts) >= MIN_COMPACT_PARTS and sum(parts.values()) >= min_ratio * snapshot:
                compacted |= self.compact(table, manifest=False) > 0
            elif len(parts) > max_parts:
                self.merge_parts(table)
        if compacted:  # once per call, however many tables it compacted
            self.refresh_manifest_snapshot()
        # also after a snapshot: it holds no parts, and the tables not compacted may have many
        self.refresh_manifest_delta()

    # -- manifest snapshot -------------------------------------------------------------------
    def manifest_dir(self) -> str:
        return self._join(MANIFEST_DIR)

    def manifest_snapshot(self, files: Mapping[str, TableFiles] | None = None) -> str | None:
        """The manifest snapshot that is right for these table files (None: there is none, or
        a table was compacted since it was written; the manifest is then joined in full)."""
        base = self.manifest_base(files)
        return base[0] if base else None

    def manifest_base(self, files: Mapping[str, TableFiles] | None = None) -> tuple[str, ManifestDelta | None] | None:
        """The manifest snapshot right for these table files and the manifest delta on top of it
        (None: no delta, or one covering parts no longer there); None when there is no usable
        snapshot, or the parts neither covers are too many to join at query time."""
        from songmill.data_schema.tables import TABLES

        files = files if files is not None else {t: self.table_files(t) for t in TABLES}
        snapshot = self._matching_manifest_snapshot(files)
        if snapshot is None:
            return None
        delta = self._manifest_delta(snapshot, files)
        if self._manifest_delta_too_large(files, delta.covered if delta else {}):
            return None
        return self.url(snapshot), delta

    def _matching_manifest_snapshot(self, files: Mapping[str, TableFiles]) -> str | None:
        """The newest manifest snapshot if it was built from these tables' snapshots."""
        from songmill.data_schema.views import manifest_signature, manifest_tokens

        newest = self._newest_manifest_snapshot()
        if newest is None:
            return None
        wanted = {"signature": manifest_signature(), "tables": manifest_tokens(dict(files))}
        return newest if _manifest_of(self, newest) == wanted else None

    def _manifest_delta(self, snapshot: str, files: Mapping[str, TableFiles]) -> ManifestDelta | None:
        """The newest manifest delta written on `snapshot` whose parts are all still there."""
        from songmill.data_schema.views import ManifestDelta, manifest_signature

        deltas = [p for p in self._list(MANIFEST_DIR) if posixpath.basename(p).startswith(MANIFEST_DELTA_PREFIX)]
        if not deltas:
            return None
        built_from = _manifest_of(self, deltas[-1]) or {}
        if built_from.get("on") != posixpath.basename(snapshot) or built_from.get("signature") != manifest_signature():
            return None
        covered = {t: frozenset(names) for t, names in built_from.get("covered", {}).items()}
        for table, names in covered.items():
            present = {posixpath.basename(p) for p in files[table].parts} if table in files else set()
            if not names <= present:
                return None  # those parts were merged: their rows are elsewhere now
        return ManifestDelta(self.url(deltas[-1]), covered)

    def _uncovered_parts(self, files: Mapping[str, TableFiles], covered: Mapping[str, frozenset[str]]) -> dict[str, tuple[int, int]]:
        """Per manifest table with parts the delta does not cover: (their bytes, the table
        snapshot's bytes)."""
        from songmill.data_schema.views import manifest_tables

        out = {}
        for table in manifest_tables():
            table_files = files.get(table)
            if table_files is None or not table_files.parts:
                continue
            sizes = self._file_sizes(table)
            skip = covered.get(table, frozenset())
            parts = sum(sizes.get(self._strip(u), 0) for u in table_files.parts if posixpath.basename(u) not in skip)
            if parts:
                out[table] = (parts, sizes.get(self._strip(table_files.snapshot), 0) if table_files.snapshot else 0)
        return out

    def _manifest_delta_too_large(self, files: Mapping[str, TableFiles], covered: Mapping[str, frozenset[str]]) -> bool:
        """Whether the parts written since the snapshot (less those the delta covers) are too
        many for the snapshot + delta view to pay: re-joining a large share of the tracks costs
        more than the full join (at 2 M tracks a 400 k-track delta made a group 4.0 s against
        2.4 s joined in full)."""
        return _past_max_delta(self._uncovered_parts(files, covered))

    def _newest_manifest_snapshot(self) -> str | None:
        names = [p for p in self._list(MANIFEST_DIR) if posixpath.basename(p).startswith(MANIFEST_PREFIX)]
        return names[-1] if names else None

    def refresh_manifest_delta(self, memory_limit: str = COMPACT_MEMORY_LIMIT) -> str | None:
        """Between compactions: when parts since the manifest snapshot are not in the delta,
        write the manifest delta, the re-joined rows of every track they touch (sorted by
        track_id, in buckets): the previous delta's rows, less the tracks that parts written
        since touch, which are joined again. Its cost follows the new parts (and a copy of the
        previous delta), not the corpus: the manifest stays a read of two files however far the
        last compaction lies behind. Small parts go in too (a part left to the query re-joins
        its tracks on every query: at 2 M tracks, 1 000 qc rows made a group 0.78 s against
        0.50 s), unless the copy would cost more than MANIFEST_DELTA_COPY_RATIO times them.
        Returns its path (None: nothing to do, or no snapshot to put it on)."""
        from songmill.data_schema.tables import TABLES
        from songmill.data_schema.views import (
            ViewSql,
            create_views,
            manifest_signature,
            manifest_sql,
            manifest_tables,
        )

        with self._compaction_lock(MANIFEST_DIR):
            files = {t: self.table_files(t) for t in TABLES}
            snapshot = self._matching_manifest_snapshot(files)
            if snapshot is None:
                return None
            delta = self._manifest_delta(snapshot, files)
            uncovered = self._uncovered_parts(files, delta.covered if delta else {})
            if not uncovered:
                return None  # every part is in the delta already
            kept_bytes = self._file_sizes(MANIFEST_DIR).get(self._strip(delta.path), 0) if delta else 0
            new_bytes = sum(parts for parts, _ in uncovered.values())
            if kept_bytes > MANIFEST_DELTA_COPY_RATIO * new_bytes and not _past_max_delta(uncovered):
                return None  # a few rows on a large delta: left to the query until they add up
            with_parts = [t for t in manifest_tables() if files[t].parts]
            views = ViewSql(files, manifest_delta=delta)  # its live parts: those the delta does not cover
            keys = [views.changed_tracks(t, live) for t in with_parts if (live := views.live_parts(t)) is not None]
            if any(k is None for k in keys):
                return None  # some table's rows can change any track: only a full join is right
            covered = {t: sorted(posixpath.basename(p) for p in files[t].parts) for t in with_parts}
            name = f"{MANIFEST_DELTA_PREFIX}{utcnow():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}.parquet"
            built_from = {"on": posixpath.basename(snapshot), "signature": manifest_signature(), "covered": covered}
            with self._bounded_connection(memory_limit) as con:
                create_views(con, files)
                union = " UNION ".join(f"({k})" for k in keys)
                con.execute(f"CREATE TEMP TABLE _dkeys AS SELECT DISTINCT track_id FROM ({union}) WHERE track_id IS NOT NULL")
                # its rows weigh about what the same share of the snapshot's rows does
                rows = con.execute("SELECT count(*) FROM _dkeys").fetchall()[0][0] + (self._parquet_rows(delta.path) if delta else 0)
                share = rows / max(1, self._parquet_rows(snapshot))
                kept = f"read_parquet({_sql_literal(delta.path)})" if delta else None
                on_disk = share * self._file_sizes(MANIFEST_DIR).get(self._strip(snapshot), 0)
                buckets = max(1, math.ceil(on_disk * PARQUET_EXPANSION / SNAPSHOT_BUCKET_BYTES))
                schema = con.sql("SELECT * FROM manifest LIMIT 0").to_arrow_table().schema
                meta = {b"songmill.schema_version": str(SCHEMA_VERSION).encode(), MANIFEST_OF_KEY.encode(): json.dumps(built_from).encode()}

                def bucket_sql(cond: str) -> str:
                    fresh = manifest_sql(views.restricted(f"(SELECT track_id FROM _dkeys WHERE {cond})"))
                    if kept is None:
                        return f"SELECT * FROM ({fresh}) ORDER BY track_id"
                    # the previous delta's rows stay right for the tracks no newer part touches
                    old_rows = f"SELECT * FROM {kept} WHERE {cond} AND track_id NOT IN (SELECT track_id FROM _dkeys)"
                    return f"SELECT * FROM ({old_rows} UNION ALL BY NAME {fresh}) ORDER BY track_id"

                self._write_buckets(con, MANIFEST_DIR, name, schema.with_metadata(meta), buckets, bucket_sql)
            self._remove_manifest_files(keep=(posixpath.basename(snapshot), name))
            self.refresh_catalog()
            return self._join(MANIFEST_DIR, name)

    def _parquet_rows(self, path: str) -> int:
        with self.fs.open(path, "rb") as f:
            return pq.read_metadata(f).num_rows

    def _remove_manifest_files(self, keep: tuple[str, ...]) -> None:
        """Remove every manifest snapshot and delta but `keep` (superseded: nothing reads them)."""
        for old in self._list(MANIFEST_DIR):
            if posixpath.basename(old).startswith((MANIFEST_PREFIX, MANIFEST_DELTA_PREFIX)) and posixpath.basename(old) not in keep:
                self.fs.rm(old)

    def refresh_manifest_snapshot(self, memory_limit: str = COMPACT_MEMORY_LIMIT) -> str | None:
        """Write the manifest snapshot: every table's snapshot and history joined once, sorted
        by track_id, in track_id buckets (bounded memory). The manifest view then reads this one
        file, joining again only the tracks that parts written since touch. Returns its path."""
        from songmill.data_schema.tables import TABLES
        from songmill.data_schema.views import (
            TableFiles,
            create_views,
            dedup_rule,
            manifest_signature,
            manifest_sql,
            manifest_tables,
            manifest_tokens,
            multi_path_sources_sql,
        )

        with self._compaction_lock(MANIFEST_DIR):
            current = {t: self.table_files(t) for t in TABLES}
            base = {t: TableFiles(f.snapshot, f.history, ()) for t, f in current.items()}
            built_from = {"signature": manifest_signature(), "tables": manifest_tokens(base)}
            newest = self._newest_manifest_snapshot()
            if newest is not None and _manifest_of(self, newest) == built_from:
                return newest  # nothing was compacted since
            # what the join reads: each table's snapshot (its history where every row counts)
            on_disk = 0
            for t in manifest_tables():
                sizes = self._file_sizes(t)
                read = set(base[t].history) if dedup_rule(TABLES[t]) is None else {base[t].snapshot}
                on_disk += sum(sizes.get(self._strip(u), 0) for u in read if u)
            buckets = max(1, math.ceil(on_disk * PARQUET_EXPANSION / SNAPSHOT_BUCKET_BYTES))
            name = f"{MANIFEST_PREFIX}{utcnow():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}.parquet"
            with self._bounded_connection(memory_limit) as con:
                create_views(con, base)
                schema = con.sql("SELECT * FROM manifest LIMIT 0").to_arrow_table().schema
                meta = {b"songmill.schema_version": str(SCHEMA_VERSION).encode(), MANIFEST_OF_KEY.encode(): json.dumps(built_from).encode()}
                # one pass over `sources` (not sorted by track_id: each bucket would scan it all,
                # 0.76 s a bucket at 20 M tracks, quadratic in all)
                con.execute(f"CREATE TEMP TABLE _multi_path_sources AS {multi_path_sources_sql()}")
                source = lambda src: "_multi_path_sources" if src == "sources" else src  # noqa: E731
                # the bucket's range on every joined source, not only on the left side
                self._write_buckets(
                    con, MANIFEST_DIR, name, schema.with_metadata(meta), buckets,
                    lambda cond: f"SELECT * FROM ({manifest_sql(lambda src: f'(SELECT * FROM {source(src)} WHERE {cond})')}) ORDER BY track_id",
                )
            self._remove_manifest_files(keep=(name,))
            self.refresh_catalog()
            return self._join(MANIFEST_DIR, name)

    def _write_buckets(
        self, con: duckdb.DuckDBPyConnection, folder: str, name: str, schema: pa.Schema, buckets: int, query: Any,
        condition: Any = None,
    ) -> None:
        """Write `query(condition)` for each bucket (track_id ranges unless `condition(bucket,
        buckets)` says otherwise), in order, into `folder/name` through a temporary file and an
        atomic rename."""
        condition = condition or _track_bucket
        self.fs.makedirs(self._join(folder), exist_ok=True)
        dest = self._join(folder, name)
        local = dest if self.is_local else tempfile.NamedTemporaryFile(suffix=".parquet", delete=False).name
        tmp = self._join(folder, TMP_PREFIX + name) if self.is_local else local
        writer = pq.ParquetWriter(tmp, schema, compression="zstd")
        try:
            for bucket in range(buckets):
                reader = con.sql(query(condition(bucket, buckets))).to_arrow_reader(ROW_GROUP_SIZE)
                for batch in reader:
                    writer.write_table(pa.Table.from_batches([batch]).cast(schema), row_group_size=ROW_GROUP_SIZE)
            writer.close()
            if self.is_local:
                with open(tmp, "rb+") as f:
                    os.fsync(f.fileno())
                self._rename(tmp, dest)
            else:
                remote_tmp = self._join(folder, TMP_PREFIX + name)
                self.fs.put_file(local, remote_tmp)
                self._rename(remote_tmp, dest)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
            if not self.is_local and os.path.exists(local):
                os.remove(local)

    def _finish_merges(self, table: str) -> None:
        """Roll forward a merge that was killed before removing the files it replaced."""
        present = {posixpath.basename(p): p for p in self._list(table)}
        for name, path in present.items():
            if not (name.startswith(HISTORY_PREFIX) or name.endswith(MERGED_SUFFIX)):
                continue
            with self.fs.open(path, "rb") as f:
                meta = pq.read_metadata(f).metadata or {}
            merged = json.loads(meta.get(MERGED_FROM_KEY.encode(), b"[]"))
            for old in merged:
                if old in present and old != name:
                    self.fs.rm(present[old])
        snapshots = sorted(n for n in present if n.startswith(CURRENT_PREFIX))
        for old in snapshots[:-1]:  # a newer snapshot covers everything an older one did
            self.fs.rm(present[old])

    @contextlib.contextmanager
    def _bounded_connection(self, memory_limit: str) -> Iterator[duckdb.DuckDBPyConnection]:
        spill = tempfile.mkdtemp(prefix="songmill-compact-")
        con = duckdb.connect(":memory:")
        try:
            con.execute(f"SET memory_limit = '{memory_limit}'")
            con.execute(f"SET temp_directory = '{spill}'")
            con.execute("SET preserve_insertion_order = false")
            con.execute(f"SET threads = {COMPACT_THREADS}")
            con.execute("SET enable_progress_bar = false")
            if not self.is_local:
                con.register_filesystem(self.fs)
            yield con
        finally:
            con.close()
            shutil.rmtree(spill, ignore_errors=True)

    def _write_snapshot(self, con: duckdb.DuckDBPyConnection, table: str, files: TableFiles, views: ViewSql, rule: DedupRule, name: str) -> None:
        """The deduplicated snapshot, computed bucket by bucket so memory stays bounded at any
        table size: track_id ranges (the snapshot stays sorted by track_id, and its row-group
        statistics let each bucket skip the rest of it), or key hashes for other keys."""
        from songmill.data_schema.views import current_sql

        spec = table_spec(table)
        sizes = self._file_sizes(table)
        inputs = [files.snapshot, *files.parts] if files.snapshot else list(files.parts)
        on_disk = sum(sizes.get(self._strip(u), 0) for u in inputs)
        buckets = max(1, math.ceil(on_disk * PARQUET_EXPANSION / SNAPSHOT_BUCKET_BYTES))
        order = ", ".join(rule.partition)
        columns = ", ".join(f'"{n}"' for n in spec.schema.names)
        meta = {b"songmill.schema_version": str(SCHEMA_VERSION).encode(), b"songmill.table": table.encode()}

        def bucket_sql(cond: str) -> str:
            snapshot = f"SELECT * FROM ({views._read(table, (files.snapshot,))}) WHERE {cond}" if files.snapshot else None
            delta = f"SELECT * FROM ({views._read(table, files.parts)}) WHERE {cond}"
            return f"SELECT {columns} FROM ({current_sql(rule, snapshot, delta, '')}) ORDER BY {order}"

        by_hash = None if rule.partition == ("track_id",) else (
            lambda bucket, n: "true" if n == 1 else f"hash({order}) % {n} = {bucket}"
        )
        self._write_buckets(con, table, name, spec.schema.with_metadata(meta), buckets, bucket_sql, by_hash)

    def _strip(self, url: str) -> str:
        return url if self.is_local else self.fs._strip_protocol(url)

    def _copy_to(self, con: duckdb.DuckDBPyConnection, sql: str, table: str, name: str, metadata: dict[str, str]) -> None:
        """COPY a query to `table/name` through a temporary file and an atomic rename."""
        meta = {"songmill.schema_version": str(SCHEMA_VERSION), "songmill.table": table} | metadata
        kv = ", ".join(f"{_sql_literal(k)}: {_sql_literal(v)}" for k, v in meta.items())
        options = f"FORMAT parquet, COMPRESSION zstd, ROW_GROUP_SIZE {ROW_GROUP_SIZE}, KV_METADATA {{{kv}}}"
        dest = self._join(table, name)
        if self.is_local:
            tmp = self._join(table, TMP_PREFIX + name)
            con.execute(f"COPY ({sql}) TO {_sql_literal(tmp)} ({options})")
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
            self._rename(tmp, dest)
            return
        local = tempfile.NamedTemporaryFile(suffix=".parquet", delete=False).name
        try:
            con.execute(f"COPY ({sql}) TO {_sql_literal(local)} ({options})")
            tmp = self._join(table, TMP_PREFIX + name)
            self.fs.put_file(local, tmp)
            self._rename(tmp, dest)
        finally:
            os.remove(local)

    @contextlib.contextmanager
    def _compaction_lock(self, table: str) -> Iterator[None]:
        """One compaction per table at a time (two would both merge the same parts)."""
        if not self.is_local:  # object stores have no locks: compaction there is one writer's job
            yield
            return
        os.makedirs(self.table_dir(table), exist_ok=True)
        with open(self._join(table, LOCK_FILE), "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

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
    def _list(self, table: str) -> list[str]:
        if self.is_local:  # a plain listing: fsspec's glob costs more than the query at times
            folder = self._join(table)
            try:
                names = os.listdir(folder)
            except FileNotFoundError:
                return []
            return sorted(os.path.join(folder, n) for n in names if n.endswith(".parquet") and not n.startswith("."))
        return sorted(self.fs.glob(self._join(table, "*.parquet")))

    def _file_sizes(self, table: str) -> dict[str, int]:
        folder = self.table_dir(table)
        if not self.fs.exists(folder):
            return {}
        return {
            e["name"]: int(e.get("size") or 0)
            for e in self.fs.ls(folder, detail=True)
            if e["name"].endswith(".parquet") and not posixpath.basename(e["name"]).startswith(TMP_PREFIX)
        }

    def table_files(self, table: str) -> TableFiles:
        """The table's snapshot, history files and parts since the snapshot, as URLs."""
        from songmill.data_schema.views import TableFiles

        snapshot, history, parts = None, [], []
        for path in self._list(table):
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
        return [p for p in self._list(table) if posixpath.basename(p).startswith((HISTORY_PREFIX, PART_PREFIX))]

    def part_glob_url(self, table: str) -> str:
        return self.url(self._join(table, PART_GLOB))

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
        return self._join(CATALOG_FILE)

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
