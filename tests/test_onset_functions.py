"""The music stage's onset functions (annotate/tempo.py) equal the textbook per-frame formulas.

onset_functions computes all frames at once and forms the complex-domain target without
trigonometry (for speed); the reference below takes one frame at a time with np.angle / np.exp,
as the formulas are written.
"""

from __future__ import annotations

import numpy as np
import pytest
from songmill.annotate import tempo
from songmill.annotate.music import MusicConfig, analysis_signal, dsp_analysis
from songmill.annotate.tempo import ANALYSIS_SR, FRAME, HOP
from songmill.testaudio.synth import render_track


def reference_onset_functions(y: np.ndarray) -> dict[str, np.ndarray]:
    """The six onset functions, frame by frame."""
    window = np.hanning(FRAME).astype(np.float32)
    n_frames = 1 + (y.shape[0] - FRAME) // HOP
    spectra = [np.fft.rfft(y[i * HOP : i * HOP + FRAME] * window) for i in range(n_frames)]
    freqs = np.fft.rfftfreq(FRAME, 1.0 / ANALYSIS_SR)
    low = (freqs >= 30) & (freqs < 200)
    high = (freqs >= 1500) & (freqs < 5000)
    mel_bank = tempo._mel_bank(FRAME // 2 + 1)
    rows: dict[str, list[float]] = {n: [] for n in tempo.ODF_NAMES}
    mel_bands = []
    previous_hfc, previous_mel = None, None
    for n, spectrum in enumerate(spectra):
        magnitude = np.abs(spectrum)
        log_spec = np.log1p(1000.0 * magnitude)
        if n == 0:
            rise = np.zeros_like(log_spec)
        else:
            last = np.log1p(1000.0 * np.abs(spectra[n - 1]))
            widened = np.maximum(last, np.maximum(np.roll(last, 1), np.roll(last, -1)))
            rise = np.maximum(log_spec - widened, 0.0)
        rows["superflux"].append(rise.mean())
        rows["low"].append(np.median(rise[low]))
        rows["high"].append(np.median(rise[high]))
        if n < 2:
            rows["complex"].append(0.0)
        else:
            x1, x0 = spectra[n - 1], spectra[n - 2]
            target = np.abs(x1) * np.exp(1j * (2 * np.angle(x1) - np.angle(x0)))
            rising = magnitude >= np.abs(x1)
            rows["complex"].append(float((np.abs(spectrum - target) * rising).sum()))
        hfc = float((magnitude**2) @ np.arange(magnitude.shape[0], dtype=np.float32))
        rows["hfc"].append(0.0 if previous_hfc is None else max(hfc - previous_hfc, 0.0))
        mel = np.log1p(100.0 * (magnitude @ mel_bank))
        rows["melflux"].append(
            0.0 if previous_mel is None else float(np.maximum(mel - previous_mel, 0.0).sum())
        )
        previous_hfc, previous_mel = hfc, mel
        mel_bands.append(mel)
    out = {}
    for name, values in rows.items():
        odf = np.maximum(np.asarray(values) - np.median(values), 0.0)
        out[name] = odf / odf.max()
    out["mel_bands"] = np.asarray(mel_bands)
    return out


@pytest.fixture(scope="module")
def funk() -> np.ndarray:
    """12 s of the synthesiser's funk groove in A minor (drums, bass, chords), at ANALYSIS_SR."""
    return analysis_signal(render_track(96, "A", "minor", 12.0, seed=3, style="funk"), 44100)


def test_onset_functions_equal_the_per_frame_formulas(funk):
    fast = tempo.onset_functions(funk)
    reference = reference_onset_functions(funk)
    assert set(fast) == set(reference)
    for name, expected in reference.items():
        assert fast[name].shape == expected.shape, name
        # float32 arithmetic in a different order: a few units in the last place
        np.testing.assert_allclose(fast[name], expected, rtol=1e-5, atol=1e-5, err_msg=name)
    # the onsets are there (not two zero arrays compared)
    assert all(float(reference[name].max()) == pytest.approx(1.0) for name in tempo.ODF_NAMES)


def test_complex_target_where_a_frame_is_silent():
    """A digital-silence frame has no phase (np.angle(0) = 0): the target is X[n-1] rotated by
    its own phase alone, as the formula gives."""
    rng = np.random.default_rng(0)
    y = np.concatenate([np.zeros(FRAME + 4 * HOP, np.float32), rng.normal(size=4 * FRAME)])
    y = y.astype(np.float32)
    fast = tempo.onset_functions(y)
    reference = reference_onset_functions(y)
    np.testing.assert_allclose(fast["complex"], reference["complex"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("width", [1, 2, 7, 8, 163])
def test_row_median_is_numpys(width):
    x = np.random.default_rng(width).random((50, width), dtype=np.float32)
    np.testing.assert_array_equal(tempo._row_median(x), np.median(x, axis=1))


def test_stage_tempo_and_beats_from_the_reference_onset_functions(funk, monkeypatch):
    """The DSP path's tempo, beats and confidence come out the same from either implementation."""
    config = MusicConfig(neural="never")
    fast = dsp_analysis(funk, config)
    monkeypatch.setattr(tempo, "onset_functions", reference_onset_functions)
    slow = dsp_analysis(funk, config)
    assert fast.result["bpm"] == pytest.approx(slow.result["bpm"], abs=1e-6)
    assert fast.result["bpm"] == pytest.approx(96, rel=0.04)
    np.testing.assert_allclose(fast.result["beats"], slow.result["beats"], atol=1e-9)
    assert fast.result["bpm_confidence"] == pytest.approx(slow.result["bpm_confidence"], abs=1e-6)
