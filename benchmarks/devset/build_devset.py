"""Build the music development set: real compositions, rendered by sampled instruments.

Scores come from music21's corpus (Bach chorales, Haydn / Mozart / Beethoven string quartets,
Ryan's Mammoth Collection and O'Neill's Music of Ireland
(1850) folk tunes); they are played through FluidSynth with the
FluidR3 General MIDI soundfont at tempi drawn per subset, in several instrumentations, and the
band subsets get a General MIDI drum kit playing a groove for the piece's metre. Nothing here is
songmill's own generator (testaudio/synth.py), so the stage cannot have been tuned to it.

Truth, per excerpt (labels.jsonl, one JSON object a line):
  bpm             the rendered tempo of the felt beat: the quarter note in x/4, the half note in
                  2/2, the dotted quarter in 6/8, 9/8 and 12/8
  beats, downbeats  seconds, from the score's bar lines (the renders are metronomic)
  time_signature  the score's (jigs are also rendered as 12/8: two 6/8 bars per bar)
  key_tonic, key_mode  key signature, with the mode whose tonic the lowest part ends on; pieces
                  ending elsewhere (modal tunes) are skipped

Subsets: piano (solo piano chorales), chamber (string quartets; chorales on strings, winds,
organ), band (chorales arranged for guitars / keys / bass with a rock kit, 85-135 BPM),
band_slow (60-80 BPM ballads with drums), band_fast (140-180 BPM), triple (3/4 pieces, some with a
waltz kit), compound (6/8 jigs and 12/8 shuffles, with and without drums), and full (3.5-minute
band renders, for the speed figure).

The alt_* subsets (--alt-per-subset) are other pieces played differently: through other
soundfonts (TimGM6mb, MuseScore General), with a human tempo (a random walk of the tempo from bar
to bar, up to +-6 %, the beat truth integrated from the tempo map), a larger reverb and room noise
mixed in at 15-30 dB SNR. They are drawn after all the other subsets, so adding them leaves the
others unchanged; they were added after the stage's settings were chosen and never tuned on.

Needs: `pip install music21 mido` and `apt-get install fluidsynth fluid-soundfont-gm`, and for
the alt_* subsets `apt-get install timgm6mb-soundfont musescore-general-soundfont-small`. Installs
nothing itself. Renders are cached: re-running with the same arguments skips finished files.

    .venv/bin/python benchmarks/devset/build_devset.py --out /tmp/songmill-devset [--per-subset 20]
"""

from __future__ import annotations

import argparse
import json
import pickle
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
ALT_SOUNDFONTS = {
    "timgm6mb": Path("/usr/share/sounds/sf2/TimGM6mb.sf2"),
    "musescore": Path("/usr/share/sounds/sf3/MuseScore_General_Lite.sf3"),
}
SR = 44100
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
DRUM_CHANNEL = 9
KICK, SNARE, SIDESTICK, CLOSED_HAT, OPEN_HAT, RIDE, CRASH = 36, 38, 37, 42, 46, 51, 49

# GM programs (0-based).
PIANO, EPIANO, ORGAN, NYLON, STEEL, CLEAN_GTR, OVERDRIVE_GTR = 0, 4, 19, 24, 25, 27, 29
FINGER_BASS, PICK_BASS = 33, 34
VIOLIN, VIOLA, CELLO, STRINGS, CHOIR = 40, 41, 42, 48, 52
TRUMPET, TROMBONE, HORN, OBOE, CLARINET, BASSOON, FLUTE = 56, 57, 60, 68, 71, 70, 73
ACCORDION, SYNTH_LEAD, PAD = 21, 81, 89


@dataclass
class Performance:
    """How a render is played: soundfont, tempo drift, reverb and noise (defaults: the plain,
    metronomic FluidR3 render of the original subsets)."""

    soundfont: Path = SOUNDFONT
    drift: float = 0.0  # s.d. of the bar-to-bar step of the log tempo
    max_drift: float = 0.06  # the tempo stays within +-6 % of the drawn one
    reverb_room: float | None = None  # fluidsynth's synth.reverb.room-size (None: its default)
    snr_db: float | None = None  # room noise mixed in at this signal-to-noise ratio

    def tempo_multipliers(
        self, n_beats: int, beats_per_bar: int, rng: np.random.Generator
    ) -> np.ndarray | None:
        """Per-beat tempo factors: a smooth random walk over bars, constant within a bar."""
        if self.drift <= 0:
            return None
        walk, value = [], 0.0
        for _ in range(n_beats // max(beats_per_bar, 1) + 2):
            value = float(
                np.clip(0.8 * value + rng.normal(0.0, self.drift), -self.max_drift, self.max_drift)
            )
            walk.append(value)
        return np.exp(np.repeat(walk, max(beats_per_bar, 1))[: n_beats + beats_per_bar])


def missing_tools() -> list[str]:
    problems = []
    for module, pip_name in (("music21", "music21"), ("mido", "mido")):
        try:
            __import__(module)
        except ImportError:
            problems.append(f"pip install {pip_name}")
    if shutil.which("fluidsynth") is None or not SOUNDFONT.exists():
        problems.append("apt-get install fluidsynth fluid-soundfont-gm")
    return problems


@dataclass
class Note:
    start_ql: float
    length_ql: float
    pitch: int
    voice: int  # part index, 0 = top


@dataclass
class Piece:
    name: str
    notes: list[Note]
    numerator: int
    denominator: int
    bar_starts_ql: list[float]  # nominal bar starts (a pickup bar starts before 0)
    end_ql: float
    key_tonic: str
    key_mode: str
    n_voices: int
    meta: dict = field(default_factory=dict)

    @property
    def beat_ql(self) -> float:
        """Length of the felt beat in quarter notes."""
        if self.denominator == 8 and self.numerator % 3 == 0 and self.numerator > 3:
            return 1.5
        return 4.0 / self.denominator

    @property
    def beats_per_bar(self) -> int:
        return int(round(self.numerator * (4.0 / self.denominator) / self.beat_ql))


# --------------------------------------------------------------------------------------------
# Scores


def load_piece(source: str) -> Piece | None:
    """A music21 corpus score as notes, bars and key truth; None when it does not qualify."""
    from music21 import corpus, stream

    try:
        if "#" in source:  # one tune of a multi-tune ABC book
            path, number = source.rsplit("#", 1)
            score = corpus.parse(path, number=int(number))
        else:
            score = corpus.parse(source)
    except Exception:
        return None
    if score is None:
        return None
    if isinstance(score, stream.Opus):
        if not score.scores:
            return None
        score = score.scores[0]
    parts = list(score.parts)
    if not parts:
        return None
    signatures = list(score.recurse().getElementsByClass("TimeSignature"))
    keys = list(score.recurse().getElementsByClass("KeySignature"))
    if not signatures or not keys:
        return None
    # One metre and one key signature throughout, or the truth is not a single label.
    if len({s.ratioString for s in signatures}) != 1 or len({k.sharps for k in keys}) != 1:
        return None
    numerator, denominator = signatures[0].numerator, signatures[0].denominator
    notes: list[Note] = []
    lowest_last: tuple[float, int] | None = None
    for voice, part in enumerate(parts):
        part_notes = part.stripTies().flatten().notes
        for element in part_notes:
            for pitch in element.pitches:
                notes.append(
                    Note(
                        float(element.offset), float(element.quarterLength), int(pitch.midi), voice
                    )
                )
        if part_notes:
            last = part_notes[-1]
            if voice == len(parts) - 1 or lowest_last is None:
                lowest_last = (float(last.offset), min(p.midi for p in last.pitches))
    if len(notes) < 16 or lowest_last is None:
        return None
    final_pc = lowest_last[1] % 12
    for mode in ("major", "minor"):
        if keys[0].asKey(mode).tonic.pitchClass == final_pc:
            break
    else:
        return None  # ends off both candidate tonics: modal, no clear truth
    measures = list(parts[0].getElementsByClass("Measure"))
    bar_ql = numerator * 4.0 / denominator
    if measures:
        bar_starts = [float(m.offset) - float(m.paddingLeft or 0.0) for m in measures]
    else:
        bar_starts = list(np.arange(0.0, max(n.start_ql + n.length_ql for n in notes), bar_ql))
    end_ql = max(n.start_ql + n.length_ql for n in notes)
    tonic = PITCH_CLASSES[final_pc]
    name = Path(str(source).split("#")[0]).stem + (
        f"_X{str(source).rsplit('#', 1)[1]}" if "#" in str(source) else ""
    )
    return Piece(name, notes, numerator, denominator, bar_starts, end_ql, tonic, mode, len(parts))


def as_twelve_eight(piece: Piece) -> Piece:
    """A 6/8 tune felt as 12/8: two bars make one (the first full bar starts a 12/8 bar)."""
    full = [b for b in piece.bar_starts_ql if b >= 0]
    return Piece(
        piece.name + "_12-8",
        piece.notes,
        12,
        8,
        full[::2],
        piece.end_ql,
        piece.key_tonic,
        piece.key_mode,
        piece.n_voices,
    )


def repeated(piece: Piece, times: int) -> Piece:
    """The piece played `times` times in a row (a song's verses), for full-length renders."""
    span = piece.bar_starts_ql[-1] + piece.numerator * 4.0 / piece.denominator
    notes = [
        Note(n.start_ql + k * span, n.length_ql, n.pitch, n.voice)
        for k in range(times)
        for n in piece.notes
    ]
    bars = [b + k * span for k in range(times) for b in piece.bar_starts_ql if b >= 0 or k == 0]
    return Piece(
        piece.name + f"_x{times}",
        notes,
        piece.numerator,
        piece.denominator,
        bars,
        piece.end_ql + (times - 1) * span,
        piece.key_tonic,
        piece.key_mode,
        piece.n_voices,
    )


# --------------------------------------------------------------------------------------------
# Arrangement: programs per voice, drums


def drum_hits(piece: Piece, groove: str, rng: np.random.Generator) -> list[tuple[float, int, int]]:
    """(quarter-note offset, GM drum note, velocity) for the whole piece."""
    hits: list[tuple[float, int, int]] = []
    bar_ql = piece.numerator * 4.0 / piece.denominator
    bars = [b for b in piece.bar_starts_ql if b >= 0]
    beat = piece.beat_ql
    for index, start in enumerate(bars):
        if index == 0 and groove != "none":
            hits.append((start, CRASH, 100))
        if groove == "rock":  # 4/4: kick 1 and 3 (+ the and of 3), snare 2 and 4, eighth hats
            for k in range(int(bar_ql * 2)):
                hits.append((start + 0.5 * k, CLOSED_HAT, 70 if k % 2 else 90))
            for q in (0.0, 2.0, 2.5):
                hits.append((start + q, KICK, 110))
            for q in (1.0, 3.0):
                hits.append((start + q, SNARE, 105))
        elif groove == "ballad":  # 4/4: kick 1 and the and of 2, side stick 2 and 4, ride quarters
            for k in range(4):
                hits.append((start + k, RIDE, 65))
            for q in (0.0, 1.5):
                hits.append((start + q, KICK, 90))
            for q in (1.0, 3.0):
                hits.append((start + q, SIDESTICK, 85))
        elif groove == "fast":  # 4/4 at 140-180: kick 1 and 3, snare 2 and 4, quarter hats
            for k in range(4):
                hits.append((start + k, CLOSED_HAT, 80))
            for q in (0.0, 2.0):
                hits.append((start + q, KICK, 110))
            for q in (1.0, 3.0):
                hits.append((start + q, SNARE, 105))
        elif groove == "waltz":  # 3/4: kick 1, snare + hat on 2 and 3
            hits.append((start, KICK, 105))
            for q in (1.0, 2.0):
                hits.append((start + q, SNARE, 75))
                hits.append((start + q, CLOSED_HAT, 70))
        elif groove in ("six-eight", "twelve-eight"):  # kick on the beat, snare on the 2nd / 4th
            eighths = int(bar_ql * 2)
            for k in range(eighths):
                hits.append((start + 0.5 * k, CLOSED_HAT, 90 if k % 3 == 0 else 60))
            for b in range(piece.beats_per_bar):
                hits.append((start + b * beat, SNARE if b % 2 else KICK, 105 if b % 2 else 110))
    jitter = rng.normal(0.0, 6.0, len(hits))
    return [
        (q, note, int(np.clip(v + j, 30, 127)))
        for (q, note, v), j in zip(hits, jitter, strict=True)
    ]


ENSEMBLES = {
    "piano": [PIANO],
    "strings": [VIOLIN, VIOLIN, VIOLA, CELLO],
    "winds": [FLUTE, OBOE, CLARINET, BASSOON],
    "organ": [ORGAN],
    "brass": [TRUMPET, HORN, TROMBONE, TROMBONE],
    "choir_strings": [CHOIR, CHOIR, STRINGS, CELLO],
    "band": [OVERDRIVE_GTR, EPIANO, CLEAN_GTR, PICK_BASS],
    "band_keys": [SYNTH_LEAD, PIANO, PAD, FINGER_BASS],
    "ballad": [PIANO, STRINGS, STRINGS, FINGER_BASS],
    "folk": [VIOLIN, STEEL],  # melody-only tunes: fiddle, and the tune an octave down on guitar
    "folk_accordion": [ACCORDION, NYLON],
}


def write_midi(
    path: Path,
    piece: Piece,
    bpm: float,
    ensemble: str,
    groove: str,
    seed: int,
    multipliers: np.ndarray | None = None,
) -> None:
    """`multipliers`: tempo factor per beat (a tempo map), or None for one tempo throughout."""
    import mido

    rng = np.random.default_rng(seed)
    ticks = 480
    quarter_bpm = bpm * piece.beat_ql
    midi = mido.MidiFile(ticks_per_beat=ticks)
    programs = ENSEMBLES[ensemble]
    events: list[tuple[int, int, mido.Message]] = []  # (tick, order, message): note-offs first
    voices = max(piece.n_voices, 1)
    for channel in range(min(len(programs) if len(programs) > 1 else 1, 8)):
        events.append(
            (0, 0, mido.Message("program_change", channel=channel, program=programs[channel]))
        )
    for note in piece.notes:
        if len(programs) == 1:
            channels = [(0, 0)]
        elif ensemble.startswith("folk"):
            channels = [(0, 0), (1, -12)]  # the melody, and doubled an octave down
        else:
            channels = [(min(int(note.voice * len(programs) / voices), len(programs) - 1), 0)]
        for channel, transpose in channels:
            pitch = int(np.clip(note.pitch + transpose, 0, 127))
            if programs[channel] in (PICK_BASS, FINGER_BASS) and pitch > 60:
                pitch -= 12
            start = int(round(note.start_ql * ticks + rng.normal(0, 4)))
            end = int(round((note.start_ql + note.length_ql * 0.95) * ticks))
            velocity = int(np.clip(rng.normal(80, 8), 40, 120))
            events.append(
                (
                    max(start, 0),
                    1,
                    mido.Message("note_on", channel=channel, note=pitch, velocity=velocity),
                )
            )
            events.append(
                (
                    max(end, start + 1),
                    0,
                    mido.Message("note_off", channel=channel, note=pitch, velocity=0),
                )
            )
    if groove != "none":
        for q, drum, velocity in drum_hits(piece, groove, rng):
            start = int(round(q * ticks + rng.normal(0, 3)))
            events.append(
                (
                    max(start, 0),
                    1,
                    mido.Message("note_on", channel=DRUM_CHANNEL, note=drum, velocity=velocity),
                )
            )
            events.append(
                (
                    max(start, 0) + ticks // 8,
                    0,
                    mido.Message("note_off", channel=DRUM_CHANNEL, note=drum, velocity=0),
                )
            )
    if multipliers is not None:  # order 0: a tempo change applies before the notes at its tick
        for k, factor in enumerate(multipliers):
            tick = int(round(k * piece.beat_ql * ticks))
            events.append(
                (
                    tick,
                    0,
                    mido.MetaMessage("set_tempo", tempo=int(round(60e6 / (quarter_bpm * factor)))),
                )
            )
    else:
        events.append((0, 0, mido.MetaMessage("set_tempo", tempo=int(round(60e6 / quarter_bpm)))))
    track = mido.MidiTrack()
    now = 0
    for tick, _, message in sorted(events, key=lambda e: (e[0], e[1])):
        track.append(message.copy(time=tick - now))
        now = tick
    midi.tracks.append(track)
    midi.save(str(path))


def beat_grid(
    piece: Piece, bpm: float, seconds: float, multipliers: np.ndarray | None = None
) -> tuple[list[float], list[float]]:
    """Beat and downbeat times (s) of the render, from the bar lines, within `seconds`
    (through the tempo map when the tempo drifts)."""
    seconds_per_ql = 60.0 / (bpm * piece.beat_ql)
    if multipliers is not None:  # seconds at the start of each beat of the tempo map
        starts = np.concatenate([[0.0], np.cumsum(piece.beat_ql * seconds_per_ql / multipliers)])

    def at(q: float) -> float:
        if multipliers is None:
            return q * seconds_per_ql
        k = min(int(np.floor(q / piece.beat_ql + 1e-9)), multipliers.shape[0] - 1)
        return float(starts[k] + (q - k * piece.beat_ql) * seconds_per_ql / multipliers[k])

    beats, downbeats = [], []
    bar_starts = sorted(piece.bar_starts_ql)
    for index, start in enumerate(bar_starts):
        # a short bar (a section's last, completed by the next pickup) ends at the next bar
        # line: its beats must not run on past it, or two beat grids a fraction apart interleave
        next_bar = bar_starts[index + 1] if index + 1 < len(bar_starts) else np.inf
        for k in range(piece.beats_per_bar):
            q = start + k * piece.beat_ql
            t = at(q)
            if q < -1e-9 or q > piece.end_ql or t > seconds or q > next_bar - 0.25 * piece.beat_ql:
                continue
            beats.append(round(t, 4))
            if k == 0:
                downbeats.append(round(t, 4))
    return sorted(set(beats)), sorted(set(downbeats))


def excerpt(piece: Piece, bpm: float, seconds: float) -> Piece:
    """The notes starting within `seconds` (long movements render in a fraction of the time)."""
    limit_ql = seconds * bpm * piece.beat_ql / 60.0
    notes = [n for n in piece.notes if n.start_ql < limit_ql]
    bars = [b for b in piece.bar_starts_ql if b < limit_ql]
    return Piece(
        piece.name,
        notes,
        piece.numerator,
        piece.denominator,
        bars,
        piece.end_ql,
        piece.key_tonic,
        piece.key_mode,
        piece.n_voices,
    )


def render(
    piece: Piece,
    out: Path,
    bpm: float,
    ensemble: str,
    groove: str,
    seed: int,
    seconds: float,
    performance: Performance | None = None,
) -> dict | None:
    import soundfile as sf

    performance = performance or Performance()
    flac = out.with_suffix(".flac")
    rng = np.random.default_rng(seed + 1)
    n_beats = int(np.ceil((seconds + 4.0) * bpm / 60.0 * 1.1)) + 4
    multipliers = performance.tempo_multipliers(n_beats, piece.beats_per_bar, rng)
    if not flac.exists():
        with tempfile.TemporaryDirectory(prefix="devset-") as tmp:
            mid, wav = Path(tmp) / "piece.mid", Path(tmp) / "piece.wav"
            slowest = bpm * (1 - performance.max_drift) if multipliers is not None else bpm
            write_midi(
                mid,
                excerpt(piece, slowest, seconds + 2.0),
                bpm,
                ensemble,
                groove,
                seed,
                multipliers,
            )
            reverb = (
                []
                if performance.reverb_room is None
                else [
                    "-o",
                    f"synth.reverb.room-size={performance.reverb_room}",
                    "-o",
                    "synth.reverb.level=0.9",
                ]
            )
            subprocess.run(
                [
                    "fluidsynth",
                    "-ni",
                    "-q",
                    "-g",
                    "0.5",
                    "-r",
                    str(SR),
                    *reverb,
                    "-F",
                    str(wav),
                    str(performance.soundfont),
                    str(mid),
                ],
                check=True,
                capture_output=True,
                timeout=600,
            )
            audio, sr = sf.read(str(wav), dtype="float32", always_2d=True)
            audio = audio[: int(seconds * sr)]
            if audio.shape[0] < 10 * sr or float(np.abs(audio).max()) < 1e-4:
                return None
            if performance.snr_db is not None:
                audio = audio + room_noise(audio, performance.snr_db, rng)
            audio *= 0.9 / float(np.abs(audio).max())
            tmp_flac = flac.with_suffix(".tmp.flac")
            sf.write(str(tmp_flac), audio, sr, subtype="PCM_16")
            tmp_flac.replace(flac)  # atomic: a killed build leaves no half file under the name
    duration = float(__import__("soundfile").info(str(flac)).duration)
    beats, downbeats = beat_grid(piece, bpm, duration, multipliers)
    if len(beats) < 8:
        return None
    signature = f"{piece.numerator}/{piece.denominator}"
    if multipliers is not None:  # the felt tempo of a drifting render: its median beat rate
        bpm = 60.0 / float(np.median(np.diff(beats)))
    return {
        "path": str(flac),
        "bpm": round(bpm, 3),
        "beats": beats,
        "downbeats": downbeats,
        "time_signature": signature,
        "key_tonic": piece.key_tonic,
        "key_mode": piece.key_mode,
        "ensemble": ensemble,
        "groove": groove,
        "piece": piece.name,
        "duration_s": round(duration, 3),
    }


def room_noise(audio: np.ndarray, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Pink-ish noise (white noise through a one-pole low-pass) at `snr_db` below the render."""
    from scipy.signal import lfilter

    white = rng.standard_normal(audio.shape).astype(np.float32)
    pink = lfilter([1.0], [1.0, -0.97], white, axis=0)
    signal_rms = float(np.sqrt(np.mean(audio**2))) + 1e-12
    noise_rms = float(np.sqrt(np.mean(pink**2))) + 1e-12
    return (pink * (signal_rms / noise_rms) * 10 ** (-snr_db / 20)).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Subsets


def sources() -> dict[str, list[str]]:
    from music21 import corpus

    def listing(name: str) -> list[str]:
        return sorted(str(p) for p in corpus.getComposer(name))

    quartets = [p for c in ("haydn", "mozart", "beethoven") for p in listing(c)]
    return {
        "bach": listing("bach"),
        "quartets": quartets,
        "ryans": listing("ryansMammoth"),
        "oneills": tunes_in_metre(listing("oneills1850"), "3/4"),
    }


def tunes_in_metre(books: list[str], metre: str) -> list[str]:
    """'book.abc#X' for each tune of the ABC books whose header metre is `metre`: read from the
    text, so that only those tunes get parsed (a whole book takes music21 many seconds)."""
    found = []
    for book in books:
        number = None
        for line in Path(book).read_text(errors="replace").splitlines():
            if line.startswith("X:"):
                number = line[2:].strip()
            elif line.startswith("M:") and number is not None:
                if line[2:].strip() == metre:
                    found.append(f"{book}#{number}")
                number = None
    return found


def pick(
    pool: list[str],
    rng: np.random.Generator,
    want: int,
    accept,
    used: set[str],
    parsed: dict[str, Piece | None],
    budget: int = 400,
) -> list[Piece]:
    """Up to `want` pieces from the pool (random order) that load and pass `accept`; `parsed`
    memoises music21's parsing (the slow part of a rebuild)."""
    chosen: list[Piece] = []
    for index in rng.permutation(len(pool))[:budget]:
        source = pool[int(index)]
        if len(chosen) >= want:
            break
        if source in used:
            continue
        if source not in parsed:
            parsed[source] = load_piece(source)
        piece = parsed[source]
        if piece is not None and accept(piece):
            used.add(source)
            chosen.append(piece)
    return chosen


def subset_plan(n: int) -> list[tuple[str, str, object, tuple[float, float], list[str], list[str]]]:
    """(subset, source pool, accept, BPM range, ensembles, grooves) per subset."""
    four = lambda p: (p.numerator, p.denominator) == (4, 4)  # noqa: E731
    triple = lambda p: (p.numerator, p.denominator) == (3, 4)  # noqa: E731
    jig = lambda p: (p.numerator, p.denominator) == (6, 8)  # noqa: E731
    chamber = lambda p: (  # noqa: E731
        (p.numerator, p.denominator) in ((4, 4), (3, 4), (2, 4), (2, 2), (6, 8)) and p.n_voices >= 2
    )
    return [
        ("piano", "bach", four, (60, 120), ["piano"], ["none"]),
        ("chamber", "quartets", chamber, (70, 140), ["strings"], ["none"]),
        (
            "chamber",
            "bach",
            four,
            (60, 110),
            ["strings", "winds", "organ", "brass", "choir_strings"],
            ["none"],
        ),
        ("band", "bach", four, (85, 135), ["band", "band_keys"], ["rock"]),
        ("band_slow", "bach", four, (60, 80), ["ballad", "band_keys"], ["ballad"]),
        ("band_fast", "bach", four, (140, 180), ["band", "band_keys"], ["fast"]),
        ("triple", "bach", triple, (70, 150), ["piano", "strings", "band"], ["none", "waltz"]),
        ("triple", "oneills", triple, (80, 160), ["folk", "folk_accordion"], ["none", "waltz"]),
        (
            "compound",
            "ryans",
            jig,
            (70, 120),
            ["folk", "folk_accordion", "band"],
            ["none", "six-eight"],
        ),
        ("compound_12-8", "ryans", jig, (50, 80), ["ballad", "band_keys"], ["twelve-eight"]),
    ]


def alt_plan() -> list[
    tuple[str, str, object, tuple[float, float], list[str], list[str], Performance]
]:
    """(subset, source pool, accept, BPM range, ensembles, grooves, performance) of the alt_* subsets."""
    four = lambda p: (p.numerator, p.denominator) == (4, 4)  # noqa: E731
    triple = lambda p: (p.numerator, p.denominator) == (3, 4)  # noqa: E731
    jig = lambda p: (p.numerator, p.denominator) == (6, 8)  # noqa: E731

    def played(soundfont: str) -> Performance:
        return Performance(ALT_SOUNDFONTS[soundfont], drift=0.015, reverb_room=0.85, snr_db=None)

    return [
        ("alt_piano", "bach", four, (60, 120), ["piano"], ["none"], played("musescore")),
        (
            "alt_chamber",
            "bach",
            four,
            (60, 110),
            ["strings", "winds", "brass", "choir_strings"],
            ["none"],
            played("musescore"),
        ),
        ("alt_band", "bach", four, (85, 135), ["band", "band_keys"], ["rock"], played("timgm6mb")),
        (
            "alt_band_fast",
            "bach",
            four,
            (140, 180),
            ["band", "band_keys"],
            ["fast"],
            played("musescore"),
        ),
        (
            "alt_triple",
            "oneills",
            triple,
            (80, 160),
            ["folk", "folk_accordion", "piano"],
            ["none", "waltz"],
            played("timgm6mb"),
        ),
        (
            "alt_compound",
            "ryans",
            jig,
            (70, 120),
            ["folk", "folk_accordion", "band"],
            ["none", "six-eight"],
            played("musescore"),
        ),
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--per-subset", type=int, default=20, help="excerpts per subset row of the plan"
    )
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument(
        "--full", type=int, default=4, help="3.5-minute band renders for the speed figure"
    )
    parser.add_argument(
        "--alt-per-subset",
        type=int,
        default=12,
        help="excerpts per alt_* subset (other soundfonts, drifting tempo, reverb, noise; 0: none)",
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    problems = missing_tools()
    if problems:
        print("build_devset needs: " + "; ".join(problems), file=sys.stderr)
        return 2
    rng = np.random.default_rng(args.seed)
    pools = sources()
    args.out.mkdir(parents=True, exist_ok=True)
    memo_path = args.out / "parsed-scores.pkl"
    parsed: dict[str, Piece | None] = (
        pickle.loads(memo_path.read_bytes()) if memo_path.exists() else {}
    )
    used: set[str] = set()
    labels: list[dict] = []
    for subset, pool, accept, (lo, hi), ensembles, grooves in subset_plan(args.per_subset):
        # the chamber and triple subsets draw from two pools: half the excerpts from each
        rows = sum(1 for s in subset_plan(0) if s[0] == subset)
        want = max(1, args.per_subset // rows)
        pieces = pick(pools[pool], rng, want, accept, used, parsed)
        folder = args.out / subset
        folder.mkdir(parents=True, exist_ok=True)
        for index, piece in enumerate(pieces):
            if subset == "compound_12-8":
                piece = as_twelve_eight(piece)
            bpm = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            ensemble, groove = ensembles[index % len(ensembles)], grooves[index % len(grooves)]
            seed = int(rng.integers(2**31))
            row = render(
                piece,
                folder / f"{pool}_{index:03d}_{piece.name}",
                bpm,
                ensemble,
                groove,
                seed,
                args.seconds,
            )
            if row is not None:
                row["subset"] = subset
                labels.append(row)
        print(f"{subset:<14} {pool:<9} {len(pieces)} pieces", flush=True)
        memo_path.with_suffix(".tmp").write_bytes(pickle.dumps(parsed))
        memo_path.with_suffix(".tmp").replace(memo_path)
    # Full-length renders for the speed figure: band chorales repeated like verses.
    folder = args.out / "full"
    folder.mkdir(parents=True, exist_ok=True)
    full = pick(
        pools["bach"],
        rng,
        args.full,
        lambda p: (p.numerator, p.denominator) == (4, 4),
        used,
        parsed,
    )
    for index, piece in enumerate(full):
        bpm = float(rng.uniform(90, 130))
        one_pass_s = (piece.end_ql / piece.beat_ql) * 60.0 / bpm
        long_piece = repeated(piece, int(np.ceil(215.0 / max(one_pass_s, 1.0))))
        row = render(
            long_piece,
            folder / f"bach_{index:03d}_{long_piece.name}",
            bpm,
            "band",
            "rock",
            int(rng.integers(2**31)),
            215.0,
        )
        if row is not None:
            row["subset"] = "full"
            labels.append(row)
    # Other pieces, other soundfonts, a human tempo, reverb and room noise: drawn last, so the
    # subsets above come out the same with or without them.
    alt = alt_plan() if args.alt_per_subset else []
    missing = sorted({str(p.soundfont) for *_, p in alt if not p.soundfont.exists()})
    if missing:
        print(
            "alt_* subsets skipped, missing "
            + ", ".join(missing)
            + ": apt-get install timgm6mb-soundfont musescore-general-soundfont-small",
            file=sys.stderr,
        )
        alt = []
    for subset, pool, accept, (lo, hi), ensembles, grooves, performance in alt:
        pieces = pick(pools[pool], rng, args.alt_per_subset, accept, used, parsed)
        folder = args.out / subset
        folder.mkdir(parents=True, exist_ok=True)
        for index, piece in enumerate(pieces):
            bpm = float(np.exp(rng.uniform(np.log(lo), np.log(hi))))
            ensemble, groove = ensembles[index % len(ensembles)], grooves[index % len(grooves)]
            seed = int(rng.integers(2**31))
            snr = float(rng.uniform(15.0, 30.0))
            played = Performance(
                performance.soundfont,
                performance.drift,
                performance.max_drift,
                performance.reverb_room,
                snr,
            )
            row = render(
                piece,
                folder / f"{pool}_{index:03d}_{piece.name}",
                bpm,
                ensemble,
                groove,
                seed,
                args.seconds,
                played,
            )
            if row is not None:
                row.update(
                    subset=subset, soundfont=performance.soundfont.stem, snr_db=round(snr, 1)
                )
                labels.append(row)
        print(f"{subset:<14} {pool:<9} {len(pieces)} pieces", flush=True)
        memo_path.with_suffix(".tmp").write_bytes(pickle.dumps(parsed))
        memo_path.with_suffix(".tmp").replace(memo_path)
    tmp = args.out / "labels.jsonl.tmp"
    tmp.write_text("".join(json.dumps(row) + "\n" for row in labels))
    tmp.replace(args.out / "labels.jsonl")
    print(f"{len(labels)} excerpts -> {args.out / 'labels.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
