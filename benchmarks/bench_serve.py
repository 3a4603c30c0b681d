"""`songmill serve` against the baseline it replaces: crontab running the CLI.

    .venv/bin/python benchmarks/bench_serve.py --tracks 24 --seconds 10 --stages qc,music

One real `prefect server start` (loopback, temporary PREFECT_HOME) serves both sides, on the same
generated folder, each into its own corpus:
  cli       - `songmill ingest SRC` then `songmill annotate --stages ...`, two processes, as a crontab
              line would run them (timed from launch to exit)
  scheduled - `songmill serve --cron "* * * * *" --source SRC --stages ...`: the first scheduled run,
              timed by the server from its scheduled time to its end (so it includes the runner's
              polling and the child process's start-up), and its own start -> end; the runner
              starts a due run's process up to PREFECT_RUNNER_PREFETCH_SECONDS early, so the lag
              from due to running is about zero
Prints each, the ratios scheduled / cli, and checks both corpora hold the same tracks and rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

BIN = os.path.dirname(sys.executable)


def make_source(folder: str, n: int, seconds: float) -> None:
    import numpy as np
    from songmill.testaudio.synth import render_track, write_track

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(0)
    keys = ["C", "D", "E", "F#", "A"]
    for i in range(n):
        audio = render_track(
            float(rng.integers(70, 160)),
            keys[i % len(keys)],
            "minor" if i % 2 else "major",
            seconds,
            seed=i,
        )
        write_track(os.path.join(folder, f"t{i:04d}.flac"), audio.astype("float32"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stop(process: subprocess.Popen) -> None:
    for sig, grace in ((signal.SIGTERM, 30), (signal.SIGKILL, 10)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=grace)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def wait_healthy(api_url: str, process: subprocess.Popen, timeout_s: float = 180) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit("prefect server start exited")
        try:
            with urllib.request.urlopen(api_url + "/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise SystemExit("prefect server did not become healthy")


def counts(corpus_root: str, stages: list[str]) -> dict[str, int]:
    from songmill.data_schema.store import Corpus

    corpus = Corpus(corpus_root, create=False)
    return {
        t: corpus.sql(f"SELECT count(*) AS n FROM {t}").column("n")[0].as_py()
        for t in ["tracks", *stages]
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tracks", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--stages", default="qc,music")
    args = parser.parse_args()
    stages = args.stages.split(",")

    work = tempfile.mkdtemp(prefix="songmill-bench-serve-")
    source = os.path.join(work, "incoming")
    print(f"generating {args.tracks} tracks of {args.seconds:.0f} s ...", flush=True)
    make_source(source, args.tracks, args.seconds)
    port = free_port()
    api_url = f"http://127.0.0.1:{port}/api"
    base_env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    server_env = {
        **base_env,
        "PREFECT_HOME": os.path.join(work, "server"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    client_env = {
        **base_env,
        "PREFECT_HOME": os.path.join(work, "client"),
        "PREFECT_API_URL": api_url,
        "PREFECT_RUNNER_POLL_FREQUENCY": "2",
    }
    log = open(os.path.join(work, "server.log"), "wb")
    server = subprocess.Popen(
        [
            os.path.join(BIN, "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=server_env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    serve = None
    try:
        wait_healthy(api_url, server)
        songmill = os.path.join(BIN, "songmill")

        cli_corpus = os.path.join(work, "cli")
        t0 = time.perf_counter()
        for cmd in (["ingest", source], ["annotate", "--stages", args.stages]):
            subprocess.run(
                [songmill, *cmd, "--corpus", cli_corpus, "--quiet"],
                env=client_env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
        cli_s = time.perf_counter() - t0

        served_corpus = os.path.join(work, "served")
        serve_log = os.path.join(work, "serve.log")
        with open(serve_log, "wb") as out:
            serve = subprocess.Popen(
                [
                    songmill,
                    "serve",
                    "--cron",
                    "* * * * *",
                    "--source",
                    source,
                    "--stages",
                    args.stages,
                    "--corpus",
                    served_corpus,
                ],
                env=client_env,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        from prefect.client.orchestration import get_client
        from prefect.client.schemas.filters import FlowFilter, FlowFilterName
        from prefect.settings import PREFECT_API_URL, temporary_settings

        print("waiting for the first scheduled run (the next minute boundary) ...", flush=True)
        with temporary_settings({PREFECT_API_URL: api_url}), get_client(sync_client=True) as client:
            run = None
            deadline = time.monotonic() + 300
            while run is None and time.monotonic() < deadline:
                if serve.poll() is not None:
                    raise SystemExit(f"songmill serve exited; see {serve_log}")
                done = [
                    r
                    for r in client.read_flow_runs(
                        flow_filter=FlowFilter(name=FlowFilterName(any_=["songmill-scheduled"]))
                    )
                    if r.state and r.state.is_final()
                ]
                run = done[0] if done else None
                time.sleep(1)
            if run is None or not run.state.is_completed():
                raise SystemExit(
                    f"no completed scheduled run ({run and run.state}); see {serve_log}"
                )
        stop(serve)
        scheduled_total_s = (run.end_time - run.expected_start_time).total_seconds()
        scheduled_run_s = (run.end_time - run.start_time).total_seconds()
        lag_s = (run.start_time - run.expected_start_time).total_seconds()

        cli_counts, served_counts = counts(cli_corpus, stages), counts(served_corpus, stages)
        print(f"\n{args.tracks} tracks x {args.seconds:.0f} s, stages {args.stages}")
        print(f"  cli (ingest + annotate processes)      {cli_s:7.1f} s   1.00")
        print(
            f"  scheduled, due -> end                  {scheduled_total_s:7.1f} s   {scheduled_total_s / cli_s:.2f}"
        )
        print(
            f"  scheduled, run start -> end            {scheduled_run_s:7.1f} s   {scheduled_run_s / cli_s:.2f}"
        )
        print(f"  scheduled start lag (due -> running)   {lag_s:+7.1f} s")
        print(
            f"  rows cli {cli_counts} / scheduled {served_counts}: {'same' if cli_counts == served_counts else 'DIFFERENT'}"
        )
    finally:
        if serve is not None:
            stop(serve)
        stop(server)
        log.close()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
