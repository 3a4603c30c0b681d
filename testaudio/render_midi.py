"""Short General-MIDI pieces rendered with FluidSynth: real instrument samples (FluidR3 GM) for
checking the tagger and the demo on music whose instrumentation and style are known.

Each piece function returns (notes, channel programs, bpm). `write_midi` writes a standard MIDI
file from (start beat, length in beats, channel, pitch, velocity) notes; `render` plays it through the `fluidsynth` command (Debian `fluidsynth` +
`fluid-soundfont-gm`). Two pieces: `piano_piece` (a solo piano in the classical style: Alberti
bass under a melody, I-IV-V-I) and `electronic_piece` (a four-on-the-floor GM drum kit with a
sawtooth synth bass and a square-wave lead at 128 bpm).
"""

from __future__ import annotations

import shutil
import struct
import subprocess
from pathlib import Path

SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
TICKS = 480  # per beat
Note = tuple[float, float, int, int, int]  # start beat, beats, channel, pitch, velocity


def _vlq(value: int) -> bytes:
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


def write_midi(path: str | Path, notes: list[Note], bpm: float, programs: dict[int, int]) -> Path:
    """One-track (format 0) MIDI file; `programs` maps channel -> GM program (channel 9: drums)."""
    events: list[
        tuple[int, int, bytes]
    ] = []  # (tick, order, bytes): note-offs sort before note-ons
    events.append((0, 0, b"\xff\x51\x03" + struct.pack(">I", int(60_000_000 / bpm))[1:]))
    for channel, program in programs.items():
        events.append((0, 1, bytes([0xC0 | channel, program])))
    for start, length, channel, pitch, velocity in notes:
        on, off = int(round(start * TICKS)), int(round((start + length) * TICKS))
        events.append((on, 3, bytes([0x90 | channel, pitch, velocity])))
        events.append((off, 2, bytes([0x80 | channel, pitch, 0])))
    events.sort(key=lambda e: (e[0], e[1]))
    body, now = bytearray(), 0
    for tick, _, data in events:
        body += _vlq(tick - now) + data
        now = tick
    body += b"\x00\xff\x2f\x00"
    header = b"MThd" + struct.pack(">IHHH", 6, 0, 1, TICKS)
    path = Path(path)
    path.write_bytes(header + b"MTrk" + struct.pack(">I", len(body)) + bytes(body))
    return path


def render(midi: str | Path, wav: str | Path, sample_rate: int = 44100) -> Path:
    """Render `midi` to a WAV file with FluidSynth and the GM soundfont."""
    if shutil.which("fluidsynth") is None or not SOUNDFONT.exists():
        raise FileNotFoundError(
            "rendering MIDI needs fluidsynth and fluid-soundfont-gm (apt-get install fluidsynth fluid-soundfont-gm)"
        )
    subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.7", "-r", str(sample_rate), "-F", str(wav), str(SOUNDFONT), str(midi)],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    return Path(wav)


def piano_piece(
    seconds: float = 10.0, bpm: float = 84.0
) -> tuple[list[Note], dict[int, int], float]:
    """Solo acoustic grand piano: Alberti bass in C major under a stepwise melody."""
    chords = [(48, 52, 55), (48, 53, 57), (47, 50, 55), (48, 52, 55)]  # I IV V6 I
    melody = [72, 74, 76, 77, 76, 74, 72, 71, 72, 76, 79, 77, 76, 74, 72, 72]
    notes: list[Note] = []
    beats = int(seconds * bpm / 60) + 1
    for beat in range(beats):
        low, mid, high = chords[(beat // 4) % len(chords)]
        for i, pitch in enumerate(
            (low, high, mid, high)
        ):  # Alberti: low-high-mid-high in sixteenths
            notes.append((beat + i * 0.25, 0.25, 0, pitch, 58))
        notes.append((beat, 1.0, 0, melody[beat % len(melody)], 76))
    return notes, {0: 0}, bpm


def electronic_piece(
    seconds: float = 10.0, bpm: float = 128.0
) -> tuple[list[Note], dict[int, int], float]:
    """GM drums (kick on every beat, clap on 2 and 4, closed hi-hat eighths, open hat off-beats),
    a synth bass (Lead 2 sawtooth, an octave down) and a square-wave lead arpeggio."""
    notes: list[Note] = []
    beats = int(seconds * bpm / 60) + 1
    roots = [45, 45, 41, 43]  # A minor: i VI VII
    for beat in range(beats):
        notes.append((beat, 0.25, 9, 36, 120))  # kick
        if beat % 2 == 1:
            notes.append((beat, 0.25, 9, 39, 100))  # hand clap
        notes.append((beat, 0.1, 9, 42, 80))
        notes.append((beat + 0.5, 0.25, 9, 46, 90))  # open hat on the off-beat
        root = roots[(beat // 4) % len(roots)]
        notes.append((beat + 0.5, 0.4, 1, root - 12, 110))  # off-beat bass
        for i, step in enumerate((0, 12, 7, 15)):
            notes.append((beat + i * 0.25, 0.2, 2, root + 24 + step, 85))
    return notes, {1: 38, 2: 80}, bpm  # Synth Bass 1, Lead 1 (square)
