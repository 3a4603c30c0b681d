"""Aesthetics throughput: x realtime per core with the real-size Audiobox Aesthetics model
(AesMultiOutput with the release's WavLM config, random weights), batched vs a same-run baseline.

  baseline    one track at a time, one 10 s window per forward pass (what a per-file loop over
              the model does);
  production  AestheticsStage.scores: the windows of every track of a batch stacked,
              `--window-batch` windows per forward pass.

The tracks are audio decoded from the files given (or synthetic tracks from testaudio/synth.py when
none are), 16 kHz mono. Prints x realtime per core (audio seconds / wall seconds / threads) for
both and their ratio, and checks both give the same scores. On a GPU (`--device cuda`) the stage
runs in bf16, as it does in production.

    .venv/bin/python benchmarks/bench_aesthetics.py [--tracks 4] [--seconds 25] [--threads 1] [FILES...]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def load_tracks(files: list[str], n: int, seconds: float) -> list[np.ndarray]:
    from songmill.annotate.audio import decode, to_mono_resampled

    if files:
        return [to_mono_resampled(*decode(f), 16000)[: int(seconds * 16000)] for f in files[:n]]
    from songmill.testaudio.synth import STYLES, render_track

    return [
        to_mono_resampled(
            render_track(100 + 7 * i, "A", "minor", seconds, seed=i, style=STYLES[i % len(STYLES)]),
            44100,
            16000,
        )
        for i in range(n)
    ]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("files", nargs="*")
    parser.add_argument("--tracks", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=25.0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--window-batch", type=int, default=8)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)

    import torch
    from songmill.annotate.aesthetics import (
        AXES,
        AestheticsConfig,
        AestheticsStage,
        build_model,
        save_model,
    )

    torch.set_num_threads(args.threads)
    tracks = load_tracks(args.files, args.tracks, args.seconds)
    audio_s = sum(len(t) for t in tracks) / 16000
    with tempfile.TemporaryDirectory() as tmp:
        torch.manual_seed(0)
        model = build_model({"target_transform": {a: {"mean": 5.0, "std": 1.5} for a in AXES}})
        print(
            f"AesMultiOutput (release size): {sum(p.numel() for p in model.parameters()) / 1e6:.1f} M parameters, random weights"
        )
        save_model(model, tmp)
        del model
        stage = AestheticsStage(
            AestheticsConfig(
                model=tmp, device=args.device, window_batch=args.window_batch, max_windows=0
            )
        )
        stage.setup()
        stage.scores([tracks[0][:16000]])  # warm-up

        started = time.perf_counter()
        baseline = []
        stage.config.window_batch = 1
        for track in tracks:
            baseline.append(stage.scores([track])[0])
        base_wall = time.perf_counter() - started

        stage.config.window_batch = args.window_batch
        started = time.perf_counter()
        batched = stage.scores(tracks)
        prod_wall = time.perf_counter() - started
    worst = max(
        abs(b[a][0] - p[a][0]) for b, p in zip(baseline, batched, strict=True) for a in AXES
    )
    cores = args.threads if args.device == "cpu" else 1
    base_x = audio_s / base_wall / cores
    prod_x = audio_s / prod_wall / cores
    windows = sum(int(np.ceil(len(t) / 160000)) for t in tracks)
    print(
        f"{len(tracks)} tracks, {audio_s:.0f} s of audio, {windows} windows of 10 s, {args.threads} thread(s), {args.device}"
    )
    print(
        f"baseline   (one window per pass): {base_x:7.2f} x realtime per core  ({base_wall:.1f} s)"
    )
    print(
        f"production (batch {args.window_batch:>2} windows):   {prod_x:7.2f} x realtime per core  ({prod_wall:.1f} s)"
    )
    print(
        f"ratio production / baseline: {prod_x / base_x:.2f}; largest score difference {worst:.2e}"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
