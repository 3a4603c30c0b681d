"""Tempo, key, metre and tuning against generated music with known truth."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
import soxr
from songmill.annotate.base import Track
from songmill.annotate.music import (
    ANALYSIS_SR,
    PITCH_CLASSES,
    MusicConfig,
    MusicStage,
    analyse,
    analysis_signal,
    sharp_name,
)
from songmill.annotate.synth import render_track
from songmill.data_schema.tables import MUSIC

SR = 44100


def analyse_rendered(bpm, tonic, mode, style, seed, seconds=24.0, **kwargs) -> dict:
    audio = render_track(bpm, tonic, mode, seconds, seed=seed, style=style, **kwargs)
    return analyse(analysis_signal(audio, SR), MusicConfig())


# Tempo across the usual octave traps: slow ballads (trackers double them), drum & bass (trackers
# halve it), four-on-the-floor, swung funk; keys in both modes on several tonics.
CASES = [
    (90, "A", "minor", "funk", 1),
    (120, "C", "major", "pop", 2),
    (128, "F#", "minor", "edm", 3),
    (140, "D#", "major", "rock", 4),
    (174, "E", "minor", "dnb", 5),
    (72, "G#", "major", "ballad", 6),
    (100, "A#", "minor", "pop", 7),
    (160, "B", "major", "rock", 8),
]


@pytest.mark.parametrize(("bpm", "tonic", "mode", "style", "seed"), CASES)
def test_tempo_and_key_match_the_truth(bpm, tonic, mode, style, seed):
    row = analyse_rendered(bpm, tonic, mode, style, seed)
    assert row["bpm"] == pytest.approx(bpm, rel=0.02), "tempo (no octave error allowed)"
    assert (row["key_tonic"], row["key_mode"]) == (tonic, mode)
    assert row["keyscale"] == f"{tonic} {mode}"
    assert row["time_signature"] == "4/4"
    assert 0.0 < row["bpm_confidence"] <= 1.0
    assert 0.0 < row["key_strength"] <= 1.0


def test_beats_follow_the_tempo():
    row = analyse_rendered(120, "D", "major", "pop", seed=9)
    beats = np.asarray(row["beats"])
    assert beats.shape[0] > 40
    assert np.all(np.diff(beats) > 0)
    assert np.median(np.diff(beats)) == pytest.approx(0.5, rel=0.03)


@pytest.mark.parametrize(("bpm", "seed"), [(96, 10), (150, 11)])
def test_waltz_is_three_four(bpm, seed):
    row = analyse_rendered(bpm, "F", "major", "waltz", seed, seconds=30.0)
    assert row["bpm"] == pytest.approx(bpm, rel=0.02)
    assert row["time_signature"] == "3/4"
    assert row["keyscale"] == "F major"


@pytest.mark.parametrize("tuning_hz", [432.0, 446.0])
def test_tuning_is_measured_and_key_survives_detuning(tuning_hz):
    row = analyse_rendered(110, "C#", "minor", "ballad", seed=12, tuning_hz=tuning_hz)
    assert row["tuning_hz"] == pytest.approx(tuning_hz, abs=1.5)
    assert row["keyscale"] == "C# minor"


def test_tonic_names_use_sharps():
    assert sharp_name("Bb") == "A#" and sharp_name("Eb") == "D#" and sharp_name("F#") == "F#"
    assert set(PITCH_CLASSES) == {sharp_name(p) for p in PITCH_CLASSES}


def test_octave_guard_can_be_seen_at_work():
    """Without the metrical-level step the tracker halves drum & bass; with it, it does not."""
    audio = render_track(172, "G", "major", 24.0, seed=13, style="dnb")
    signal = analysis_signal(audio, SR)
    guarded = analyse(signal, MusicConfig())
    unguarded = analyse(signal, MusicConfig(backbeat_contrast=9.0, subdivision_contrast=9.0))
    assert guarded["bpm"] == pytest.approx(172, rel=0.02)
    assert unguarded["bpm"] == pytest.approx(86, rel=0.02)


def test_stage_on_files_any_rate_and_channel_count(tmp_path):
    audio = render_track(125, "B", "minor", 20.0, seed=14, style="edm")
    paths = {
        "stereo.flac": (audio, SR),
        "mono48k.wav": (soxr.resample(audio.mean(axis=1), SR, 48000), 48000),
        "eight.wav": (np.repeat(audio[:, :1], 8, axis=1) * 0.5, SR),
    }
    tracks = []
    for name, (data, sr) in paths.items():
        sf.write(str(tmp_path / name), data, sr)
        tracks.append(Track({"track_id": name, "uri": str(tmp_path / name), "duration_s": 20.0}))
    rows = MusicStage().process(tracks)
    columns = {f.name for f in MUSIC.schema} - {"track_id", "stage_version", "config_hash", "run_id", "created_at"}
    for row in rows:
        assert isinstance(row, dict), row
        assert set(row) == columns
        assert row["bpm"] == pytest.approx(125, rel=0.02)
        assert row["keyscale"] == "B minor"


def test_silence_gives_a_row_without_tempo_or_key(tmp_path):
    sf.write(str(tmp_path / "silence.wav"), np.zeros((10 * SR, 2), np.float32), SR)
    [row] = MusicStage().process([Track({"track_id": "s", "uri": str(tmp_path / "silence.wav"), "duration_s": 10})])
    assert row["bpm"] is None and row["key_tonic"] is None and row["beats"] == []


@pytest.mark.parametrize(("frames", "sr"), [(1, SR), (3 * 8000, 8000), (3 * 192000, 192000)])
def test_odd_files_give_a_row_or_a_clear_error(tmp_path, frames, sr):
    rng = np.random.default_rng(1)
    path = tmp_path / f"odd_{sr}_{frames}.wav"
    sf.write(str(path), (0.1 * rng.standard_normal((frames, 2))).astype(np.float32), sr)
    [result] = MusicStage().process([Track({"track_id": "o", "uri": str(path), "duration_s": frames / sr})])
    if isinstance(result, Exception):
        assert "too short" in str(result)
    else:
        assert set(result) >= {"bpm", "key_tonic", "tuning_hz"}
    assert analysis_signal(np.zeros((sr, 2), np.float32), sr).shape[0] == pytest.approx(ANALYSIS_SR, abs=2)
