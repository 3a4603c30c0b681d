"""Key truth for the LMMS development set from each project's own notes (symbolic key-finding).

An LMMS project lists every note it plays: instrument tracks (`<track type="0">` with an
`<instrumenttrack>`) hold patterns (`<pattern pos=...>`) of notes (`<note key= pos= len= vol=>`,
positions in ticks, 48 a quarter note); Beat/Bassline tracks (`<track type="1">`) play the
patterns of the BB editor's tracks (the first BB track's `<trackcontainer>`; the pattern at bar b
belongs to the b-th BB track) looped over each of their `<bbtco pos= len=>` clips.

Sounding pitch (LMMS NotePlayHandle: 440 Hz * 2^((key - basenote + masterpitch) / 12 + pitch /
1200)): LMMS key k is pitch class k mod 12 (57 = A4), moved by the track's `basenote` (57 plays
as written), the song's `masterpitch` when the track uses it, and the track's fine `pitch`
(cents, rounded to semitones). TripleOscillator's oscillators sound at their `coarse` offsets
(each weighted by its share of the oscillators' volume).

Sample tracks (AudioFileProcessor): a note plays the sample moved by (key - basenote) semitones
(the sample sounds at its own pitch on the base note). The sample's own pitch classes come from
the file LMMS ships (/usr/share/lmms/samples; its sframe..eframe region): essentia's HPCP of the
sample alone: a single note when its top pitch class holds SINGLE_NOTE_SHARE of the HPCP or
more (then that class), otherwise (chords, strums, noisy tails) its pitch counts as unknown;
a note of an unlooped sample sounds at most the sample's length. (The first version took a
chord sample's whole HPCP: StrictProduction-DearJonDoe's only pitched track, the reversed tail
of a guitar strum, then read B minor where every audio method read C; a diffuse profile is
not a pitch the project fixes.) Samples from drum, beat, loop and effect folders count as drums;
LMMS's DrumSynth presets (.ds) are synthesised by LMMS, so their pitch is unknown: a span where
such a sample plays more than one key gets no label.

Left out (no pitch the notes fix, or no pitch at all): muted tracks, patterns and clips; sfxr;
Kicker tracks unless both its start and end frequency follow the note; tracks named like drums
or effects (kick, snare, hat, drum, perc, clap, crash, ride, cymbal, tom, shaker, noise, fx,
woosh, sweep, riser, ...); tracks whose notes are all one pitch; and tracks that stack chords or
arpeggios other than octaves (their pitch classes would need LMMS's chord table).

Each note is weighted by its duration inside the span (seconds) times its velocity (vol / 100)
times its track's volume (vol / 100). The 12 pitch-class weights are correlated (Pearson) with
the 24 rotations of five key profiles (Krumhansl-Kessler, Temperley's Kostka-Payne,
Albrecht-Shanahan, Aarden-Essen, Bellman-Budge). The key is the best of the profiles' mean
correlation; key_confidence is its margin over the runner-up key (mean correlation, 0..1).

Labelled (LABEL_RULE) only when at least MIN_AGREE of the five profiles' own best keys are the
chosen key, the margin is at least MIN_MARGIN, the span has at least MIN_NOTE_SECONDS of pitched
notes over at least MIN_PITCH_CLASSES pitch classes (each >= ACTIVE_SHARE of the top one), and no
sample of unknown pitch plays more than one key in it; otherwise no key label, with the reason
(excerpt_key also labels an excerpt with its song's key when the song's first 120 s meet the rule
and the excerpt's own best key is the same: key_evidence "song"). The rule was set by reading the
projects' notes before any audio method was scored against the labels; the one later change is
the sample rule above.

    .venv/bin/python benchmarks/devset/lmms_keys.py [--labels DIR/labels.jsonl]   # per project
"""

from __future__ import annotations

import argparse
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from songmill.annotate.key import PROFILES as AUDIO_KEY_PROFILES

TICKS_PER_BEAT = 48  # LMMS: 48 ticks a quarter note, 192 a 4/4 bar
DEFAULT_BASENOTE = 57  # LMMS's A4 (440 Hz): a track with this base note plays as written
PITCH_CLASSES = ("C", "C#", "D", "D#", "E", "F", "F#", "G", "G#", "A", "A#", "B")
STEP_NOTE_TICKS = 12  # a step note (len <= 0, a beat pattern's hit) sounds for about a 16th

# Major then minor, tonic first (as Sapp's Humdrum keycor and music21 list them).
KEY_PROFILES: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "krumhansl_kessler": (
        (6.35, 2.23, 3.48, 2.33, 4.38, 4.09, 2.52, 5.19, 2.39, 3.66, 2.29, 2.88),
        (6.33, 2.68, 3.52, 5.38, 2.60, 3.53, 2.54, 4.75, 3.98, 2.69, 3.34, 3.17),
    ),
    "temperley": AUDIO_KEY_PROFILES["temperley2005"],  # the same table the stage's key uses
    "albrecht_shanahan": (
        (0.238, 0.006, 0.111, 0.006, 0.137, 0.094, 0.016, 0.214, 0.009, 0.080, 0.008, 0.081),
        (0.220, 0.006, 0.104, 0.123, 0.019, 0.103, 0.012, 0.214, 0.062, 0.022, 0.061, 0.052),
    ),
    "aarden_essen": (
        (17.77, 0.15, 14.93, 0.16, 19.80, 11.36, 0.29, 22.06, 0.15, 8.15, 0.23, 4.95),
        (18.26, 0.74, 14.05, 16.86, 0.70, 14.44, 0.70, 18.62, 4.57, 1.93, 7.38, 1.76),
    ),
    "bellman_budge": (
        (16.80, 0.86, 12.95, 1.41, 13.49, 11.93, 1.25, 20.28, 1.80, 8.04, 0.62, 10.57),
        (18.16, 0.69, 12.99, 13.34, 1.07, 11.15, 1.38, 21.07, 7.49, 1.53, 0.92, 10.21),
    ),
}
# the label fields of an excerpt without a key label
NO_KEY = {"key_tonic": None, "key_mode": None, "key_confidence": None, "key_evidence": None}
MIN_MARGIN = 0.05
MIN_AGREE = 4  # of the five profiles' own best keys, this many are the chosen key
MIN_NOTE_SECONDS = 8.0
MIN_PITCH_CLASSES = 5
ACTIVE_SHARE = 0.05  # a pitch class counts towards MIN_PITCH_CLASSES from this share of the top one
LABEL_RULE = (
    f">= {MIN_AGREE} of {len(KEY_PROFILES)} profiles agree, mean-correlation margin >= {MIN_MARGIN}, "
    f">= {MIN_NOTE_SECONDS:g} s of pitched notes over >= {MIN_PITCH_CLASSES} pitch classes"
)
UNPITCHED_INSTRUMENTS = {"sfxr"}
SAMPLES = Path("/usr/share/lmms/samples")
UNPITCHED_SAMPLE_FOLDERS = ("drums", "drumsynth", "beats", "bassloops", "effects", "misc")
SINGLE_NOTE_SHARE = 0.5
DRUM_NAME = re.compile(
    r"kick|snare|hi.?hat|\bhats?\d*\b|drum|perc|clap|crash|\bride|cymbal|\btoms?(?:\b|_)|shaker|"
    r"tambou?rine|conga|bongo|cowbell|\brim|noise|\bs?fx\b|woosh|whoosh|sweep|riser|impact|"
    r"sidechain",
    re.IGNORECASE,
)


@dataclass
class Note:
    start_tick: float
    end_tick: float
    pitch_class: int
    weight: float  # velocity x track volume (x oscillator share)
    track: str
    first_voice: bool = True  # False for a TripleOscillator's further oscillators
    # a sample's own pitch classes (12, from C, sum 1), moved by pitch_class; None: one pitch
    profile: np.ndarray | None = None


@dataclass
class ProjectNotes:
    bpm: float
    notes: list[Note] = field(default_factory=list)
    used_tracks: list[str] = field(default_factory=list)
    skipped_tracks: list[str] = field(default_factory=list)  # "name: why"
    # notes of sample tracks of unknown pitch played on more than one key (DrumSynth presets,
    # chord samples): a span where they sound gets no label
    sample_notes: list[Note] = field(default_factory=list)


def _float(element: ET.Element | None, name: str, default: float = 0.0) -> float:
    if element is None:
        return default
    value = element.get(name)
    if value is None:  # automatable models can be saved as child elements
        child = element.find(name)
        value = child.get("value") if child is not None else None
    try:
        return float(value) if value is not None else default
    except ValueError:
        return default


_SAMPLE_PROFILES: dict[tuple[str, float, float], tuple[np.ndarray, float] | None] = {}


def sample_profile(
    src: str, start: float = 0.0, end: float = 1.0
) -> tuple[np.ndarray, float] | None:
    """(12 pitch-class shares from C, seconds) of a shipped sample's start..end region (shares
    of its length) when it is one note: essentia HPCP (8 harmonics, 440 Hz reference) summed
    over the sample, whose top class holds SINGLE_NOTE_SHARE or more (returned one-hot: the
    HPCP's harmonic spreading would otherwise credit the fourth below). None when it cannot be
    read (LMMS's .ds DrumSynth presets, missing files) or is not one note."""
    key = (src, round(start, 4), round(end, 4))
    if key in _SAMPLE_PROFILES:
        return _SAMPLE_PROFILES[key]
    path = Path(src) if Path(src).is_absolute() else SAMPLES / src
    result = None
    if path.suffix.lower() in (".ogg", ".wav", ".flac") and path.exists():
        import essentia
        import soundfile

        essentia.log.infoActive = False
        import essentia.standard as es

        audio, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
        mono = np.ascontiguousarray(audio.mean(axis=1))
        lo, hi = int(max(0.0, start) * len(mono)), int(min(1.0, end) * len(mono))
        mono = np.ascontiguousarray(mono[lo : max(hi, lo + 1)])
        window = es.Windowing(type="blackmanharris62", size=4096)
        spectrum = es.Spectrum(size=4096)
        peaks = es.SpectralPeaks(
            sampleRate=sr,
            minFrequency=40,
            maxFrequency=5000,
            maxPeaks=60,
            magnitudeThreshold=1e-5,
            orderBy="magnitude",
        )
        hpcp = es.HPCP(
            size=12,
            sampleRate=sr,
            referenceFrequency=440,
            harmonics=8,
            bandPreset=False,
            minFrequency=40,
            maxFrequency=5000,
            weightType="cosine",
            nonLinear=False,
            normalized="none",
        )
        total = np.zeros(12)
        padded = np.ascontiguousarray(np.pad(mono, (0, 4096)))
        for frame in es.FrameGenerator(padded, frameSize=4096, hopSize=1024, startFromZero=True):
            freqs, mags = peaks(spectrum(window(frame)))
            if freqs.shape[0]:
                total += hpcp(freqs, mags)
        classes = np.roll(total, 9)  # HPCP bin 0 is A: pitch classes from C
        if classes.sum() > 0:
            classes = classes / classes.sum()
            if classes.max() >= SINGLE_NOTE_SHARE:
                result = (np.eye(12)[int(np.argmax(classes))], mono.shape[0] / sr)
    _SAMPLE_PROFILES[key] = result
    return result


def _skip_reason(track: ET.Element, instrument_track: ET.Element, name: str) -> str | None:
    """Why a track's notes cannot count towards the key (None: they count)."""
    instrument = instrument_track.find("instrument")
    kind = instrument.get("name", "") if instrument is not None else ""
    if track.get("muted") == "1":
        return "muted"
    if kind in UNPITCHED_INSTRUMENTS:
        return f"{kind} (no note-fixed pitch)"
    if kind == "kicker":
        kicker = instrument.find("kicker") if instrument is not None else None
        if kicker is None or kicker.get("startnote") != "1" or kicker.get("endnote") != "1":
            return "kicker (its sweep does not follow the note)"
    if DRUM_NAME.search(name):
        return "named like a drum or effect"
    if kind == "audiofileprocessor":
        afp = instrument.find("audiofileprocessor")
        src = afp.get("src", "") if afp is not None else ""
        if src.split("/")[0] in UNPITCHED_SAMPLE_FOLDERS and not src.startswith(
            "drumsynth/instrument"
        ):
            return f"audiofileprocessor drum / effect sample ({src})"
        if (
            afp is None
            or sample_profile(src, _float(afp, "sframe"), _float(afp, "eframe", 1.0)) is None
        ):
            return f"audiofileprocessor sample of unknown pitch ({src})"
    for tag, flag, chord in (
        ("chordcreator", "chord-enabled", "chord"),
        ("arpeggiator", "arp-enabled", "arp"),
    ):
        stacking = instrument_track.find(tag)
        if stacking is not None and stacking.get(flag) == "1" and stacking.get(chord) != "0":
            return f"{tag} with chord {stacking.get(chord)} (not modelled)"
    return None


def _oscillator_offsets(instrument_track: ET.Element) -> list[tuple[int, float]]:
    """(semitone offset, share of the sound) of the instrument's voices: TripleOscillator's
    audible oscillators at their coarse tuning; any other instrument one voice as played."""
    osc = instrument_track.find("instrument/tripleoscillator")
    if osc is None:
        return [(0, 1.0)]
    voices = [(round(_float(osc, f"coarse{i}")), _float(osc, f"vol{i}", 33.0)) for i in range(3)]
    total = sum(v for _, v in voices if v > 0)
    if total <= 0:
        return [(0, 1.0)]
    return [(offset, v / total) for offset, v in voices if v > 0]


def _pattern_notes(pattern: ET.Element) -> list[tuple[float, float, int, float]]:
    """(start, end, LMMS key, velocity) of a pattern's notes, relative to the pattern."""
    out = []
    for note in pattern.iter("note"):
        start = float(note.get("pos", 0))
        length = float(note.get("len", 0))
        length = STEP_NOTE_TICKS if length <= 0 else length
        out.append((start, start + length, int(note.get("key", 57)), float(note.get("vol", 100))))
    return out


def read_project(xml_text: str) -> ProjectNotes:
    """Every pitched note a project plays (song-editor patterns and Beat/Bassline clips), with
    the tracks used and those left out."""
    root = ET.fromstring(xml_text)
    head = root.find("head")
    bpm = _float(head, "bpm", 120.0)
    master_pitch = _float(head, "masterpitch", 0.0)
    numerator = _float(head, "timesig_numerator", 4.0) or 4.0
    denominator = _float(head, "timesig_denominator", 4.0) or 4.0
    ticks_per_bar = 4 * TICKS_PER_BEAT * numerator / denominator
    song = root.find("song/trackcontainer")
    project = ProjectNotes(bpm=bpm)
    melodic_samples: set[int] = set()  # tracks whose notes go to project.sample_notes
    if song is None:
        return project

    def track_voices(track: ET.Element) -> tuple[str, list] | None:
        instrument_track = track.find("instrumenttrack")
        name = track.get("name", "")
        if instrument_track is None:
            return None
        reason = _skip_reason(track, instrument_track, name)
        keys = {int(n.get("key", 57)) for n in track.iter("note")}
        if reason is None and len(keys) <= 1:
            reason = "no notes" if not keys else "one pitch only"
        if reason is not None:
            project.skipped_tracks.append(f"{name}: {reason}")
            if reason.startswith("audiofileprocessor sample of unknown pitch") and len(keys) > 1:
                melodic_samples.add(id(track))
            return None
        shift = DEFAULT_BASENOTE - round(_float(instrument_track, "basenote", 57))
        shift += round(_float(instrument_track, "pitch") / 100.0)
        if instrument_track.get("usemasterpitch", "1") == "1":
            shift += round(master_pitch)
        volume = _float(instrument_track, "vol", 100.0) / 100.0
        project.used_tracks.append(name)
        afp = instrument_track.find("instrument/audiofileprocessor")
        if afp is not None:
            start, end = _float(afp, "sframe"), _float(afp, "eframe", 1.0)
            profile, seconds = sample_profile(afp.get("src", ""), start, end)
            looped = afp.get("looped", "0") not in ("0", "")
            # the sample sounds at its own pitch on the base note: moved by key + shift - 57
            return name, [(shift - DEFAULT_BASENOTE, volume, profile, None if looped else seconds)]
        return (
            name,
            [
                (shift + o, volume * share, None, None)
                for o, share in _oscillator_offsets(instrument_track)
            ],
        )

    ticks_per_s = bpm / 60.0 * TICKS_PER_BEAT

    def add(name: str, voices, start: float, end: float, key: int, velocity: float) -> None:
        if voices is None:  # a sample of unknown pitch: only where it sounds
            project.sample_notes.append(Note(start, end, key % 12, 0.0, name))
            return
        for voice, (shift, weight, profile, sample_s) in enumerate(voices):
            if sample_s is not None:  # an unlooped sample, played faster on higher keys
                end = min(end, start + sample_s * ticks_per_s / 2 ** ((key + shift) / 12))
            project.notes.append(
                Note(
                    start,
                    end,
                    (key + shift) % 12,
                    weight * velocity / 100.0,
                    name,
                    voice == 0,
                    profile,
                )
            )

    # song-editor instrument tracks: each pattern plays once at its position, cut at its length
    bb_tracks = []
    for track in song.findall("track"):
        if track.get("type") == "1":
            bb_tracks.append(track)
            continue
        if track.get("type") != "0":
            continue
        voiced = track_voices(track)
        if voiced is None and id(track) not in melodic_samples:
            continue
        name, voices = voiced or (track.get("name", ""), None)
        for pattern in track.findall("pattern"):
            if pattern.get("muted") == "1":
                continue
            pos, length = float(pattern.get("pos", 0)), float(pattern.get("len", 0))
            for start, end, key, velocity in _pattern_notes(pattern):
                if length > 0 and start >= length:
                    continue
                add(name, voices, pos + start, pos + min(end, length or end), key, velocity)

    # Beat/Bassline: the BB editor's tracks live in the first BB track's container
    container = next(
        (
            t.find("bbtrack/trackcontainer")
            for t in bb_tracks
            if t.find("bbtrack/trackcontainer") is not None
        ),
        None,
    )
    if container is None:
        return project
    inner = []  # (name, voices, {bb index: pattern})
    for track in container.findall("track"):
        if track.get("type") != "0":
            continue
        voiced = track_voices(track)
        patterns = {
            int(round(float(p.get("pos", 0)) / ticks_per_bar)): p for p in track.findall("pattern")
        }
        if voiced is not None:
            inner.append((voiced[0], voiced[1], patterns))
        elif id(track) in melodic_samples:
            inner.append((track.get("name", ""), None, patterns))
    all_patterns = [
        {int(round(float(p.get("pos", 0)) / ticks_per_bar)): p for p in t.findall("pattern")}
        for t in container.findall("track")
    ]
    for index, bb_track in enumerate(bb_tracks):
        if bb_track.get("muted") == "1":
            continue
        # the BB pattern's length: its longest pattern, in whole bars (LMMS lengthOfBB)
        lengths = [float(p[index].get("len", 0)) for p in all_patterns if index in p]
        loop = max(ticks_per_bar, np.ceil(max(lengths, default=0) / ticks_per_bar) * ticks_per_bar)
        for clip in bb_track.findall("bbtco"):
            if clip.get("muted") == "1":
                continue
            clip_pos, clip_len = float(clip.get("pos", 0)), float(clip.get("len", 0))
            for name, voices, patterns in inner:
                pattern = patterns.get(index)
                if pattern is None or pattern.get("muted") == "1":
                    continue
                notes = _pattern_notes(pattern)
                for repeat in range(int(np.ceil(clip_len / loop))):
                    offset = clip_pos + repeat * loop
                    for start, end, key, velocity in notes:
                        if start >= loop or offset + start >= clip_pos + clip_len:
                            continue
                        end = min(offset + end, offset + loop, clip_pos + clip_len)
                        add(name, voices, offset + start, end, key, velocity)
    return project


def pitch_class_weights(project: ProjectNotes, start_s: float, seconds: float) -> np.ndarray:
    """12 weights: each note's seconds inside [start_s, start_s + seconds) x its weight."""
    ticks_per_s = project.bpm / 60.0 * TICKS_PER_BEAT
    lo, hi = start_s * ticks_per_s, (start_s + seconds) * ticks_per_s
    out = np.zeros(12)
    for note in project.notes:
        overlap = min(note.end_tick, hi) - max(note.start_tick, lo)
        if overlap > 0 and note.profile is None:
            out[note.pitch_class] += overlap / ticks_per_s * note.weight
        elif overlap > 0:
            out += overlap / ticks_per_s * note.weight * np.roll(note.profile, note.pitch_class)
    return out


def _profile_matrix(profile: str) -> np.ndarray:
    """(24, 12): rows are the key profile rotated to each tonic, major keys then minor."""
    rows = []
    for values in KEY_PROFILES[profile]:
        rows += [np.roll(np.asarray(values, np.float64), tonic) for tonic in range(12)]
    return np.asarray(rows)


def key_correlations(weights: np.ndarray) -> dict[str, np.ndarray]:
    """Per profile, the Pearson correlation of the 12 weights with each of the 24 keys."""
    x = np.asarray(weights, np.float64)
    out = {}
    for profile in KEY_PROFILES:
        m = _profile_matrix(profile)
        xc = x - x.mean()
        mc = m - m.mean(axis=1, keepdims=True)
        denominator = np.linalg.norm(mc, axis=1) * (np.linalg.norm(xc) or 1.0)
        out[profile] = mc @ xc / denominator
    return out


def key_label(index: int) -> tuple[str, str]:
    return PITCH_CLASSES[index % 12], "major" if index < 12 else "minor"


def find_key(weights: np.ndarray) -> dict:
    """The key of 12 pitch-class weights: each profile's choice, their mean-correlation key,
    its margin over the runner-up (key_confidence) and whether it meets LABEL_RULE."""
    weights = np.asarray(weights, np.float64)
    active = int(np.sum(weights > ACTIVE_SHARE * max(float(weights.max()), 1e-12)))
    if float(weights.sum()) <= 0:
        return {
            "key_tonic": None,
            "key_mode": None,
            "key_confidence": 0.0,
            "labelled": False,
            "reason": "no pitched notes",
            "profiles": {},
            "note_seconds": 0.0,
        }
    correlations = key_correlations(weights)
    mean = np.mean(list(correlations.values()), axis=0)
    order = np.argsort(-mean)
    best, second = int(order[0]), int(order[1])
    margin = float(mean[best] - mean[second])
    choices = {p: "{} {}".format(*key_label(int(np.argmax(c)))) for p, c in correlations.items()}
    agree = sum(int(np.argmax(c)) == best for c in correlations.values())
    tonic, mode = key_label(best)
    reasons = []
    if agree < MIN_AGREE:
        reasons.append(f"profiles disagree ({agree}/{len(KEY_PROFILES)})")
    if margin < MIN_MARGIN:
        reasons.append(f"margin {margin:.3f} over {' '.join(key_label(second))}")
    if active < MIN_PITCH_CLASSES:
        reasons.append(f"{active} pitch classes")
    return {
        "key_tonic": tonic,
        "key_mode": mode,
        "key_confidence": round(float(np.clip(margin, 0.0, 1.0)), 4),
        "runner_up": " ".join(key_label(second)),
        "agree": agree,
        "profiles": choices,
        "labelled": not reasons,
        "reason": "; ".join(reasons),
    }


def span_key(project: ProjectNotes, start_s: float, seconds: float) -> dict:
    """find_key on the notes sounding in [start_s, start_s + seconds), with MIN_NOTE_SECONDS
    (the pitched notes' summed duration, unweighted) checked too."""
    weights = pitch_class_weights(project, start_s, seconds)
    result = find_key(weights)
    ticks_per_s = project.bpm / 60.0 * TICKS_PER_BEAT
    lo, hi = start_s * ticks_per_s, (start_s + seconds) * ticks_per_s
    note_seconds = (
        sum(
            max(0.0, min(n.end_tick, hi) - max(n.start_tick, lo))
            for n in project.notes
            if n.first_voice
        )
        / ticks_per_s
    )
    sample_seconds = (
        sum(max(0.0, min(n.end_tick, hi) - max(n.start_tick, lo)) for n in project.sample_notes)
        / ticks_per_s
    )
    result["note_seconds"] = round(note_seconds, 1)
    result["sample_seconds"] = round(sample_seconds, 1)
    reasons = [result["reason"]] if result["reason"] else []
    if note_seconds < MIN_NOTE_SECONDS:
        reasons.append(f"{note_seconds:.1f} s of pitched notes")
    if sample_seconds > 0:
        names = sorted({n.track for n in project.sample_notes})
        reasons.append(f"melodic samples of unknown pitch sound ({', '.join(names)})")
    result["reason"] = "; ".join(reasons)
    result["labelled"] = not reasons
    return result


def excerpt_key(
    project: ProjectNotes, start_s: float, seconds: float, song_s: float = 120.0
) -> dict:
    """The key label fields of one excerpt: key_tonic, key_mode, key_confidence (the excerpt's
    own margin) and key_evidence, all None without a label. key_evidence "excerpt": the
    excerpt's notes meet LABEL_RULE; "song": they do not, but the song's first `song_s` seconds
    meet it and the excerpt's own best key is the song's key (weaker evidence that agrees; no
    melodic sample in the excerpt)."""
    result = span_key(project, start_s, seconds)
    evidence = "excerpt" if result["labelled"] else None
    if evidence is None and result["key_tonic"] and result.get("sample_seconds", 0) == 0:
        song = span_key(project, 0.0, song_s)
        same = (song["key_tonic"], song["key_mode"]) == (result["key_tonic"], result["key_mode"])
        evidence = "song" if song["labelled"] and same else None
    if evidence is None:
        return dict(NO_KEY)
    return {
        **{k: result[k] for k in ("key_tonic", "key_mode", "key_confidence")},
        "key_evidence": evidence,
    }


def read_midi(path: Path) -> ProjectNotes:
    """Every pitched note of a MIDI song (the same label rule as LMMS projects): channel 10 (General
    MIDI's drums) left out, and channels that play one pitch only; each note weighted by its
    velocity and its channel's volume (controller 7, 100 by default) as LMMS notes are. Ticks
    are moved to LMMS's 48 a quarter note, at the song's first tempo (build_lmms_devset takes only
    songs with one)."""
    import mido

    song = mido.MidiFile(str(path))
    scale = TICKS_PER_BEAT / song.ticks_per_beat
    messages = list(mido.merge_tracks(song.tracks))
    tempo = next((m.tempo for m in messages if m.type == "set_tempo"), mido.bpm2tempo(120))
    project = ProjectNotes(bpm=float(mido.tempo2bpm(tempo)))
    volume = dict.fromkeys(range(16), 100)
    sounding: dict[tuple[int, int], tuple[float, float]] = {}  # (channel, key): (tick, weight)
    by_channel: dict[int, list[Note]] = {}
    tick = 0
    for message in messages:
        tick += message.time
        if message.type == "control_change" and message.control == 7:
            volume[message.channel] = message.value
        elif message.type in ("note_on", "note_off") and message.channel != 9:
            key = (message.channel, message.note)
            if key in sounding:  # any note_on / note_off of a sounding key ends it
                start, weight = sounding.pop(key)
                if tick > start:
                    by_channel.setdefault(message.channel, []).append(
                        Note(
                            start * scale,
                            tick * scale,
                            message.note % 12,
                            weight,
                            f"ch{key[0] + 1}",
                        )
                    )
            if message.type == "note_on" and message.velocity > 0:
                sounding[key] = (tick, message.velocity / 100 * volume[message.channel] / 100)
    for channel, notes in sorted(by_channel.items()):
        if len({n.pitch_class for n in notes}) <= 1:
            project.skipped_tracks.append(f"ch{channel + 1}: one pitch only")
            continue
        project.notes += notes
        project.used_tracks.append(f"ch{channel + 1}")
    project.skipped_tracks.append("ch10: General MIDI drums")
    return project


def main(argv: list[str] | None = None) -> int:
    """A report: per LMMS project, its key over the first 120 s and per excerpt position."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from build_lmms_devset import OFFSETS, lmms_xml, projects  # noqa: PLC0415

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--labels", type=Path, help="a labels.jsonl: the excerpts' start_s")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--song-s", type=float, default=120.0)
    args = parser.parse_args(argv)
    import json

    starts: dict[str, list[float]] = {}
    if args.labels:
        for line in args.labels.read_text().splitlines():
            row = json.loads(line)
            if row["subset"] == "lmms" and row["variant"] == "orig":
                starts.setdefault(row["source"], []).append(row["start_s"])
    for kind, name, path in projects():
        if kind != "lmms":
            continue
        project = read_project(lmms_xml(path))
        whole = span_key(project, 0.0, args.song_s)
        print(
            f"{name}: first {args.song_s:g} s {whole['key_tonic']} {whole['key_mode']} "
            f"margin {whole['key_confidence']:.3f} (runner-up {whole.get('runner_up')}) "
            f"{'LABEL' if whole['labelled'] else 'no label: ' + whole['reason']}"
        )
        print(
            f"    used {len(project.used_tracks)} tracks; skipped: {'; '.join(project.skipped_tracks[:8])}"
        )
        for start in starts.get(str(path), [round(s * args.song_s, 2) for s in OFFSETS]):
            r = span_key(project, start, args.seconds)
            label = excerpt_key(project, start, args.seconds, args.song_s)
            verdict = (
                "no label: " + r["reason"]
                if label["key_tonic"] is None
                else "LABEL" + (" (the song's key)" if label["key_evidence"] == "song" else "")
            )
            print(
                f"    {start:7.2f} s: {r['key_tonic']} {r['key_mode']} margin {r['key_confidence']:.3f} "
                f"agree {r.get('agree')} notes {r['note_seconds']} s {verdict}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
