"""Resemblyzer speaker embeddings (features stage, `speaker = "resemblyzer"`): x realtime per core of
the bare encoder against the stage's embedder (Resemblyzer's preprocessing: volume, WebRTC VAD),
and how well one espeak-ng voice is told from others, sung over a band and alone, in one run.

    .venv/bin/python benchmarks/bench_speaker.py [--voices 6] [--clips 4] [--vocal-db 0]

Each voice sings `--clips` different generated lyrics (testaudio/sung.py). Reported: mean cosine
similarity of same-voice pairs and of different-voice pairs, and nearest-neighbour accuracy
(the most similar other clip is the same voice), on the clean voice (a perfect vocal stem) and
on the mix with the band (no separation); baseline: the same scores for a plain mean log-mel
vector (40 bands) in place of the embedding.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from songmill.annotate.audio import resample, to_mono_resampled  # noqa: E402
from songmill.annotate.packaged_weights import assemble  # noqa: E402
from songmill.annotate.speaker import ResemblyzerEmbedder  # noqa: E402
from songmill.model.voice_encoder import embed_utterance, mel_frames  # noqa: E402
from songmill.testaudio.sung import generate_lyrics, mix_vocals, sing  # noqa: E402
from songmill.testaudio.synth import render_track  # noqa: E402

VOICES = (
    "en-us",
    "en-us+f3",
    "en-us+klatt",
    "en-us+m7",
    "en-us+f5",
    "en-us+croak",
    "en-us+whisper",
    "en-us+m1",
)


def scores(vectors: np.ndarray, labels: list[str]) -> tuple[float, float, float]:
    unit = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    sim = unit @ unit.T
    same = np.equal.outer(labels, labels)
    off = ~np.eye(len(labels), dtype=bool)
    np.fill_diagonal(sim, -np.inf)
    nearest = np.mean([labels[int(np.argmax(row))] == labels[i] for i, row in enumerate(sim)])
    np.fill_diagonal(sim, 1.0)
    return float(sim[same & off].mean()), float(sim[~same].mean()), float(nearest)


def log_mel_mean(wav: np.ndarray) -> np.ndarray:
    mel = np.log(mel_frames(wav) + 1e-6)
    return mel.mean(0) - mel.mean()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--voices", type=int, default=6)
    parser.add_argument("--clips", type=int, default=4)
    parser.add_argument("--vocal-db", type=float, default=0.0)
    args = parser.parse_args()
    embedder = ResemblyzerEmbedder(assemble("resemblyzer"))
    import torch

    threads = torch.get_num_threads()
    texts = generate_lyrics(args.clips, seed=3, lines=(3, 4))
    clean, mixed, labels = [], [], []
    for v in VOICES[: args.voices]:
        for k, text in enumerate(texts):
            voice, sr = sing(text, seed=k, voice=v)
            music = render_track(100.0, "D", "minor", voice.size / sr + 2.0, seed=k, style="pop")
            mix = mix_vocals(voice, sr, music, 44100, vocal_to_music_db=args.vocal_db, start_s=1.0)
            clean.append(resample(voice, sr, 16000))
            mixed.append(to_mono_resampled(mix, 44100, 16000))
            labels.append(v)
    audio_s = sum(c.size for c in clean) / 16000
    start = time.perf_counter()
    prepared = [embedder.preprocess(c) for c in clean]
    prep_s = time.perf_counter() - start
    start = time.perf_counter()
    bare = np.stack([embed_utterance(embedder.model, w) for w in prepared])
    bare_s = time.perf_counter() - start
    start = time.perf_counter()
    staged = np.stack([embedder.embed(c) for c in clean])
    stage_s = time.perf_counter() - start
    on_mix = np.stack([embedder.embed(m) for m in mixed])
    print(
        f"{len(clean)} clips, {args.voices} voices, {audio_s:.0f} s of voice, {threads} torch threads"
    )
    print(f"bare encoder {audio_s / bare_s / threads:.0f}x realtime per core; stage embedder (volume + VAD + encoder) "
          f"{audio_s / stage_s / threads:.0f}x per core; preprocessing {100 * prep_s / stage_s:.0f} % of it")  # fmt: skip
    print("\ninput | features | same-voice cos | other-voice cos | nearest clip same voice")
    print("---|---|---|---|---")
    for name, audio, vectors in (
        ("clean voice", clean, staged),
        (f"mix, vocals {args.vocal_db:+.0f} dB", mixed, on_mix),
    ):
        for feature, vec in (
            ("Resemblyzer", vectors),
            ("mean log-mel (baseline)", np.stack([log_mel_mean(a) for a in audio])),
        ):
            same, other, nearest = scores(vec, labels)
            print(f"{name} | {feature} | {same:.3f} | {other:.3f} | {nearest:.2f}")
    np.testing.assert_allclose(bare, staged, atol=1e-5)


if __name__ == "__main__":
    main()
