"""--engine dask: the Prefect flows on prefect-dask's DaskTaskRunner over real worker processes.

A 2-process LocalCluster (one single-threaded worker per core), a worker killed mid-run, and an
existing cluster started with the `dask scheduler` / `dask worker` commands the README documents,
with one CPU worker and one `--resources GPU=1` worker.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
import songmill.annotate as annotate
from conftest import rows, tone, write_audio
from songmill.data_schema.store import TMP_PREFIX, Corpus
from songmill.flows import app
from songmill.flows.executors import ExecutorError

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

TESTS = os.path.dirname(os.path.abspath(__file__))
LEVEL_COLUMNS = "track_id, rms, gain, stage_version, config_hash"


@pytest.fixture
def worker_env(monkeypatch):
    # Worker processes are spawned fresh: they find the test stages through PYTHONPATH.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(p for p in (TESTS, os.environ.get("PYTHONPATH")) if p)
    )
    for name, cls in (
        ("test_level", "LevelStage"),
        ("test_worker", "WorkerStage"),
        ("test_gpu_worker", "GpuWorkerStage"),
    ):
        monkeypatch.setitem(annotate.STAGE_CLASSES, name, f"stages_for_tests:{cls}")


def _sources(folder, n: int) -> str:
    for i in range(n):
        write_audio(folder / f"t{i:02d}.wav", tone(0.4, amp=0.02 * (i + 1), seed=i))
    write_audio(
        folder / "broken_take.wav", tone(0.4, seed=99)
    )  # LevelStage refuses it: an errors row
    return str(folder)


def _no_partial_files(corpus: Corpus, table: str) -> bool:
    return not any(name.startswith(TMP_PREFIX) for name in os.listdir(corpus.table_dir(table)))


def test_dask_ingest_and_annotate_equal_local_run_one_setup_per_worker(
    prefect_server, tmp_path, worker_env
):
    src = _sources(tmp_path / "src", 8)
    local, dask = str(tmp_path / "local"), str(tmp_path / "dask")
    app.ingest(local, [src], engine="local")
    summary = app.ingest(
        dask, [src], {"ingest": {"batch_size": 2}}, engine="dask", workers=2, show_progress=False
    )
    assert (summary.new_tracks, summary.errors) == (9, 0)
    assert rows(Corpus(dask), "SELECT track_id, uri, duration_s FROM tracks ORDER BY 1") == rows(
        Corpus(local), "SELECT track_id, uri, duration_s FROM tracks ORDER BY 1"
    )

    settings = {"runner": {"batch_size": 1}}
    app.annotate(local, ["test_level", "test_worker"], settings, engine="local")
    summaries = app.annotate(
        dask, ["test_level", "test_worker"], settings, engine="dask", workers=2, show_progress=False
    )
    assert [(s.stage, s.n_ok, s.n_error) for s in summaries] == [
        ("test_level", 8, 1),
        ("test_worker", 9, 0),
    ]
    query = f"SELECT {LEVEL_COLUMNS} FROM test_level ORDER BY 1"
    assert rows(Corpus(dask), query) == rows(Corpus(local), query)
    assert rows(Corpus(dask), "SELECT stage, error_type FROM errors") == [
        ("test_level", "ValueError")
    ]
    # Nine one-track batches fanned out over both worker processes, and each process set the
    # stage up once however many tasks it ran.
    per_pid = rows(Corpus(dask), "SELECT pid, max(setups), count(*) FROM test_worker GROUP BY pid")
    assert len(per_pid) == 2 and all(setups == 1 for _, setups, _ in per_pid), per_pid
    assert os.getpid() not in {pid for pid, _, _ in per_pid}
    # runs: one row per stage, and the throughput report reads them
    report = {r["stage"]: r for r in app.runs(dask).to_pylist()}
    assert report["test_level"]["tracks_done"] == 8 and report["test_worker"]["tracks_done"] == 9


def test_worker_killed_mid_run_still_completes_without_duplicates(
    prefect_server, tmp_path, worker_env
):
    src = _sources(tmp_path / "src", 10)
    killed, clean = str(tmp_path / "killed"), str(tmp_path / "clean")
    for root in (killed, clean):
        app.ingest(root, [src], engine="local")
    marker = tmp_path / "killed-once"
    # batch_size 1: each task holds two batches, and the kill lands on a process's second
    # track, so the dying task has already written one batch that its re-run must not repeat.
    settings = {
        "runner": {"batch_size": 1},
        "test_worker": {"kill_marker": str(marker), "kill_after": 2},
    }
    summaries = app.annotate(
        killed,
        ["test_level", "test_worker"],
        settings,
        engine="dask",
        workers=2,
        show_progress=False,
    )
    assert marker.exists(), "a worker process must have been killed"
    assert [(s.stage, s.n_ok) for s in summaries] == [("test_level", 10), ("test_worker", 11)]

    app.annotate(
        clean, ["test_level", "test_worker"], {"runner": {"batch_size": 1}}, engine="local"
    )
    query = f"SELECT {LEVEL_COLUMNS} FROM test_level ORDER BY 1"
    k, c = Corpus(killed), Corpus(clean)
    assert rows(k, query) == rows(c, query)
    assert rows(k, "SELECT count(*) FROM raw_test_level") == [(10,)]  # no duplicate rows
    assert rows(k, "SELECT count(*) FROM raw_test_worker") == [(11,)]
    assert rows(k, "SELECT count(*) FROM raw_errors") == [(1,)]
    assert (
        len({pid for (pid,) in rows(k, "SELECT pid FROM test_worker")}) >= 2
    )  # a restarted process took over
    assert all(_no_partial_files(k, t) for t in ("test_level", "test_worker", "errors"))
    # and a re-run finds nothing left to do
    again = app.annotate(killed, ["test_level", "test_worker"], settings, engine="local")
    assert [s.n_input for s in again] == [0, 0]


def _start(args: list[str], log) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "dask", *args],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=os.environ.copy(),
    )


def _wait_for_workers(address: str, n: int, timeout: float = 120) -> dict[int, dict]:
    """worker pid -> its resources, once `n` workers are connected."""
    from distributed import Client

    with Client(address, timeout="30s") as client:
        client.wait_for_workers(n, timeout=timeout)
        pids = client.run(os.getpid)
        info = client.scheduler_info(n_workers=-1)["workers"]
        return {pids[addr]: info[addr].get("resources", {}) for addr in pids}


def test_existing_cluster_puts_gpu_stages_on_gpu_workers_only(prefect_server, tmp_path, worker_env):
    root = str(tmp_path / "corpus")
    app.ingest(root, [_sources(tmp_path / "src", 8)], engine="local")
    scheduler_file = str(tmp_path / "scheduler.json")
    procs = []
    with open(tmp_path / "dask.log", "wb") as log:
        try:
            procs.append(
                _start(
                    [
                        "scheduler",
                        "--scheduler-file",
                        scheduler_file,
                        "--port",
                        "0",
                        "--dashboard-address",
                        ":0",
                    ],
                    log,
                )
            )
            deadline = time.time() + 60
            while not os.path.exists(scheduler_file) and time.time() < deadline:
                time.sleep(0.2)
            address = json.load(open(scheduler_file))["address"]
            worker = [
                "worker",
                "--scheduler-file",
                scheduler_file,
                "--nthreads",
                "1",
                "--no-nanny",
                "--dashboard-address",
                ":0",
            ]
            procs.append(_start(worker, log))
            _wait_for_workers(address, 1)

            # No worker declares a GPU: refused up front with the command that fixes it.
            with pytest.raises(ExecutorError, match="--resources GPU=1"):
                app.annotate(
                    root, ["test_worker", "test_gpu_worker"], {}, engine="dask", address=address
                )

            procs.append(_start([*worker, "--resources", "GPU=1"], log))
            workers = _wait_for_workers(address, 2)
            gpu_pids = {pid for pid, resources in workers.items() if resources.get("GPU")}
            assert len(gpu_pids) == 1
            settings = {"runner": {"batch_size": 1}}
            summaries = app.annotate(
                root,
                ["test_worker", "test_gpu_worker"],
                settings,
                engine="dask",
                address=address,
                show_progress=False,
            )
            assert [(s.stage, s.n_ok) for s in summaries] == [
                ("test_worker", 9),
                ("test_gpu_worker", 9),
            ]
        finally:
            for p in procs[::-1]:
                p.kill()
                p.wait(timeout=30)
    corpus = Corpus(root)
    assert {pid for (pid,) in rows(corpus, "SELECT DISTINCT pid FROM test_gpu_worker")} == gpu_pids
    assert (
        len(rows(corpus, "SELECT DISTINCT pid FROM test_worker")) == 2
    )  # CPU stages use every worker
