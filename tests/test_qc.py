"""Signal QC: each measure against a signal with a known answer, and the stage on odd files."""

from __future__ import annotations

import numpy as np
import pyloudnorm
import pytest
import soundfile as sf
import soxr
from scipy.signal import ellip, sosfiltfilt
from songmill.annotate.base import Track
from songmill.annotate.qc import (
    QCConfig,
    QCStage,
    clipping_ratio,
    effective_bandwidth,
    integrated_loudness,
    measure,
)
from songmill.data_schema.tables import QC, STAGE_KEY_FIELDS
from songmill.testaudio.synth import render_track

SR = 44100


@pytest.fixture(scope="module")
def music() -> np.ndarray:
    return render_track(118, "G", "major", 12.0, seed=11, style="rock")


def sine(
    freq: float, seconds: float, rms_dbfs: float, sr: int = SR, channels: int = 2
) -> np.ndarray:
    t = np.arange(int(seconds * sr)) / sr
    amplitude = np.sqrt(2) * 10 ** (rms_dbfs / 20)
    return np.repeat((amplitude * np.sin(2 * np.pi * freq * t))[:, None], channels, axis=1).astype(
        np.float32
    )


def track_for(
    tmp_path, audio: np.ndarray, sr: int, name: str = "t.wav", subtype: str = "FLOAT"
) -> Track:
    path = tmp_path / name
    sf.write(str(path), audio, sr, subtype=subtype)
    return Track({"track_id": name, "uri": str(path), "duration_s": audio.shape[0] / sr})


def test_stereo_sine_loudness_is_bs1770_and_matches_pyloudnorm():
    audio = sine(1000, 10, rms_dbfs=-20)
    lufs = integrated_loudness(audio, SR)
    # -20 dBFS RMS per channel, K-weighting ~+0.7 dB at 1 kHz, stereo sums two channels: ~-17 LUFS
    assert lufs == pytest.approx(-17.0, abs=0.1)
    assert lufs == pytest.approx(
        pyloudnorm.Meter(SR).integrated_loudness(audio.astype(np.float64)), abs=0.01
    )


@pytest.mark.parametrize("sr", [8000, 48000, 192000])
def test_loudness_matches_pyloudnorm_on_music_at_any_rate(music, sr):
    audio = soxr.resample(music, SR, sr)
    expected = pyloudnorm.Meter(sr).integrated_loudness(audio.astype(np.float64))
    assert integrated_loudness(audio, sr) == pytest.approx(expected, abs=0.02)


def test_loudness_of_five_channels_matches_pyloudnorm(music):
    five = np.concatenate([music, music[:, :1] * 0.5, music * 0.3], axis=1)
    expected = pyloudnorm.Meter(SR).integrated_loudness(five.astype(np.float64))
    assert integrated_loudness(five, SR) == pytest.approx(expected, abs=0.02)


def test_loudness_gates_silence_and_needs_a_block():
    audio = sine(1000, 4, rms_dbfs=-20)
    with_silence = np.concatenate([audio, np.zeros_like(audio)])
    # The gates drop the silent half (only the blocks straddling the edge count): ~unchanged.
    gated = integrated_loudness(with_silence, SR)
    assert gated == pytest.approx(integrated_loudness(audio, SR), abs=0.3)
    assert gated == pytest.approx(
        pyloudnorm.Meter(SR).integrated_loudness(with_silence.astype(np.float64)), abs=0.01
    )
    assert integrated_loudness(np.zeros((SR, 2), np.float32), SR) is None
    assert integrated_loudness(audio[: int(0.3 * SR)], SR) is None


def test_clipping_detected_on_clipped_music_not_on_clean(music):
    config = QCConfig()
    clean = measure(music, SR, config)
    assert clean["clipping_ratio"] == 0.0
    assert "clipping" not in clean["qc_reasons"]

    clipped = np.clip(music * 4.0, -1.0, 1.0)
    row = measure(clipped, SR, config)
    assert row["clipping_ratio"] > 0.005
    assert "clipping" in row["qc_reasons"]
    # Clipped, then turned down 6 dB: flat tops below full scale still count.
    assert clipping_ratio([np.ascontiguousarray(c) for c in (clipped * 0.5).T], 0.999, 3) > 0.005


def test_lone_full_scale_samples_are_not_clipping():
    audio = sine(997, 2, rms_dbfs=-3.02, channels=1)  # peaks touch ~1.0 one sample at a time
    assert clipping_ratio([np.ascontiguousarray(audio[:, 0])], 0.999, 3) == 0.0


def test_silence_ratio_of_half_silent_audio(music):
    half = music.copy()
    half[: half.shape[0] // 2] = 0.0
    row = measure(half, SR, QCConfig())
    assert row["silence_ratio"] == pytest.approx(0.5, abs=0.02)
    assert measure(music, SR, QCConfig())["silence_ratio"] < 0.05
    assert "silent" in measure(np.zeros((10 * SR, 2), np.float32), SR, QCConfig())["qc_reasons"]


def test_bandwidth_exposes_low_pass_and_upsampling(music):
    assert effective_bandwidth(music, SR) > 19000
    low_passed = sosfiltfilt(ellip(10, 0.1, 100, 16000, fs=SR, output="sos"), music, axis=0)
    assert 15500 <= effective_bandwidth(low_passed.astype(np.float32), SR) <= 16800
    upsampled = soxr.resample(soxr.resample(music, SR, 22050), 22050, SR)
    assert 10500 <= effective_bandwidth(upsampled, SR) <= 11100
    row = measure(upsampled, SR, QCConfig())
    assert "low_bandwidth" in row["qc_reasons"]


def test_bandwidth_survives_16_bit_quantisation(tmp_path, music):
    upsampled = soxr.resample(soxr.resample(music, SR, 22050), 22050, SR)
    sf.write(str(tmp_path / "up.wav"), upsampled, SR, subtype="PCM_16")
    quantised, _ = sf.read(str(tmp_path / "up.wav"), dtype="float32")
    assert 10300 <= effective_bandwidth(quantised, SR) <= 11100


def test_dc_offset(music):
    row = measure(music + 0.05, SR, QCConfig())
    assert row["dc_offset"] == pytest.approx(0.05, abs=0.002)
    assert "dc_offset" in row["qc_reasons"]
    assert abs(measure(music, SR, QCConfig())["dc_offset"]) < 0.005


def test_levels_and_pass(music):
    row = measure(music, SR, QCConfig())
    assert row["peak_dbfs"] == pytest.approx(-1.0, abs=0.05)
    assert row["duration_s"] == pytest.approx(12.0)
    assert row["qc_pass"] is True and row["qc_reasons"] == []
    full_scale_sine = measure(sine(440, 6, rms_dbfs=-3.0103), SR, QCConfig())
    assert full_scale_sine["rms_dbfs"] == pytest.approx(-3.01, abs=0.01)
    short = measure(music[: 2 * SR], SR, QCConfig())
    assert "too_short" in short["qc_reasons"] and short["qc_pass"] is False


def test_thresholds_come_from_config(music):
    strict = QCConfig(min_loudness_lufs=-5.0, min_duration_s=20.0)
    row = measure(music, SR, strict)
    assert {"too_quiet", "too_short"} <= set(row["qc_reasons"])


def test_stage_rows_have_exactly_the_qc_columns(tmp_path, music):
    [row] = QCStage().process([track_for(tmp_path, music, SR)])
    # The key columns (track, version, config, run, time, input lineage) are the runner's to fill.
    schema_columns = {f.name for f in QC.schema} - {f.name for f in STAGE_KEY_FIELDS}
    assert set(row) == schema_columns


@pytest.mark.parametrize(
    ("name", "frames", "sr", "channels"),
    [
        ("one_sample.wav", 1, SR, 2),
        ("eight_channels.wav", 3 * SR, SR, 8),
        ("narrowband.wav", 3 * 8000, 8000, 1),
        ("hires.wav", 3 * 192000, 192000, 2),
    ],
)
def test_stage_copes_with_odd_files(tmp_path, name, frames, sr, channels):
    rng = np.random.default_rng(0)
    audio = (0.1 * rng.standard_normal((frames, channels))).astype(np.float32)
    [row] = QCStage().process([track_for(tmp_path, audio, sr, name, subtype="PCM_16")])
    assert isinstance(row, dict), row
    assert row["duration_s"] == pytest.approx(frames / sr)
    assert isinstance(row["qc_pass"], bool) and isinstance(row["qc_reasons"], list)
    if name == "narrowband.wav":
        assert row["bandwidth_hz"] <= 4000 and "low_bandwidth" in row["qc_reasons"]
    if name == "hires.wav":
        assert row["bandwidth_hz"] > 90000  # white noise fills the whole band


def test_a_bad_track_is_an_exception_in_the_results_not_a_crash(tmp_path, music):
    bad = tmp_path / "nan.wav"
    sf.write(str(bad), np.full((1000, 2), np.nan, np.float32), SR, subtype="FLOAT")
    tracks = [
        Track({"track_id": "bad", "uri": str(bad), "duration_s": 0.02}),
        track_for(tmp_path, music, SR),
    ]
    bad_result, good_result = QCStage().process(tracks)
    assert isinstance(bad_result, Exception)
    assert isinstance(good_result, dict) and good_result["qc_pass"]
