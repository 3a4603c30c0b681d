"""Compaction and planning in bounded memory from the state a bulk run leaves: many unsorted
parts with list columns (beat lists), far more rows than DuckDB's memory limit holds. Before
bucketed scatter, a compaction read every part in each bucket, sized its buckets without regard
to the limit and wrote row groups of 122 880 rows whatever their bytes: it ran out of memory."""

from __future__ import annotations

import hashlib
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from songmill.annotate import runner, stage_class
from songmill.data_schema import layout
from songmill.data_schema.store import utcnow

# DuckDB's memory limit here (the music parts hold 20 MB of beat lists), and the row groups
# scaled down with it (a reader holds a row group's column chunk: 32 MB by default, for 1 GB)
LIMIT, ROW_GROUP_BYTES = "16MB", 2**20
# The manifest snapshot joins every table (a hash table each, whatever the rows): a little more.
MANIFEST_LIMIT = "128MB"
# An annotate run's end compacts qc and music and then joins every track into a manifest delta,
# music v7's nested tempo estimates included: that join's fixed overhead came within 6 MiB of
# 128 MB and failed one CI run there, so the whole run gets twice that (still far below the
# 1 GB the corpus runs under, and the limit is what the run must respect).
RUN_LIMIT = "256MB"
PARTS, ROWS, BEATS = 10, 1000, 500


def _ids(start: int, n: int) -> list[str]:
    return [hashlib.sha256(f"t{i}".encode()).hexdigest() for i in range(start, start + n)]


def _stage_columns(name: str, ids: list[str], keys: dict[str, tuple[int, str]], now) -> dict:
    n = len(ids)
    return {
        "track_id": ids,
        "stage_version": [keys[name][0]] * n,
        "config_hash": [keys[name][1]] * n,
        "run_id": ["bulk"] * n,
        "created_at": pa.array([now] * n, pa.timestamp("us", tz="UTC")),
    }


def _write_bulk(corpus, keys: dict[str, tuple[int, str]]) -> None:
    """PARTS parts per table of ROWS tracks each, as one bulk run writes them."""
    for p in range(PARTS):
        first = p * ROWS
        ids = _ids(first, ROWS)
        rng = np.random.default_rng(first)
        now = utcnow()
        uris = [f"/lib/{i}.flac" for i in range(first, first + ROWS)]
        corpus.write(
            "tracks",
            pa.table(
                {
                    "track_id": ids,
                    "uri": uris,
                    "duration_s": rng.uniform(60, 300, ROWS),
                    "created_at": pa.array([now] * ROWS, pa.timestamp("us", tz="UTC")),
                }
            ),
        )
        corpus.write(
            "sources",
            [
                dict(
                    uri=u,
                    size_bytes=1,
                    mtime=1.0,
                    track_id=t,
                    status="ok",
                    run_id="bulk",
                    created_at=now,
                )
                for u, t in zip(uris, ids, strict=True)
            ],
        )
        corpus.write(
            "qc",
            pa.table(
                _stage_columns("qc", ids, keys, now)
                | {"qc_pass": [True] * ROWS, "loudness_lufs": rng.uniform(-30, -6, ROWS)}
            ),
        )
        beats = pa.ListArray.from_arrays(
            pa.array(np.arange(ROWS + 1, dtype=np.int32) * BEATS),
            pa.array(rng.random(ROWS * BEATS, dtype=np.float32)),
        )  # random: no compression
        corpus.write(
            "music",
            pa.table(
                _stage_columns("music", ids, keys, now)
                | {"bpm": rng.uniform(60, 180, ROWS), "beats": beats}
            ),
        )


def _stage_keys() -> dict[str, tuple[int, str]]:
    return {
        name: (stage_class(name)().version, stage_class(name)().config_hash)
        for name in ("qc", "music")
    }


def _state(corpus) -> list:
    return [
        corpus.sql(q).to_pylist()
        for q in (
            "SELECT count(*) AS n, count(DISTINCT track_id) AS ids, round(sum(bpm), 3) AS bpm, sum(len(beats)) AS beats, "
            "max(run_id) AS run FROM music",
            "SELECT count(*) AS n FROM raw_music",
            "SELECT count(*) AS n, round(sum(loudness_lufs), 3) AS lufs FROM qc",
            "SELECT count(*) AS n, count(DISTINCT uri) AS uris FROM sources",
            "SELECT count(*) AS n, round(sum(bpm), 3) AS bpm, sum(len(beats)) AS beats FROM manifest WHERE qc_pass",
        )
    ]


def test_compaction_of_a_bulk_state_holds_a_small_memory_limit(corpus, monkeypatch):
    monkeypatch.setattr(layout, "ROW_GROUP_BYTES", ROW_GROUP_BYTES, raising=False)
    keys = _stage_keys()
    _write_bulk(corpus, keys)
    redone = corpus.sql(
        "SELECT * FROM music ORDER BY track_id LIMIT 300"
    )  # a second run redoes some tracks
    redone = redone.set_column(redone.schema.get_field_index("bpm"), "bpm", pa.array([1.0] * 300))
    redone = redone.set_column(
        redone.schema.get_field_index("run_id"), "run_id", pa.array(["redo"] * 300)
    )
    redone = redone.set_column(
        redone.schema.get_field_index("created_at"),
        "created_at",
        pa.array([utcnow()] * 300, pa.timestamp("us", tz="UTC")),
    )
    corpus.write("music", redone)
    before = _state(corpus)  # the views over the parts: the oracle
    assert (
        before[0][0]["n"] == PARTS * ROWS
        and before[1][0]["n"] == PARTS * ROWS + 300
        and before[0][0]["run"] == "redo"
    )

    for table in ("tracks", "sources", "qc", "music"):
        assert corpus.compact(table, memory_limit=LIMIT, manifest=False) > 0
    assert corpus.refresh_manifest_snapshot(memory_limit=MANIFEST_LIMIT) is not None
    assert corpus.manifest_snapshot() is not None  # the manifest now reads the snapshot
    assert _state(corpus) == before

    snapshot = corpus.table_files("music").snapshot
    ids = pq.read_table(snapshot, columns=["track_id"]).column("track_id").to_pylist()
    assert ids == sorted(ids) and len(ids) == len(set(ids))
    meta = pq.read_metadata(snapshot)  # row groups bounded in bytes, not only in rows
    assert meta.num_row_groups > 1
    assert (
        max(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        <= 2 * ROW_GROUP_BYTES
    )
    assert not [
        n for n in os.listdir(corpus.path) if n.startswith(".tmp-")
    ]  # the spill folder is gone


def test_an_annotate_run_with_nothing_pending_plans_and_compacts_a_bulk_state_under_the_limit(
    corpus, monkeypatch
):
    monkeypatch.setattr(layout, "ROW_GROUP_BYTES", ROW_GROUP_BYTES, raising=False)
    keys = _stage_keys()
    _write_bulk(corpus, keys)
    before = _state(corpus)
    monkeypatch.setattr(
        layout, "COMPACT_MEMORY_LIMIT", RUN_LIMIT
    )  # what the end-of-run compaction runs under
    stages = [stage_class("qc")(), stage_class("music")()]
    summaries = runner.run_stages(corpus, stages)
    assert [s.n_input for s in summaries] == [0, 0]  # nothing pending
    for table in ("qc", "music"):  # the end-of-run check compacted the bulk run's parts
        files = corpus.table_files(table)
        assert files.snapshot is not None and not files.parts
    assert _state(corpus) == before
