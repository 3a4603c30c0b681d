"""Lineage: stage rows record the input rows they were computed from; when an input is redone,
exactly the tracks whose inputs changed become stale for every stage that reads it, `annotate`
redoes them, `--where` selects on it and `songmill status` counts it. Old corpora still read."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import rows, tone, write_audio
from songmill.annotate.base import Stage
from songmill.annotate.ingest import ingest
from songmill.annotate.runner import pending_track_ids, run_stages
from songmill.data_schema.store import Corpus, utcnow
from songmill.data_schema.tables import register_table
from songmill.flows.report import stage_status
from stages_for_tests import DerivedStage, LevelStage

register_table("test_peak", [pa.field("peak_ratio", pa.float64())])


class PeakStage(Stage):
    """A second stage reading the level stage's rows."""

    name = "test_peak"
    table = "test_peak"
    reads = ("test_level",)
    requires = ("test_level",)

    def process_track(self, track):
        audio, _ = track.audio()
        return {
            "peak_ratio": float(np.abs(audio).max()) / max(track.inputs["test_level"]["rms"], 1e-9)
        }


@pytest.fixture
def annotated(tmp_path, corpus):
    for i in range(6):
        write_audio(tmp_path / "src" / f"t{i}.wav", tone(0.3, amp=0.1 * (i + 1), seed=i))
    ingest(corpus, [str(tmp_path / "src")])
    run_stages(corpus, [LevelStage(), DerivedStage(), PeakStage()], batch_size=4)
    return corpus


def _stale(corpus, table):
    return {r[0] for r in rows(corpus, f"SELECT track_id FROM stale WHERE stage_table = '{table}'")}


def test_rows_record_their_inputs(annotated):
    lineage = [r[0] for r in rows(annotated, "SELECT inputs FROM test_derived")]
    assert len(lineage) == 6 and all(len(inputs) == 1 for inputs in lineage)
    entry = lineage[0][0]
    assert entry["table"] == "test_level" and entry["stage_version"] == 1 and entry["run_id"]
    assert rows(annotated, "SELECT DISTINCT len(inputs) FROM test_level") == [(0,)]  # reads nothing
    assert not _stale(annotated, "test_derived") and not _stale(annotated, "test_peak")


def test_reprocessing_an_input_makes_exactly_those_tracks_stale_for_every_reader(annotated):
    corpus = annotated
    subset = "uri LIKE '%t1.wav' OR uri LIKE '%t4.wav'"
    chosen = {r[0] for r in rows(corpus, f"SELECT track_id FROM tracks WHERE {subset}")}
    assert len(chosen) == 2
    run_stages(corpus, [LevelStage()], where=subset, force=True)  # reprocess the input stage only

    assert _stale(corpus, "test_derived") == chosen
    assert _stale(corpus, "test_peak") == chosen
    assert not _stale(corpus, "test_level")  # the redone rows themselves are current
    assert {
        r[0] for r in rows(corpus, "SELECT track_id FROM manifest WHERE is_stale(track_id)")
    } == chosen
    assert {
        r[0]
        for r in rows(
            corpus, "SELECT track_id FROM manifest WHERE is_stale_in(track_id, 'test_peak')"
        )
    } == chosen

    status = {
        r["stage"]: r
        for r in stage_status(corpus, [LevelStage(), DerivedStage(), PeakStage()]).to_pylist()
    }
    assert (
        status["test_derived"]["current"],
        status["test_derived"]["stale"],
        status["test_derived"]["pending"],
    ) == (4, 2, 0)
    assert (status["test_level"]["current"], status["test_level"]["stale"]) == (6, 0)

    # annotate redoes exactly the stale tracks, and then nothing is stale
    assert pending_track_ids(corpus, DerivedStage()) == chosen
    summaries = {s.stage: s for s in run_stages(corpus, [DerivedStage(), PeakStage()])}
    assert summaries["test_derived"].n_input == 2 and summaries["test_peak"].n_input == 2
    assert not _stale(corpus, "test_derived") and not _stale(corpus, "test_peak")
    assert run_stages(corpus, [DerivedStage()])[0].n_input == 0


def test_status_counts_pending_and_failed(tmp_path, corpus):
    for i in range(3):
        write_audio(tmp_path / "src" / f"t{i}.wav", tone(0.2, seed=i))
    write_audio(tmp_path / "src" / "broken_take.wav", tone(0.2, seed=9))  # LevelStage refuses it
    ingest(corpus, [str(tmp_path / "src")])
    assert stage_status(corpus, [LevelStage()]).to_pylist()[0]["pending"] == 4
    run_stages(corpus, [LevelStage()])
    (s,) = stage_status(corpus, [LevelStage()]).to_pylist()
    assert (s["current"], s["stale"], s["pending"], s["failed"]) == (3, 0, 0, 1)


def test_version_one_corpus_is_read_and_upgraded_on_write(tmp_path):
    root = tmp_path / "old"
    root.mkdir()
    (root / "songmill.json").write_text(json.dumps({"schema_version": 1}))
    (root / "test_level").mkdir()
    # a part as version 1 wrote it: no `inputs` column
    old = pa.table(
        {
            "track_id": ["a"],
            "stage_version": pa.array([1], pa.int32()),
            "config_hash": ["c"],
            "run_id": ["r"],
            "created_at": pa.array([utcnow()], pa.timestamp("us", tz="UTC")),
            "rms": [0.5],
            "gain": [1.0],
        }
    )
    pq.write_table(old, root / "test_level" / "part-00000000T000000000000-old.parquet")
    corpus = Corpus(root)
    assert corpus.schema_version == 1
    assert rows(corpus, "SELECT track_id, rms, inputs FROM test_level") == [("a", 0.5, None)]
    assert not _stale(corpus, "test_level")
    corpus.write(
        "test_level",
        [
            {
                "track_id": "b",
                "stage_version": 1,
                "config_hash": "c",
                "run_id": "r2",
                "created_at": utcnow(),
                "rms": 0.1,
            }
        ],
    )
    assert json.loads((root / "songmill.json").read_text())["schema_version"] == 2
    assert sorted(r[0] for r in rows(corpus, "SELECT track_id FROM test_level")) == ["a", "b"]
