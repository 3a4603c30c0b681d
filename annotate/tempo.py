"""Tempo, beats, downbeats and metre from several onset functions of one low-rate spectrogram.

essentia's RhythmExtractor2013 'multifeature' (Zapata, Davies & Gomez 2014) tracks beats on five
onset detection functions with Degara's tracker and keeps the sequence the others agree with most
(TempoTapMaxAgreement). It is the most accurate of essentia's tempo methods on real music, and the
slowest: it analyses 44.1 kHz audio with 2048-sample frames. The same idea runs here on one
512-sample STFT of an 11025 Hz signal (hop 128 = 86.13 frames/s, the frame rate essentia's
trackers are built for): six onset functions from one spectrogram, Degara on each, the
max-agreement sequence, and then the step where multifeature is weakest on real songs, the
metrical level (half / double tempo), decided by the periodicity of the onset functions and a
log-normal tempo prior instead of by whichever level the trackers happened to follow.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass

import numpy as np

ANALYSIS_SR = 11025
FRAME = 512
HOP = 128
ODF_RATE = ANALYSIS_SR / HOP  # 86.13 frames/s
ODF_NAMES = ("superflux", "complex", "hfc", "melflux", "low", "high")


def essentia_standard():
    """essentia.standard with its INFO logging off (its import-time lines drown a run's output)."""
    import essentia

    essentia.log.infoActive = False
    import essentia.standard as es

    return es


@dataclass
class TempoConfig:
    min_bpm: float = 40.0
    max_bpm: float = 220.0
    # Log-normal tempo prior over the beat rate: centre (BPM) and width (natural-log units).
    prior_bpm: float = 110.0
    prior_width: float = 0.55
    # Weight of the periodicity evidence against the prior when choosing the metrical level.
    salience_weight: float = 1.0
    # Score bonus of the level the trackers agreed on (their agreement is evidence too).
    keep_bonus: float = 0.0
    # Autocorrelation at 1, 2 and 4 periods (comb) or at the period alone.
    comb: bool = True


# --------------------------------------------------------------------------------------------
# Onset detection functions


def _frames(y: np.ndarray) -> np.ndarray:
    if y.shape[0] < FRAME:
        y = np.pad(y, (0, FRAME - y.shape[0]))
    n_frames = 1 + (y.shape[0] - FRAME) // HOP
    return np.lib.stride_tricks.sliding_window_view(y, FRAME)[::HOP][:n_frames]


_MEL_CACHE: dict[int, np.ndarray] = {}


def _mel_bank(n_bins: int, n_bands: int = 40) -> np.ndarray:
    """Triangular mel filters (bins x bands) over 30 Hz - 5 kHz."""
    if n_bands not in _MEL_CACHE:
        freqs = np.fft.rfftfreq(FRAME, 1.0 / ANALYSIS_SR)
        mel = lambda f: 2595.0 * np.log10(1.0 + f / 700.0)  # noqa: E731
        edges_mel = np.linspace(mel(30.0), mel(5000.0), n_bands + 2)
        edges = 700.0 * (10 ** (edges_mel / 2595.0) - 1.0)
        bank = np.zeros((n_bins, n_bands), np.float32)
        for b in range(n_bands):
            lo, mid, hi = edges[b], edges[b + 1], edges[b + 2]
            rise = (freqs - lo) / (mid - lo)
            fall = (hi - freqs) / (hi - mid)
            bank[:, b] = np.maximum(0.0, np.minimum(rise, fall))
        _MEL_CACHE[n_bands] = bank
    return _MEL_CACHE[n_bands]


def _above_floor(x: np.ndarray) -> np.ndarray:
    """Subtract the median: noise and reverb tails add a steady flicker that is not an onset."""
    return np.maximum(x - np.median(x), 0.0).astype(np.float32)


def onset_functions(y: np.ndarray) -> dict[str, np.ndarray]:
    """Six onset detection functions at ODF_RATE from one STFT of mono audio at ANALYSIS_SR.

    superflux: log-magnitude flux with a 3-bin max filter (vibrato is not an onset);
    complex: complex-domain deviation from the phase / magnitude predicted by the last 2 frames
    (soft onsets of bowed and sung notes); hfc: rise of high-frequency content (percussion);
    melflux: log mel-band flux (40 bands); low / high: per-frame median flux over 30-200 Hz (kick)
    and 1.5-5 kHz (snare, hats): drums rise across a whole band, notes only in their partials.

    Whole-array numpy, and no trigonometry (the complex target from unit phasors: np.angle and
    a complex128 np.exp over every bin were half of v7's cost); equal to the per-frame formulas
    (tests/test_onset_functions.py).
    """
    stft = _stft(y)
    magnitude = np.abs(stft)
    freqs = np.fft.rfftfreq(FRAME, 1.0 / ANALYSIS_SR)
    zero = np.zeros((1, magnitude.shape[1]), np.float32)

    log_spec = np.log1p(1000.0 * magnitude)
    rise = np.vstack([zero, np.maximum(log_spec[1:] - _max_of_neighbours(log_spec[:-1]), 0.0)])

    # Complex domain: target = |X[n-1]| * exp(j(2 phi[n-1] - phi[n-2])) = X[n-1] * u[n-1] *
    # conj(u[n-2]) with u = X / |X| (u = 1 where |X| = 0: angle 0); rising energy only.
    silent = magnitude == 0
    pairs = stft.view(np.float32).reshape(*stft.shape, 2)  # (re, im): two real divisions
    unit = (pairs / np.where(silent, np.float32(1), magnitude)[..., None]).view(np.complex64)[
        ..., 0
    ]
    unit[silent] = 1
    target = stft[1:-1] * (unit[1:-1] * np.conj(unit[:-2]))
    deviation = np.abs(stft[2:] - target) * (magnitude[2:] >= magnitude[1:-1])
    complex_odf = np.concatenate([[0.0, 0.0], deviation.sum(axis=1, dtype=np.float64)])

    weights = np.arange(magnitude.shape[1], dtype=np.float32)
    hfc = (magnitude**2) @ weights
    hfc_rise = np.concatenate([[0.0], np.maximum(np.diff(hfc), 0.0)])

    mel = np.log1p(100.0 * (magnitude @ _mel_bank(magnitude.shape[1])))
    mel_rise = np.vstack([zero[:, : mel.shape[1]], np.maximum(np.diff(mel, axis=0), 0.0)]).sum(
        axis=1
    )

    low = (freqs >= 30) & (freqs < 200)
    high = (freqs >= 1500) & (freqs < 5000)
    odfs = {
        "superflux": rise.mean(axis=1),
        "complex": complex_odf,
        "hfc": hfc_rise,
        "melflux": mel_rise,
        "low": _row_median(rise[:, low]),
        "high": _row_median(rise[:, high]),
    }
    out = {}
    for name, odf in odfs.items():
        odf = _above_floor(np.asarray(odf, np.float64))
        peak = float(odf.max())
        out[name] = (odf / peak).astype(np.float32) if peak > 0 else odf
    out["mel_bands"] = mel.astype(np.float32)  # (frames, 40) log mel: harmonic change per beat
    return out


def _stft(y: np.ndarray, chunk: int = 1024) -> np.ndarray:
    """complex64 STFT (frames, FRAME // 2 + 1) of Hann-windowed frames, in chunks of frames:
    numpy's FFT over 20 k frames at once ran ~1.5x slower than over cache-sized chunks, with
    the same values (each frame is transformed alone either way). numpy's own FFT (scipy's is
    faster, but rounds differently, and the complex ODF's mask |X[n]| >= |X[n-1]| flips on
    such rounding: the onset functions would move by up to 0.2 %)."""
    frames = _frames(y)
    window = np.hanning(FRAME).astype(np.float32)
    out = np.empty((frames.shape[0], FRAME // 2 + 1), np.complex64)
    for start in range(0, frames.shape[0], chunk):
        out[start : start + chunk] = np.fft.rfft(frames[start : start + chunk] * window, axis=1)
    return out


def _max_of_neighbours(x: np.ndarray) -> np.ndarray:
    """max(x, x one bin down, x one bin up) per frame, wrapping at the ends like np.roll (the
    same values, without np.roll's two copies)."""
    out = x.copy()
    np.maximum(out[:, 1:], x[:, :-1], out=out[:, 1:])
    np.maximum(out[:, :1], x[:, -1:], out=out[:, :1])
    np.maximum(out[:, :-1], x[:, 1:], out=out[:, :-1])
    np.maximum(out[:, -1:], x[:, :1], out=out[:, -1:])
    return out


def _row_median(x: np.ndarray) -> np.ndarray:
    """np.median(x, axis=1); for an odd row length one partition (the same value, ~2x faster)."""
    n = x.shape[1]
    if n % 2 == 0:
        return np.median(x, axis=1)
    return np.partition(x, n // 2, axis=1)[:, n // 2]


# --------------------------------------------------------------------------------------------
# Beats: Degara per onset function, then the sequence the others agree with most


def harmonic_change(beats: np.ndarray, mel_bands: np.ndarray) -> np.ndarray:
    """Per beat, how much the mean log-mel spectrum of the beat differs from the previous beat's
    (L1 of the mean-normalised spectra): chords tend to change on downbeats."""
    if beats.shape[0] < 2:
        return np.zeros(beats.shape[0])
    edges = np.clip(
        np.round(np.append(beats, beats[-1] + np.median(np.diff(beats))) * ODF_RATE).astype(
            np.int64
        ),
        0,
        mel_bands.shape[0],
    )
    cumulative = np.vstack([np.zeros((1, mel_bands.shape[1])), np.cumsum(mel_bands, axis=0)])
    lengths = np.maximum(edges[1:] - edges[:-1], 1)[:, None]
    means = (cumulative[edges[1:]] - cumulative[edges[:-1]]) / lengths
    means = means - means.mean(axis=1, keepdims=True)
    change = np.abs(np.diff(means, axis=0)).sum(axis=1)
    return np.concatenate([[change.mean() if change.shape[0] else 0.0], change])


_LIBC_SRAND: list = []


def seed_libc_rand(seed: int = 0) -> None:
    """Seed the C library's rand(). essentia's TempoTapDegara draws from it, so without a fixed
    seed the same onset function gets other beats depending on how many tracks the process
    tracked before (measured: 71 to 79 beats on one 30 s excerpt), and a track's row would depend
    on its batch."""
    if not _LIBC_SRAND:
        try:
            _LIBC_SRAND.append(ctypes.CDLL(None).srand)
        except (OSError, AttributeError):  # no C library to reach (the tracker stays unseeded)
            _LIBC_SRAND.append(None)
    if _LIBC_SRAND[0] is not None:
        _LIBC_SRAND[0](ctypes.c_uint(seed))


def tracked_beats(
    odfs: dict[str, np.ndarray], config: TempoConfig, names: tuple[str, ...] = ODF_NAMES
) -> dict[str, np.ndarray]:
    es = essentia_standard()
    tracker = es.TempoTapDegara(
        sampleRateODF=ODF_RATE, minTempo=int(config.min_bpm), maxTempo=int(config.max_bpm)
    )
    out = {}
    for name in names:
        odf = odfs[name]
        seed_libc_rand()  # the same beats for the same onset function, whatever ran before
        out[name] = np.asarray(tracker(odf), np.float64) if float(odf.max()) > 0 else np.zeros(0)
    return out


def max_agreement(candidates: dict[str, np.ndarray]) -> tuple[np.ndarray, float]:
    """The beat sequence with the highest mean agreement (information gain) with the others,
    and that agreement (0 - 5.32 bits; essentia: above ~3.5 the tempo is almost always right)."""
    es = essentia_standard()
    usable = [b.astype(np.float32) for b in candidates.values() if b.shape[0] >= 4]
    if not usable:
        return np.zeros(0), 0.0
    if len(usable) == 1:
        return usable[0].astype(np.float64), 0.0
    beats, confidence = es.TempoTapMaxAgreement()(usable)
    return np.asarray(beats, np.float64), float(confidence)


BEAT_WINDOW_S = 0.07  # the beat F-measure's tolerance (MIREX, mir_eval)


def beat_f_measure(
    estimated: np.ndarray, reference: np.ndarray, window: float = BEAT_WINDOW_S
) -> float:
    """Beat F-measure: one-to-one matches within +-window (greedy in time, as mir_eval's
    beat.f_measure without its 5 s trim)."""
    estimated, reference = np.sort(np.asarray(estimated)), np.sort(np.asarray(reference))
    if estimated.shape[0] == 0 or reference.shape[0] == 0:
        return 0.0
    if reference.shape[0] < 2 or float(np.diff(reference).min()) > 2 * window:
        # references further apart than two windows never compete for one estimate: each
        # takes its nearest (the greedy loop's answer, a hundred times faster)
        right = np.searchsorted(estimated, reference).clip(0, estimated.shape[0] - 1)
        left = (right - 1).clip(0, None)
        nearest = np.minimum(
            np.abs(estimated[left] - reference), np.abs(estimated[right] - reference)
        )
        hits = int(np.count_nonzero(nearest <= window))
    else:
        used = np.zeros(estimated.shape[0], bool)
        hits = 0
        for t in reference:
            candidates = np.flatnonzero(~used & (np.abs(estimated - t) <= window))
            if candidates.shape[0]:
                used[candidates[np.argmin(np.abs(estimated[candidates] - t))]] = True
                hits += 1
    precision, recall = hits / estimated.shape[0], hits / reference.shape[0]
    return 0.0 if hits == 0 else 2 * precision * recall / (precision + recall)


def most_agreed(candidates: dict[str, np.ndarray]) -> str:
    """The name of the beat sequence with the highest mean F-measure against the others (a
    committee of trackers: where they disagree, the one the others back is usually right;
    Holzapfel et al. 2012). Ties go to the first; with fewer than three, the first."""
    names = list(candidates)
    if len(names) < 3:
        return names[0]
    scores = [
        np.mean([beat_f_measure(candidates[a], candidates[b]) for b in names if b != a])
        for a in names
    ]
    return names[int(np.argmax(scores))]


def regular_grid(beats: np.ndarray) -> tuple[float, float]:
    """Beat period and phase (s): least squares of beat time over beat index, robust to a
    missed beat (counted as two periods) and to outlying beats."""
    ibis = np.diff(beats)
    period = float(np.median(ibis))
    index = np.concatenate([[0], np.cumsum(np.maximum(np.round(ibis / period), 1))])
    slope, intercept = np.polyfit(index, beats, 1)
    for _ in range(2):
        keep = np.abs(beats - (intercept + slope * index)) < 0.25 * slope
        if keep.sum() < 4:
            break
        slope, intercept = np.polyfit(index[keep], beats[keep], 1)
    return float(slope), float(intercept)


# --------------------------------------------------------------------------------------------
# Metrical level


def periodicity(odf: np.ndarray) -> np.ndarray:
    """Normalised autocorrelation of an onset function (lag in frames), via the FFT."""
    x = odf.astype(np.float64) - float(odf.mean())
    n = x.shape[0]
    size = 1 << int(np.ceil(np.log2(2 * n)))
    spectrum = np.fft.rfft(x, size)
    acf = np.fft.irfft(spectrum * np.conj(spectrum), size)[:n]
    return acf / (acf[0] if acf[0] > 0 else 1.0)


def pulse_salience(acf: np.ndarray, period_s: float, comb: bool = True) -> float:
    """Strength of a pulse of this period: the autocorrelation at 1, 2 and 4 periods, as a comb
    (a level the music really moves at repeats at its multiples too)."""
    total, weight = 0.0, 0.0
    for multiple, w in ((1, 1.0), (2, 0.5), (4, 0.25)) if comb else ((1, 1.0),):
        lag = multiple * period_s * ODF_RATE
        lo = int(np.floor(lag))
        if lo + 1 >= acf.shape[0]:
            break
        frac = lag - lo
        # max over +-1 frame: the beats sit on an 11.6 ms grid, lags between frames lose energy
        window = acf[max(lo - 1, 0) : lo + 3]
        value = max(float(window.max()), (1 - frac) * acf[lo] + frac * acf[lo + 1])
        total += w * value
        weight += w
    return total / weight if weight else 0.0


def refine_period(
    acf: np.ndarray, period_s: float, span: float = 0.05, multiples: tuple[int, ...] = (1, 2, 4)
) -> float:
    """The period within +-span (relative) of `period_s` whose autocorrelation comb (1, 2 and 4
    periods, interpolated between frames) is strongest. A tracked sequence measures the tempo of
    the stretch it locked onto, and a drifting tempo moves it by several per cent; the
    autocorrelation over the whole excerpt measures the mean period, and its 4-period lag
    resolves it to a quarter of a frame."""
    if period_s <= 0 or span <= 0:
        return period_s
    candidates = period_s * np.exp(np.linspace(-np.log1p(span), np.log1p(span), 121))
    lags = np.asarray(multiples, np.float64)[None, :] * candidates[:, None] * ODF_RATE
    inside = lags < acf.shape[0] - 1
    values = np.where(
        inside, np.interp(np.minimum(lags, acf.shape[0] - 1), np.arange(acf.shape[0]), acf), 0.0
    )
    return float(candidates[int(np.argmax(values.sum(axis=1)))])


def level_scores(beats: np.ndarray, acf: np.ndarray, config: TempoConfig) -> dict[float, float]:
    """Score of each metrical level (factor on the tracked tempo): log prior + weighted log
    salience of its period."""
    period, _ = regular_grid(beats)
    bpm = 60.0 / period
    scores = {}
    for factor in (1.0 / 3.0, 0.5, 2.0 / 3.0, 1.0, 1.5, 2.0, 3.0):
        candidate = bpm * factor
        if not config.min_bpm <= candidate <= config.max_bpm:
            continue
        salience = max(pulse_salience(acf, 60.0 / candidate, config.comb), 1e-3)
        prior = -0.5 * (np.log(candidate / config.prior_bpm) / config.prior_width) ** 2
        scores[factor] = (
            prior
            + config.salience_weight * np.log(salience)
            + (config.keep_bonus if factor == 1.0 else 0.0)
        )
    return scores


def choose_level(
    beats: np.ndarray, acf: np.ndarray, config: TempoConfig
) -> tuple[float, dict[float, float]]:
    """The factor on the tracked tempo with the best score, and all the scores."""
    scores = level_scores(beats, acf, config)
    if not scores:
        return 1.0, {}
    return max(scores, key=scores.get), scores


def beats_at_level(
    beats: np.ndarray, factor: float, odf: np.ndarray, duration_s: float
) -> np.ndarray:
    """Beats at `factor` times the tracked rate: the tracked beats themselves at 1, every other
    one (on the phase with the stronger onsets) at 1/2, the midpoints added at 2, and otherwise a
    regular grid at the new period through one of the first tracked beats, each point moved to
    the strongest onset within 35 ms."""
    if factor == 1.0 or beats.shape[0] < 4:
        return beats
    if factor == 0.5:
        even, odd = beats[0::2], beats[1::2]
        return even if _accent(odf, even).mean() >= _accent(odf, odd).mean() else odd
    if factor == 2.0:
        return np.sort(np.concatenate([beats, beats[:-1] + np.diff(beats) / 2]))
    tracked_period, phase = regular_grid(beats)
    period = tracked_period / factor
    radius = int(round(0.035 * ODF_RATE))
    offsets = np.arange(-radius, radius + 1)
    best, best_strength = np.zeros(0), -1.0
    # The new grid meets a tracked beat every few beats, but not necessarily the first one: of the
    # grids through tracked beats 0, 1 and 2, keep the one on the strongest onsets (6/8 tracked at
    # the quarter note: only one of three puts the dotted-quarter beat on the bar line).
    for k in range(3 if factor < 1.0 or factor == 1.5 else 1):
        start = phase + k * tracked_period
        first = start - np.floor(start / period) * period
        grid = np.arange(first, duration_s, period)
        idx = np.clip(np.round(grid * ODF_RATE).astype(np.int64), 0, odf.shape[0] - 1)
        windows = np.clip(idx[:, None] + offsets[None, :], 0, odf.shape[0] - 1)
        strength = odf[windows].max(axis=1)
        if grid.shape[0] and float(strength.mean()) > best_strength:
            best_strength = float(strength.mean())
            best = windows[np.arange(windows.shape[0]), odf[windows].argmax(axis=1)]
    return best / ODF_RATE


def _accent(odf: np.ndarray, times: np.ndarray, radius: int = 3) -> np.ndarray:
    """Max of an onset function within +-radius frames of each time."""
    if times.shape[0] == 0:
        return np.zeros(0, np.float32)
    idx = np.round(times * ODF_RATE).astype(np.int64)
    windows = np.clip(idx[:, None] + np.arange(-radius, radius + 1)[None, :], 0, odf.shape[0] - 1)
    return odf[windows].max(axis=1)


# --------------------------------------------------------------------------------------------
# Metre and downbeats


def subdivision(beats: np.ndarray, odf: np.ndarray) -> float:
    """> 0 when beats divide in three (compound metre: 6/8, 12/8), < 0 when in two.

    The onset strength at the points a third and two thirds into each beat against the point
    halfway, relative to the strength on the beats.
    """
    if beats.shape[0] < 8:
        return 0.0
    ibi = np.diff(beats)
    starts = beats[:-1]
    on = _accent(odf, starts, 1).mean() + 1e-6
    half = _accent(odf, starts + ibi / 2, 1).mean()
    thirds = 0.5 * (
        _accent(odf, starts + ibi / 3, 1).mean() + _accent(odf, starts + 2 * ibi / 3, 1).mean()
    )
    return float((thirds - half) / on)


def bar_grouping(
    beats: np.ndarray, accents: np.ndarray, groups: tuple[int, ...] = (2, 3, 4)
) -> tuple[int, int, dict[int, float]]:
    """Beats per bar and the phase of the downbeat: for each grouping, the share of the per-beat
    accent variance that the position in the bar explains (minus what chance alone explains),
    at its best phase."""
    centred = accents - accents.mean()
    total = float(np.dot(centred, centred)) or 1.0
    best: dict[int, tuple[float, int]] = {}
    for group in groups:
        n = (centred.shape[0] // group) * group
        if n < 2 * group:
            continue
        folded = centred[:n].reshape(-1, group)
        means = folded.mean(axis=0)
        explained = folded.shape[0] * float(np.sum(means**2)) / total - (group - 1) / max(n - 1, 1)
        best[group] = (explained, int(np.argmax(means)))
    if not best:
        return 4, 0, {}
    group = max(best, key=lambda g: best[g][0])
    return group, best[group][1], {g: v[0] for g, v in best.items()}


def _alternation(values: np.ndarray, window: int = 8) -> float:
    """How strongly a per-position sequence alternates (even vs odd positions), in [0, 1]: median
    over windows of |mean(even) - mean(odd)| / (mean(even) + mean(odd)) (windows: a skipped beat
    flips the phase for the rest of the track)."""
    n = (values.shape[0] // window) * window
    if n == 0:
        return 1.0
    blocks = values[:n].reshape(-1, window)
    even, odd = blocks[:, 0::2].mean(axis=1), blocks[:, 1::2].mean(axis=1)
    return float(np.median(np.abs(even - odd) / (np.abs(even) + np.abs(odd) + 1e-9)))


def backbeat_one_level_down(
    beats: np.ndarray, odfs: dict[str, np.ndarray]
) -> tuple[float, float] | None:
    """(strength alternation, kick/snare alternation) of the level twice as fast as `beats`;
    None without drums to read. Kick and snare taking turns on about equally strong positions is
    the signature of a backbeat: those positions are the beat, and the trackers followed half time."""
    overall = float(odfs["superflux"].mean()) + 1e-9
    if (
        beats.shape[0] < 8
        or float(odfs["low"].mean()) < 0.2 * overall
        or float(odfs["high"].mean()) < 0.3 * overall
    ):
        return None
    finer = np.sort(np.concatenate([beats, beats[:-1] + np.diff(beats) / 2]))
    low, high = _accent(odfs["low"], finer), _accent(odfs["high"], finer)
    if low.mean() <= 1e-9 or high.mean() <= 1e-9:
        return None
    low, high = low / low.mean(), high / high.mean()
    kickness = low / (low + high + 1e-9)
    n = (kickness.shape[0] // 8) * 8
    blocks = kickness[:n].reshape(-1, 8)
    kick_snare = float(
        np.median(np.abs(blocks[:, 0::2].mean(axis=1) - blocks[:, 1::2].mean(axis=1)))
    )
    return _alternation(low + high), kick_snare
