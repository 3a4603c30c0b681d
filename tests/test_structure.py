"""The structure stage: DSP boundaries and labels on songs whose section plan is known, the model
backend with a tiny random StructureNet saved and loaded through its loading code, and the stage
through the runner."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rows, write_audio
from songmill.annotate.base import StageUnavailable, Track
from songmill.annotate.ingest import ingest
from songmill.annotate.runner import run_stages
from songmill.annotate.structure import (
    StructureConfig,
    StructureStage,
    boundary_hit_rate,
    dsp_sections,
    inner_boundaries,
    label_segments,
    mark_instrumental,
)
from songmill.data_schema.labels import SECTION_LABELS
from songmill.testaudio.song_forms import render_song

FORM = ("intro", "verse", "chorus", "verse", "chorus", "outro")
SR = 22050


def grid_beats(bpm: float, duration: float) -> list[float]:
    return list(np.arange(0.0, duration, 60.0 / bpm))


@pytest.fixture(scope="module")
def song():
    audio, truth = render_song(
        FORM, bpm=120, key_tonic="D", key_mode="major", bars=8, sr=SR, seed=3
    )
    return audio.mean(1), truth


def test_hit_rate_counts_one_to_one_matches():
    scores = boundary_hit_rate([10.0, 20.0, 30.0], [10.2, 10.4, 29.0], 0.5)
    assert scores["precision"] == pytest.approx(1 / 3) and scores["recall"] == pytest.approx(1 / 3)
    assert boundary_hit_rate([10.0, 20.0, 30.0], [10.2, 20.4, 29.0], 3.0)["f"] == pytest.approx(1.0)


def test_dsp_finds_the_section_boundaries_and_the_chorus(song):
    mono, truth = song
    music = {"beats": grid_beats(120, len(mono) / SR)}
    sections = dsp_sections(mono, SR, StructureConfig(), music)
    ref, est = inner_boundaries(truth), inner_boundaries(sections)
    assert boundary_hit_rate(ref, est, 3.0)["f"] >= 0.8
    assert boundary_hit_rate(ref, est, 0.5)["f"] >= 0.6
    # Sections tile the track.
    assert sections[0]["start"] == 0.0 and sections[-1]["end"] == pytest.approx(len(mono) / SR)
    assert all(a["end"] == b["start"] for a, b in zip(sections, sections[1:], strict=False))
    # The loudest repeated material is the chorus; it sits where the chorus was rendered.
    chorus_truth = [(s["start"], s["end"]) for s in truth if s["label"] == "chorus"]
    for start, end in chorus_truth:
        middle = (start + end) / 2
        [found] = [s for s in sections if s["start"] <= middle < s["end"]]
        assert found["label"] == "chorus"
    assert sections[0]["label"] == "intro" and sections[-1]["label"] == "outro"


def test_labels_from_repetition_and_energy():
    # A B C B C B D with C loudest: C chorus, B verse, A intro, D outro.
    assert label_segments([0, 1, 2, 1, 2, 1, 3], [-20, -15, -8, -15, -8, -15, -22]) == [
        "intro", "verse", "chorus", "verse", "chorus", "verse", "outro",
    ]  # fmt: skip
    # A pre-chorus: repeated material that always leads into the chorus, after the verse.
    assert label_segments([0, 1, 2, 3, 1, 2, 3, 4, 3], [-20, -16, -12, -6, -16, -12, -6, -14, -6]) == [
        "intro", "verse", "pre-chorus", "chorus", "verse", "pre-chorus", "chorus", "bridge", "chorus",
    ]  # fmt: skip


def test_sections_without_words_become_instrumental():
    sections = [{"start": 0.0, "end": 10.0, "label": "intro"}, {"start": 10.0, "end": 30.0, "label": "verse"},
                {"start": 30.0, "end": 50.0, "label": "bridge"}, {"start": 50.0, "end": 70.0, "label": "chorus"}]  # fmt: skip
    transcript = {
        "text": "hello there",
        "input": "vocals",
        "segments": [
            {"start": 12.0, "end": 20.0, "text": "hello"},
            {"start": 55.0, "end": 60.0, "text": "there"},
        ],
    }
    mark_instrumental(sections, transcript)
    assert [s["label"] for s in sections] == ["intro", "verse", "instrumental", "chorus"]


def test_model_backend_loads_a_saved_network_and_decodes_sections(tmp_path, song):
    import torch
    from songmill.annotate.structure_model import (
        StructureNet,
        load_structure_model,
        save_structure_model,
    )

    torch.manual_seed(0)
    net = StructureNet({"width": 32, "layers": 1, "heads": 2, "max_frames": 512})
    with (
        torch.no_grad()
    ):  # a boundary head that fires on loudness jumps is still a random net otherwise
        net.boundary.bias.fill_(-1.0)
    save_structure_model(net, str(tmp_path / "m"))
    stage = StructureStage(
        StructureConfig(backend="model", model_path=str(tmp_path / "m"), device="cpu")
    )
    stage.setup()
    mono, _ = song
    frames = torch.randn(1, 40, 76)
    assert torch.allclose(
        load_structure_model(str(tmp_path / "m"), "cpu")(frames)[1],
        net.eval()(frames)[1],
        atol=1e-5,
    )
    sections = stage.model.sections(mono, SR, 6.0)
    assert sections and all(s["label"] in SECTION_LABELS for s in sections)
    assert sections[-1]["end"] == pytest.approx(len(mono) / SR)
    missing = StructureStage(StructureConfig(backend="model", model_path=str(tmp_path / "nothing")))
    with pytest.raises(StageUnavailable, match="structure.safetensors"):
        missing.setup()


def test_stage_through_the_runner_with_short_and_silent_files(tmp_path, corpus, song):
    mono, _ = song
    write_audio(tmp_path / "in" / "song.wav", mono, SR)
    write_audio(tmp_path / "in" / "silence.wav", np.zeros(SR * 20, np.float32), SR)
    write_audio(tmp_path / "in" / "short.wav", mono[:SR], SR)
    ingest(corpus, [str(tmp_path / "in")])
    [summary] = run_stages(corpus, [StructureStage(StructureConfig())])
    assert summary.n_ok == 3 and summary.n_error == 0
    got = dict(rows(corpus, "SELECT regexp_extract(uri, '[^/]+$'), structure_form FROM manifest"))
    assert got["short.wav"] == "intro" and got["silence.wav"] == "verse"
    assert "chorus" in got["song.wav"].split()


def test_unknown_backend_is_unavailable():
    with pytest.raises(StageUnavailable, match="dsp or model"):
        StructureStage(StructureConfig(backend="nope")).setup()
    track = Track({"track_id": "x", "uri": "/nonexistent.wav"})
    with pytest.raises(Exception):  # noqa: B017  decoding a missing file fails for that track only
        StructureStage().process_track(track)
