"""`songmill demo` end to end on a few tracks (training is covered by the train tests)."""

from __future__ import annotations

import os

import pyarrow.parquet as pq
import pytest

pytestmark = pytest.mark.prefect


def test_demo_runs_end_to_end_and_reports_against_truth(prefect_server, tmp_path, capsys):
    from songmill.flows.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--tracks", "3", "--no-train"]) == 0
    text = capsys.readouterr().out
    assert "tempo within 2 % of the truth" in text and "key and mode exact" in text
    assert "broken_not_audio.wav" in text and "broken_truncated.mp3" in text
    manifest = pq.read_table(out / "manifest.parquet")
    assert manifest.num_rows >= 1
    assert {"track_id", "uri", "bpm", "keyscale", "qc_pass", "loudness_lufs"} <= set(
        manifest.column_names
    )
    assert os.path.isdir(out / "corpus" / "music")
    # a second demo starts from scratch rather than piling onto the first corpus
    assert main(["demo", "--out", str(out), "--tracks", "3", "--no-train"]) == 0
    assert pq.read_table(out / "manifest.parquet").num_rows == manifest.num_rows
