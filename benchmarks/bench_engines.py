"""Executors: the same `annotate --stages qc,music` with each engine, over generated tracks.

    .venv/bin/python benchmarks/bench_engines.py --tracks 300 --seconds 30 --workers 2

Each engine annotates its own copy of the same ingested corpus:
  local          - one process (the baseline)
  prefect        - the Prefect flow, tasks one after another in this process
  dask           - the Prefect flow on a LocalCluster of --workers processes that the run starts
  dask-running   - the same on a cluster already running and warm (the flow connects with --address)
  split          - the ceiling: --workers independent `--engine local` processes, each on its own
                   share of the tracks in a corpus of its own, no orchestration at all (started and
                   imported outside the timed region, BLAS threads capped as Dask's nanny caps them)
Prints wall time, speed-up against `local` and checks that every engine wrote the same qc and
music rows (all columns but run_id / created_at). Targets: dask >= 1.8x with 2 workers on 2 cores;
prefect within 5 % of local. A Prefect server is started once, outside the timed region, as a
deployment has one running already.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def make_tracks(folder: str, n: int, seconds: float) -> None:
    """Distinct clips (gain and offset differ) of a few rendered songs with known tempo and key."""
    import numpy as np
    from songmill.testaudio.synth import render_track, write_track

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    songs = [
        render_track(bpm, tonic, mode, seconds * 3, seed=i)
        for i, (bpm, tonic, mode) in enumerate(
            [(96.0, "A", "minor"), (124.0, "D", "major"), (140.0, "F#", "minor")]
        )
    ]
    hop = int(seconds * 44100)
    for i in range(n):
        base = songs[i % len(songs)]
        start = int(rng.integers(0, base.shape[0] - hop))
        clip = base[start : start + hop] * (0.4 + 0.6 * rng.random())
        write_track(os.path.join(folder, f"t{i:05d}.flac"), clip.astype("float32"))


def result_rows(roots: list[str]) -> dict[str, list[tuple]]:
    from songmill.data_schema.store import Corpus

    out: dict[str, list[tuple]] = {}
    for root in roots:
        corpus = Corpus(root, create=False)
        for table in ("qc", "music"):
            t = corpus.sql(f"SELECT * EXCLUDE (run_id, created_at) FROM {table} ORDER BY track_id")
            out.setdefault(table, []).extend(zip(*(c.to_pylist() for c in t.columns), strict=True))
    return {table: sorted(rows, key=lambda r: r[0]) for table, rows in out.items()}


SPLIT_WORKER = """
import sys, time
from songmill.flows import app
print("ready", flush=True)
sys.stdin.readline()
app.annotate(sys.argv[1], ["qc", "music"], {}, engine="local", show_progress=False)
"""


def split_audio(audio: str, parts: int) -> list[str]:
    """Hard links of the tracks in `parts` folders, dealt round-robin."""
    folders = [f"{audio}-{i}" for i in range(parts)]
    for folder in folders:
        os.makedirs(folder, exist_ok=True)
    for i, name in enumerate(sorted(os.listdir(audio))):
        os.link(os.path.join(audio, name), os.path.join(folders[i % parts], name))
    return folders


def run_split(roots: list[str]) -> float:
    """Wall time of one independent local process per corpus, all started together."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SPLIT_WORKER, root],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=env,
        )
        for root in roots
    ]
    for proc in procs:
        proc.stdout.readline()  # imports done
    t0 = time.perf_counter()
    for proc in procs:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    for proc in procs:
        proc.communicate()
        if proc.returncode:
            raise RuntimeError(f"split worker failed with exit status {proc.returncode}")
    return time.perf_counter() - t0


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tracks", type=int, default=300)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--engines", default="local,prefect,dask,dask-running,split")
    args = parser.parse_args()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]

    work = tempfile.mkdtemp(prefix="songmill-bench-engines-")
    os.environ["PREFECT_HOME"] = os.path.join(work, "prefect")
    from songmill.flows.prefect_env import configure_prefect

    configure_prefect()
    from prefect.server.api.server import SubprocessASGIServer
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from songmill.flows import app

    cluster = None
    try:
        audio = os.path.join(work, "audio")
        print(f"generating {args.tracks} tracks of {args.seconds:.0f} s ...", flush=True)
        make_tracks(audio, args.tracks, args.seconds)
        roots = {e: [os.path.join(work, e)] for e in engines if e != "split"}
        for (root,) in roots.values():
            app.ingest(root, [audio], engine="local", show_progress=False)
        if "split" in engines:
            roots["split"] = [os.path.join(work, f"split-{i}") for i in range(args.workers)]
            for root, folder in zip(roots["split"], split_audio(audio, args.workers), strict=True):
                app.ingest(root, [folder], engine="local", show_progress=False)
        server = SubprocessASGIServer()
        server.start(timeout=180)
        if "dask-running" in engines:
            from distributed import LocalCluster

            cluster = LocalCluster(
                n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=":0"
            )

        timings = {}
        with temporary_settings({PREFECT_API_URL: server.api_url}):
            # Warm-up outside the timed region: this process's imports and the running cluster's
            # workers (a cluster that serves many runs has imported songmill and set its stages up).
            warm = os.path.join(work, "warm")
            make_tracks(os.path.join(work, "warm-audio"), 4 * args.workers, args.seconds)
            for engine in engines:
                if engine in ("local", "dask-running"):
                    kwargs = (
                        {"engine": "dask", "address": cluster.scheduler_address}
                        if engine == "dask-running"
                        else {"engine": "local"}
                    )
                    shutil.rmtree(warm, ignore_errors=True)
                    app.ingest(
                        warm,
                        [os.path.join(work, "warm-audio")],
                        engine="local",
                        show_progress=False,
                    )
                    app.annotate(warm, ["qc", "music"], {}, show_progress=False, **kwargs)
            for engine in engines:
                if engine == "split":
                    timings[engine] = run_split(roots[engine])
                    print(f"  {engine:13s} {timings[engine]:8.1f} s", flush=True)
                    continue
                kwargs = {"engine": engine, "workers": args.workers}
                if engine == "dask-running":
                    kwargs = {"engine": "dask", "address": cluster.scheduler_address}
                t0 = time.perf_counter()
                summaries = app.annotate(
                    roots[engine][0], ["qc", "music"], {}, show_progress=False, **kwargs
                )
                timings[engine] = time.perf_counter() - t0
                ok = {s.stage: s.n_ok for s in summaries}
                print(f"  {engine:13s} {timings[engine]:8.1f} s  {ok}", flush=True)

        from songmill.data_schema.store import Corpus

        # Seconds the stages spent on tracks, summed over processes: equal per engine unless the
        # workers were starved of CPU (a shared machine) or did extra work.
        core_s = {
            e: sum(
                Corpus(r)
                .sql("SELECT sum(wall_s) AS s FROM runs WHERE stage IN ('qc', 'music')")
                .column("s")[0]
                .as_py()
                for r in rs
            )
            for e, rs in roots.items()
        }
        reference = result_rows(roots[engines[0]])
        same = {e: result_rows(r) == reference for e, r in roots.items()}
        base = timings.get("local", timings[engines[0]])
        audio_s = args.tracks * args.seconds
        print(
            f"\n{args.tracks} tracks x {args.seconds:.0f} s, qc + music, {args.workers} dask workers, {os.cpu_count()} cores"
        )
        print(
            f"{'engine':14s} {'wall s':>8s} {'x realtime':>11s} {'vs local':>9s} {'stage core s':>13s}  rows identical"
        )
        for engine in engines:
            wall = timings[engine]
            print(
                f"{engine:14s} {wall:8.1f} {audio_s / wall:11.0f} {base / wall:8.2f}x {core_s[engine]:13.1f}  {same[engine]}"
            )
        for engine in engines:
            if not same[engine]:  # say what differs: row counts, raw rows, or values
                got = result_rows(roots[engine])
                for table in reference:
                    raw = sum(
                        Corpus(r)
                        .sql(f"SELECT count(*) AS n FROM raw_{table}")
                        .column("n")[0]
                        .as_py()
                        for r in roots[engine]
                    )
                    differing = sum(
                        1 for a, b in zip(reference[table], got[table], strict=False) if a != b
                    )
                    print(
                        f"  {engine} {table}: {len(got[table])} rows ({raw} raw) vs {len(reference[table])}, {differing} differ"
                    )
        if "split" in timings:
            for engine in ("dask", "dask-running"):
                if engine in timings:
                    print(
                        f"{engine} reaches {timings['split'] / timings[engine]:.0%} of the split ceiling's speed"
                    )
        if "prefect" in timings and "local" in timings:
            print(
                f"prefect overhead vs local: {100 * (timings['prefect'] / timings['local'] - 1):+.1f} %"
            )
    finally:
        if cluster is not None:
            cluster.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
