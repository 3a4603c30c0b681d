"""The synthetic music generator: deterministic, well-formed, every demo format writable."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf
from songmill.testaudio.synth import (
    DEMO_FORMATS,
    PITCH_CLASSES,
    STYLES,
    demo_track_specs,
    render_track,
    write_track,
)


def test_render_is_deterministic_stereo_float32_at_minus_one_dbfs():
    a = render_track(120, "D", "minor", 4.0, seed=7, style="pop")
    b = render_track(120, "D", "minor", 4.0, seed=7, style="pop")
    c = render_track(120, "D", "minor", 4.0, seed=8, style="pop")
    assert a.shape == (4 * 44100, 2) and a.dtype == np.float32
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)
    assert 20 * np.log10(np.abs(a).max()) == pytest.approx(-1.0, abs=0.01)
    assert np.isfinite(a).all()


@pytest.mark.parametrize("style", STYLES)
def test_every_style_renders_with_sound_throughout(style):
    audio = render_track(100, "A", "major", 6.0, sr=22050, seed=1, style=style)
    frames = audio[: 5 * 22050, 0].reshape(10, -1)  # half-second frames before the fade
    assert (np.sqrt((frames**2).mean(axis=1)) > 1e-3).all()


def test_key_truth_is_in_the_pitch_content():
    """The tonic triad carries more chroma energy than the relative key's tonic triad."""
    sr = 22050
    audio = render_track(110, "E", "minor", 12.0, sr=sr, seed=3, style="ballad").mean(axis=1)
    spectrum = np.abs(np.fft.rfft(audio)) ** 2
    freqs = np.fft.rfftfreq(audio.size, 1 / sr)
    valid = (freqs > 60) & (freqs < 2000)
    pitch_class = np.round(12 * np.log2(freqs[valid] / 440.0) + 9).astype(int) % 12
    chroma = np.bincount(pitch_class, weights=spectrum[valid], minlength=12)
    e = PITCH_CLASSES.index("E")
    g = PITCH_CLASSES.index("G")
    e_minor = chroma[[e, (e + 3) % 12, (e + 7) % 12]].sum()
    g_major = chroma[[g, (g + 4) % 12, (g + 7) % 12]].sum()
    assert e_minor > g_major
    assert chroma[(e + 11) % 12] > 0.02 * chroma.max()  # the leading tone D# is played


def test_tuning_moves_the_pitches():
    sr = 22050
    at_440 = render_track(100, "A", "major", 4.0, sr=sr, seed=2, style="ballad", tuning_hz=440.0)
    at_452 = render_track(100, "A", "major", 4.0, sr=sr, seed=2, style="ballad", tuning_hz=452.0)
    freqs = np.fft.rfftfreq(at_440.shape[0], 1 / sr)

    def peak(audio):
        spectrum = np.abs(np.fft.rfft(audio.mean(axis=1)))
        band = (freqs > 100) & (freqs < 1000)
        return freqs[band][np.argmax(spectrum[band])]

    assert peak(at_452) / peak(at_440) == pytest.approx(452 / 440, rel=0.01)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"key_tonic": "Db"},
        {"key_mode": "dorian"},
        {"style": "polka"},
        {"bpm": 10},
    ],
)
def test_bad_arguments_are_refused(kwargs):
    args = {"bpm": 120, "key_tonic": "C", "key_mode": "major", "duration_s": 1.0} | kwargs
    with pytest.raises(ValueError):
        render_track(**args)


def test_demo_specs_cover_formats_and_modes_deterministically():
    specs = demo_track_specs(12, seed=0)
    assert specs == demo_track_specs(12, seed=0)
    assert specs != demo_track_specs(12, seed=1)
    assert len(specs) == 12
    assert {s["format"] for s in specs} == set(DEMO_FORMATS)
    assert {s["key_mode"] for s in specs} == {"major", "minor"}
    assert len({s["name"] for s in specs}) == 12
    for spec in specs:
        assert {"name", "bpm", "key_tonic", "key_mode", "duration_s", "format"} <= set(spec)
        assert 20 <= spec["duration_s"] <= 40
        assert spec["key_tonic"] in PITCH_CLASSES
        assert spec["name"].endswith("." + spec["format"])


@pytest.mark.parametrize("fmt", DEMO_FORMATS)
def test_every_demo_format_writes_and_reads_back(tmp_path, fmt):
    audio = render_track(128, "F#", "major", 2.0, seed=4, style="edm")
    path = tmp_path / f"track.{fmt}"
    write_track(str(path), audio)
    decoded, sr = sf.read(str(path), dtype="float32", always_2d=True)
    assert sr == 44100 and decoded.shape[1] == 2
    assert abs(decoded.shape[0] - audio.shape[0]) < 0.1 * 44100  # codecs pad a little
    assert np.sqrt((decoded**2).mean()) > 0.01
