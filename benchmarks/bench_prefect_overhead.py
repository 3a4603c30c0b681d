"""Prefect overhead: the annotate flow against the same stage calls in one process.

    .venv/bin/python benchmarks/bench_prefect_overhead.py --tracks 1000 --seconds 2

Three timings over the same generated corpus (qc + music on every track):
  bare    - decode + QCStage.process + MusicStage.process per batch, nothing written
  runner  - annotate.runner.run_stages in-process (plans, writes Parquet parts, errors, runs)
  prefect - flows.pipeline.annotate_flow (the same, one Prefect task per batch)
and the overhead of each against `bare` (target for prefect: <= 5 %).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from songmill.flows.prefect_env import configure_prefect, foreground_run  # noqa: E402


def _foreground(flow_fn, *args, **kwargs):
    """As `songmill annotate` runs the flow (see flows.prefect_env.foreground_run)."""
    with foreground_run():
        return flow_fn(*args, **kwargs)


def make_corpus(folder: str, n: int, seconds: float) -> None:
    import numpy as np
    from songmill.testaudio.synth import render_track, write_track

    os.makedirs(folder, exist_ok=True)
    base = render_track(120.0, "A", "minor", seconds * 4, seed=1)
    rng = np.random.default_rng(0)
    hop = int(seconds * 44100)
    for i in range(n):
        start = int(rng.integers(0, base.shape[0] - hop))
        clip = base[start : start + hop] * (0.5 + 0.5 * rng.random())  # distinct bytes per track
        write_track(os.path.join(folder, f"t{i:05d}.flac"), clip.astype("float32"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tracks", type=int, default=1000)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()

    work = tempfile.mkdtemp(prefix="songmill-bench-prefect-")
    os.environ["PREFECT_HOME"] = os.path.join(work, "prefect")
    configure_prefect()
    from songmill.annotate.base import Track
    from songmill.annotate.ingest import ingest
    from songmill.annotate.music import MusicStage
    from songmill.annotate.qc import QCStage
    from songmill.annotate.runner import run_stages
    from songmill.data_schema.store import Corpus
    from songmill.flows.pipeline import annotate_flow

    try:
        audio = os.path.join(work, "audio")
        print(f"generating {args.tracks} tracks of {args.seconds:.0f} s ...", flush=True)
        make_corpus(audio, args.tracks, args.seconds)
        corpora = {
            f"{name}{i}": Corpus(os.path.join(work, f"{name}{i}"))
            for name in ("runner", "prefect")
            for i in range(args.repeats)
        }
        for c in corpora.values():
            ingest(c, [audio])
        rows = corpora["runner0"].sql("SELECT * FROM tracks ORDER BY track_id").to_pylist()

        # Warm the Prefect server, imports and essentia outside the timed region (a real
        # deployment has a server running already).
        annotate_flow(corpora["prefect0"].root, [], {}, show_progress=False)
        stages = [QCStage(), MusicStage()]
        for s in stages:
            s.setup()
            s.process([Track(r) for r in rows[:4]])

        def bare_run() -> None:
            for start in range(0, len(rows), args.batch_size):
                tracks = [Track(r) for r in rows[start : start + args.batch_size]]
                for s in stages:
                    s.process(tracks)

        # Interleaved repeats, best of each: the machine is noisy.
        timings: dict[str, list[float]] = {"bare": [], "runner": [], "prefect": []}
        for i in range(args.repeats):
            for name, call in (
                ("bare", bare_run),
                (
                    "runner",
                    lambda i=i: run_stages(
                        corpora[f"runner{i}"], [QCStage(), MusicStage()], batch_size=args.batch_size
                    ),
                ),
                (
                    "prefect",
                    lambda i=i: _foreground(
                        annotate_flow,
                        corpora[f"prefect{i}"].root,
                        ["qc", "music"],
                        {},
                        batch_size=args.batch_size,
                        show_progress=False,
                    ),
                ),
            ):
                t0 = time.perf_counter()
                call()
                timings[name].append(time.perf_counter() - t0)
        bare, runner, prefect = (min(timings[k]) for k in ("bare", "runner", "prefect"))

        audio_s = args.tracks * args.seconds
        print(f"\n{args.tracks} tracks x {args.seconds:.0f} s, batch {args.batch_size}")
        print(f"{'path':10s} {'wall s':>8s} {'x realtime':>11s} {'overhead vs bare':>17s}")
        for name, wall in (("bare", bare), ("runner", runner), ("prefect", prefect)):
            print(
                f"{name:10s} {wall:8.2f} {audio_s / wall:11.0f} {100 * (wall / bare - 1):+16.1f}%"
            )
        print(f"prefect vs runner: {100 * (prefect / runner - 1):+.1f}%")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
