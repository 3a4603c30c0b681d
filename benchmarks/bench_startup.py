"""Start-up cost of a one-off CLI command: `songmill ingest` of 3 small files, each in a fresh
process, on the default engine (no Prefect server configured: in-process now) against
`--engine prefect` (Prefect's temporary server, on a new corpus and on one that exists), idle and
with every core busy (one busy-loop process per core, stopped after the run).

    .venv/bin/python benchmarks/bench_startup.py [--repeats 1]

Prints wall seconds, the exit code and the ratio against `--engine local` measured in the same run.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import soundfile as sf


def _spin(seconds: float) -> None:
    end = time.time() + seconds
    x = 0
    while time.time() < end:
        x += 1


@contextlib.contextmanager
def busy_cores(seconds: float = 300.0):
    """One busy-loop process per core, each ending by itself after `seconds` at most."""
    procs = [
        multiprocessing.Process(target=_spin, args=(seconds,), daemon=True)
        for _ in range(os.cpu_count() or 1)
    ]
    for p in procs:
        p.start()
    try:
        yield
    finally:
        for p in procs:
            p.terminate()
            p.join()


def write_sources(folder: str, n: int = 3) -> str:
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    for i in range(n):
        sf.write(
            os.path.join(folder, f"s{i}.wav"),
            (0.1 * rng.standard_normal((44100 * 3, 2))).astype("float32"),
            44100,
        )
    return folder


def run_ingest(
    corpus: str, sources: str, engine: str | None, prefect_home: str
) -> tuple[float, int, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env["PREFECT_HOME"] = prefect_home  # a home with no profile: no server configured
    cmd = [
        sys.executable,
        "-m",
        "songmill.flows.cli",
        "ingest",
        sources,
        "--corpus",
        corpus,
        "--quiet",
    ]
    if engine:
        cmd += ["--engine", engine]
    started = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
    return (
        time.perf_counter() - started,
        done.returncode,
        (done.stderr.strip().splitlines() or [""])[-1][:120],
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=1)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="bench-startup-")
    sources = write_sources(os.path.join(work, "src"))
    modes = [
        ("local", "local"),
        ("default", None),
        ("prefect, new corpus", "prefect"),
        ("prefect, same corpus again", "prefect"),
    ]
    print(f"{'load':<7} {'engine':<28} {'wall s':>7} {'rc':>3} {'x local':>8}  last stderr line")
    for load in ("idle", "busy"):
        with busy_cores() if load == "busy" else contextlib.nullcontext():
            for r in range(args.repeats):
                base = None
                shared = os.path.join(work, f"{load}-{r}-prefect")
                for label, engine in modes:
                    corpus = (
                        shared if engine == "prefect" else os.path.join(work, f"{load}-{r}-{label}")
                    )
                    home = os.path.join(
                        work, f"home-{load}-{r}-{engine if engine == 'prefect' else label}"
                    )
                    wall, rc, err = run_ingest(corpus, sources, engine, home)
                    base = base or wall
                    print(
                        f"{load:<7} {label:<28} {wall:7.1f} {rc:3d} {wall / base:8.1f}  {err}",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
