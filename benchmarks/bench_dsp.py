"""decode + qc + music throughput and accuracy against the essentia baseline, per core.

Generates a corpus with testaudio.synth (known BPM and key; wav / flac / mp3 / ogg), then times,
in one process with every thread pool limited to one thread:

  baseline    soundfile decode -> mono 44.1 kHz -> RhythmExtractor2013(method='multifeature')
              + KeyExtractor (default profile), one track at a time;
  production  decode (annotate.audio, once per track, shared) -> QCStage.process ->
              MusicStage.process, in batches, exactly as the runner calls the stages.

Prints x realtime per core for both, their ratio, and accuracy against the truth: BPM within 2 %
(no octave error allowed), BPM within 2 % of x1/2/x2 (octave errors forgiven), key exact,
relative-key and fifth confusions.

`--chorales N` adds real compositions: N four-part Bach chorales from music21's corpus, rendered
by FluidSynth with sampled piano / organ / strings (key truth: key signature and final bass
note; tempo truth: the score's metronome mark). Needs `pip install music21` and
`apt-get install fluidsynth fluid-soundfont-gm`.

    .venv/bin/python benchmarks/bench_dsp.py [--tracks 24] [--seconds 30] [--seed 0] [--chorales 60]
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_var] = "1"  # per-core figures: set before numpy / scipy load their thread pools

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from songmill.annotate.base import Track  # noqa: E402
from songmill.annotate.music import PITCH_CLASSES, MusicStage, sharp_name  # noqa: E402
from songmill.annotate.qc import QCStage  # noqa: E402
from songmill.testaudio.synth import DEMO_FORMATS, STYLES, render_track, write_track  # noqa: E402

TEMPO_RANGES = {
    "pop": (85, 135),
    "rock": (95, 170),
    "edm": (118, 140),
    "funk": (85, 118),
    "dnb": (160, 178),
    "waltz": (80, 170),
    "ballad": (62, 90),
}


def make_corpus(folder: Path, n: int, seconds: float, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    specs = []
    for i in range(n):
        style = STYLES[i % len(STYLES)]
        lo, hi = TEMPO_RANGES[style]
        spec = {
            "bpm": float(rng.integers(lo, hi + 1)),
            "key_tonic": PITCH_CLASSES[int(rng.integers(12))],
            "key_mode": ("major", "minor")[i % 2],
            "style": style,
            "seed": int(rng.integers(2**31)),
            "tuning_hz": float(rng.choice([440.0, 440.0, 440.0, 435.0, 445.0])),
            "format": DEMO_FORMATS[i % len(DEMO_FORMATS)],
        }
        audio = render_track(
            spec["bpm"],
            spec["key_tonic"],
            spec["key_mode"],
            seconds,
            seed=spec["seed"],
            style=spec["style"],
            tuning_hz=spec["tuning_hz"],
        )
        spec["path"] = str(folder / f"track_{i:03d}_{style}.{spec['format']}")
        write_track(spec["path"], audio)
        specs.append(spec)
    return specs


def make_chorales(folder: Path, n: int) -> list[dict]:
    """Render n Bach chorales that end on their tonic (so the key truth is unambiguous)."""
    import shutil
    import subprocess

    from music21 import corpus, instrument

    soundfont = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")
    if shutil.which("fluidsynth") is None or not soundfont.exists():
        raise SystemExit("--chorales needs fluidsynth and fluid-soundfont-gm (apt-get install ...)")
    voices = (instrument.Piano, instrument.Organ, instrument.StringInstrument)
    specs: list[dict] = []
    for source in sorted(corpus.getComposer("bach"), key=str):
        if len(specs) >= n:
            break
        score = corpus.parse(source)
        signatures = score.recurse().getElementsByClass("KeySignature")
        marks = score.metronomeMarkBoundaries()
        if len(score.parts) != 4 or not signatures or not score.parts[-1].flatten().notes:
            continue
        final_bass = score.parts[-1].flatten().notes[-1].pitches[0].pitchClass
        for mode in ("major", "minor"):
            if signatures[0].asKey(mode).tonic.pitchClass == final_bass:
                break
        else:
            continue  # a modal ending: no clear truth
        voice = voices[len(specs) % len(voices)]
        for part in score.parts:
            part.insert(0, voice())
        stem = folder / f"chorale_{len(specs):03d}"
        score.write("midi", fp=str(stem) + ".mid")
        subprocess.run(
            [
                "fluidsynth",
                "-ni",
                "-q",
                "-g",
                "0.8",
                "-r",
                "44100",
                "-F",
                f"{stem}.wav",
                str(soundfont),
                f"{stem}.mid",
            ],
            check=True,
            capture_output=True,
        )
        specs.append(
            {
                "path": f"{stem}.wav",
                "bpm": float(marks[0][2].getQuarterBPM()) if marks else 120.0,
                "key_tonic": PITCH_CLASSES[final_bass],
                "key_mode": mode,
            }
        )
    return specs


def _downmix(samples: np.ndarray) -> np.ndarray:
    """Mean of the channels, column by column (numpy's mean over axis 1 is needlessly slow)."""
    mono = np.zeros(samples.shape[0], np.float32)
    for c in range(samples.shape[1]):
        mono += samples[:, c]
    return mono / samples.shape[1]


class Timer:
    """Wall-clock and this process's CPU seconds: CPU time is the per-core figure that other
    load on the machine does not distort."""

    def __enter__(self) -> Timer:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def run_baseline(specs: list[dict]) -> tuple[list[tuple[float, str, str]], float, Timer]:
    import essentia.standard as es
    import soundfile as sf

    rhythm = es.RhythmExtractor2013(method="multifeature")
    key_extractor = es.KeyExtractor()
    results, audio_seconds = [], 0.0
    with Timer() as timer:
        for spec in specs:
            samples, sr = sf.read(spec["path"], dtype="float32", always_2d=True)
            mono = _downmix(samples)
            audio_seconds += samples.shape[0] / sr
            bpm = float(rhythm(mono)[0])
            key, scale, _ = key_extractor(mono)
            results.append((bpm, sharp_name(key), scale))
    return results, audio_seconds, timer


def run_production(
    specs: list[dict], batch_size: int
) -> tuple[list[tuple[float, str, str]], float, Timer]:
    qc, music = QCStage(), MusicStage()
    qc.setup()
    music.setup()
    results, audio_seconds = [], 0.0
    with Timer() as timer:
        for first in range(0, len(specs), batch_size):
            batch = [
                Track({"track_id": str(i), "uri": spec["path"], "duration_s": None})
                for i, spec in enumerate(specs[first : first + batch_size], start=first)
            ]
            qc_rows = qc.process(batch)
            music_rows = music.process(batch)
            for track, qc_row, row in zip(batch, qc_rows, music_rows, strict=True):
                if isinstance(qc_row, BaseException) or isinstance(row, BaseException):
                    raise RuntimeError(f"track {track.uri} failed: {qc_row!r} {row!r}")
                audio_seconds += qc_row["duration_s"]
                results.append((row["bpm"] or 0.0, row["key_tonic"], row["key_mode"]))
                track.release_audio()
    return results, audio_seconds, timer


def accuracy(specs: list[dict], results: list[tuple[float, str, str]]) -> dict[str, float]:
    n = len(specs)
    tempo = tempo_octave = key = relative = fifth = 0
    for spec, (bpm, tonic, mode) in zip(specs, results, strict=True):
        truth = spec["bpm"]
        tempo += abs(bpm - truth) <= 0.02 * truth
        tempo_octave += any(abs(bpm - truth * f) <= 0.02 * truth * f for f in (0.5, 1.0, 2.0))
        true_pc = PITCH_CLASSES.index(spec["key_tonic"])
        if tonic is None:
            continue
        pc = PITCH_CLASSES.index(tonic)
        if (pc, mode) == (true_pc, spec["key_mode"]):
            key += 1
        elif mode != spec["key_mode"] and pc == (true_pc + (9 if mode == "minor" else 3)) % 12:
            relative += 1
        elif mode == spec["key_mode"] and pc in ((true_pc + 7) % 12, (true_pc + 5) % 12):
            fifth += 1
    return {
        "bpm_acc": tempo / n,
        "bpm_acc_octave": tempo_octave / n,
        "key_acc": key / n,
        "relative_errors": relative,
        "fifth_errors": fifth,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tracks", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--chorales", type=int, default=0, help="also evaluate N rendered Bach chorales"
    )
    args = parser.parse_args(argv)

    import essentia

    essentia.log.infoActive = False
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:
        pass

    with tempfile.TemporaryDirectory(prefix="songmill-bench-") as tmp:
        print(
            f"generating {args.tracks} tracks x {args.seconds:.0f} s (wav/flac/mp3/ogg) ...",
            flush=True,
        )
        corpora = {"synthetic": make_corpus(Path(tmp), args.tracks, args.seconds, args.seed)}
        if args.chorales:
            print(f"rendering {args.chorales} Bach chorales with FluidSynth ...", flush=True)
            corpora["Bach chorales"] = make_chorales(Path(tmp), args.chorales)
        # Warm both paths on one track (imports, first-call set-up), outside the timings.
        run_baseline(corpora["synthetic"][:1])
        run_production(corpora["synthetic"][:1], 1)
        for name, specs in corpora.items():
            report(name, specs, run_baseline(specs), run_production(specs, args.batch_size))
    return 0


def report(name: str, specs: list[dict], baseline: tuple, production: tuple) -> None:
    (base_results, base_seconds, base_time), (prod_results, prod_seconds, prod_time) = (
        baseline,
        production,
    )
    base_x, prod_x = base_seconds / base_time.cpu, prod_seconds / prod_time.cpu
    base_acc, prod_acc = accuracy(specs, base_results), accuracy(specs, prod_results)
    print(
        f"\n{name}: {len(specs)} tracks, {base_seconds:.0f} s of audio; one thread; x realtime per core ="
        " audio seconds / process CPU seconds (wall-clock in brackets)\n"
    )
    header = f"{'path':<44}{'x rt/core':>10}{'(wall)':>9}{'BPM':>7}{'BPM x1/2/2':>12}{'key':>7}{'rel':>5}{'5th':>5}"
    print(header)
    print("-" * len(header))
    for label, x, wall_x, acc in (
        (
            "baseline: decode + multifeature + KeyExtractor",
            base_x,
            base_seconds / base_time.wall,
            base_acc,
        ),
        (
            "production: decode + QCStage + MusicStage",
            prod_x,
            prod_seconds / prod_time.wall,
            prod_acc,
        ),
    ):
        print(
            f"{label:<44}{x:>9.1f}x{wall_x:>8.1f}x{acc['bpm_acc']:>7.0%}{acc['bpm_acc_octave']:>12.0%}"
            f"{acc['key_acc']:>7.0%}{acc['relative_errors']:>5}{acc['fifth_errors']:>5}"
        )
    print(
        f"\nspeed-up production / baseline: {prod_x / base_x:.2f}x  (target: production >= 100x realtime)"
    )
    ok = (
        prod_x >= 100
        and prod_acc["bpm_acc"] >= base_acc["bpm_acc"]
        and prod_acc["key_acc"] >= base_acc["key_acc"]
    )
    print("target met" if ok else "TARGET NOT MET")


if __name__ == "__main__":
    raise SystemExit(main())
