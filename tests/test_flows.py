"""The real Prefect flows against the session's embedded server, and the CLI on top of them."""

from __future__ import annotations

import json

import pytest
import songmill.annotate as annotate
from conftest import tone, write_audio

pytestmark = pytest.mark.prefect


@pytest.fixture
def test_stages(monkeypatch):
    monkeypatch.setitem(annotate.STAGE_CLASSES, "test_level", "stages_for_tests:LevelStage")
    monkeypatch.setitem(annotate.STAGE_CLASSES, "test_derived", "stages_for_tests:DerivedStage")


def test_prefect_server_module_imports():
    # The pinned stack (pyproject: prefect 3.9.1, fastapi<0.151) must keep the server importable:
    # fastapi >= 0.155 broke Prefect 3.8.8's server at import time (Body(min_items=...)).
    import prefect.server.api.server  # noqa: F401


def test_ingest_and_annotate_flows_write_tables(prefect_server, tmp_path, test_stages):
    from songmill.data_schema.store import Corpus
    from songmill.flows.pipeline import annotate_flow, ingest_flow

    for i in range(5):
        write_audio(tmp_path / "src" / f"t{i}.flac", tone(0.4, seed=i))
    (tmp_path / "src" / "bad.wav").write_bytes(b"\x00" * 10)
    root = str(tmp_path / "corpus")
    summary = ingest_flow(root, [str(tmp_path / "src")], {"batch_size": 2}, show_progress=False)
    assert (summary.new_tracks, summary.errors) == (5, 1)
    summaries = annotate_flow(
        root,
        ["test_level", "test_derived"],
        {"test_level": {"fail_on_substring": ""}},
        batch_size=2,
        show_progress=False,
    )
    assert [(s.stage, s.n_ok, s.n_error) for s in summaries] == [
        ("test_level", 5, 0),
        ("test_derived", 5, 0),
    ]
    corpus = Corpus(root)
    assert corpus.sql("SELECT count(*) AS n FROM test_derived").column("n")[0].as_py() == 5


def test_cli_end_to_end(prefect_server, tmp_path, test_stages, capsys):
    from songmill.data_schema.store import Corpus
    from songmill.flows.cli import main

    for i in range(3):
        write_audio(tmp_path / "src" / f"song {i}.wav", tone(0.4, seed=i))
    corpus = str(tmp_path / "c")
    assert main(["ingest", str(tmp_path / "src"), "--corpus", corpus, "--quiet"]) == 0
    assert "3 new tracks" in capsys.readouterr().out
    assert (
        main(
            [
                "annotate",
                "--stages",
                "test_level",
                "--corpus",
                corpus,
                "--quiet",
                "--set",
                "test_level.gain=0.5",
            ]
        )
        == 0
    )
    assert "3 ok" in capsys.readouterr().out
    assert (
        main(
            [
                "query",
                "SELECT count(*) AS n, min(gain) AS g FROM test_level",
                "--corpus",
                corpus,
                "--format",
                "json",
            ]
        )
        == 0
    )
    assert json.loads(capsys.readouterr().out) == [{"n": 3, "g": 0.5}]
    assert main(["query", "DELETE FROM tracks", "--corpus", corpus]) == 2
    assert "read-only" in capsys.readouterr().err
    assert (
        main(
            [
                "reprocess",
                "--where",
                "uri LIKE '%song 1%'",
                "--stages",
                "test_level",
                "--corpus",
                corpus,
                "--engine",
                "local",
            ]
        )
        == 0
    )
    assert "1 ok" in capsys.readouterr().out
    out = tmp_path / "m.parquet"
    assert main(["manifest", "--out", str(out), "--corpus", corpus]) == 0
    assert "3 tracks" in capsys.readouterr().out and out.exists()
    parts_before = len(Corpus(corpus).part_files("test_level"))
    assert main(["compact", "--corpus", corpus, "--tables", "test_level"]) == 0
    assert parts_before > 1 and len(Corpus(corpus).part_files("test_level")) == 1
    assert (
        main(["compact", "--corpus", corpus]) == 0
    )  # every table, then the manifest snapshot once
    assert Corpus(corpus).manifest_snapshot() is not None
    assert (
        main(
            ["query", "SELECT count(*) AS n FROM test_level", "--corpus", corpus, "--format", "csv"]
        )
        == 0
    )
    assert capsys.readouterr().out.splitlines()[-1] == "3"
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: None}):  # no server configured
        assert main(["serve", "--cron", "0 * * * *", "--corpus", corpus]) == 2
    assert "prefect server start" in capsys.readouterr().err
    assert main(["annotate", "--stages", "nope", "--corpus", corpus]) == 2
    assert "unknown stage" in capsys.readouterr().err
    assert (
        main(
            [
                "annotate",
                "--engine",
                "local",
                "--address",
                "tcp://127.0.0.1:8786",
                "--corpus",
                corpus,
            ]
        )
        == 2
    )
    assert "--address needs --engine dask" in capsys.readouterr().err
    assert (
        main(
            [
                "annotate",
                "--engine",
                "dask",
                "--address",
                "tcp://127.0.0.1:9",
                "--stages",
                "test_level",
                "--corpus",
                corpus,
            ]
        )
        == 2
    )
    assert "no Dask scheduler at tcp://127.0.0.1:9" in capsys.readouterr().err
    assert (
        main(
            [
                "annotate",
                "--stages",
                "test_level",
                "--set",
                "test_level.gain=loud",
                "--corpus",
                corpus,
            ]
        )
        == 2
    )
    assert "gain" in capsys.readouterr().err
