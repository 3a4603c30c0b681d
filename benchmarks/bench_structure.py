"""Structure boundaries on material whose form is known: hit rate at 0.5 s and 3 s.

Two sets, each against same-run baselines that know the number of sections but not the music:
  - synthetic songs (testaudio/song_forms.py): pop forms rendered with testaudio/synth.py, each
    label its own material (chords, melody, drum style, level);
  - real compositions (`--chorales N`): Bach chorales from music21's corpus whose score has repeat
    barlines (form A A B ...), repeats expanded, rendered by FluidSynth at a fixed tempo; the truth
    is where each pass of a repeated span starts and where the music after it begins. A repeat of
    identical material is a boundary that novelty alone cannot hear, so this set is hard.

Baselines: `even` (the true number of boundaries, evenly spaced) and `bars8` (a boundary every 8
bars from the first beat, the usual phrase length). The DSP backend is timed too (x realtime per
core). Needs music21, fluidsynth and fluid-soundfont-gm for the chorales.

    .venv/bin/python benchmarks/bench_structure.py [--songs 12] [--seed 1] [--chorales 12] [--skip-chorales 12]

The DSP settings were tuned on other synthetic songs and the first 12 eligible chorales; the defaults
evaluate on other songs and on held-out chorales.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "NUMBA_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from songmill.annotate.structure import (  # noqa: E402
    StructureConfig,
    boundary_hit_rate,
    dsp_sections,
    inner_boundaries,
)
from songmill.testaudio.song_forms import render_song  # noqa: E402

SR = 22050
FORMS = (
    ("intro", "verse", "chorus", "verse", "chorus", "bridge", "chorus", "outro"),
    ("intro", "verse", "pre-chorus", "chorus", "verse", "pre-chorus", "chorus", "outro"),
    ("verse", "chorus", "verse", "chorus", "instrumental", "chorus"),
    ("intro", "verse", "verse", "chorus", "bridge", "chorus", "chorus", "outro"),
)
SOUNDFONT = Path("/usr/share/sounds/sf2/FluidR3_GM.sf2")


def synthetic_songs(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    items = []
    for i in range(n):
        bpm = float(rng.integers(90, 150))
        bars = [int(rng.choice([4, 8, 8, 8])) for _ in FORMS[i % len(FORMS)]]
        audio, truth = render_song(FORMS[i % len(FORMS)], bpm=bpm, key_tonic=["C", "A", "F#", "D#"][i % 4],
                                   key_mode=["major", "minor"][i % 2], bars=bars, sr=SR, seed=seed * 1000 + i)  # fmt: skip
        items.append(
            {
                "name": f"song{i:02d}",
                "audio": audio.mean(1),
                "truth": inner_boundaries(truth),
                "sections": truth,
                "bpm": bpm,
                "beats_per_bar": 4,
            }
        )
    return items


def chorale_truth(score, quarter_bpm: float) -> tuple[list[float], object] | None:
    """Inner boundaries (s) of an expanded chorale: each repeat pass and what follows it."""
    expanded = score.expandRepeats()
    part = expanded.parts[0]
    measures = list(part.getElementsByClass("Measure"))
    numbers = [m.number for m in measures]
    bounds: set[int] = set()
    for i in range(1, len(numbers)):
        # A jump back is a repeat pass starting (equal numbers are one measure split in two).
        if numbers[i] < numbers[i - 1]:
            start, end = numbers[i], numbers[i - 1]
            bounds.add(i)
            first = numbers.index(start)
            if first > 0:
                bounds.add(first)
            after = next((k for k in range(i, len(numbers)) if numbers[k] > end), None)
            if after is not None:
                bounds.add(after)
    if not bounds:
        return None
    seconds = [float(measures[i].offset) * 60.0 / quarter_bpm for i in sorted(bounds)]
    return seconds, expanded


def chorales(n: int, folder: Path, quarter_bpm: float = 80.0, skip: int = 0) -> list[dict]:
    from music21 import corpus, instrument, tempo

    if shutil.which("fluidsynth") is None or not SOUNDFONT.exists():
        raise SystemExit(
            "--chorales needs fluidsynth and fluid-soundfont-gm (apt-get install fluidsynth fluid-soundfont-gm)"
        )
    import soundfile as sf
    from songmill.annotate.audio import to_mono_resampled

    items = []
    for source in sorted(corpus.getComposer("bach"), key=str):
        if len(items) >= n:
            break
        try:
            score = corpus.parse(source)
        except Exception:  # noqa: BLE001  an unreadable corpus file: skip it
            continue
        if len(score.parts) != 4 or not score.recurse().getElementsByClass("Repeat"):
            continue
        found = chorale_truth(score, quarter_bpm)
        if found is None:
            continue
        if skip > 0:
            skip -= 1
            continue
        truth, expanded = found
        for mark in list(expanded.recurse().getElementsByClass("MetronomeMark")):
            mark.activeSite.remove(mark)
        for part in expanded.parts:
            part.insert(0, instrument.Organ() if len(items) % 2 else instrument.StringInstrument())
        expanded.parts[0].insert(0, tempo.MetronomeMark(number=quarter_bpm))
        stem = folder / f"chorale{len(items):02d}"
        expanded.write("midi", fp=f"{stem}.mid")
        subprocess.run(["fluidsynth", "-ni", "-q", "-g", "0.8", "-r", "44100", "-F", f"{stem}.wav", str(SOUNDFONT), f"{stem}.mid"],
                       check=True, capture_output=True)  # fmt: skip
        audio, sr = sf.read(f"{stem}.wav", dtype="float32", always_2d=True)
        items.append({"name": Path(str(source)).stem, "audio": to_mono_resampled(audio, sr, SR), "truth": truth,
                      "bpm": quarter_bpm, "beats_per_bar": 4})  # fmt: skip
    return items


def baselines(item: dict, duration: float) -> dict[str, list[float]]:
    k = len(item["truth"])
    bar_s = item["beats_per_bar"] * 60.0 / item["bpm"]
    return {
        "even": [duration * (i + 1) / (k + 1) for i in range(k)],
        "bars8": list(np.arange(8 * bar_s, duration - 1e-6, 8 * bar_s)),
    }


def frame_labels(sections: list[dict], duration: float, step: float = 0.5) -> list[str]:
    times = np.arange(0.0, duration, step)
    return [
        next((s["label"] for s in sections if s["start"] <= t < s["end"]), sections[-1]["label"])
        for t in times
    ]


def evaluate(name: str, items: list[dict]) -> None:
    scores: dict[str, dict[float, list[dict]]] = {
        m: {0.5: [], 3.0: []} for m in ("dsp", "even", "bars8")
    }
    audio_s, wall = 0.0, 0.0
    labels: dict[str, list[float]] = {"dsp": [], "all chorus": []}
    for item in items:
        duration = len(item["audio"]) / SR
        started = time.perf_counter()
        sections = dsp_sections(item["audio"], SR, StructureConfig())
        wall += time.perf_counter() - started
        audio_s += duration
        estimates = {"dsp": inner_boundaries(sections), **baselines(item, duration)}
        if "sections" in item:  # labels known: share of 0.5 s frames labelled right
            truth_frames = frame_labels(item["sections"], duration)
            got = frame_labels(sections, duration)
            labels["dsp"].append(np.mean([a == b for a, b in zip(got, truth_frames, strict=True)]))
            labels["all chorus"].append(np.mean([t == "chorus" for t in truth_frames]))
        for method, est in estimates.items():
            for window in (0.5, 3.0):
                scores[method][window].append(boundary_hit_rate(item["truth"], est, window))
    print(
        f"\n{name}: {len(items)} pieces, {audio_s / 60:.1f} min of audio; DSP {audio_s / wall:.0f}x realtime on one core"
    )
    print(
        f"{'method':<8} {'P@0.5':>6} {'R@0.5':>6} {'F@0.5':>6}   {'P@3':>6} {'R@3':>6} {'F@3':>6}"
    )
    for method, by_window in scores.items():
        cells = []
        for window in (0.5, 3.0):
            for key in ("precision", "recall", "f"):
                cells.append(f"{np.mean([s[key] for s in by_window[window]]):6.2f}")
        print(f"{method:<8} {' '.join(cells[:3])}   {' '.join(cells[3:])}")
    if labels["dsp"]:
        print(f"section labels, share of 0.5 s frames right: dsp {np.mean(labels['dsp']):.2f}; "
              f"baseline 'all chorus' (the most common label) {np.mean(labels['all chorus']):.2f}")  # fmt: skip
    f_dsp = np.mean([s["f"] for s in scores["dsp"][3.0]])
    f_even = np.mean([s["f"] for s in scores["even"][3.0]])
    print(f"F@3 s ratio dsp / even baseline: {f_dsp / max(f_even, 1e-9):.2f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--songs", type=int, default=12)
    parser.add_argument(
        "--seed",
        type=int,
        default=1,
        help="synthetic songs' seed (the DSP settings were tuned on other songs)",
    )
    parser.add_argument("--chorales", type=int, default=0)
    parser.add_argument(
        "--skip-chorales",
        type=int,
        default=12,
        help="the first 12 eligible chorales were used to tune the DSP settings",
    )
    args = parser.parse_args(argv)
    dsp_sections(
        np.random.default_rng(0).standard_normal(SR * 20).astype(np.float32) * 0.1,
        SR,
        StructureConfig(),
    )  # JIT warm-up
    if args.songs:
        evaluate(
            f"synthetic songs (testaudio/song_forms.py, seed {args.seed})",
            synthetic_songs(args.songs, args.seed),
        )
    if args.chorales:
        with tempfile.TemporaryDirectory() as tmp:
            evaluate(
                "Bach chorales with repeats (music21 + FluidSynth)",
                chorales(args.chorales, Path(tmp), skip=args.skip_chorales),
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
