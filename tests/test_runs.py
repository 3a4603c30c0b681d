"""`songmill runs`: per stage throughput from the `runs` table, and the flow run's markdown artifact."""

from __future__ import annotations

import json

import pytest
import songmill.annotate as annotate
from conftest import tone, write_audio
from songmill.data_schema.store import Corpus
from songmill.flows import app
from songmill.flows.cli import main


@pytest.fixture
def test_stages(monkeypatch):
    monkeypatch.setitem(annotate.STAGE_CLASSES, "test_level", "stages_for_tests:LevelStage")
    monkeypatch.setitem(annotate.STAGE_CLASSES, "test_derived", "stages_for_tests:DerivedStage")


@pytest.fixture
def src(tmp_path):
    durations = [0.5, 1.0, 1.5]
    for i, seconds in enumerate(durations):
        write_audio(tmp_path / "src" / f"t{i}.wav", tone(seconds, seed=i))
    write_audio(tmp_path / "src" / "broken_take.wav", tone(0.25, seed=9))
    return str(tmp_path / "src"), sum(durations)


def test_runs_reports_per_stage_throughput_with_last_and_stage(tmp_path, src, test_stages, capsys):
    folder, audio_s = src
    root = str(tmp_path / "corpus")
    app.ingest(root, [folder], engine="local")
    app.annotate(root, ["test_level", "test_derived"], {}, engine="local")
    app.annotate(
        root, ["test_level"], {"test_level": {"gain": 3.0}}, engine="local"
    )  # a second run

    report = {r["stage"]: r for r in app.runs(root).to_pylist()}
    level, derived = report["test_level"], report["test_derived"]
    assert (level["runs"], level["tracks_done"], level["errors"]) == (
        2,
        6,
        2,
    )  # broken_take fails each time
    assert level["audio_hours"] == pytest.approx(2 * audio_s / 3600, rel=1e-3)
    assert (derived["runs"], derived["tracks_done"], derived["errors"]) == (1, 3, 0)
    assert report["ingest"]["tracks_done"] == 4 and report["ingest"]["errors"] == 0
    stored = (
        Corpus(root)
        .sql(
            "SELECT sum(epoch(finished_at) - epoch(started_at)) AS wall, sum(wall_s) AS core "
            "FROM runs WHERE stage = 'test_level'"
        )
        .to_pylist()[0]
    )
    assert level["wall_hours"] == pytest.approx(stored["wall"] / 3600)
    assert level["audio_h_per_wall_h"] == pytest.approx(level["audio_hours"] / level["wall_hours"])
    assert level["audio_h_per_core_h"] == pytest.approx(2 * audio_s / stored["core"])

    assert main(["runs", "--corpus", root, "--last", "1", "--format", "json"]) == 0
    last = json.loads(capsys.readouterr().out)
    assert [(r["stage"], r["runs"], r["tracks_done"]) for r in last] == [("test_level", 1, 3)]
    assert main(["runs", "--corpus", root, "--stage", "test_derived", "--format", "json"]) == 0
    assert [r["stage"] for r in json.loads(capsys.readouterr().out)] == ["test_derived"]
    assert main(["runs", "--corpus", root]) == 0
    text = capsys.readouterr().out
    assert "test_derived" in text and "(3 rows)" in text


@pytest.mark.prefect
def test_each_flow_run_publishes_the_throughput_table(prefect_server, tmp_path, src, test_stages):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    folder, _ = src
    root = str(tmp_path / "corpus")
    app.ingest(root, [folder], engine="prefect", show_progress=False)
    (summary,) = app.annotate(root, ["test_level"], {}, engine="prefect", show_progress=False)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["songmill-throughput"]))
        )
    mine = [a for a in artifacts if summary.run_id in (a.description or "")]
    assert len(mine) == 1
    table = mine[0].data
    assert "| stage |" in table and "| test_level | 1 | 3 | 1 |" in table
