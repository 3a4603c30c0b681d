"""Tuning and key: essentia's HPCP, key profiles and a key model fitted on the development set.

The chroma is essentia's HPCP (harmonic pitch class profile: spectral peaks, whitened, each
peak's energy spread over its pitch class and the classes its harmonics would explain), summed
over the track and referenced to the measured tuning. Two chromas of the same frames: the stage's
own (36 bins, 8 harmonics; best on one soundfont's timbres) and KeyExtractor's (12 bins, 4
harmonics, Hann window; steadier across soundfonts). Each is correlated with the 24 rotations of
three of essentia `Key`'s profiles (bgate, temperley2005, noland: the same correlation `Key`
computes); with them, KeyExtractor's chroma's natural seventh (v6: for each minor key, its
subtonic's weight minus its leading tone's). A conditional logit over the 24 keys weighs the
seven features: P(key) = softmax(sum_j w_j f_j(key)). v10 (method "vote", the default): the
key two of three methods agree on (that model's, KeyExtractor's chroma with bgate, essentia
KeyExtractor with temperley2005), else the model's; key_confidence is the model's probability of
the key chosen. The weights (seven numbers) are fitted by maximum likelihood on
the pooled training halves of the development set and its alt_* subsets (benchmarks/devset/fit_key_model.py, which
also chose the features and the L2 penalty by leave-one-piece-out on those halves); numbers in
the module docstring of annotate/music.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import numpy as np
from songmill.annotate.tempo import essentia_standard

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
_FLATS = {
    "Db": "C#",
    "Eb": "D#",
    "Gb": "F#",
    "Ab": "G#",
    "Bb": "A#",
    "Cb": "B",
    "Fb": "E",
    "E#": "F",
    "B#": "C",
}
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
    harmonics: int = (
        8  # HPCP harmonic weighting: a peak also counts for the classes it is a harmonic of
    )
    polyphony: bool = False  # Key's polyphonic profiles (harmonics of the profile's notes)
    three_chords: bool = False  # Key's profile: tonic, dominant and subdominant triads
    min_hz: float = 40.0
    max_hz: float = 3500.0
    band_preset: bool = True  # HPCP: low (< 500 Hz) and high peaks weighted apart
    window: str = "blackmanharris62"
    peak_threshold: float = 1e-5  # SpectralPeaks' magnitude threshold
    pcp_threshold: float = 0.0  # chroma bins under this share of the peak bin count as zero
    # "vote": the majority of three keys (the model's; KeyExtractor's chroma with bgate; essentia
    # KeyExtractor with temperley2005), the model's where all differ (v10; the note at KEY_METHODS);
    # "model": the conditional logit over both chromas' profile correlations (KEY_MODEL);
    # "chroma": this chroma and `profile` alone (essentia Key), key_confidence from its margin.
    method: str = "vote"
    # Reference the HPCP to the measured tuning only when it is this far from 440 Hz.
    min_tuning_cents: float = 15.0


def keyextractor_config(config: KeyConfig) -> KeyConfig:
    """essentia KeyExtractor's chroma and key settings (its defaults at 44.1 kHz: 93 ms frames;
    on the development set its key did not change with the rate, only with the frame length),
    on `config`'s frames."""
    return replace(
        config,
        profile="bgate",
        hpcp_size=12,
        harmonics=4,
        polyphony=False,
        three_chords=False,
        min_hz=25.0,
        max_hz=3500.0,
        band_preset=False,
        window="hann",
        peak_threshold=1e-4,
        pcp_threshold=0.2,
        method="chroma",
    )


def estimate_tuning(
    y: np.ndarray, sr: int, min_hz: float = 40.0, max_hz: float = 5000.0
) -> float | None:
    """Concert-A frequency from the deviation of spectral peaks from equal temperament."""
    es = essentia_standard()
    window = es.Windowing(type="blackmanharris62", size=TUNING_FRAME)
    spectrum = es.Spectrum(size=TUNING_FRAME)
    peaks = es.SpectralPeaks(
        sampleRate=sr,
        minFrequency=min_hz,
        maxFrequency=min(max_hz, sr / 2 - 1),
        maxPeaks=60,
        magnitudeThreshold=1e-5,
        orderBy="magnitude",
    )
    tuning = es.TuningFrequency()  # accumulates a histogram over the frames it sees
    tuning_hz = None
    for frame in es.FrameGenerator(
        y, frameSize=TUNING_FRAME, hopSize=TUNING_FRAME, startFromZero=True
    ):
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


def hpcp_frames(
    y: np.ndarray, sr: int, config: KeyConfig, reference_hz: float = 440.0
) -> np.ndarray:
    """Per-frame HPCP (frames x hpcp_size, unnormalised; zeros where a frame has no peaks)."""
    es = essentia_standard()
    max_hz = min(config.max_hz, sr / 2 - 100)
    window = es.Windowing(type=config.window, size=config.frame)
    spectrum = es.Spectrum(size=config.frame)
    peaks = es.SpectralPeaks(
        sampleRate=sr,
        maxPeaks=60,
        minFrequency=config.min_hz,
        maxFrequency=max_hz,
        magnitudeThreshold=config.peak_threshold,
        orderBy="magnitude",
    )
    whiten = es.SpectralWhitening(sampleRate=sr, maxFrequency=max_hz)
    hpcp = es.HPCP(
        size=config.hpcp_size,
        sampleRate=sr,
        referenceFrequency=reference_hz,
        harmonics=config.harmonics,
        bandPreset=config.band_preset,
        minFrequency=config.min_hz,
        maxFrequency=max_hz,
        weightType="cosine",
        nonLinear=False,
        windowSize=1.0,
        normalized="none",
    )  # loud frames weigh more: measured better than per-frame unit max
    frames = []
    for frame in es.FrameGenerator(
        y, frameSize=config.frame, hopSize=config.frame, startFromZero=True
    ):
        spec = spectrum(window(frame))
        freqs, mags = peaks(spec)
        frames.append(
            hpcp(freqs, whiten(spec, freqs, mags))
            if freqs.shape[0]
            else np.zeros(config.hpcp_size, np.float32)
        )
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
    key = es.Key(
        profileType=config.profile,
        pcpSize=config.hpcp_size,
        usePolyphony=config.polyphony,
        useThreeChords=config.three_chords,
    )
    chroma = _normalised(chroma)
    if config.pcp_threshold > 0:  # as KeyExtractor: weak pitch classes count as absent
        chroma = np.where(chroma < config.pcp_threshold, 0.0, chroma).astype(np.float32)
    tonic, mode, strength, margin = key(chroma)
    tonic = sharp_name(tonic)
    return {
        "key_tonic": tonic,
        "key_mode": mode,
        "keyscale": f"{tonic} {mode}",
        "key_strength": float(strength),
        "key_margin": float(margin),
    }


# essentia Key's profiles (src/algorithms/tonal/key.cpp, keyEDM3.cpp): major then minor, tonic
# first, one value a semitone.
PROFILES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "bgate": (
        (1.00, 0.00, 0.42, 0.00, 0.53, 0.37, 0.00, 0.77, 0.00, 0.38, 0.21, 0.30),
        (1.00, 0.00, 0.36, 0.39, 0.00, 0.38, 0.00, 0.74, 0.27, 0.00, 0.42, 0.23),
    ),
    "temperley2005": (
        (0.748, 0.060, 0.488, 0.082, 0.67, 0.46, 0.096, 0.715, 0.104, 0.366, 0.057, 0.4),
        (0.712, 0.084, 0.474, 0.618, 0.049, 0.46, 0.105, 0.747, 0.404, 0.067, 0.133, 0.33),
    ),
    "noland": (
        (
            0.0629,
            0.0146,
            0.061,
            0.0121,
            0.0623,
            0.0414,
            0.0248,
            0.0631,
            0.015,
            0.0521,
            0.0142,
            0.0478,
        ),
        (
            0.0682,
            0.0138,
            0.0543,
            0.0519,
            0.0234,
            0.0544,
            0.0176,
            0.067,
            0.0349,
            0.0297,
            0.0401,
            0.027,
        ),
    ),
}
# The key model: (chroma, feature) pairs and their weights, fitted by
# benchmarks/devset/fit_key_model.py on the pooled training halves (v6: L2 0.01, chosen there by
# leave-one-piece-out among feature sets and penalties; v5's six weights, without
# natural_seventh, were (1.86, 5.46, -0.95, 4.55, 2.08, 5.34) at L2 0.03). A feature is a
# profile name (the chroma's correlation with it) or "natural_seventh" (see natural_seventh).
KEY_MODEL_FEATURES: tuple[tuple[str, str], ...] = (
    ("stage", "bgate"),
    ("keyextractor", "bgate"),
    ("stage", "temperley2005"),
    ("keyextractor", "temperley2005"),
    ("stage", "noland"),
    ("keyextractor", "noland"),
    ("keyextractor", "natural_seventh"),
)
KEY_MODEL_WEIGHTS: tuple[float, ...] = (2.19, 4.12, -1.06, 8.55, 1.53, 5.54, 2.39)
# key index k: tonic PITCH_CLASSES[k % 12], major below 12, minor from 12


def key_name(index: int) -> tuple[str, str]:
    return PITCH_CLASSES[index % 12], "major" if index < 12 else "minor"


_CIRCULANTS: dict[tuple[str, int], np.ndarray] = {}


def _circulant(profile: str, size: int) -> np.ndarray:
    """(2 * size, size): rows are the centred, unit-norm profile (major then minor) at every
    shift, interpolated to `size` bins as essentia's Key does."""
    if (profile, size) not in _CIRCULANTS:
        n = size // 12
        rows = []
        for values in PROFILES[profile]:
            p = np.asarray(values, np.float64)
            steps = (p - np.roll(p, -1)) / n  # linear steps towards the next semitone's value
            q = (p[:, None] - np.arange(n)[None, :] * steps[:, None]).reshape(-1)
            q = q - q.mean()
            q = q / np.sqrt(np.dot(q, q))
            rows += [np.roll(q, shift) for shift in range(size)]
        _CIRCULANTS[(profile, size)] = np.asarray(rows)
    return _CIRCULANTS[(profile, size)]


def profile_correlations(chroma: np.ndarray, profile: str) -> np.ndarray:
    """Pearson correlation of an HPCP (bin 0 = A, as essentia's HPCP referenced to A) with each
    of the 24 keys' profile (index as key_name): essentia Key's correlation, the best of the
    shifts that round to the key's semitone."""
    size = chroma.shape[0]
    n = size // 12
    x = chroma.astype(np.float64) - float(chroma.mean())
    norm = float(np.sqrt(np.dot(x, x))) or 1.0
    shifts = _circulant(profile, size) @ x / norm  # (2 * size,): major shifts, then minor
    out = np.zeros(24)
    for mode in range(2):
        by_shift = shifts[mode * size : (mode + 1) * size]
        # shifts within half a semitone of semitone k (from A) round to it, as in Key
        near = (np.arange(12)[:, None] * n + np.arange(-(n // 2), n // 2 + 1)[None, :]) % size
        best = by_shift[near].max(axis=1)
        out[mode * 12 + (np.arange(12) + 9) % 12] = best  # semitones from A -> pitch classes from C
    return out


def natural_seventh(chroma: np.ndarray) -> np.ndarray:
    """Per key (index as key_name): for a minor key, the chroma at its natural seventh (the
    subtonic, a whole tone below the tonic) minus that at the raised one (the leading tone,
    a semitone below); 0 for the major keys. Minor in its natural (Aeolian) form, as in folk and
    much pop, against the harmonic minor's leading tone that temperley2005's minor profile
    expects: a positive weight keeps a minor key whose seventh is unraised from being read as
    its relative major. It also raises a major piece's relative minor (the major key's fifth is
    that minor's subtonic); the profiles' weights, refitted with it, offset that. The chroma is
    an HPCP (bin 0 = A), folded to 12 semitones."""
    size = chroma.shape[0]
    n = size // 12
    folded = (
        np.roll(chroma.astype(np.float64), n // 2).reshape(12, n).sum(axis=1)
    )  # semitones from A
    pcs = np.roll(folded, -3)  # pitch classes from C
    tonic = np.arange(12)
    out = np.zeros(24)
    out[12:] = pcs[(tonic + 10) % 12] - pcs[(tonic + 11) % 12]
    return out


def key_feature(chroma: np.ndarray, feature: str) -> np.ndarray:
    """The 24 keys' values of one key-model feature: a profile's correlation, or natural_seventh."""
    if feature == "natural_seventh":
        return natural_seventh(chroma)
    return profile_correlations(chroma, feature)


def key_posterior(
    chromas: dict[str, np.ndarray],
    features: tuple[tuple[str, str], ...] = KEY_MODEL_FEATURES,
    weights: tuple[float, ...] = KEY_MODEL_WEIGHTS,
) -> np.ndarray:
    """P(key) over the 24 keys: softmax of the weighted features of the chromas (name -> summed
    HPCP, normalised and thresholded as the key model expects)."""
    z = sum(
        w * key_feature(chromas[name], feature)
        for (name, feature), w in zip(features, weights, strict=True)
    )
    z = np.asarray(z, np.float64) - float(np.max(z))
    p = np.exp(z)
    return p / p.sum()


def model_chroma(chroma: np.ndarray, config: KeyConfig) -> np.ndarray:
    """The summed chroma as `key_of_chroma` feeds it to Key: max 1, weak classes zeroed."""
    chroma = _normalised(chroma)
    if config.pcp_threshold > 0:
        chroma = np.where(chroma < config.pcp_threshold, 0.0, chroma).astype(np.float32)
    return chroma


KEY_METHODS = ("vote", "model", "chroma")
# v10's vote, chosen on real productions (benchmarks/bench_key_real.py: the majority votes of three
# of the six best methods on the train half, LMMS + OpenMSX projects whose own notes fix the key):
# the best train MIREX (0.889; the model alone 0.858); on the test half exact / MIREX 0.706 /
# 0.798 against the model's 0.706 / 0.779 (LMMS 0.685 / 0.759 as the model; OpenMSX 0.722 / 0.828
# against 0.722 / 0.795). On the real sets essentia KeyExtractor keys the same at 11025 Hz with
# 93 ms frames as at 44.1 kHz.
VOTE_PROFILE = "temperley2005"
KEYEXTRACTOR_FRAME_S = 4096 / 44100  # KeyExtractor's default frame, in seconds


def index_of(tonic: str, mode: str) -> int:
    """The key index of key_name's numbering (tonic in PITCH_CLASSES, major below 12)."""
    return PITCH_CLASSES.index(sharp_name(tonic)) + (12 if mode == "minor" else 0)


def voted_key(
    model_key: int, keyextractor_chroma: np.ndarray, keyextractor: KeyConfig, y: np.ndarray, sr: int
) -> int:
    """The key two of three methods agree on: the model's (`model_key`), KeyExtractor's chroma
    with its bgate profile, and essentia KeyExtractor with temperley2005 on the analysis signal
    (~2000x realtime at 11025 Hz); the model's key where all three differ."""
    chroma_key = key_of_chroma(keyextractor_chroma, keyextractor)
    frame = int(round(KEYEXTRACTOR_FRAME_S * sr / 2)) * 2
    tonic, mode, _ = essentia_standard().KeyExtractor(
        profileType=VOTE_PROFILE, sampleRate=sr, frameSize=frame, hopSize=frame
    )(np.ascontiguousarray(y, dtype=np.float32))
    others = (index_of(chroma_key["key_tonic"], chroma_key["key_mode"]), index_of(tonic, mode))
    return others[0] if others[0] == others[1] else model_key


def tuning_and_key(y: np.ndarray, sr: int, config: KeyConfig) -> dict[str, Any]:
    empty = {
        "key_tonic": None,
        "key_mode": None,
        "keyscale": None,
        "key_strength": 0.0,
        "key_confidence": 0.0,
        "tuning_hz": None,
    }
    if config.method not in KEY_METHODS:
        raise ValueError(
            f"key method must be one of {', '.join(KEY_METHODS)}, not {config.method!r}"
        )
    if y.shape[0] < TUNING_FRAME or float(np.abs(y).max()) < 1e-5:  # too short or silent: no key
        return empty
    tuning_hz = estimate_tuning(y, sr)
    reference_hz = 440.0
    # Within +-15 cents the estimate is mostly estimator noise (piano stretch tuning alone moves
    # it that much); referencing the HPCP to it only flips borderline keys at random.
    if tuning_hz is not None and abs(1200 * np.log2(tuning_hz / 440.0)) >= config.min_tuning_cents:
        reference_hz = tuning_hz
    chroma = hpcp_frames(y, sr, config, reference_hz).sum(axis=0)
    if float(chroma.max()) <= 0:
        return {**empty, "tuning_hz": tuning_hz}
    if config.method == "chroma":
        row = key_of_chroma(chroma, config)
        margin = row.pop("key_margin")
        row["key_confidence"] = float(
            np.clip(margin, 0.0, 1.0)
        )  # Key's relative margin to the runner-up
        row["tuning_hz"] = tuning_hz
        return row
    fallback = keyextractor_config(config)
    keyextractor_chroma = hpcp_frames(y, sr, fallback, reference_hz).sum(axis=0)
    chromas = {
        "stage": model_chroma(chroma, config),
        "keyextractor": model_chroma(keyextractor_chroma, fallback),
    }
    posterior = key_posterior(chromas)
    best = int(np.argmax(posterior))
    if config.method == "vote":
        best = voted_key(best, keyextractor_chroma, fallback, y, sr)
    tonic, mode = key_name(best)
    return {
        "key_tonic": tonic,
        "key_mode": mode,
        "keyscale": f"{tonic} {mode}",
        # the stage chroma's bgate correlation with the chosen key (essentia Key's strength)
        "key_strength": float(profile_correlations(chromas["stage"], "bgate")[best]),
        "key_confidence": float(posterior[best]),
        "tuning_hz": tuning_hz,
    }
