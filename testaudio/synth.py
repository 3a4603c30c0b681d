"""Synthetic music with known tempo, key, metre and tuning, for tests, the demo and benchmarks.

Each track is a small band: drums (kick / snare / hi-hat patterns per style, with swing, ghost
notes, fills and humanised timing), a chord instrument playing a progression in the key, a bass
line and a melody. The key is made unambiguous against its relative the way real songs make it:
the tonic chord opens and closes every phrase and gets the most time, the bass sits on chord roots,
and minor keys use the harmonic-minor dominant (major V with the leading tone). Everything is
drawn from one `numpy.random.Generator` seeded by the caller, so a (spec, seed) pair always renders
the same samples.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
STYLES = ("pop", "rock", "edm", "funk", "dnb", "waltz", "ballad")
DEMO_FORMATS = ("wav", "flac", "mp3", "ogg")

MAJOR_SCALE = (0, 2, 4, 5, 7, 9, 11)
HARMONIC_MINOR_SCALE = (0, 2, 3, 5, 7, 8, 11)
_MAJOR_TRIAD = (0, 4, 7)
_MINOR_TRIAD = (0, 3, 7)

# Chord = (root offset from the tonic in semitones, triad intervals). Every progression starts on
# the tonic; minor ones reach the tonic through a major V (leading tone), as most minor songs do.
_I, _ii, _IV, _V, _vi = (
    (0, _MAJOR_TRIAD),
    (2, _MINOR_TRIAD),
    (5, _MAJOR_TRIAD),
    (7, _MAJOR_TRIAD),
    (9, _MINOR_TRIAD),
)
_i, _iv, _VI, _VII, _III = (
    (0, _MINOR_TRIAD),
    (5, _MINOR_TRIAD),
    (8, _MAJOR_TRIAD),
    (10, _MAJOR_TRIAD),
    (3, _MAJOR_TRIAD),
)
MAJOR_PROGRESSIONS = (
    (_I, _V, _vi, _IV),
    (_I, _IV, _V, _I),
    (_I, _vi, _IV, _V),
    (_I, _IV, _I, _V),
    (_I, _ii, _V, _I),
)
MINOR_PROGRESSIONS = (
    (_i, _iv, _V, _i),
    (_i, _VI, _iv, _V),
    (_i, _VII, _VI, _V),
    (_i, _iv, _i, _V),
    (_i, _III, _iv, _V),
)


@dataclass(frozen=True)
class _DrumPattern:
    """One bar on a 16th-note grid (12 steps for 3/4): hit velocities per instrument."""

    beats_per_bar: int
    kick: tuple[float, ...]
    snare: tuple[float, ...]
    hat: tuple[float, ...]
    swing: float = 0.0  # delay of odd 16ths as a share of a 16th
    open_hat: tuple[float, ...] = ()


def _steps(hits: dict[int, float], n: int) -> tuple[float, ...]:
    return tuple(hits.get(i, 0.0) for i in range(n))


_PATTERNS: dict[str, _DrumPattern] = {
    "pop": _DrumPattern(
        4,
        kick=_steps({0: 1.0, 8: 0.9, 10: 0.5}, 16),
        snare=_steps({4: 1.0, 12: 1.0}, 16),
        hat=_steps({i: (0.6 if i % 4 == 0 else 0.4) for i in range(0, 16, 2)}, 16),
    ),
    "rock": _DrumPattern(
        4,
        kick=_steps({0: 1.0, 6: 0.7, 8: 0.9}, 16),
        snare=_steps({4: 1.0, 12: 1.0, 15: 0.25}, 16),
        hat=_steps({i: 0.5 for i in range(0, 16, 2)}, 16),
    ),
    "edm": _DrumPattern(
        4,
        kick=_steps({0: 1.0, 4: 1.0, 8: 1.0, 12: 1.0}, 16),
        snare=_steps({4: 0.8, 12: 0.8}, 16),
        hat=_steps({i: 0.3 for i in range(1, 16, 2)}, 16),
        open_hat=_steps({2: 0.6, 6: 0.6, 10: 0.6, 14: 0.6}, 16),
    ),
    "funk": _DrumPattern(
        4,
        kick=_steps({0: 1.0, 3: 0.6, 8: 0.8, 10: 0.6}, 16),
        snare=_steps({4: 1.0, 7: 0.2, 9: 0.2, 12: 1.0}, 16),
        hat=_steps({i: (0.55 if i % 2 == 0 else 0.3) for i in range(16)}, 16),
        swing=0.3,
    ),
    # Drum & bass as it is felt and annotated: snare on 2 and 4 of fast bars, busy hats.
    "dnb": _DrumPattern(
        4,
        kick=_steps({0: 1.0, 10: 0.9}, 16),
        snare=_steps({4: 1.0, 12: 1.0}, 16),
        hat=_steps({i: (0.5 if i % 4 == 0 else 0.35) for i in range(0, 16, 2)}, 16),
    ),
    "waltz": _DrumPattern(
        3,
        kick=_steps({0: 1.0}, 12),
        snare=_steps({4: 0.45, 8: 0.45}, 12),
        hat=_steps({0: 0.4, 4: 0.5, 8: 0.5}, 12),
    ),
    "ballad": _DrumPattern(
        4,
        kick=_steps({0: 0.9, 8: 0.7}, 16),
        snare=_steps({4: 0.8, 12: 0.8}, 16),
        hat=_steps({i: 0.35 for i in range(0, 16, 2)}, 16),
        swing=0.15,
    ),
}


def midi_to_hz(midi: np.ndarray | float, tuning_hz: float = 440.0) -> np.ndarray | float:
    return tuning_hz * 2.0 ** ((np.asarray(midi, dtype=float) - 69.0) / 12.0)


def _adsr(
    n: int, sr: int, attack: float, decay: float, sustain: float, release: float
) -> np.ndarray:
    """An envelope of n samples: linear attack, exponential decay towards `sustain`, release."""
    t = np.arange(n) / sr
    env = sustain + (1.0 - sustain) * np.exp(-np.maximum(t - attack, 0.0) / max(decay, 1e-3))
    env *= np.minimum(t / max(attack, 1e-4), 1.0)
    release_n = min(n, int(release * sr))
    if release_n > 0:
        env[n - release_n :] *= np.linspace(1.0, 0.0, release_n)
    return env


def _tone(
    freq: float,
    n: int,
    sr: int,
    harmonics: np.ndarray,
    rng: np.random.Generator,
    vibrato: float = 0.0,
) -> np.ndarray:
    """Additive tone: harmonics[k] is the amplitude of partial k+1 (partials above Nyquist dropped)."""
    t = np.arange(n) / sr
    phase = 2 * np.pi * freq * t
    if vibrato:
        phase += vibrato * np.sin(2 * np.pi * 5.0 * t) * (1 - np.exp(-t / 0.3))
    out = np.zeros(n)
    for k, amp in enumerate(harmonics, start=1):
        if amp == 0 or freq * k >= sr / 2 * 0.95:
            continue
        out += amp * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    return out


def _one_pole_lowpass(x: np.ndarray, cutoff_hz: float, sr: int) -> np.ndarray:
    from scipy.signal import lfilter

    a = np.exp(-2 * np.pi * cutoff_hz / sr)
    return lfilter([1 - a], [1, -a], x)


def _highpass(x: np.ndarray, cutoff_hz: float, sr: int) -> np.ndarray:
    from scipy.signal import butter, sosfilt

    return sosfilt(butter(2, cutoff_hz, "highpass", fs=sr, output="sos"), x)


def _drum_kit(sr: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """One-shot samples: kick (pitch-swept sine), snare (tone + noise), closed / open hats."""
    kick_n = int(0.35 * sr)
    t = np.arange(kick_n) / sr
    start_hz, end_hz = rng.uniform(110, 160), rng.uniform(42, 55)
    freq = end_hz + (start_hz - end_hz) * np.exp(-t / 0.04)
    kick = np.sin(2 * np.pi * np.cumsum(freq) / sr) * np.exp(-t / rng.uniform(0.12, 0.2))
    kick += 0.3 * rng.standard_normal(kick_n) * np.exp(-t / 0.004)  # beater click

    snare_n = int(0.25 * sr)
    t = np.arange(snare_n) / sr
    body = np.sin(2 * np.pi * rng.uniform(170, 220) * t) * np.exp(-t / 0.05)
    rattle = _highpass(rng.standard_normal(snare_n), 1500, sr) * np.exp(-t / rng.uniform(0.06, 0.1))
    snare = 0.6 * body + 0.8 * rattle

    def hat(duration: float, decay: float) -> np.ndarray:
        n = int(duration * sr)
        t = np.arange(n) / sr
        return _highpass(rng.standard_normal(n), 7000, sr) * np.exp(-t / decay)

    return {"kick": kick, "snare": snare, "hat": hat(0.08, 0.015), "open_hat": hat(0.3, 0.09)}


def _add(out: np.ndarray, start: int, sound: np.ndarray, gain: float) -> None:
    if start >= out.shape[0] or start + sound.shape[0] <= 0:
        return
    lo = max(start, 0)
    hi = min(start + sound.shape[0], out.shape[0])
    out[lo:hi] += gain * sound[lo - start : hi - start]


def _voice_chord(root_pc: int, intervals: tuple[int, ...], center: int) -> list[int]:
    """MIDI notes of the triad, each pitch class placed nearest to `center` (simple voice leading)."""
    notes = []
    for iv in intervals:
        pc = (root_pc + iv) % 12
        notes.append(center + ((pc - center + 6) % 12) - 6)
    return sorted(notes)


def render_track(
    bpm: float,
    key_tonic: str,
    key_mode: str,
    duration_s: float,
    sr: int = 44100,
    seed: int = 0,
    style: str = "pop",
    tuning_hz: float = 440.0,
) -> np.ndarray:
    """Render a track; float32 stereo shaped (frames, 2), peak about -1 dBFS.

    bpm: the tempo a listener taps (quarter notes; dotted feel aside); key_tonic in sharps
    (`PITCH_CLASSES`); key_mode "major" | "minor"; style one of `STYLES` ("waltz" is in 3/4).
    """
    if key_tonic not in PITCH_CLASSES:
        raise ValueError(f"key_tonic must be one of {PITCH_CLASSES}, got {key_tonic!r}")
    if key_mode not in ("major", "minor"):
        raise ValueError(f"key_mode must be 'major' or 'minor', got {key_mode!r}")
    if style not in _PATTERNS:
        raise ValueError(f"style must be one of {STYLES}, got {style!r}")
    if not 30 <= bpm <= 300:
        raise ValueError(f"bpm out of range: {bpm}")
    rng = np.random.default_rng(seed)
    n = int(round(duration_s * sr))
    pattern = _PATTERNS[style]
    beat_s = 60.0 / bpm
    bar_s = beat_s * pattern.beats_per_bar
    step_s = beat_s / 4
    steps_per_bar = pattern.beats_per_bar * 4
    n_bars = int(np.ceil(duration_s / bar_s)) + 1

    drums = np.zeros((n, 2))
    music = np.zeros((n, 2))
    kit = _drum_kit(sr, rng)
    pans = {"kick": 0.0, "snare": 0.05, "hat": 0.35, "open_hat": -0.3}
    lead_in_bars = 1 if rng.random() < 0.5 else 0  # some tracks start with music only

    def place(dest: np.ndarray, time_s: float, sound: np.ndarray, gain: float, pan: float) -> None:
        start = int(round(time_s * sr))
        _add(dest[:, 0], start, sound, gain * np.sqrt(0.5 * (1 - pan)))
        _add(dest[:, 1], start, sound, gain * np.sqrt(0.5 * (1 + pan)))

    # Drums: the pattern with velocity and timing jitter, the odd fill, swing on odd 16ths.
    for bar in range(lead_in_bars, n_bars):
        fill = bar % 8 == 7 and rng.random() < 0.7
        for step in range(steps_per_bar):
            t = bar * bar_s + step * step_s
            if step % 2 == 1:
                t += pattern.swing * step_s
            for name in ("kick", "snare", "hat", "open_hat"):
                steps = getattr(pattern, name)
                vel = steps[step] if steps else 0.0
                if name == "snare" and fill and step >= steps_per_bar - 4:
                    vel = max(vel, 0.5 + 0.1 * (step - steps_per_bar + 4))
                if vel <= 0:
                    continue
                jitter = rng.normal(0, 0.004)
                vel *= rng.uniform(0.85, 1.0)
                gain = {"kick": 0.9, "snare": 0.55, "hat": 0.25, "open_hat": 0.18}[name]
                place(drums, t + jitter, kit[name], gain * vel, pans[name])

    # Harmony: one chord per bar (two per bar at slow tempi), tonic every phrase start and end.
    tonic_pc = PITCH_CLASSES.index(key_tonic)
    progressions = MAJOR_PROGRESSIONS if key_mode == "major" else MINOR_PROGRESSIONS
    scale = MAJOR_SCALE if key_mode == "major" else HARMONIC_MINOR_SCALE
    progression = progressions[rng.integers(len(progressions))]
    chords_per_bar = 2 if bpm < 80 and pattern.beats_per_bar == 4 else 1
    chord_s = bar_s / chords_per_bar
    n_chords = int(np.ceil(duration_s / chord_s)) + 1
    last_chord = int(np.floor(duration_s / chord_s - 1e-9))
    keys_harmonics = np.array([1.0, 0.5, 0.3, 0.2, 0.12, 0.08]) * rng.uniform(0.8, 1.2, 6)
    bass_harmonics = np.array([1.0, 0.6, 0.25, 0.1])
    lead_harmonics = np.array([1.0, 0.0, 0.33, 0.0, 0.2, 0.0, 0.14])  # odd partials: reedy
    sustained_keys = style in ("edm", "ballad") or rng.random() < 0.3
    leading_tone_pc = (tonic_pc + 11) % 12

    for c in range(n_chords):
        # The last full chord slot (and every 4th... via the progression) lands on the tonic.
        root_off, intervals = (
            (0, progression[0][1]) if c == last_chord else progression[c % len(progression)]
        )
        chord_start = c * chord_s
        root_pc = (tonic_pc + root_off) % 12
        chord_notes = _voice_chord(root_pc, intervals, center=62 + rng.integers(-2, 3))
        # Chord instrument: sustained pad, or re-struck on beats (comping).
        strikes = (
            [0.0] if sustained_keys else [i * beat_s for i in range(int(round(chord_s / beat_s)))]
        )
        for k, offset in enumerate(strikes):
            length = chord_s - offset if sustained_keys else beat_s * rng.choice([0.9, 1.0])
            dur_n = int(length * sr)
            env = _adsr(
                dur_n,
                sr,
                0.08 if sustained_keys else 0.005,
                1.5 if sustained_keys else 0.35,
                0.6 if sustained_keys else 0.15,
                0.05,
            )
            accent = 1.0 if k == 0 else 0.7
            for note in chord_notes:
                freq = float(midi_to_hz(note, tuning_hz))
                wave = _tone(freq, dur_n, sr, keys_harmonics, rng) * env
                place(
                    music,
                    chord_start + offset + rng.normal(0, 0.003),
                    wave,
                    0.11 * accent,
                    rng.uniform(-0.4, 0.4),
                )

        # Bass: chord root, on beats 1 and 3 (pop), eighths (rock / dnb), offbeats (edm).
        bass_midi = 36 + (root_pc - 36) % 12
        if style in ("rock", "dnb"):
            hits = [i * beat_s / 2 for i in range(int(round(chord_s / beat_s * 2)))]
        elif style == "edm":
            hits = [0.0] + [i * beat_s + beat_s / 2 for i in range(int(round(chord_s / beat_s)))]
        elif style == "waltz":
            hits = [0.0]
        else:
            hits = [i * beat_s for i in range(0, int(round(chord_s / beat_s)), 2)]
        for h in hits:
            length = min(beat_s * (0.45 if style in ("rock", "dnb", "edm") else 0.95), chord_s - h)
            dur_n = int(length * sr)
            note = bass_midi + (7 if style == "funk" and h > 0 and rng.random() < 0.3 else 0)
            env = _adsr(dur_n, sr, 0.005, 0.4, 0.5, 0.03)
            wave = _tone(float(midi_to_hz(note, tuning_hz)), dur_n, sr, bass_harmonics, rng) * env
            place(music, chord_start + h, wave, 0.35, 0.0)

        # Melody: eighths and quarters on chord tones (strong beats) and scale steps, the
        # leading tone over the dominant, phrase endings on the tonic.
        t = 0.0
        chord_pcs = [(root_pc + iv) % 12 for iv in intervals]
        prev = 72 + (tonic_pc - 72) % 12 - (12 if (tonic_pc - 72) % 12 > 6 else 0)
        while t < chord_s - 1e-6:
            length = beat_s * rng.choice([0.5, 1.0, 1.0, 2.0] if bpm < 150 else [1.0, 2.0])
            length = min(length, chord_s - t)
            on_beat = abs(t / beat_s - round(t / beat_s)) < 1e-6
            if rng.random() < 0.15:  # rest
                t += length
                continue
            if c == last_chord and t + length >= chord_s - 1e-6:
                pcs = [tonic_pc]
            elif on_beat:
                pcs = chord_pcs + ([leading_tone_pc] if root_off == 7 else [])
            else:
                pcs = [(tonic_pc + s) % 12 for s in scale]
            candidates = [prev + d for d in range(-7, 8) if (prev + d) % 12 in pcs]
            weights = np.array([1.0 / (1 + abs(m - prev)) for m in candidates])
            note = int(rng.choice(candidates, p=weights / weights.sum()))
            note = int(np.clip(note, 64, 84))
            prev = note
            dur_n = int(length * 0.95 * sr)
            env = _adsr(dur_n, sr, 0.02, 0.6, 0.6, 0.05)
            wave = _tone(
                float(midi_to_hz(note, tuning_hz)), dur_n, sr, lead_harmonics, rng, vibrato=0.01
            )
            place(music, chord_start + t, wave * env, 0.1, rng.uniform(-0.2, 0.2))
            t += length

    music[:, 0] = _one_pole_lowpass(music[:, 0], 6000, sr)
    music[:, 1] = _one_pole_lowpass(music[:, 1], 6000, sr)
    mix = 0.8 * drums + music
    mix += 10 ** (-75 / 20) * rng.standard_normal(mix.shape)  # a noise floor, like any recording
    # Fade out the last half second, as a mastered track would end.
    fade_n = min(n, int(0.5 * sr))
    if fade_n:
        mix[n - fade_n :] *= np.linspace(1, 0, fade_n)[:, None]
    peak = float(np.abs(mix).max()) or 1.0
    return (mix * (10 ** (-1 / 20) / peak)).astype(np.float32)


def demo_track_specs(n: int = 12, seed: int = 0) -> list[dict]:
    """Specs for `n` demo tracks: name, bpm, key_tonic, key_mode, duration_s, format, style, seed.

    Tempi, keys, styles and formats are spread so that every format and both modes appear.
    """
    rng = np.random.default_rng(seed)
    tempo_by_style = {
        "pop": (90, 128),
        "rock": (100, 150),
        "edm": (120, 132),
        "funk": (90, 115),
        "dnb": (168, 176),
        "waltz": (84, 160),
        "ballad": (70, 90),
    }
    specs = []
    for i in range(n):
        style = STYLES[i % len(STYLES)]
        lo, hi = tempo_by_style[style]
        tonic = PITCH_CLASSES[int(rng.integers(12))]
        mode = "major" if i % 2 == 0 else "minor"
        fmt = DEMO_FORMATS[i % len(DEMO_FORMATS)]
        specs.append(
            {
                "name": f"demo_{i:02d}_{style}_{tonic.replace('#', 's')}_{mode}.{fmt}",
                "bpm": float(rng.integers(lo, hi + 1)),
                "key_tonic": tonic,
                "key_mode": mode,
                "duration_s": float(rng.integers(20, 41)),
                "format": fmt,
                "style": style,
                "seed": int(rng.integers(2**31)),
            }
        )
    return specs


def write_track(path: str, audio: np.ndarray, sr: int = 44100, fmt: str | None = None) -> None:
    """Write with soundfile: wav (PCM 16), flac, mp3 (MPEG layer III), ogg (Vorbis)."""
    import soundfile as sf

    fmt = (fmt or str(path).rsplit(".", 1)[-1]).lower()
    options = {
        "wav": ("WAV", "PCM_16"),
        "flac": ("FLAC", "PCM_16"),
        "mp3": ("MP3", "MPEG_LAYER_III"),
        "ogg": ("OGG", "VORBIS"),
    }
    if fmt not in options:
        raise ValueError(f"unsupported format {fmt!r}; one of {sorted(options)}")
    container, subtype = options[fmt]
    sf.write(path, audio, sr, format=container, subtype=subtype)
