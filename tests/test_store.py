"""The corpus store, its views, read-only queries, manifest export and the schema version."""

from __future__ import annotations

import json
import os

import pytest
from songmill.data_schema.manifest import export_manifest
from songmill.data_schema.query import QueryRefused, run_query
from songmill.data_schema.store import Corpus, CorpusError, utcnow


def _qc(track_id, version=1, config="c", **values):
    row = dict(
        track_id=track_id,
        stage_version=version,
        config_hash=config,
        run_id="r",
        created_at=utcnow(),
    )
    return row | {"duration_s": 1.0, "qc_pass": True, "qc_reasons": []} | values


def _track(track_id, uri):
    return dict(
        track_id=track_id,
        uri=uri,
        duration_s=1.0,
        sample_rate=44100,
        channels=2,
        codec="pcm_16",
        created_at=utcnow(),
    )


def test_latest_result_wins_by_version_then_time(corpus):
    corpus.write("qc", [_qc("a", 1, duration_s=1.0), _qc("b", 1, duration_s=5.0)])
    corpus.write("qc", [_qc("a", 2, duration_s=2.0)])
    corpus.write("qc", [_qc("a", 1, duration_s=3.0)])  # newer but older stage version
    corpus.write("qc", [_qc("b", 1, duration_s=6.0)])  # same version, newer time
    rows = {
        r["track_id"]: r["duration_s"]
        for r in corpus.sql("SELECT track_id, duration_s FROM qc").to_pylist()
    }
    assert rows == {"a": 2.0, "b": 6.0}


def test_writes_are_single_parts_and_temporaries_are_invisible(corpus):
    path = corpus.write("qc", [_qc("a")])
    assert os.path.basename(path).startswith("part-") and path.endswith(".parquet")
    assert corpus.write("qc", []) is None  # nothing to write, no empty part
    # debris of a killed writer: never read, removed once stale
    debris = os.path.join(corpus.table_dir("qc"), ".tmp-part-dead.parquet")
    open(debris, "wb").write(b"PAR1 half a file")
    assert corpus.sql("SELECT count(*) AS n FROM qc").column("n")[0].as_py() == 1
    assert corpus.clean_stale_temporaries(older_than_s=0) == 1 and not os.path.exists(debris)


def test_schema_is_enforced_on_write(corpus):
    with pytest.raises((TypeError, ValueError, KeyError, Exception)):
        corpus.write("qc", [{"track_id": "a", "duration_s": "not a number"}])
    with pytest.raises(KeyError, match="unknown table"):
        corpus.write("no_such_table", [{"x": 1}])


def test_unknown_schema_version_is_refused(tmp_path):
    root = tmp_path / "c"
    Corpus(root).write("qc", [_qc("a")])
    meta = json.loads((root / "songmill.json").read_text())
    meta["schema_version"] = 99
    (root / "songmill.json").write_text(json.dumps(meta))
    with pytest.raises(CorpusError, match="schema version 99"):
        Corpus(root)
    (root / "songmill.json").unlink()
    with pytest.raises(CorpusError, match="not a songmill corpus"):
        Corpus(root)


def test_query_is_read_only(corpus):
    corpus.write("tracks", [_track("a", "/x/a.wav")])
    assert run_query(corpus, "SELECT track_id FROM tracks").to_pylist() == [{"track_id": "a"}]
    assert run_query(corpus, "EXPLAIN SELECT * FROM manifest").num_rows >= 1
    target = corpus.table_dir("tracks") + "/part-evil.parquet"
    for sql in [
        "CREATE TABLE t AS SELECT 1",
        f"COPY (SELECT * FROM tracks) TO '{target}' (FORMAT parquet)",
        "SELECT 1; DROP VIEW tracks",
        "ATTACH '/tmp/x.duckdb' AS x",
        "SET threads = 1",
        "INSTALL httpfs",
    ]:
        with pytest.raises(QueryRefused, match="read-only|parse"):
            run_query(corpus, sql)
    assert not os.path.exists(target)
    assert len(corpus.part_files("tracks")) == 1


def test_manifest_export_joins_latest_stage_rows_and_loads_with_datasets(corpus, tmp_path):
    corpus.write("tracks", [_track("a", "/x/a.wav"), _track("b", "/x/b.wav")])
    corpus.write("qc", [_qc("a", qc_pass=True), _qc("b", qc_pass=False, qc_reasons=["silent"])])
    corpus.write(
        "music",
        [
            dict(
                track_id="a",
                stage_version=1,
                config_hash="m",
                run_id="r",
                created_at=utcnow(),
                bpm=120.0,
                key_tonic="F#",
                key_mode="minor",
                keyscale="F# minor",
            )
        ],
    )
    out = tmp_path / "out" / "manifest.parquet"
    assert export_manifest(corpus, str(out), where="qc_pass") == 1
    import pyarrow.parquet as pq

    table = pq.read_table(out)
    assert table.column("track_id").to_pylist() == ["a"]
    assert table.column("keyscale").to_pylist() == ["F# minor"]
    assert "qc_duration_s" in table.column_names  # a name clash is prefixed, not dropped
    import datasets

    ds = datasets.load_dataset(
        "parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf")
    )
    assert ds[0]["bpm"] == 120.0 and ds.num_rows == 1


def test_compact_merges_parts_and_keeps_every_view_row(corpus):
    for i in range(5):
        corpus.write("qc", [_qc(f"t{i}"), _qc("shared", duration_s=float(i))])
    before = corpus.sql("SELECT * EXCLUDE (created_at) FROM qc ORDER BY track_id").to_pylist()
    raw_before = corpus.sql("SELECT count(*) AS n FROM raw_qc").column("n")[0].as_py()
    assert corpus.compact("qc") == 5
    assert len(corpus.part_files("qc")) == 1
    assert (
        corpus.sql("SELECT * EXCLUDE (created_at) FROM qc ORDER BY track_id").to_pylist() == before
    )
    assert corpus.sql("SELECT count(*) AS n FROM raw_qc").column("n")[0].as_py() == raw_before
    assert corpus.compact("qc") == 0  # one part: nothing to do
