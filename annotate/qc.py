"""Signal quality control: the numbers that decide whether a file is fit to train on.

Everything is measured on the decoded audio at its native rate and channel count:

- duration, sample peak and RMS (dBFS, where a full-scale sine reads -3.01 dBFS RMS);
- silence ratio: the share of 50 ms frames whose RMS (over all channels) is below a dBFS threshold;
- clipping ratio: the share of samples inside runs of >= `clip_min_run` consecutive samples that
  sit at full scale, or on a flat top at the file's own peak (audio clipped, then turned down);
- integrated loudness (ITU-R BS.1770-4 / EBU R128: K-weighting, 400 ms blocks with 75 % overlap,
  -70 LUFS absolute and -10 LU relative gates, surround channel weights), using pyloudnorm's
  K-weighting filter design for the file's rate and a vectorised gating;
- effective bandwidth: the top of the highest band of the long-term average spectrum that stands
  clearly above the spectrum's own floor. A transcode low-passed at 16 kHz reads ~16 kHz, audio
  upsampled from 22.05 kHz reads ~11 kHz, a genuine full-band recording reads close to Nyquist;
- DC offset: the per-channel mean with the largest magnitude (signed).

`qc_pass` is true when no threshold in `QCConfig` is crossed; `qc_reasons` lists those crossed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from songmill.annotate.base import Stage, StageConfig, Track

# dB values of digital silence are reported as this floor rather than -inf (keeps SQL simple).
DB_FLOOR = -120.0

REASON_TOO_SHORT = "too_short"
REASON_TOO_LONG = "too_long"
REASON_SILENT = "silent"  # mostly silence (silence_ratio above the limit) or no measurable loudness
REASON_TOO_QUIET = "too_quiet"
REASON_TOO_LOUD = "too_loud"
REASON_CLIPPING = "clipping"
REASON_LOW_BANDWIDTH = "low_bandwidth"
REASON_DC_OFFSET = "dc_offset"


@dataclass
class QCConfig(StageConfig):
    min_duration_s: float = 5.0
    max_duration_s: float = 1800.0
    silence_threshold_dbfs: float = -60.0
    silence_frame_s: float = 0.05
    max_silence_ratio: float = 0.5
    # A sample at or above this magnitude is "at full scale" (0.999 ~ -0.009 dBFS).
    clip_level: float = 0.999
    clip_min_run: int = 3
    max_clipping_ratio: float = 0.001
    min_loudness_lufs: float = -35.0
    max_loudness_lufs: float = -3.0
    # The model's mel spectrogram stops at 16 kHz: content above it is not learned, so a 16 kHz
    # low-pass passes while an upsampled 22.05 kHz file (~11 kHz) does not.
    min_bandwidth_hz: float = 15000.0
    # Bandwidth: a drop of this many dB to everything above marks a low-pass edge; without one,
    # the top band within `bandwidth_range_db` of the loudest band counts.
    bandwidth_cliff_db: float = 30.0
    bandwidth_range_db: float = 90.0
    max_abs_dc_offset: float = 0.01


def _db(power_or_amplitude: float, power: bool) -> float:
    if power_or_amplitude <= 0:
        return DB_FLOOR
    value = (10 if power else 20) * np.log10(power_or_amplitude)
    return float(max(value, DB_FLOOR))


def silence_ratio(
    channels: list[np.ndarray], sr: int, frame_s: float, threshold_dbfs: float
) -> float:
    """Share of `frame_s` frames (the last one may be shorter) whose RMS is below the threshold."""
    n = channels[0].shape[0]
    frame = max(1, int(round(frame_s * sr)))
    n_full = n // frame
    sums = np.zeros(n_full + (1 if n % frame else 0))
    for channel in channels:
        full = channel[: n_full * frame].reshape(n_full, frame)
        sums[:n_full] += np.einsum("ij,ij->i", full, full)
        if n % frame:
            tail = channel[n_full * frame :]
            sums[-1] += float(np.dot(tail, tail))
    counts = np.full(sums.shape[0], frame * len(channels), dtype=np.float64)
    if n % frame:
        counts[-1] = (n % frame) * len(channels)
    threshold = 10 ** (threshold_dbfs / 10)
    return float(np.mean(sums / counts < threshold))


def _runs_at_least(mask: np.ndarray, min_run: int) -> int:
    """How many True samples lie in runs of >= min_run consecutive Trues (1-D mask)."""
    if not mask.any():
        return 0
    padded = np.concatenate(([False], mask, [False])).astype(np.int8)
    edges = np.diff(padded)
    starts = np.flatnonzero(edges == 1)
    ends = np.flatnonzero(edges == -1)
    lengths = ends - starts
    return int(lengths[lengths >= min_run].sum())


def clipping_ratio(channels: list[np.ndarray], clip_level: float, min_run: int) -> float:
    """Share of samples in runs of consecutive clipped samples, over all channels.

    Clipped = at full scale (|x| >= clip_level), or on an exactly flat top at the channel's own
    peak (clipped, then gained down). A lone sample at the peak is not clipping; real waveforms
    reach their maximum at single samples, clipped ones stay there.
    """
    total = 0
    for channel in channels:
        magnitude = np.abs(channel)
        peak = float(magnitude.max(initial=0.0))
        at_full_scale = magnitude >= clip_level
        flat = np.zeros_like(at_full_scale)
        if 0.1 < peak < clip_level:
            near_peak = magnitude >= peak * (1 - 1e-4)
            same_as_previous = np.concatenate(([False], np.abs(np.diff(channel)) <= 1e-6 * peak))
            # a flat-top run: near the peak and equal to its neighbour (first sample of the run too)
            flat = near_peak & (same_as_previous | np.concatenate((same_as_previous[1:], [False])))
        total += _runs_at_least(at_full_scale | flat, min_run)
    n_samples = sum(channel.shape[0] for channel in channels)
    return total / n_samples if n_samples else 0.0


def _k_weighting_sos(sr: int) -> np.ndarray:
    """BS.1770 K-weighting (high shelf + RLB high-pass) for any rate, as pyloudnorm designs it."""
    from pyloudnorm.iirfilter import IIRfilter

    shelf = IIRfilter(4.0, 1 / np.sqrt(2), 1500.0, sr, "high_shelf")
    high_pass = IIRfilter(0.0, 0.5, 38.0, sr, "high_pass")
    return np.array([np.concatenate([f.b, f.a]) / f.a[0] for f in (shelf, high_pass)])


def _channel_weights(channels: int) -> np.ndarray:
    """BS.1770 weights in WAV channel order: L R C = 1, LFE excluded, surrounds 1.41."""
    if channels == 5:  # L R C Ls Rs
        return np.array([1.0, 1.0, 1.0, 1.41, 1.41])
    if channels == 6:  # 5.1: L R C LFE Ls Rs
        return np.array([1.0, 1.0, 1.0, 0.0, 1.41, 1.41])
    if channels == 8:  # 7.1: L R C LFE + four surrounds
        return np.array([1.0, 1.0, 1.0, 0.0, 1.41, 1.41, 1.41, 1.41])
    return np.ones(channels)


def integrated_loudness(samples: np.ndarray, sr: int) -> float | None:
    """Integrated loudness in LUFS; None when shorter than one 400 ms block or fully gated."""
    from scipy.signal import sosfilt

    block = 0.4
    n = samples.shape[0]
    if n < int(block * sr):
        return None
    # float32 filtering: loudness differs from float64 by < 0.001 dB, at 2/3 of the cost.
    filtered = sosfilt(_k_weighting_sos(sr).astype(np.float32), samples, axis=0)
    # Block boundaries exactly as BS.1770 (and pyloudnorm) count them: 400 ms, 100 ms steps.
    duration = n / sr
    n_blocks = int(np.round((duration - block) / (block * 0.25))) + 1
    j = np.arange(n_blocks)
    lower = (block * (j * 0.25) * sr).astype(np.int64)
    upper = np.minimum((block * (j * 0.25 + 1) * sr).astype(np.int64), n)
    cumulative = np.concatenate(
        [np.zeros((1, samples.shape[1])), np.cumsum(np.square(filtered, dtype=np.float64), axis=0)]
    )
    z = (cumulative[upper] - cumulative[lower]) / (block * sr)  # (blocks, channels) mean squares
    weights = _channel_weights(samples.shape[1])
    weighted = z @ weights
    with np.errstate(divide="ignore"):
        block_loudness = -0.691 + 10 * np.log10(weighted)
    above_absolute = block_loudness >= -70.0
    if not above_absolute.any():
        return None
    relative_gate = -0.691 + 10 * np.log10(weighted[above_absolute].mean()) - 10.0
    gated = above_absolute & (block_loudness > relative_gate)
    if not gated.any():
        return None
    return float(-0.691 + 10 * np.log10(weighted[gated].mean()))


def effective_bandwidth(
    samples: np.ndarray, sr: int, cliff_db: float = 30.0, range_db: float = 90.0
) -> float | None:
    """Highest frequency with real energy in the long-term average spectrum, in Hz.

    Low-pass filters of encoders and resamplers leave a cliff: everything above some frequency is
    far (`cliff_db`) below the spectrum just under it. The top of the highest such cliff is the
    bandwidth. Without a cliff (natural roll-off, white noise) it is the top of the highest band
    within `range_db` of the loudest. None when the file is shorter than one frame or silent.
    """
    from scipy.ndimage import median_filter

    n_fft = int(2 ** np.ceil(np.log2(sr / 10.0)))  # ~10 Hz resolution at any rate
    n = samples.shape[0]
    if n < n_fft:
        return None
    n_frames = n // n_fft
    # Up to 128 frames spread over the whole file: plenty for a long-term average, bounded cost.
    picks = np.unique(np.linspace(0, n_frames - 1, min(n_frames, 128)).astype(np.int64))
    window = np.hanning(n_fft).astype(np.float32)
    power = np.zeros(n_fft // 2 + 1)
    for c in range(samples.shape[1]):
        frames = samples[: n_frames * n_fft, c].reshape(n_frames, n_fft)[picks]
        power += (np.abs(np.fft.rfft(frames * window, axis=1)) ** 2).mean(axis=0)
    band_bins = max(1, int(round(100.0 / (sr / n_fft))))
    n_bands = power.shape[0] // band_bins
    band_hz = band_bins * sr / n_fft
    band_power = power[: n_bands * band_bins].reshape(n_bands, band_bins).mean(axis=1)
    if band_power.max() <= 0:
        return None
    # A 5-band median ignores lone tones and the odd partial an encoder lets through.
    level = median_filter(10 * np.log10(np.maximum(band_power, 1e-30)), size=5, mode="nearest")
    # Loudest level anywhere at least two bands above each band (suffix maximum).
    above = np.full(n_bands, -np.inf)
    above[:-2] = np.maximum.accumulate(level[::-1])[::-1][2:]
    has_room = np.arange(n_bands) <= n_bands - 4  # need a few bands above to call it a cliff
    cliffs = np.flatnonzero(
        has_room & (level - above >= cliff_db) & (level > level.max() - range_db)
    )
    if cliffs.size:
        top = cliffs[-1]
    else:
        top = np.flatnonzero(level > level.max() - range_db)[-1]
    return float(min((top + 1) * band_hz, sr / 2))


def dc_offset(channels: list[np.ndarray]) -> float:
    means = [float(channel.sum(dtype=np.float64)) / channel.shape[0] for channel in channels]
    return means[int(np.argmax(np.abs(means)))]


def measure(samples: np.ndarray, sr: int, config: QCConfig) -> dict[str, Any]:
    """QC row for float audio shaped (frames, channels) (or (frames,))."""
    if samples.ndim == 1:
        samples = samples[:, None]
    if samples.ndim != 2 or samples.shape[0] == 0 or samples.shape[1] == 0:
        raise ValueError(
            f"qc needs audio shaped (frames, channels) with frames > 0, got {samples.shape}"
        )
    if sr <= 0:
        raise ValueError(f"invalid sample rate {sr}")
    if not np.isfinite(samples).all():
        raise ValueError("audio holds NaN or Inf samples")
    samples = samples.astype(np.float32, copy=False)
    # Contiguous channels: reductions over (frames, channels) along axis 1 are slow in numpy.
    channels = [np.ascontiguousarray(samples[:, c]) for c in range(samples.shape[1])]

    duration = samples.shape[0] / sr
    peak = max(max(float(ch.max()), -float(ch.min())) for ch in channels)
    mean_square = sum(float(np.dot(ch, ch)) for ch in channels) / samples.size
    row: dict[str, Any] = {
        "duration_s": duration,
        "peak_dbfs": _db(peak, power=False),
        "rms_dbfs": _db(mean_square, power=True),
        "silence_ratio": silence_ratio(
            channels, sr, config.silence_frame_s, config.silence_threshold_dbfs
        ),
        "clipping_ratio": clipping_ratio(channels, config.clip_level, config.clip_min_run),
        "loudness_lufs": integrated_loudness(samples, sr),
        "bandwidth_hz": effective_bandwidth(
            samples, sr, config.bandwidth_cliff_db, config.bandwidth_range_db
        ),
        "dc_offset": dc_offset(channels),
    }
    reasons = judge(row, config)
    row["qc_pass"] = not reasons
    row["qc_reasons"] = reasons
    return row


def judge(row: dict[str, Any], config: QCConfig) -> list[str]:
    """The reasons (thresholds crossed) for a measured row; empty when it passes."""
    reasons = []
    if row["duration_s"] < config.min_duration_s:
        reasons.append(REASON_TOO_SHORT)
    if row["duration_s"] > config.max_duration_s:
        reasons.append(REASON_TOO_LONG)
    loudness = row["loudness_lufs"]
    if row["silence_ratio"] > config.max_silence_ratio or (
        loudness is None and row["duration_s"] >= 0.4
    ):
        reasons.append(REASON_SILENT)
    elif loudness is not None and loudness < config.min_loudness_lufs:
        reasons.append(REASON_TOO_QUIET)
    if loudness is not None and loudness > config.max_loudness_lufs:
        reasons.append(REASON_TOO_LOUD)
    if row["clipping_ratio"] > config.max_clipping_ratio:
        reasons.append(REASON_CLIPPING)
    bandwidth = row["bandwidth_hz"]
    if bandwidth is not None and bandwidth < config.min_bandwidth_hz:
        reasons.append(REASON_LOW_BANDWIDTH)
    if abs(row["dc_offset"]) > config.max_abs_dc_offset:
        reasons.append(REASON_DC_OFFSET)
    return reasons


class QCStage(Stage):
    name = "qc"
    version = 1
    table = "qc"
    config_class = QCConfig
    warm_imports = ("scipy.signal", "scipy.ndimage", "pyloudnorm.iirfilter")

    def process_track(self, track: Track) -> dict[str, Any]:
        samples, sr = track.audio()
        return measure(samples, sr, self.config)
