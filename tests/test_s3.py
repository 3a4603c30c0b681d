"""A corpus on s3:// and ingest from an s3:// source, against a real S3 API on loopback (moto's
server mode, started here): ingest, annotate, query, manifest, compact, runs."""

from __future__ import annotations

import fsspec
import pyarrow.parquet as pq
import pytest
import songmill.annotate as annotate
from conftest import tone, write_audio
from songmill.data_schema.store import Corpus
from songmill.flows import app
from songmill.flows.cli import main

BUCKET = "songmill-test"


@pytest.fixture
def s3(monkeypatch):
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    for key, value in {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
        # botocore (and so s3fs) reads the endpoint from the environment, as a user would set it.
        "AWS_ENDPOINT_URL": f"http://{host}:{port}",
    }.items():
        monkeypatch.setenv(key, value)
    fsspec.filesystem("s3").clear_instance_cache()
    fs = fsspec.filesystem("s3", skip_instance_cache=True)
    fs.mkdir(BUCKET)
    yield fs
    fsspec.filesystem("s3").clear_instance_cache()
    server.stop()


@pytest.fixture
def test_stages(monkeypatch):
    monkeypatch.setitem(annotate.STAGE_CLASSES, "test_level", "stages_for_tests:LevelStage")


def test_s3_corpus_from_s3_sources_end_to_end(s3, tmp_path, test_stages, capsys):
    for i in range(4):
        local = write_audio(
            tmp_path / "src" / f"song{i}.flac", tone(0.5, amp=0.05 * (i + 1), seed=i)
        )
        s3.put(local, f"{BUCKET}/incoming/song{i}.flac")
    s3.pipe(f"{BUCKET}/incoming/broken_notes.wav", b"liner notes, not audio")
    root = f"s3://{BUCKET}/corpus"

    summary = app.ingest(root, [f"s3://{BUCKET}/incoming"], engine="local")
    assert (summary.new_tracks, summary.errors) == (4, 1)
    again = app.ingest(root, [f"s3://{BUCKET}/incoming"], engine="local")
    assert (again.unchanged, again.new_tracks) == (5, 0)  # incremental against the object store

    (level,) = app.annotate(root, ["test_level"], {}, engine="local")
    assert (level.n_ok, level.n_error) == (4, 0)
    assert s3.glob(f"{BUCKET}/corpus/test_level/part-*.parquet")

    table = app.query(
        root, "SELECT uri, rms FROM test_level JOIN tracks USING (track_id) ORDER BY uri"
    )
    uris, levels = table.column("uri").to_pylist(), table.column("rms").to_pylist()
    assert all(u.startswith(f"s3://{BUCKET}/incoming/song") for u in uris)
    assert levels == sorted(levels) and levels[0] > 0  # louder sources, larger rms: real audio read
    errors = app.query(root, "SELECT uri, stage FROM errors").to_pylist()
    assert errors == [{"uri": f"s3://{BUCKET}/incoming/broken_notes.wav", "stage": "ingest"}]

    out = tmp_path / "manifest.parquet"
    assert app.manifest(root, str(out)) == 4
    assert set(pq.read_table(out).column("track_id").to_pylist()) == set(
        app.query(root, "SELECT track_id FROM tracks").column("track_id").to_pylist()
    )

    app.annotate(root, ["test_level"], {"test_level": {"gain": 2.0}}, engine="local")
    before = app.query(root, "SELECT track_id, rms, gain FROM test_level ORDER BY 1").to_pylist()
    assert {r["gain"] for r in before} == {2.0}
    assert main(["compact", "--corpus", root, "--tables", "test_level"]) == 0
    assert "test_level" in capsys.readouterr().out
    assert (
        app.query(root, "SELECT track_id, rms, gain FROM test_level ORDER BY 1").to_pylist()
        == before
    )
    assert not s3.glob(f"{BUCKET}/corpus/*/.tmp-*")

    report = {r["stage"]: r for r in app.runs(root).to_pylist()}
    assert report["test_level"]["tracks_done"] == 8
    assert Corpus(root, create=False).root == root
