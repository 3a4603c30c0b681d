"""Symbolic key-finding on LMMS projects (benchmarks/devset/lmms_keys.py): the key labels of the
real-production development set come from the projects' own notes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "devset"))
import lmms_keys  # noqa: E402

# LMMS keys: 57 = A4, so C4 = 48. At 120 BPM a quarter note (48 ticks) is 0.5 s.
C4, D4, E4, F4, G4, GS4, A4, B4, C5 = 48, 50, 52, 53, 55, 56, 57, 59, 60
A3, E3 = 45, 40
SCALE_UP = [C4, D4, E4, F4, G4, A4, B4, C5, G4, E4, C4, G4, C4, E4, G4, C5]
A_MINOR_TUNE = [A3, C4, E4, A4, GS4, B4, A4, E4, C4, D4, E4, C5, B4, GS4, A4, A3]


def notes_xml(keys: list[int], ticks: int = 96, repeats: int = 4) -> str:
    """`repeats` passes over `keys`, each note a half note (96 ticks) long."""
    out, pos = [], 0
    for _ in range(repeats):
        for key in keys:
            out.append(f'<note key="{key}" len="{ticks}" pos="{pos}" vol="100" pan="0"/>')
            pos += ticks
    return "".join(out)


def instrument_track(
    name: str, instrument: str, notes: str, pos: int = 0, src: str = "", **attrs: str
) -> str:
    fields = {"vol": "100", "basenote": "57", "pitch": "0", "usemasterpitch": "1", **attrs}
    head = " ".join(f'{k}="{v}"' for k, v in fields.items())
    sample = f' src="{src}" sframe="0" eframe="1" looped="0"' if src else ""
    return (
        f'<track type="0" name="{name}" muted="0"><instrumenttrack {head}>'
        f'<instrument name="{instrument}"><{instrument}{sample}/></instrument></instrumenttrack>'
        f'<pattern pos="{pos}" len="100000" muted="0">{notes}</pattern></track>'
    )


def project(*tracks: str, masterpitch: int = 0) -> str:
    return (
        '<?xml version="1.0"?><lmms-project><head bpm="120" timesig_numerator="4" '
        f'timesig_denominator="4" masterpitch="{masterpitch}"/><song><trackcontainer type="song">'
        + "".join(tracks)
        + "</trackcontainer></song></lmms-project>"
    )


# A drum-sample track whose keys, if they counted, would pull the key to F# major
DRUMS_IN_F_SHARP = instrument_track(
    "loop 1",
    "audiofileprocessor",
    notes_xml([54, 61, 58, 66, 54, 61], ticks=192),
    src="drums/x.ogg",
)
SNARE_SYNTH = instrument_track("Snare 2", "tripleoscillator", notes_xml([54, 61, 58], ticks=192))


def test_c_major_scale_and_a_minor_tune_with_drums_ignored():
    # 0-64 s: the C major scale (16 half notes = 16 s, four times); from tick 6144 (64 s at
    # 120 BPM, 96 ticks a second): the A minor tune
    xml = project(
        instrument_track("piano", "tripleoscillator", notes_xml(SCALE_UP)),
        instrument_track("lead", "zynaddsubfx", notes_xml(A_MINOR_TUNE), pos=6144),
        DRUMS_IN_F_SHARP,
        SNARE_SYNTH,
    )
    notes = lmms_keys.read_project(xml)
    assert notes.used_tracks == ["piano", "lead"]
    assert any(s.startswith("loop 1: audiofileprocessor drum") for s in notes.skipped_tracks)
    assert any(s.startswith("Snare 2: named like a drum") for s in notes.skipped_tracks)
    first = lmms_keys.excerpt_key(notes, 0.0, 30.0)
    assert (first["key_tonic"], first["key_mode"], first["key_evidence"]) == (
        "C",
        "major",
        "excerpt",
    )
    assert first["key_confidence"] >= lmms_keys.MIN_MARGIN
    second = lmms_keys.excerpt_key(notes, 66.0, 30.0)
    assert (second["key_tonic"], second["key_mode"]) == ("A", "minor")
    # the drums' F#, C#, A# would be 12 s of the 30 s: the span's weights hold none of them
    weights = lmms_keys.pitch_class_weights(notes, 0.0, 30.0)
    assert weights[[6, 1, 10]].sum() == 0
    assert weights[0] > 0


def test_basenote_and_masterpitch_transpose():
    # basenote 59 (B4) plays key 59 as A4: everything two semitones down -> A# major
    down = lmms_keys.read_project(
        project(instrument_track("piano", "tripleoscillator", notes_xml(SCALE_UP), basenote="59"))
    )
    assert lmms_keys.span_key(down, 0.0, 30.0)["key_tonic"] == "A#"
    # the song's master pitch (+3) applies to tracks that use it: C -> D# major
    up = lmms_keys.read_project(
        project(instrument_track("piano", "tripleoscillator", notes_xml(SCALE_UP)), masterpitch=3)
    )
    assert (lmms_keys.span_key(up, 0.0, 30.0)["key_tonic"]) == "D#"


def test_beat_bassline_clips_loop_their_pattern():
    # the BB editor's bar-0 pattern (one bar of A minor arpeggio) looped by a 16-bar clip
    inner = instrument_track("bass", "lb302", notes_xml([A3, C4, E4, A3], ticks=48, repeats=1))
    xml = (
        '<?xml version="1.0"?><lmms-project><head bpm="120" timesig_numerator="4" '
        'timesig_denominator="4"/><song><trackcontainer type="song">'
        '<track type="1" name="Beat" muted="0"><bbtrack><trackcontainer type="bbtrackcontainer">'
        + inner.replace('len="100000"', 'len="192"')
        + '</trackcontainer></bbtrack><bbtco pos="0" len="3072" muted="0"/></track>'
        "</trackcontainer></song></lmms-project>"
    )
    notes = lmms_keys.read_project(xml)
    assert len(notes.notes) == 16 * 4  # 16 bars, four notes a bar
    assert notes.notes[-1].start_tick == 15 * 192 + 3 * 48
    # three pitch classes only: a key, but no label (LABEL_RULE asks for five)
    result = lmms_keys.span_key(notes, 0.0, 30.0)
    assert not result["labelled"] and "pitch classes" in result["reason"]


def test_a_sample_of_unknown_pitch_played_melodically_blocks_the_label():
    # LMMS synthesises .ds presets itself: their pitch is unknown, so where one plays more
    # than one key the notes do not tell the key
    piano = instrument_track("piano", "tripleoscillator", notes_xml(SCALE_UP))
    preset = instrument_track(
        "E-Piano",
        "audiofileprocessor",
        notes_xml([C4, E4], repeats=2),
        src="drumsynth/instrument/E_Piano.ds",
    )
    alone = lmms_keys.read_project(project(piano))
    assert lmms_keys.excerpt_key(alone, 0.0, 30.0)["key_tonic"] == "C"
    both = lmms_keys.read_project(project(piano, preset))
    result = lmms_keys.span_key(both, 0.0, 30.0)
    assert (result["key_tonic"], result["key_mode"]) == ("C", "major")
    assert not result["labelled"] and "unknown pitch" in result["reason"]
    assert lmms_keys.excerpt_key(both, 0.0, 30.0)["key_tonic"] is None
    assert lmms_keys.excerpt_key(both, 40.0, 20.0)["key_tonic"] == "C"  # after its 8 s


@pytest.mark.skipif(
    not (lmms_keys.SAMPLES / "instruments" / "piano01.ogg").exists(),
    reason="lmms-common not installed",
)
def test_a_shipped_sample_sounds_at_its_own_pitch_moved_by_the_note():
    # piano01.ogg is one piano note, C: played on key 57 + 2 it sounds D; the scale of D major
    profile, seconds = lmms_keys.sample_profile("instruments/piano01.ogg")
    assert int(profile.argmax()) == 0 and 0.5 < seconds < 2.0
    scale_on_d = [k + 2 + (A4 - C4) for k in SCALE_UP]  # C4 -> key 59: two above the base note
    notes = lmms_keys.read_project(
        project(
            instrument_track(
                "keys", "audiofileprocessor", notes_xml(scale_on_d), src="instruments/piano01.ogg"
            )
        )
    )
    assert lmms_keys.span_key(notes, 0.0, 30.0)["key_tonic"] == "D"
    # unlooped: each half-second-plus note sounds only as long as the sample, not its 1 s
    assert all(n.end_tick - n.start_tick < 96 for n in notes.notes)


@pytest.mark.parametrize("name", ["Kick", "hihat_closed02", "FX Sweep", "tom_low01.ogg"])
def test_drum_names(name):
    assert lmms_keys.DRUM_NAME.search(name)


def test_melodic_names_are_not_drums():
    for name in ("Bass", "Progressive Pluck", "Strings", "Lead 1", "Rock Organ", "Choir"):
        assert not lmms_keys.DRUM_NAME.search(name), name


def midi_song(path: Path, parts: dict[int, list[int]], bpm: float = 120.0) -> Path:
    """A type-1 MIDI song: per channel (9 = General MIDI drums) the keys as quarter notes."""
    import mido

    song = mido.MidiFile(ticks_per_beat=480)
    head = mido.MidiTrack([mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))])
    song.tracks.append(head)
    for channel, keys in parts.items():
        track = mido.MidiTrack(
            [mido.Message("control_change", channel=channel, control=7, value=100)]
        )
        for key in keys:
            track.append(mido.Message("note_on", channel=channel, note=key, velocity=100, time=0))
            track.append(mido.Message("note_off", channel=channel, note=key, velocity=0, time=480))
        song.tracks.append(track)
    song.save(str(path))
    return path


def test_midi_notes_find_the_key_and_leave_the_drums_out(tmp_path):
    # MIDI 60 = C4; the drum channel's keys spell F# major and must not count
    scale = [k + 12 for k in SCALE_UP] * 4
    drums = [54, 61, 58, 66, 54, 61] * 10
    song = midi_song(tmp_path / "c.mid", {0: scale, 9: drums})
    project = lmms_keys.read_midi(song)
    assert project.bpm == pytest.approx(120.0)
    assert project.used_tracks == ["ch1"] and "ch10: General MIDI drums" in project.skipped_tracks
    found = lmms_keys.span_key(project, 0.0, 32.0)
    assert (found["key_tonic"], found["key_mode"], found["labelled"]) == ("C", "major", True)
    # the same scale a whole tone up, at another tempo: D major, and the span is read in seconds
    up = midi_song(tmp_path / "d.mid", {0: [k + 2 for k in scale]}, bpm=90.0)
    found = lmms_keys.span_key(lmms_keys.read_midi(up), 0.0, 40.0)
    assert (found["key_tonic"], found["key_mode"]) == ("D", "major")
    # one pitch only is no key evidence
    drone = lmms_keys.read_midi(midi_song(tmp_path / "e.mid", {1: [60, 72] * 40}))
    assert drone.notes == [] and "ch2: one pitch only" in drone.skipped_tracks
