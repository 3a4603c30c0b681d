"""Tuning and key: essentia's HPCP and key profiles on a low-rate mono signal.

The chroma is essentia's HPCP (harmonic pitch class profile: spectral peaks, whitened, each
peak's energy spread over its pitch class and the classes its harmonics would explain), summed
over the track and referenced to the measured tuning; the key is the profile of essentia's `Key`
that correlates best with it. Which frame size, chroma variant and profile: chosen by measurement
on the development set (benchmarks/bench_music_accuracy.py, numbers in the module docstring of
annotate/music.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from songmill.annotate.tempo import essentia_standard

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_FLATS = {"Db": "C#", "Eb": "D#", "Gb": "F#", "Ab": "G#", "Bb": "A#", "Cb": "B", "Fb": "E", "E#": "F", "B#": "C"}
TUNING_FRAME = 4096


def sharp_name(tonic: str) -> str:
    """'Bb' -> 'A#'; sharps and naturals unchanged."""
    tonic = tonic.strip()
    return _FLATS.get(tonic, tonic)


@dataclass
class KeyConfig:
    profile: str = "noland"
    frame: int = 1024  # samples at the analysis rate: 93 ms at 11025 Hz
    hpcp_size: int = 36
    harmonics: int = 0  # HPCP harmonic weighting (0: a peak counts for its own class only)
    polyphony: bool = False  # Key's polyphonic profiles (harmonics of the profile's notes)
    three_chords: bool = False  # Key's profile: tonic, dominant and subdominant triads
    min_hz: float = 25.0
    max_hz: float = 3500.0
    # Reference the HPCP to the measured tuning only when it is this far from 440 Hz.
    min_tuning_cents: float = 15.0


def estimate_tuning(y: np.ndarray, sr: int, min_hz: float = 40.0, max_hz: float = 5000.0) -> float | None:
    """Concert-A frequency from the deviation of spectral peaks from equal temperament."""
    es = essentia_standard()
    window = es.Windowing(type="blackmanharris62", size=TUNING_FRAME)
    spectrum = es.Spectrum(size=TUNING_FRAME)
    peaks = es.SpectralPeaks(sampleRate=sr, minFrequency=min_hz, maxFrequency=min(max_hz, sr / 2 - 1),
                             maxPeaks=60, magnitudeThreshold=1e-5, orderBy="magnitude")
    tuning = es.TuningFrequency()  # accumulates a histogram over the frames it sees
    tuning_hz = None
    for frame in es.FrameGenerator(y, frameSize=TUNING_FRAME, hopSize=TUNING_FRAME, startFromZero=True):
        freqs, mags = peaks(spectrum(window(frame)))
        if freqs.shape[0]:
            tuning_hz, _ = tuning(freqs, mags)
    if tuning_hz is None:
        return None
    # TuningFrequency can answer a semitone away (429 Hz comes back as 454.5 Hz): fold into
    # [-50, +50) cents of 440 Hz, or the key would come out a semitone off.
    cents = 1200 * np.log2(float(tuning_hz) / 440.0)
    cents = (cents + 50) % 100 - 50
    return float(440.0 * 2 ** (cents / 1200))


def mean_hpcp(y: np.ndarray, sr: int, config: KeyConfig, reference_hz: float = 440.0) -> np.ndarray:
    """HPCP summed over the track's frames, normalised to max 1 (zeros for silence)."""
    es = essentia_standard()
    max_hz = min(config.max_hz, sr / 2 - 100)
    window = es.Windowing(type="blackmanharris62", size=config.frame)
    spectrum = es.Spectrum(size=config.frame)
    peaks = es.SpectralPeaks(sampleRate=sr, maxPeaks=60, minFrequency=config.min_hz, maxFrequency=max_hz,
                             magnitudeThreshold=1e-5, orderBy="magnitude")
    whiten = es.SpectralWhitening(sampleRate=sr, maxFrequency=max_hz)
    hpcp = es.HPCP(size=config.hpcp_size, sampleRate=sr, referenceFrequency=reference_hz,
                   harmonics=config.harmonics, bandPreset=True, minFrequency=config.min_hz,
                   maxFrequency=max_hz, weightType="cosine", nonLinear=False, windowSize=1.0)
    total = np.zeros(config.hpcp_size, np.float64)
    for frame in es.FrameGenerator(y, frameSize=config.frame, hopSize=config.frame, startFromZero=True):
        spec = spectrum(window(frame))
        freqs, mags = peaks(spec)
        if freqs.shape[0]:
            total += hpcp(freqs, whiten(spec, freqs, mags))
    peak = float(total.max())
    return (total / peak).astype(np.float32) if peak > 0 else total.astype(np.float32)


def key_of_chroma(chroma: np.ndarray, config: KeyConfig) -> dict[str, Any]:
    """Tonic (sharps), mode, the profile correlation and its margin over the second-best key."""
    es = essentia_standard()
    key = es.Key(profileType=config.profile, pcpSize=config.hpcp_size, usePolyphony=config.polyphony,
                 useThreeChords=config.three_chords)
    tonic, mode, strength, margin = key(chroma.astype(np.float32))
    tonic = sharp_name(tonic)
    return {"key_tonic": tonic, "key_mode": mode, "keyscale": f"{tonic} {mode}",
            "key_strength": float(strength), "key_margin": float(margin)}


# Logistic calibration of key_confidence on (strength, margin), fitted on the development set's
# training half (benchmarks/bench_music_accuracy.py --fit): P(key exactly right).
KEY_CONFIDENCE_COEF = (0.472, 1.427, 0.301)


def key_confidence(strength: float, margin: float, coef: tuple[float, float, float] = KEY_CONFIDENCE_COEF) -> float:
    z = coef[0] + coef[1] * strength + coef[2] * margin
    return float(1.0 / (1.0 + np.exp(-z)))


def tuning_and_key(y: np.ndarray, sr: int, config: KeyConfig) -> dict[str, Any]:
    empty = {"key_tonic": None, "key_mode": None, "keyscale": None, "key_strength": 0.0,
             "key_confidence": 0.0, "tuning_hz": None}
    if y.shape[0] < TUNING_FRAME or float(np.abs(y).max()) < 1e-5:  # too short or silent: no key
        return empty
    tuning_hz = estimate_tuning(y, sr)
    reference_hz = 440.0
    # Within +-15 cents the estimate is mostly estimator noise (piano stretch tuning alone moves
    # it that much); referencing the HPCP to it only flips borderline keys at random.
    if tuning_hz is not None and abs(1200 * np.log2(tuning_hz / 440.0)) >= config.min_tuning_cents:
        reference_hz = tuning_hz
    chroma = mean_hpcp(y, sr, config, reference_hz)
    if float(chroma.max()) <= 0:
        return {**empty, "tuning_hz": tuning_hz}
    row = key_of_chroma(chroma, config)
    row["key_confidence"] = key_confidence(row["key_strength"], row.pop("key_margin"))
    row["tuning_hz"] = tuning_hz
    return row
