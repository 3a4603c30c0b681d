"""Current views over snapshots: compaction keeps every current row and the whole history,
streams in buckets, is finished by the next run after a kill, and runs when parts pile up."""

from __future__ import annotations

import json
import os
import random

import duckdb
import pyarrow.parquet as pq
import pytest
from conftest import rows
from songmill.data_schema import compaction, layout, manifest_cache
from songmill.data_schema.layout import MERGED_FROM_KEY, MERGED_SUFFIX
from songmill.data_schema.store import utcnow
from songmill.data_schema.tables import TABLES
from songmill.data_schema.views import TableFiles, create_views


def _music(track_id, version=1, bpm=100.0, run="r"):
    return dict(
        track_id=track_id,
        stage_version=version,
        config_hash="m",
        run_id=run,
        created_at=utcnow(),
        bpm=bpm,
        beats=[0.5, 1.0],
    )


def _window_design(corpus, sql):
    """The same query over HEAD's design (window functions over every raw row): the oracle."""
    import duckdb

    con = duckdb.connect()
    create_views(con, {t: TableFiles(parts=corpus.table_files(t).raw) for t in TABLES})
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _random_history(corpus, n_writes=12, ids=40, seed=0):
    rng = random.Random(seed)
    for w in range(n_writes):
        corpus.write(
            "music",
            [
                _music(
                    f"t{rng.randrange(ids):03d}", rng.choice([1, 1, 2]), float(w * 100 + i), f"r{w}"
                )
                for i in range(15)
            ],
        )
        corpus.write(
            "errors",
            [
                dict(
                    track_id=f"t{rng.randrange(ids):03d}",
                    uri=None,
                    stage="music",
                    stage_version=1,
                    config_hash="m",
                    error_type=rng.choice(["A", "B"]),
                    message=str(w),
                    retryable=False,
                    run_id=f"r{w}",
                    created_at=utcnow(),
                )
            ],
        )
        corpus.write(
            "sources",
            [
                dict(
                    uri=f"/x/{rng.randrange(ids)}.wav",
                    size_bytes=w,
                    mtime=1.0,
                    track_id="t",
                    status="ok",
                    run_id=f"r{w}",
                    created_at=utcnow(),
                )
            ],
        )


QUERIES = [
    "SELECT track_id, stage_version, bpm FROM music ORDER BY ALL",
    "SELECT track_id, error_type, message FROM errors ORDER BY ALL",
    "SELECT uri, size_bytes FROM sources ORDER BY ALL",
    "SELECT count(*) FROM raw_music",
]


@pytest.mark.parametrize("seed", [0, 1])
def test_snapshot_plus_newer_parts_equals_the_window_design(corpus, seed, monkeypatch):
    _random_history(corpus, seed=seed)
    expected = [_window_design(corpus, q) for q in QUERIES]
    monkeypatch.setattr(layout, "SNAPSHOT_BUCKET_BYTES", 2000)  # many buckets even for a tiny table
    for table in ("music", "errors", "sources"):
        assert corpus.compact(table) == 12
    assert [rows(corpus, q) for q in QUERIES] == expected
    _random_history(corpus, n_writes=5, seed=seed + 10)  # newer parts on top of the snapshot
    expected = [_window_design(corpus, q) for q in QUERIES]
    assert [rows(corpus, q) for q in QUERIES] == expected
    corpus.compact("music")
    assert [rows(corpus, q) for q in QUERIES] == expected
    files = corpus.table_files("music")
    assert files.snapshot and not files.parts and len(files.history) == 2
    ids = pq.read_table(files.snapshot, columns=["track_id"]).column("track_id").to_pylist()
    assert ids == sorted(ids) and len(ids) == len(set(ids))  # sorted by key, one row per key


def test_a_compaction_killed_before_removing_parts_is_finished_by_the_next(corpus):
    _random_history(corpus, n_writes=4)
    expected = rows(corpus, "SELECT track_id, bpm FROM music ORDER BY 1")
    parts = corpus.table_files("music").parts
    saved = {p: open(p, "rb").read() for p in parts}
    corpus.compact("music")
    for path, data in saved.items():  # as if killed right after the history file landed
        open(path, "wb").write(data)
    assert rows(corpus, "SELECT track_id, bpm FROM music ORDER BY 1") == expected  # still right
    history = corpus.table_files("music").history[0]
    assert json.loads(pq.read_metadata(history).metadata[MERGED_FROM_KEY.encode()]) == sorted(
        os.path.basename(p) for p in parts
    )
    corpus.compact("music")  # rolls forward: the stale parts go, no row is doubled
    assert rows(corpus, "SELECT count(*) FROM raw_music") == [(60,)]
    assert rows(corpus, "SELECT track_id, bpm FROM music ORDER BY 1") == expected


def test_compaction_runs_automatically_when_parts_pile_up(corpus):
    for i in range(compaction.MIN_COMPACT_PARTS - 1):
        corpus.write("music", [_music(f"a{i}")])
        corpus.compact_if_needed(["music"])
    assert corpus.table_files("music").snapshot is None
    corpus.write("music", [_music("last")])
    corpus.compact_if_needed(["music"])
    files = corpus.table_files("music")
    assert files.snapshot and not files.parts
    for i in range(3):  # a few small parts on a big snapshot: left alone (amortised rewrites)
        corpus.write("music", [_music(f"b{i}")])
        corpus.compact_if_needed(["music"], max_parts=64, min_ratio=1000)
    assert len(corpus.table_files("music").parts) == 3
    corpus.compact_if_needed(["music"], max_parts=2, min_ratio=1000)  # too many parts: merged
    files = corpus.table_files("music")
    assert len(files.parts) == 1 and files.parts[0].endswith(MERGED_SUFFIX)
    assert rows(corpus, "SELECT count(*) FROM music") == [(compaction.MIN_COMPACT_PARTS + 3,)]


def test_columns_added_after_old_files_read_as_null(corpus):
    import pyarrow as pa

    old = pa.table(
        {
            "track_id": ["x"],
            "stage_version": pa.array([1], pa.int32()),
            "config_hash": ["m"],
            "run_id": ["r"],
            "created_at": pa.array([utcnow()], pa.timestamp("us", tz="UTC")),
            "bpm": [90.0],
        }
    )
    os.makedirs(corpus.table_dir("music"), exist_ok=True)
    pq.write_table(
        old, os.path.join(corpus.table_dir("music"), "part-00000000T000000000000-old.parquet")
    )
    assert rows(corpus, "SELECT track_id, bpm, keyscale, beats FROM music") == [
        ("x", 90.0, None, None)
    ]
    corpus.compact("music")
    assert rows(corpus, "SELECT track_id, bpm, keyscale FROM music") == [("x", 90.0, None)]


# -- the manifest snapshot -------------------------------------------------------------------------
def _tracks_and_stages(corpus, ids, version=1, bpm=100.0, run="r"):
    corpus.write(
        "tracks",
        [
            dict(track_id=t, uri=f"/m/{t}.wav", duration_s=60.0 + i, created_at=utcnow())
            for i, t in enumerate(ids)
        ],
    )
    corpus.write(
        "sources",
        [
            dict(
                uri=f"/m/{t}.wav",
                size_bytes=1,
                mtime=1.0,
                track_id=t,
                status="ok",
                run_id=run,
                created_at=utcnow(),
            )
            for t in ids
        ],
    )
    corpus.write(
        "qc",
        [
            dict(
                track_id=t,
                stage_version=1,
                config_hash="q",
                run_id=run,
                created_at=utcnow(),
                qc_pass=i % 3 > 0,
                qc_reasons=[],
            )
            for i, t in enumerate(ids)
        ],
    )
    corpus.write("music", [_music(t, version, bpm + i, run) for i, t in enumerate(ids)])


MANIFEST = "SELECT * FROM manifest ORDER BY track_id"
TRACKS = "SELECT * FROM tracks ORDER BY track_id"  # read from the manifest snapshot too


def _manifest_now(corpus):
    assert rows(corpus, TRACKS) == _window_design(corpus, TRACKS)
    return rows(corpus, MANIFEST)


def test_manifest_snapshot_plus_newer_parts_equals_the_full_join(corpus, monkeypatch):
    _tracks_and_stages(corpus, [f"{i:02x}{'0' * 62}" for i in range(0, 256, 7)])
    copied, failed = (
        f"{14:02x}{'0' * 62}",
        f"{28:02x}{'0' * 62}",
    )  # a second path; a path that failed
    corpus.write(
        "sources",
        [
            dict(
                uri="/copies/a.wav",
                size_bytes=1,
                mtime=1.0,
                track_id=copied,
                status="ok",
                run_id="r",
                created_at=utcnow(),
            ),
            dict(
                uri="/copies/b.wav",
                size_bytes=1,
                mtime=1.0,
                track_id=failed,
                status="error",
                run_id="r",
                created_at=utcnow(),
            ),
        ],
    )
    for table in ("tracks", "sources", "qc", "music"):
        corpus.compact(table, manifest=False)
    monkeypatch.setattr(layout, "SNAPSHOT_BUCKET_BYTES", 30_000)  # a few track_id buckets
    snapshot = corpus.refresh_manifest_snapshot()
    monkeypatch.undo()
    assert corpus.manifest_snapshot() is not None
    assert (
        pq.read_metadata(snapshot).num_rows == 37 and pq.read_metadata(snapshot).num_row_groups > 1
    )  # buckets
    ids = pq.read_table(snapshot, columns=["track_id"]).column("track_id").to_pylist()
    assert ids == sorted(ids)
    assert _manifest_now(corpus) == _window_design(corpus, MANIFEST)
    uris = dict(
        rows(
            corpus,
            f"SELECT track_id, uris FROM manifest WHERE track_id IN ('{copied}', '{failed}')",
        )
    )
    assert sorted(uris[copied]) == ["/copies/a.wav", f"/m/{copied}.wav"] and uris[failed] == [
        f"/m/{failed}.wav"
    ]

    # tiny parts weigh as much as a tiny snapshot: let the delta path take any share here
    monkeypatch.setattr(manifest_cache, "MANIFEST_MAX_DELTA", 1000.0)
    some = [f"{i:02x}{'0' * 62}" for i in range(0, 256, 21)]
    corpus.write(
        "music", [_music(t, 2, 7.0, "newer") for t in some]
    )  # reprocessed by a newer version
    corpus.write(
        "qc",
        [
            dict(
                track_id=some[0],
                stage_version=1,
                config_hash="q",
                run_id="again",
                created_at=utcnow(),
                qc_pass=False,
                qc_reasons=["x"],
            )
        ],
    )
    _tracks_and_stages(corpus, ["ff" * 32], run="new track")
    moved = some[1]  # a path that now holds other audio: its old track loses the path
    corpus.write(
        "sources",
        [
            dict(
                uri=f"/m/{some[2]}.wav",
                size_bytes=2,
                mtime=2.0,
                track_id=moved,
                status="ok",
                run_id="moved",
                created_at=utcnow(),
            )
        ],
    )
    with_parts = _manifest_now(corpus)
    assert with_parts == _window_design(corpus, MANIFEST)
    by_id = {r[0]: r for r in rows(corpus, "SELECT track_id, bpm, uris FROM manifest")}
    assert by_id[some[0]][1] == 7.0 and sorted(by_id[moved][2]) == sorted(
        [f"/m/{moved}.wav", f"/m/{some[2]}.wav"]
    )
    # the catalog (what plain DuckDB opens) reads the snapshot too and agrees
    con = duckdb.connect(corpus.catalog_path, read_only=True)
    try:
        definition = con.execute(
            "SELECT sql FROM duckdb_views() WHERE view_name = 'manifest'"
        ).fetchall()[0][0]
        assert "_manifest/manifest-" in definition
        assert con.execute(MANIFEST).fetchall() == with_parts
    finally:
        con.close()

    monkeypatch.setattr(
        manifest_cache, "MANIFEST_MAX_DELTA", 0.0
    )  # any delta too large: joined in full
    assert corpus.manifest_snapshot() is None and _manifest_now(corpus) == with_parts
    assert (
        "_manifest/manifest-"
        not in duckdb.connect(corpus.catalog_path, read_only=True)
        .execute("SELECT sql FROM duckdb_views() WHERE view_name = 'manifest'")
        .fetchall()[0][0]
    )  # the catalog follows

    monkeypatch.setattr(compaction, "MIN_COMPACT_PARTS", 1)
    corpus.compact_if_needed(
        ["tracks", "sources", "qc", "music"], min_ratio=0
    )  # one new manifest snapshot for all
    assert corpus.manifest_snapshot() is not None and not corpus.table_files("qc").parts
    assert _manifest_now(corpus) == with_parts


def test_a_table_compacted_after_the_manifest_snapshot_is_joined_in_full(corpus, monkeypatch):
    monkeypatch.setattr(
        manifest_cache, "MANIFEST_MAX_DELTA", 1000.0
    )  # tiny parts: any share is fine here
    _tracks_and_stages(corpus, ["a", "b", "c"])
    for table in ("tracks", "sources", "qc"):
        corpus.compact(table, manifest=False)
    corpus.compact("music")  # writes a manifest snapshot
    first = corpus.manifest_snapshot()
    assert first is not None
    corpus.write("music", [_music("b", 1, 55.0, "later")])
    corpus.compact("music", manifest=False)  # the snapshot no longer matches music's files
    assert corpus.manifest_snapshot() is None
    assert rows(corpus, "SELECT track_id, bpm FROM manifest ORDER BY 1") == [
        ("a", 100.0),
        ("b", 55.0),
        ("c", 102.0),
    ]
    assert rows(corpus, "SELECT track_id, bpm FROM manifest ORDER BY 1") == _window_design(
        corpus, "SELECT track_id, bpm FROM manifest ORDER BY 1"
    )


def test_rows_of_a_table_that_can_change_any_track_are_joined_in_full(corpus, monkeypatch):
    monkeypatch.setattr(manifest_cache, "MANIFEST_MAX_DELTA", 1000.0)
    _tracks_and_stages(corpus, ["a", "b"])
    for table in ("tracks", "sources", "qc"):
        corpus.compact(table, manifest=False)
    corpus.compact("music")
    assert corpus.manifest_snapshot() is not None
    corpus.write(
        "dup_clusters",
        [
            dict(
                track_id=t,
                cluster_id="a",
                canonical_track_id="a",
                similarity=0.9,
                index_id="i1",
                created_at=utcnow(),
            )
            for t in "ab"
        ],
    )
    assert rows(corpus, "SELECT track_id, dup_cluster FROM manifest ORDER BY 1") == [
        ("a", "a"),
        ("b", "a"),
    ]
    corpus.write(
        "dup_clusters",
        [
            dict(
                track_id="b",
                cluster_id="b",
                canonical_track_id="b",
                similarity=1.0,
                index_id="i2",
                created_at=utcnow(),
            )
        ],
    )
    assert rows(corpus, "SELECT track_id, dup_cluster FROM manifest ORDER BY 1") == [
        ("a", None),
        ("b", "b"),
    ]


def test_duckdb_type_names_spelled_from_arrow_mean_what_duckdb_says():
    from songmill.data_schema import views

    con = duckdb.connect()
    for spec in TABLES.values():
        ours, theirs = views.duckdb_types(spec), views._types_from_duckdb(spec)
        for column in ours:
            same = con.execute(
                f"SELECT typeof(NULL::{ours[column]}) = typeof(NULL::{theirs[column]})"
            ).fetchall()[0][0]
            assert same, (spec.name, column, ours[column], theirs[column])


# -- the manifest delta ------------------------------------------------------------------------------
def _catalog_rows(corpus, sql):
    con = duckdb.connect(corpus.catalog_path, read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _manifest_view(corpus):
    con = duckdb.connect(corpus.catalog_path, read_only=True)
    try:
        return con.execute(
            "SELECT sql FROM duckdb_views() WHERE view_name = 'manifest'"
        ).fetchall()[0][0]
    finally:
        con.close()


def test_a_manifest_delta_keeps_the_manifest_one_read_between_compactions(corpus, monkeypatch):
    ids = [f"{i:02x}{'0' * 62}" for i in range(0, 256, 5)]
    _tracks_and_stages(corpus, ids)
    for table in ("tracks", "sources", "qc", "music"):
        corpus.compact(table, manifest=False)
    snapshot = corpus.refresh_manifest_snapshot()
    # parts since the snapshot, too many to join at query time (threshold 0: any part is), too
    # few to compact: the end of the run writes a delta instead
    monkeypatch.setattr(manifest_cache, "MANIFEST_MAX_DELTA", 0.0)
    some = ids[::4]
    corpus.write("music", [_music(t, 2, 7.0, "newer") for t in some])
    corpus.write(
        "qc",
        [
            dict(
                track_id=some[0],
                stage_version=1,
                config_hash="q",
                run_id="again",
                created_at=utcnow(),
                qc_pass=False,
                qc_reasons=["x"],
            )
        ],
    )
    _tracks_and_stages(corpus, ["ff" * 32], run="new track")
    moved = some[1]  # a path that now holds other audio: its old track loses the path
    corpus.write(
        "sources",
        [
            dict(
                uri=f"/m/{some[2]}.wav",
                size_bytes=2,
                mtime=2.0,
                track_id=moved,
                status="ok",
                run_id="moved",
                created_at=utcnow(),
            )
        ],
    )
    assert corpus.manifest_snapshot() is None  # no delta yet: joined in full
    expected = _window_design(corpus, MANIFEST)
    corpus.compact_if_needed(["tracks", "sources", "qc", "music"], min_ratio=1000)
    assert corpus.table_files("music").parts  # nothing was compacted
    base = corpus.manifest_base()
    assert base is not None and base[0].endswith(os.path.basename(snapshot)) and base[1] is not None
    delta = pq.read_table(base[1].path)
    assert sorted(delta.column("track_id").to_pylist()) == sorted(
        {*some, "ff" * 32}
    )  # exactly the touched tracks
    assert set(base[1].covered) == {"tracks", "sources", "qc", "music"}
    assert _manifest_now(corpus) == expected
    assert rows(corpus, "SELECT track_id FROM _track_ids ORDER BY 1") == [
        (t,) for t in sorted([*ids, "ff" * 32])
    ]
    view = _manifest_view(corpus)  # plain DuckDB reads the snapshot and the delta, and agrees
    assert "_manifest/manifest-" in view and "_manifest/delta-" in view
    assert _catalog_rows(corpus, MANIFEST) == expected

    # a part written after the delta: joined at query time, in songmill and in the catalog
    corpus.write(
        "music", [_music(t, 3, 33.0, "after the delta") for t in (ids[1], some[3])]
    )  # one in the delta, one not
    expected = _window_design(corpus, MANIFEST)
    assert (
        _catalog_rows(corpus, MANIFEST) == expected
    )  # the write itself brought the catalog up to date
    assert _manifest_now(corpus) == expected
    bpm = dict(rows(corpus, "SELECT track_id, bpm FROM manifest"))
    assert bpm[ids[1]] == bpm[some[3]] == 33.0
    corpus.compact_if_needed(["music"], min_ratio=1000)  # the delta now covers that part too
    assert {
        os.path.basename(p) for p in corpus.table_files("music").parts
    } == corpus.manifest_base()[1].covered["music"]
    assert (
        len(
            [
                n
                for n in os.listdir(corpus.manifest_dir())
                if n.startswith(manifest_cache.MANIFEST_DELTA_PREFIX)
            ]
        )
        == 1
    )
    assert _manifest_now(corpus) == expected and _catalog_rows(corpus, MANIFEST) == expected

    corpus.merge_parts("music")  # the parts it covers are gone (merged): the delta no longer counts
    assert corpus.manifest_base() is None and _manifest_now(corpus) == expected
    monkeypatch.setattr(compaction, "MIN_COMPACT_PARTS", 1)
    corpus.compact_if_needed(
        ["tracks", "sources", "qc", "music"], min_ratio=0
    )  # compacted: a new snapshot, no delta
    assert not [
        n
        for n in os.listdir(corpus.manifest_dir())
        if n.startswith(manifest_cache.MANIFEST_DELTA_PREFIX)
    ]
    assert corpus.manifest_snapshot() is not None and _manifest_now(corpus) == expected


def test_a_run_that_compacts_some_tables_writes_a_delta_for_the_others(corpus, monkeypatch):
    """The end of a run that compacts music but not tracks: the new manifest snapshot holds no
    parts, so the tracks parts left over get a delta (before, the manifest fell back to the full
    join: at 2 M tracks built in runs of 100 k, count 1.9 s instead of 0.2 s)."""
    ids = [f"{i:02x}{'0' * 62}" for i in range(0, 256, 5)]
    _tracks_and_stages(corpus, ids)
    for table in ("tracks", "sources", "qc", "music"):
        corpus.compact(table, manifest=False)
    corpus.refresh_manifest_snapshot()
    monkeypatch.setattr(manifest_cache, "MANIFEST_MAX_DELTA", 0.0)
    monkeypatch.setattr(compaction, "MIN_COMPACT_PARTS", 1)
    _tracks_and_stages(corpus, ["ff" * 32], run="new track")
    corpus.write("music", [_music(t, 2, 7.0, "newer") for t in ids[:3]])
    expected = _window_design(corpus, MANIFEST)
    corpus.compact_if_needed(["music"], min_ratio=0)  # music compacted, tracks and the rest not
    assert not corpus.table_files("music").parts and corpus.table_files("tracks").parts
    base = corpus.manifest_base()
    assert base is not None and base[1] is not None
    assert pq.read_table(base[1].path).column("track_id").to_pylist() == [
        "ff" * 32
    ]  # the tracks parts' track
    assert _manifest_now(corpus) == expected and _catalog_rows(corpus, MANIFEST) == expected


def test_the_end_of_a_small_run_puts_its_part_in_the_delta(corpus, monkeypatch):
    """A part far under the share that sends the manifest to the full join still goes into the
    delta at the end of the run: queries never re-join it (that re-join reads every table's
    snapshot for its tracks, on every query)."""
    ids = [f"{i:02x}{'0' * 62}" for i in range(0, 256, 2)]
    _tracks_and_stages(corpus, ids)
    for table in ("tracks", "sources", "qc", "music"):
        corpus.compact(table, manifest=False)
    corpus.refresh_manifest_snapshot()
    monkeypatch.setattr(
        manifest_cache, "MANIFEST_MAX_DELTA", 1000.0
    )  # tiny files: any part is a small share here
    part = corpus.write("music", [_music(ids[5], 2, 9.0, "small run")])
    assert not manifest_cache._delta_too_large(
        corpus, {t: corpus.table_files(t) for t in TABLES}, {}
    )  # small: query time would do
    expected = _window_design(corpus, MANIFEST)
    corpus.compact_if_needed(["music"])
    base = corpus.manifest_base()
    assert (
        base is not None
        and base[1] is not None
        and base[1].covered["music"] == {os.path.basename(part)}
    )
    assert pq.read_table(base[1].path).column("track_id").to_pylist() == [ids[5]]
    assert _manifest_now(corpus) == expected and _catalog_rows(corpus, MANIFEST) == expected
    assert corpus.refresh_manifest_delta() is None  # nothing new since: no second delta
    # a small part on a delta whose copy would cost too much: left to the query, still right
    monkeypatch.setattr(manifest_cache, "MANIFEST_DELTA_COPY_RATIO", 0)
    later = corpus.write("music", [_music(ids[7], 2, 11.0, "another small run")])
    expected = _window_design(corpus, MANIFEST)
    assert (
        corpus.refresh_manifest_delta() is None
        and os.path.basename(later) not in corpus.manifest_base()[1].covered["music"]
    )
    assert _manifest_now(corpus) == expected
    monkeypatch.setattr(manifest_cache, "MANIFEST_MAX_DELTA", 0.0)  # unless too many for the query
    assert (
        corpus.refresh_manifest_delta() is not None
        and os.path.basename(later) in corpus.manifest_base()[1].covered["music"]
    )
    assert _manifest_now(corpus) == expected


def test_no_manifest_delta_when_a_table_can_change_any_track(corpus, monkeypatch):
    _tracks_and_stages(corpus, ["a", "b"])
    for table in ("tracks", "sources", "qc", "music"):
        corpus.compact(table, manifest=False)
    corpus.refresh_manifest_snapshot()
    monkeypatch.setattr(manifest_cache, "MANIFEST_MAX_DELTA", 0.0)
    corpus.write(
        "dup_clusters",
        [
            dict(
                track_id=t,
                cluster_id="a",
                canonical_track_id="a",
                similarity=0.9,
                index_id="i1",
                created_at=utcnow(),
            )
            for t in "ab"
        ],
    )
    assert corpus.refresh_manifest_delta() is None
    assert rows(corpus, "SELECT track_id, dup_cluster FROM manifest ORDER BY 1") == [
        ("a", "a"),
        ("b", "a"),
    ]
