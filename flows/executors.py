"""Where jobs run: `local` (this process), `prefect` (a Prefect flow, one task per batch group, in
this process) and `dask` (the same flow on prefect-dask's DaskTaskRunner: a LocalCluster with one
single-threaded worker process per core, or an existing cluster at `address`).

Jobs (flows/jobs.py) are the same for all three; tasks carry the picklable job and its batch
groups, and each worker process keeps its stages set up between tasks. GPU stages form their own
job whose tasks need the Dask resource `GPU` (`dask worker ADDRESS --resources GPU=1`), so on a
cluster they run only on GPU workers while CPU stages fan out over every worker.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from songmill.annotate import runner
from songmill.annotate.ingest import IngestSummary
from songmill.flows.jobs import GroupResult, IngestJob, Job, annotate_jobs
from songmill.flows.progress import TerminalProgress

ENGINES = ("prefect", "local", "dask")
GPU_RESOURCE = "GPU"


class ExecutorError(RuntimeError):
    """The executor cannot run the job as asked (no cluster at the address, no GPU worker...)."""


def run_local(
    job: Job, show_progress: bool = False, on_group: Callable[[GroupResult], None] | None = None
) -> Any:
    """plan -> every group in this process -> finish."""
    groups = job.plan(1)
    results: list[GroupResult] = []
    bar = TerminalProgress(job.kind, sum(_n_items(g) for g in groups), show_progress)
    try:
        for group in groups:
            results.append(job.run_group(group))
            bar.update(sum(r.n_items for r in results))
            if on_group is not None:
                on_group(results[-1])
    finally:
        bar.close()
    return job.finish(results)


def _n_items(group: Any) -> int:
    return sum(len(b) for b in (group.batches if hasattr(group, "batches") else group))


class LocalExecutor:
    name = "local"

    def __init__(self, show_progress: bool = False):
        self.show_progress = show_progress

    def ingest(
        self, corpus_root: str, sources: list[str], settings: dict[str, Any] | None
    ) -> IngestSummary:
        job = IngestJob(corpus_root, list(sources), settings)
        job.check()
        return run_local(job, self.show_progress)

    def annotate(
        self,
        corpus_root: str,
        stage_names: list[str],
        settings: dict[str, dict[str, Any]],
        where: str | None = None,
        force: bool = False,
        batch_size: int | None = None,
    ) -> list[runner.RunSummary]:
        summaries: list[runner.RunSummary] = []
        for job in annotate_jobs(corpus_root, stage_names, settings, where, batch_size, force):
            summaries.extend(run_local(job, self.show_progress))
        return summaries

    def close(self) -> None:
        pass


class PrefectExecutor:
    """The flows of flows/pipeline.py with their default task runner: tasks one after another here."""

    name = "prefect"

    def __init__(self, corpus_root: str | None = None, show_progress: bool = True):
        from songmill.flows.prefect_env import configure_prefect

        configure_prefect(corpus_root)
        self.show_progress = show_progress

    def _with_task_runner(self, flow: Any) -> Any:
        return flow

    def _flow_kwargs(self, annotate: bool) -> dict[str, Any]:
        return {}

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        from songmill.flows.prefect_env import foreground_run

        with foreground_run():
            yield

    def ingest(
        self, corpus_root: str, sources: list[str], settings: dict[str, Any] | None
    ) -> IngestSummary:
        IngestJob(
            corpus_root, list(sources), settings
        ).check()  # bad settings fail before a flow starts
        from songmill.flows.pipeline import ingest_flow

        flow_kwargs = self._flow_kwargs(
            False
        )  # an unreachable cluster fails before any flow starts
        with self._running():
            return self._with_task_runner(ingest_flow)(
                corpus_root,
                list(sources),
                settings,
                show_progress=self.show_progress,
                **flow_kwargs,
            )

    def annotate(
        self,
        corpus_root: str,
        stage_names: list[str],
        settings: dict[str, dict[str, Any]],
        where: str | None = None,
        force: bool = False,
        batch_size: int | None = None,
    ) -> list[runner.RunSummary]:
        jobs = annotate_jobs(
            corpus_root, stage_names, settings, where, batch_size, force
        )  # fails fast on bad settings
        self._check_placement(jobs)
        self._prepare_workers([t for j in jobs for t in j.targets.values()])
        from songmill.flows.pipeline import annotate_flow

        flow_kwargs = self._flow_kwargs(True)
        with self._running():
            return self._with_task_runner(annotate_flow)(
                corpus_root,
                stage_names,
                settings,
                where,
                batch_size,
                force,
                show_progress=self.show_progress,
                **flow_kwargs,
            )

    def _check_placement(self, jobs: list[Any]) -> None:
        pass

    def _prepare_workers(self, stage_targets: list[str]) -> None:
        pass

    def close(self) -> None:
        pass


class DaskExecutor(PrefectExecutor):
    """The flows on prefect-dask's DaskTaskRunner.

    Without `address`, a LocalCluster of `workers` processes (default: one per core), one thread
    each, started for the run and stopped after it. With `address` (tcp://HOST:8786), an existing
    cluster: its workers need songmill installed and the corpus reachable at the same URL.
    """

    name = "dask"

    def __init__(
        self,
        corpus_root: str | None = None,
        address: str | None = None,
        workers: int | None = None,
        show_progress: bool = True,
    ):
        super().__init__(corpus_root, show_progress)
        self.address = address
        self.workers = workers or os.cpu_count() or 1

    def _task_runner(self):
        from prefect_dask import DaskTaskRunner

        if self.address:
            return DaskTaskRunner(address=self.address)
        return DaskTaskRunner(
            cluster_class="distributed.LocalCluster",
            cluster_kwargs={
                "n_workers": self.workers,
                "threads_per_worker": 1,  # stages are not thread-safe; one process per core
                "processes": True,
                "dashboard_address": ":0",  # any free port: never collide with another cluster
                "silence_logs": logging.ERROR,
            },
        )

    def _with_task_runner(self, flow: Any) -> Any:
        return flow.with_options(task_runner=self._task_runner())

    def _cluster_workers(self) -> list[dict[str, Any]]:
        from distributed import Client

        try:
            with Client(self.address, timeout="10s") as client:
                return list(client.scheduler_info(n_workers=-1)["workers"].values())
        except OSError as exc:
            raise ExecutorError(f"no Dask scheduler at {self.address}: {exc}") from None

    def _flow_kwargs(self, annotate: bool) -> dict[str, Any]:
        if not self.address:
            # One machine: every worker may use its accelerator (device=auto), no resource needed.
            return {"parallelism": self.workers, "submit": True}
        workers = self._cluster_workers()
        kwargs: dict[str, Any] = {"parallelism": max(1, len(workers)), "submit": True}
        if annotate:
            kwargs["gpu_resource"] = GPU_RESOURCE
        return kwargs

    def _check_placement(self, jobs: list[Any]) -> None:
        if not self.address or not any(j.resources == "gpu" for j in jobs):
            return
        gpu_workers = [
            w for w in self._cluster_workers() if w.get("resources", {}).get(GPU_RESOURCE)
        ]
        if not gpu_workers:
            names = ", ".join(n for j in jobs if j.resources == "gpu" for n in j.stage_names)
            raise ExecutorError(
                f"stages {names} need a GPU worker, and no worker of {self.address} has the {GPU_RESOURCE} "
                f"resource: start one with `dask worker {self.address} --resources {GPU_RESOURCE}=1`"
            )

    def _prepare_workers(self, stage_targets: list[str]) -> None:
        if not self.address:
            self._forkserver = start_worker_forkserver(stage_targets)

    @contextlib.contextmanager
    def _running(self) -> Iterator[None]:
        import dask

        method = (
            {"distributed.worker.multiprocessing-method": "forkserver"}
            if getattr(self, "_forkserver", False)
            else {}
        )
        with super()._running(), shared_prefect_api(), dask.config.set(method):
            yield


def start_worker_forkserver(stage_targets: list[str]) -> bool:
    """Start (in the background) the fork server a LocalCluster's workers will be forked from,
    with Prefect, the job code and the stages' libraries imported (flows/worker_preload.py).

    Spawned workers each start an interpreter and import all of that themselves before their
    first task: ~3 s of both cores on a 2-core machine, during which the driver waits. The server
    imports once, while the driver creates the flow run and plans. It gets the environment the
    nanny gives spawned workers (one BLAS thread, the hash seed), since libraries read it at import.
    False where there is no fork server (not POSIX); workers are then spawned as before."""
    import multiprocessing
    import multiprocessing.forkserver

    if "forkserver" not in multiprocessing.get_all_start_methods():
        return False
    from distributed.nanny import _get_env_variables
    from songmill.flows.worker_preload import STAGES_ENV

    # Not distributed's get_mp_context(): it would replace this list with its own on first use.
    multiprocessing.get_context("forkserver").set_forkserver_preload(
        ["distributed", "songmill.flows.worker_preload"]
    )
    env = {
        "PYTHONHASHSEED": "6640",
        **_get_env_variables("distributed.nanny.pre-spawn-environ"),
        STAGES_ENV: ",".join(sorted(set(stage_targets))),
    }
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return True


@contextlib.contextmanager
def shared_prefect_api() -> Iterator[None]:
    """Worker processes must report to the same Prefect API as this process. Without a configured
    server Prefect starts an ephemeral one per process; start it here and hand its URL on (the
    task runner passes the settings context to every task)."""
    from prefect.settings import PREFECT_API_URL, get_current_settings, temporary_settings

    if get_current_settings().api.url:
        yield
        return
    from prefect.server.api.server import SubprocessASGIServer

    server = SubprocessASGIServer()
    server.start(timeout=120)
    with temporary_settings({PREFECT_API_URL: server.api_url}):
        yield


def default_engine() -> tuple[str, str | None]:
    """The engine of a command that names none, and a note for the user (or None).

    With a Prefect server configured (PREFECT_API_URL), a Prefect flow reporting to it. Without
    one, Prefect would first start a temporary server of its own: 10 s per command, 35 s on a new
    corpus, and slower still on a busy machine. Then the job runs in this process (the same job,
    the same rows) and the note says how to get the Prefect UI instead."""
    from songmill.flows.prefect_env import DEFAULT_UI_URL, configured_api_url

    if configured_api_url():
        return "prefect", None
    from songmill.flows.hints import venv_command

    return "local", (
        f"running in this process: no Prefect server is configured. For run history and the UI, start one "
        f"(`{venv_command('prefect')} server start`) and `export PREFECT_API_URL={DEFAULT_UI_URL}`, "
        "or pass --engine prefect (a temporary server per command)"
    )


def make_executor(
    engine: str,
    corpus_root: str | None = None,
    address: str | None = None,
    workers: int | None = None,
    show_progress: bool = True,
) -> LocalExecutor | PrefectExecutor | DaskExecutor:
    if address and engine != "dask":
        raise ExecutorError("--address needs --engine dask")
    if engine == "local":
        return LocalExecutor(show_progress)
    if engine == "prefect":
        return PrefectExecutor(corpus_root, show_progress)
    if engine == "dask":
        return DaskExecutor(corpus_root, address, workers, show_progress)
    raise ExecutorError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
