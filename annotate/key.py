"""Tuning and key: essentia's HPCP and key profiles on a low-rate mono signal.

The chroma is essentia's HPCP (harmonic pitch class profile: spectral peaks, whitened, each
peak's energy spread over its pitch class and the classes its harmonics would explain), summed
over the track and referenced to the measured tuning; the key is the profile of essentia's `Key`
that correlates best with it. Two chromas of the same frames vote: the stage's own (36 bins, 8
harmonics; best on one soundfont's timbres) and KeyExtractor's (12 bins, 4 harmonics, Hann
window; steadier across soundfonts). The stage's key stands unless its correlation is below
`fallback_ratio` times KeyExtractor's. Which frame size, chroma variants, profile and ratio:
chosen by measurement on the development set's training halves (benchmarks/devset/compare_keys.py,
benchmarks/bench_music_accuracy.py, numbers in the module docstring of annotate/music.py).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
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
    profile: str = "bgate"
    frame: int = 2048  # samples at the analysis rate: 186 ms at 11025 Hz, no overlap
    hpcp_size: int = 36
    harmonics: int = 8  # HPCP harmonic weighting: a peak also counts for the classes it is a harmonic of
    polyphony: bool = False  # Key's polyphonic profiles (harmonics of the profile's notes)
    three_chords: bool = False  # Key's profile: tonic, dominant and subdominant triads
    min_hz: float = 40.0
    max_hz: float = 3500.0
    band_preset: bool = True  # HPCP: low (< 500 Hz) and high peaks weighted apart
    window: str = "blackmanharris62"
    peak_threshold: float = 1e-5  # SpectralPeaks' magnitude threshold
    pcp_threshold: float = 0.0  # chroma bins under this share of the peak bin count as zero
    # Fall back to KeyExtractor's chroma (keyextractor_config) when the stage chroma's key
    # correlation is below this share of KeyExtractor's (0 turns the fallback off). The two
    # correlations live on different scales (36 against 12 bins): the ratio is fitted on the
    # pooled training halves of the development set and its alt_* subsets.
    fallback_ratio: float = 0.81
    # key_confidence: the share of this many consecutive parts of the track whose own key is the
    # track's key (a modulating or ambiguous track disagrees with itself).
    confidence_parts: int = 4
    # Reference the HPCP to the measured tuning only when it is this far from 440 Hz.
    min_tuning_cents: float = 15.0


def keyextractor_config(config: KeyConfig) -> KeyConfig:
    """essentia KeyExtractor's chroma and key settings (its defaults at 44.1 kHz: 93 ms frames;
    on the development set its key did not change with the rate, only with the frame length),
    on `config`'s frames."""
    return replace(config, profile="bgate", hpcp_size=12, harmonics=4, polyphony=False, three_chords=False,
                   min_hz=25.0, max_hz=3500.0, band_preset=False, window="hann", peak_threshold=1e-4,
                   pcp_threshold=0.2, fallback_ratio=0.0)


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


def hpcp_frames(y: np.ndarray, sr: int, config: KeyConfig, reference_hz: float = 440.0) -> np.ndarray:
    """Per-frame HPCP (frames x hpcp_size, unnormalised; zeros where a frame has no peaks)."""
    es = essentia_standard()
    max_hz = min(config.max_hz, sr / 2 - 100)
    window = es.Windowing(type=config.window, size=config.frame)
    spectrum = es.Spectrum(size=config.frame)
    peaks = es.SpectralPeaks(sampleRate=sr, maxPeaks=60, minFrequency=config.min_hz, maxFrequency=max_hz,
                             magnitudeThreshold=config.peak_threshold, orderBy="magnitude")
    whiten = es.SpectralWhitening(sampleRate=sr, maxFrequency=max_hz)
    hpcp = es.HPCP(size=config.hpcp_size, sampleRate=sr, referenceFrequency=reference_hz,
                   harmonics=config.harmonics, bandPreset=config.band_preset, minFrequency=config.min_hz,
                   maxFrequency=max_hz, weightType="cosine", nonLinear=False, windowSize=1.0,
                   normalized="none")  # loud frames weigh more: measured better than per-frame unit max
    frames = []
    for frame in es.FrameGenerator(y, frameSize=config.frame, hopSize=config.frame, startFromZero=True):
        spec = spectrum(window(frame))
        freqs, mags = peaks(spec)
        frames.append(hpcp(freqs, whiten(spec, freqs, mags)) if freqs.shape[0] else np.zeros(config.hpcp_size, np.float32))
    return np.asarray(frames, np.float32).reshape(-1, config.hpcp_size)


def mean_hpcp(y: np.ndarray, sr: int, config: KeyConfig, reference_hz: float = 440.0) -> np.ndarray:
    """HPCP summed over the track's frames, normalised to max 1 (zeros for silence)."""
    return _normalised(hpcp_frames(y, sr, config, reference_hz).sum(axis=0))


def _normalised(chroma: np.ndarray) -> np.ndarray:
    peak = float(chroma.max()) if chroma.shape[0] else 0.0
    return (chroma / peak).astype(np.float32) if peak > 0 else chroma.astype(np.float32)


def key_of_chroma(chroma: np.ndarray, config: KeyConfig) -> dict[str, Any]:
    """Tonic (sharps), mode, the profile correlation and its margin over the second-best key."""
    es = essentia_standard()
    key = es.Key(profileType=config.profile, pcpSize=config.hpcp_size, usePolyphony=config.polyphony,
                 useThreeChords=config.three_chords)
    chroma = _normalised(chroma)
    if config.pcp_threshold > 0:  # as KeyExtractor: weak pitch classes count as absent
        chroma = np.where(chroma < config.pcp_threshold, 0.0, chroma).astype(np.float32)
    tonic, mode, strength, margin = key(chroma)
    tonic = sharp_name(tonic)
    return {"key_tonic": tonic, "key_mode": mode, "keyscale": f"{tonic} {mode}",
            "key_strength": float(strength), "key_margin": float(margin)}


# Logistic calibration of key_confidence on the self-agreement of the track's parts (under the
# chroma that gave the key), fitted on the pooled training halves of the development set and its
# alt_* subsets: P(key exactly right). Essentia's strength and margin, and whether the two chromas
# agree, carried no information there (Brier no better than a constant).
KEY_CONFIDENCE_COEF = (0.998, 2.132)


def self_agreement(frames: np.ndarray, key: tuple[str, str], config: KeyConfig) -> float:
    """Share of the track's `confidence_parts` consecutive parts whose own key is `key`."""
    votes = [
        (row["key_tonic"], row["key_mode"]) == key
        for part in np.array_split(frames, config.confidence_parts)
        if part.shape[0] and float(part.sum()) > 0
        for row in (key_of_chroma(part.sum(axis=0), config),)
    ]
    return float(np.mean(votes)) if votes else 0.0


def key_confidence(agreement: float, coef: tuple[float, float] = KEY_CONFIDENCE_COEF) -> float:
    return float(1.0 / (1.0 + np.exp(-(coef[0] + coef[1] * agreement))))


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
    frames = hpcp_frames(y, sr, config, reference_hz)
    chroma = frames.sum(axis=0)
    if float(chroma.max()) <= 0:
        return {**empty, "tuning_hz": tuning_hz}
    row = key_of_chroma(chroma, config)
    used = config
    if config.fallback_ratio > 0:
        fallback = keyextractor_config(config)
        fallback_frames = hpcp_frames(y, sr, fallback, reference_hz)
        fallback_chroma = fallback_frames.sum(axis=0)
        if float(fallback_chroma.max()) > 0:
            other = key_of_chroma(fallback_chroma, fallback)
            if row["key_strength"] < config.fallback_ratio * other["key_strength"]:
                row, frames, used = other, fallback_frames, fallback
    row.pop("key_margin")
    row["key_confidence"] = key_confidence(self_agreement(frames, (row["key_tonic"], row["key_mode"]), used))
    row["tuning_hz"] = tuning_hz
    return row
