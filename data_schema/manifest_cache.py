"""The manifest cache: the joined manifest written to Parquet, so a query reads files, not a join.

`_manifest/manifest-*.parquet` (the snapshot) is every table's snapshot and history joined once,
after a compaction, sorted by track_id. `_manifest/delta-*.parquet` (the delta) holds the re-joined
rows of the tracks that parts written since touch, kept up at the end of every run. Each file
records in its Parquet metadata what it was built from; the views (views.py) use the newest
snapshot only while it matches the table files present, and the delta only while its parts are.
"""

from __future__ import annotations

import json
import posixpath
import uuid
from collections.abc import Mapping
from typing import Any

import pyarrow.parquet as pq
from songmill.data_schema.layout import (
    Store,
    bucket_count,
    buckets_for,
    sql_literal,
    track_bucket,
    utcnow,
)
from songmill.data_schema.tables import SCHEMA_VERSION, TABLES
from songmill.data_schema.views import (
    ManifestDelta,
    TableFiles,
    ViewSql,
    create_views,
    dedup_rule,
    manifest_signature,
    manifest_sql,
    manifest_tables,
    manifest_tokens,
    multi_path_sources_sql,
)

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
# A delta bucket re-resolves each table's rows of its tracks (a window over every column, beat
# lists too) before joining and sorting them: it holds about this many copies of its rows.
DELTA_JOIN_EXPANSION = 4

_MANIFEST_OF: dict[str, Any] = {}


def _manifest_of(corpus: Store, path: str) -> Any:
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


def manifest_dir(corpus: Store) -> str:
    return corpus.join_path(MANIFEST_DIR)


def manifest_snapshot(corpus: Store, files: Mapping[str, TableFiles] | None = None) -> str | None:
    """The manifest snapshot that is right for these table files (None: there is none, or
    a table was compacted since it was written; the manifest is then joined in full)."""
    base = manifest_base(corpus, files)
    return base[0] if base else None


def manifest_base(
    corpus: Store, files: Mapping[str, TableFiles] | None = None
) -> tuple[str, ManifestDelta | None] | None:
    """The manifest snapshot right for these table files and the manifest delta on top of it
    (None: no delta, or one covering parts no longer there); None when there is no usable
    snapshot, or the parts neither covers are too many to join at query time."""

    files = files if files is not None else {t: corpus.table_files(t) for t in TABLES}
    snapshot = _matching_snapshot(corpus, files)
    if snapshot is None:
        return None
    delta = _delta(corpus, snapshot, files)
    if _delta_too_large(corpus, files, delta.covered if delta else {}):
        return None
    return corpus.url(snapshot), delta


def _matching_snapshot(corpus: Store, files: Mapping[str, TableFiles]) -> str | None:
    """The newest manifest snapshot if it was built from these tables' snapshots."""

    newest = _newest_snapshot(corpus)
    if newest is None:
        return None
    wanted = {"signature": manifest_signature(), "tables": manifest_tokens(dict(files))}
    return newest if _manifest_of(corpus, newest) == wanted else None


def _delta(corpus: Store, snapshot: str, files: Mapping[str, TableFiles]) -> ManifestDelta | None:
    """The newest manifest delta written on `snapshot` whose parts are all still there."""

    deltas = [
        p
        for p in corpus.list_files(MANIFEST_DIR)
        if posixpath.basename(p).startswith(MANIFEST_DELTA_PREFIX)
    ]
    if not deltas:
        return None
    built_from = _manifest_of(corpus, deltas[-1]) or {}
    if (
        built_from.get("on") != posixpath.basename(snapshot)
        or built_from.get("signature") != manifest_signature()
    ):
        return None
    covered = {t: frozenset(names) for t, names in built_from.get("covered", {}).items()}
    for table, names in covered.items():
        present = {posixpath.basename(p) for p in files[table].parts} if table in files else set()
        if not names <= present:
            return None  # those parts were merged: their rows are elsewhere now
    return ManifestDelta(corpus.url(deltas[-1]), covered)


def _uncovered_parts(
    corpus: Store, files: Mapping[str, TableFiles], covered: Mapping[str, frozenset[str]]
) -> dict[str, tuple[int, int]]:
    """Per manifest table with parts the delta does not cover: (their bytes, the table
    snapshot's bytes)."""

    out = {}
    for table in manifest_tables():
        table_files = files.get(table)
        if table_files is None or not table_files.parts:
            continue
        sizes = corpus.file_sizes(table)
        skip = covered.get(table, frozenset())
        parts = sum(
            sizes.get(corpus.fs_path(u), 0)
            for u in table_files.parts
            if posixpath.basename(u) not in skip
        )
        if parts:
            out[table] = (
                parts,
                sizes.get(corpus.fs_path(table_files.snapshot), 0) if table_files.snapshot else 0,
            )
    return out


def _delta_too_large(
    corpus: Store, files: Mapping[str, TableFiles], covered: Mapping[str, frozenset[str]]
) -> bool:
    """Whether the parts written since the snapshot (less those the delta covers) are too
    many for the snapshot + delta view to pay: re-joining a large share of the tracks costs
    more than the full join (at 2 M tracks a 400 k-track delta made a group 4.0 s against
    2.4 s joined in full)."""
    return _past_max_delta(_uncovered_parts(corpus, files, covered))


def _newest_snapshot(corpus: Store) -> str | None:
    names = [
        p
        for p in corpus.list_files(MANIFEST_DIR)
        if posixpath.basename(p).startswith(MANIFEST_PREFIX)
    ]
    return names[-1] if names else None


def refresh_delta(corpus: Store, memory_limit: str | None = None) -> str | None:
    """Between compactions: when parts since the manifest snapshot are not in the delta,
    write the manifest delta, the re-joined rows of every track they touch (sorted by
    track_id, in buckets): the previous delta's rows, less the tracks that parts written
    since touch, which are joined again. Its cost follows the new parts (and a copy of the
    previous delta), not the corpus: the manifest stays a read of two files however far the
    last compaction lies behind. Small parts go in too (a part left to the query re-joins
    its tracks on every query: at 2 M tracks, 1 000 qc rows made a group 0.78 s against
    0.50 s), unless the copy would cost more than MANIFEST_DELTA_COPY_RATIO times them.
    Returns its path (None: nothing to do, or no snapshot to put it on)."""

    with corpus.exclusive_lock(MANIFEST_DIR):
        files = {t: corpus.table_files(t) for t in TABLES}
        snapshot = _matching_snapshot(corpus, files)
        if snapshot is None:
            return None
        delta = _delta(corpus, snapshot, files)
        uncovered = _uncovered_parts(corpus, files, delta.covered if delta else {})
        if not uncovered:
            return None  # every part is in the delta already
        kept_bytes = (
            corpus.file_sizes(MANIFEST_DIR).get(corpus.fs_path(delta.path), 0) if delta else 0
        )
        new_bytes = sum(parts for parts, _ in uncovered.values())
        if kept_bytes > MANIFEST_DELTA_COPY_RATIO * new_bytes and not _past_max_delta(uncovered):
            return None  # a few rows on a large delta: left to the query until they add up
        with_parts = [t for t in manifest_tables() if files[t].parts]
        views = ViewSql(
            files, manifest_delta=delta
        )  # its live parts: those the delta does not cover
        keys = [
            views.changed_tracks(t, live)
            for t in with_parts
            if (live := views.live_parts(t)) is not None
        ]
        if any(k is None for k in keys):
            return None  # some table's rows can change any track: only a full join is right
        covered = {t: sorted(posixpath.basename(p) for p in files[t].parts) for t in with_parts}
        name = f"{MANIFEST_DELTA_PREFIX}{utcnow():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}.parquet"
        built_from = {
            "on": posixpath.basename(snapshot),
            "signature": manifest_signature(),
            "covered": covered,
        }
        with corpus.bounded_connection(memory_limit) as con:
            create_views(con, files)
            union = " UNION ".join(f"({k})" for k in keys)
            con.execute(
                f"CREATE TEMP TABLE _dkeys AS SELECT DISTINCT track_id FROM ({union}) WHERE track_id IS NOT NULL"
            )
            # sized by its rows and what a joined row weighs (not by the snapshot's share: the
            # snapshot may hold few tracks, when a table had only parts at the compaction)
            rows = con.execute("SELECT count(*) FROM _dkeys").fetchall()[0][0] + (
                corpus.parquet_rows(delta.path) if delta else 0
            )
            kept = f"read_parquet({sql_literal(delta.path)})" if delta else None
            row_bytes = _joined_row_bytes(corpus, files)
            buckets = buckets_for(rows * row_bytes * DELTA_JOIN_EXPANSION, memory_limit)
            schema = con.sql("SELECT * FROM manifest LIMIT 0").to_arrow_table().schema
            meta = {
                b"songmill.schema_version": str(SCHEMA_VERSION).encode(),
                MANIFEST_OF_KEY.encode(): json.dumps(built_from).encode(),
            }

            def bucket_sql(cond: str) -> str:
                fresh = manifest_sql(
                    views.restricted(f"(SELECT track_id FROM _dkeys WHERE {cond})")
                )
                if kept is None:
                    return f"SELECT * FROM ({fresh}) ORDER BY track_id"
                # the previous delta's rows stay right for the tracks no newer part touches
                old_rows = f"SELECT * FROM {kept} WHERE {cond} AND track_id NOT IN (SELECT track_id FROM _dkeys)"
                return f"SELECT * FROM ({old_rows} UNION ALL BY NAME {fresh}) ORDER BY track_id"

            corpus.write_buckets(
                con,
                MANIFEST_DIR,
                name,
                schema.with_metadata(meta),
                (bucket_sql(track_bucket(b, buckets)) for b in range(buckets)),
                row_bytes,
            )
        _remove_files(corpus, keep=(posixpath.basename(snapshot), name))
        corpus.refresh_catalog()
        return corpus.join_path(MANIFEST_DIR, name)


def _joined_row_bytes(corpus: Store, files: Mapping[str, TableFiles]) -> float:
    """About what one manifest row weighs in memory: the sum of a row of each joined table (read
    from the footers of its snapshot, or of a few of its files)."""
    total = 0.0
    for table in manifest_tables():
        f = files.get(table)
        sample = ((f.snapshot,) if f.snapshot else (*f.parts, *f.history)[:4]) if f else ()
        total += corpus.row_bytes(sample) if sample else 0.0
    return total


def _remove_files(corpus: Store, keep: tuple[str, ...]) -> None:
    """Remove every manifest snapshot and delta but `keep` (superseded: nothing reads them)."""
    for old in corpus.list_files(MANIFEST_DIR):
        if (
            posixpath.basename(old).startswith((MANIFEST_PREFIX, MANIFEST_DELTA_PREFIX))
            and posixpath.basename(old) not in keep
        ):
            corpus.fs.rm(old)


def refresh_snapshot(corpus: Store, memory_limit: str | None = None) -> str | None:
    """Write the manifest snapshot: every table's snapshot and history joined once, sorted
    by track_id, in track_id buckets (bounded memory). The manifest view then reads this one
    file, joining again only the tracks that parts written since touch. Returns its path."""

    with corpus.exclusive_lock(MANIFEST_DIR):
        current = {t: corpus.table_files(t) for t in TABLES}
        base = {t: TableFiles(f.snapshot, f.history, ()) for t, f in current.items()}
        built_from = {"signature": manifest_signature(), "tables": manifest_tokens(base)}
        newest = _newest_snapshot(corpus)
        if newest is not None and _manifest_of(corpus, newest) == built_from:
            return newest  # nothing was compacted since
        # what the join reads: each table's snapshot (its history where every row counts)
        on_disk, row_bytes = 0, 0.0  # a manifest row weighs about the sum of its tables' rows
        for t in manifest_tables():
            sizes = corpus.file_sizes(t)
            read = [
                u
                for u in (base[t].history if dedup_rule(TABLES[t]) is None else (base[t].snapshot,))
                if u
            ]
            on_disk += sum(sizes.get(corpus.fs_path(u), 0) for u in read)
            row_bytes += corpus.row_bytes(read) if read else 0.0
        buckets = bucket_count(on_disk, memory_limit)
        name = f"{MANIFEST_PREFIX}{utcnow():%Y%m%dT%H%M%S%f}-{uuid.uuid4().hex[:12]}.parquet"
        with corpus.bounded_connection(memory_limit) as con:
            create_views(con, base)
            schema = con.sql("SELECT * FROM manifest LIMIT 0").to_arrow_table().schema
            meta = {
                b"songmill.schema_version": str(SCHEMA_VERSION).encode(),
                MANIFEST_OF_KEY.encode(): json.dumps(built_from).encode(),
            }
            # one pass over `sources` (not sorted by track_id: each bucket would scan it all,
            # 0.76 s a bucket at 20 M tracks, quadratic in all)
            con.execute(f"CREATE TEMP TABLE _multi_path_sources AS {multi_path_sources_sql()}")
            source = lambda src: "_multi_path_sources" if src == "sources" else src  # noqa: E731

            # the bucket's range on every joined source, not only on the left side
            def bucket_sql(cond: str) -> str:
                return f"SELECT * FROM ({manifest_sql(lambda src: f'(SELECT * FROM {source(src)} WHERE {cond})')}) ORDER BY track_id"

            corpus.write_buckets(
                con,
                MANIFEST_DIR,
                name,
                schema.with_metadata(meta),
                (bucket_sql(track_bucket(b, buckets)) for b in range(buckets)),
                row_bytes,
            )
        _remove_files(corpus, keep=(name,))
        corpus.refresh_catalog()
        return corpus.join_path(MANIFEST_DIR, name)
