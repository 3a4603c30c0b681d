"""`songmill serve` against a real `prefect server start`: a cron schedule fires, the scheduled run
ingests and annotates, and the Prefect client, CLI and UI can read what it did.

This is the test that would have caught issue 8: prefect 3.8.8's scheduler under SQLAlchemy 2.1
never created a run, and fastapi >= 0.151 answered 422 to every client filter call.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import tone, write_audio

BIN = Path(sys.executable).parent
SERVER_START_TIMEOUT_S = 180
# A "* * * * *" schedule fires at the next minute boundary; then the runner polls, spawns the run's
# process, which imports songmill and runs ingest + qc on a few seconds of audio.
FIRST_RUN_TIMEOUT_S = 240


def test_explicit_nulls_in_a_filter_body_mean_defaults():
    """Prefect's client sends `limit: null, sort: null, flow_runs: null` to every /filter endpoint
    and relies on FastAPI reading a JSON null in an embedded body field as "use the default";
    fastapi 0.151 stopped doing so (422). The same parameter shapes as prefect's read_flows."""
    from fastapi import Body, FastAPI
    from fastapi.testclient import TestClient
    from prefect.server.api.dependencies import LimitBody
    from prefect.server.schemas.filters import FlowRunFilter
    from prefect.server.schemas.sorting import FlowSort
    from prefect.settings import PREFECT_SERVER_API_DEFAULT_LIMIT

    app = FastAPI()

    @app.post("/flows/filter")
    def read_flows(
        limit: int = LimitBody(),
        flow_runs: FlowRunFilter = None,
        sort: FlowSort = Body(FlowSort.NAME_ASC),
    ) -> dict:
        return {"limit": limit, "flow_runs": flow_runs is None, "sort": sort.value}

    response = TestClient(app).post(
        "/flows/filter", json={"limit": None, "flow_runs": None, "sort": None}
    )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "limit": PREFECT_SERVER_API_DEFAULT_LIMIT.value(),
        "flow_runs": True,
        "sort": "NAME_ASC",
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _base_env(home: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_LOGGING_LEVEL="INFO",
    )
    return env


def _stop(process: subprocess.Popen) -> None:
    """SIGTERM the process group (the server's uvicorn and services, the runner's flow-run
    processes), SIGKILL what is left after a grace period."""
    if process.poll() is not None:
        return
    for sig, grace in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue


def _tail(path: Path, n: int = 40) -> str:
    return (
        "\n".join(path.read_text(errors="replace").splitlines()[-n:])
        if path.exists()
        else "(no log)"
    )


@dataclass
class PrefectServer:
    url: str  # http://127.0.0.1:PORT
    api_url: str  # .../api
    log: Path


@pytest.fixture
def real_prefect_server(tmp_path) -> Iterator[PrefectServer]:
    """`prefect server start` on a free loopback port with its state (SQLite) in a temporary
    PREFECT_HOME; its process group is stopped at teardown."""
    port = _free_port()
    log = tmp_path / "prefect-server.log"
    env = _base_env(tmp_path / "server-home")
    # New deployments are scheduled by the 5 s "recent deployments" loop; the full loop is for later runs.
    env["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = "10"
    with open(log, "wb") as out:
        process = subprocess.Popen(
            [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    server = PrefectServer(f"http://127.0.0.1:{port}", f"http://127.0.0.1:{port}/api", log)
    try:
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"prefect server start exited with {process.returncode}:\n{_tail(log)}")
            try:
                with urllib.request.urlopen(f"{server.api_url}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"prefect server not healthy after {SERVER_START_TIMEOUT_S} s:\n{_tail(log)}"
                )
            time.sleep(0.5)
        yield server
    finally:
        _stop(process)


def _wait_for_first_run(client, serve_process: subprocess.Popen, serve_log: Path):
    """The first flow run of the songmill-scheduled flow to reach a final state."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName

    flow_filter = FlowFilter(name=FlowFilterName(any_=["songmill-scheduled"]))
    deadline = time.monotonic() + FIRST_RUN_TIMEOUT_S
    while time.monotonic() < deadline:
        if serve_process.poll() is not None:
            pytest.fail(
                f"songmill serve exited with {serve_process.returncode}:\n{_tail(serve_log)}"
            )
        for run in client.read_flow_runs(flow_filter=flow_filter):
            if run.state is not None and run.state.is_final():
                return run
        time.sleep(2)
    pytest.fail(
        f"no scheduled run finished in {FIRST_RUN_TIMEOUT_S} s; songmill serve said:\n{_tail(serve_log)}"
    )


def _wait_until_final(client, run_id, serve_log: Path, timeout_s: float = 120):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        run = client.read_flow_run(run_id)
        if run.state is not None and run.state.is_final():
            return run
        time.sleep(1)
    pytest.fail(
        f"flow run {run_id} not finished in {timeout_s} s; songmill serve said:\n{_tail(serve_log)}"
    )


@pytest.mark.slow
@pytest.mark.prefect
def test_cron_schedule_runs_ingest_and_annotate_on_a_real_server(real_prefect_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterType,
        FlowRunFilter,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from songmill.data_schema.store import Corpus

    source = tmp_path / "incoming"
    for i, suffix in enumerate(["wav", "flac", "wav"]):
        write_audio(source / f"take {i}.{suffix}", tone(3.0, seed=i, freq=220.0 * (i + 1)))
    corpus_root = tmp_path / "corpus"

    serve_log = tmp_path / "songmill-serve.log"
    env = _base_env(tmp_path / "serve-home")
    env.update(PREFECT_API_URL=real_prefect_server.api_url, PREFECT_RUNNER_POLL_FREQUENCY="2")
    with open(serve_log, "wb") as out:
        serve_process = subprocess.Popen(
            [
                str(BIN / "songmill"),
                "serve",
                "--cron",
                "* * * * *",
                "--source",
                str(source),
                "--stages",
                "qc",
                "--corpus",
                str(corpus_root),
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        with (
            temporary_settings({PREFECT_API_URL: real_prefect_server.api_url}),
            get_client(sync_client=True) as client,
        ):
            run = _wait_for_first_run(client, serve_process, serve_log)
            assert run.state.type == StateType.COMPLETED, f"{run.state}:\n{_tail(serve_log)}"
            assert run.deployment_id is not None and run.auto_scheduled, (
                "the run came from the cron schedule"
            )
            deployment = client.read_deployment(run.deployment_id)
            assert deployment.parameters["sources"] == [str(source)] and deployment.parameters[
                "stage_names"
            ] == ["qc"]
            # One run at a time: a run due while another is busy is cancelled, not raced.
            assert deployment.global_concurrency_limit.limit == 1
            assert deployment.concurrency_options.collision_strategy.value == "CANCEL_NEW"

            # The client's filter calls: issue 8 had them answer 422 (`limit: null` in the body).
            completed = client.read_flow_runs(
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(
                        type=FlowRunFilterStateType(any_=[StateType.COMPLETED])
                    )
                )
            )
            assert run.id in {r.id for r in completed}
            progress = client.read_artifacts(
                artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["progress"]))
            )
            # ingest and annotate each publish one progress artifact, left at 100 % when done.
            assert len(progress) >= 2 and all(a.data == pytest.approx(100.0) for a in progress), [
                (a.description, a.data) for a in progress
            ]
            markdown = client.read_artifacts(
                artifact_filter=ArtifactFilter(type=ArtifactFilterType(any_=["markdown"]))
            )
            assert any(a.key == "songmill-throughput" and "qc" in str(a.data) for a in markdown), [
                a.key for a in markdown
            ]

            # The next run finds nothing new: it must neither re-ingest nor re-annotate.
            again = client.create_flow_run_from_deployment(run.deployment_id)
            again = _wait_until_final(client, again.id, serve_log)
            assert again.state.type == StateType.COMPLETED, f"{again.state}:\n{_tail(serve_log)}"

        # The prefect CLI reads the same server (it also sent `limit: null`). Checked while serve
        # still runs: stopping the runner cancels a run whose process has not exited yet.
        ls = subprocess.run(
            [str(BIN / "prefect"), "flow-run", "ls", "--state-type", "COMPLETED"],
            env={**env, "COLUMNS": "300"},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert ls.returncode == 0, ls.stdout + ls.stderr
        assert str(run.id) in ls.stdout and "songmill-scheduled" in ls.stdout, ls.stdout
    finally:
        _stop(serve_process)

    corpus = Corpus(str(corpus_root), create=False)
    uris = sorted(corpus.sql("SELECT uri FROM tracks").column("uri").to_pylist())
    assert [Path(u).name for u in uris] == ["take 0.wav", "take 1.flac", "take 2.wav"]
    qc = corpus.sql("SELECT count(*) AS n, count(loudness_lufs) AS with_loudness FROM qc")
    assert (qc.column("n")[0].as_py(), qc.column("with_loudness")[0].as_py()) == (3, 3)
    written = {
        t: corpus.sql(f"SELECT count(*) AS n FROM raw_{t}").column("n")[0].as_py()
        for t in ("tracks", "qc")
    }
    assert written == {"tracks": 3, "qc": 3}, "the second run wrote rows again"

    # The UI is served at the root.
    with urllib.request.urlopen(real_prefect_server.url + "/", timeout=10) as r:
        assert "<html" in r.read(4096).decode(errors="replace").lower()
    assert "bulk DML" not in real_prefect_server.log.read_text(errors="replace")


@pytest.fixture
def api_url_with_nobody_listening():
    from prefect.settings import PREFECT_API_URL, temporary_settings

    url = f"http://127.0.0.1:{_free_port()}/api"
    with temporary_settings({PREFECT_API_URL: url}):
        yield url


def test_serve_without_a_server_is_one_clear_line(tmp_path, capsys):
    from prefect.settings import PREFECT_API_URL, temporary_settings
    from songmill.flows.cli import main

    with temporary_settings({PREFECT_API_URL: None}):
        assert main(["serve", "--cron", "0 * * * *", "--corpus", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "prefect server start" in err[0] and "PREFECT_API_URL" in err[0], err


def test_serve_with_an_unreachable_server_is_one_clear_line(
    tmp_path, capsys, api_url_with_nobody_listening
):
    from songmill.flows.cli import main

    assert main(["serve", "--cron", "0 * * * *", "--corpus", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and api_url_with_nobody_listening in err[0]
        and "no Prefect server answers" in err[0]
    ), err


def test_serve_rejects_a_bad_cron_before_contacting_the_server(
    tmp_path, capsys, api_url_with_nobody_listening
):
    from songmill.flows.cli import main

    assert main(["serve", "--cron", "every minute", "--corpus", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "'every minute' is not a cron expression" in err[0], err


@pytest.mark.parametrize(
    "bad",
    [
        ["--stages", "qc,no_such_stage"],
        ["--set", "qc.no_such_setting=1"],
        ["--set", "ingest.no_such_setting=1"],
    ],
)
def test_serve_refuses_bad_stages_and_settings_once_not_in_every_run(
    tmp_path, capsys, api_url_with_nobody_listening, bad
):
    from songmill.flows.cli import main

    assert main(["serve", "--cron", "0 * * * *", "--corpus", str(tmp_path / "c"), *bad]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no_such_" in err[0] and "Prefect server" not in err[0], err
