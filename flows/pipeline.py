"""Prefect flows: ingest and annotate, one task per group of batches (never one per track: a task
run costs ~10-40 ms of orchestration, a group minutes of audio).

Entry points (flows/schedule.py and flows/executors.py call these):
  ingest_flow(corpus_root, sources, settings)          -> IngestSummary
  annotate_flow(corpus_root, stage_names, settings)    -> list[RunSummary]
Both run the jobs of flows/jobs.py. With the flow's default task runner the tasks run one after
another in this process; with `submit` (the Dask executor runs the flow on prefect-dask's
DaskTaskRunner) they are all submitted, grouped for `parallelism` workers, and `gpu_resource`
places GPU jobs' tasks only on workers that declare that Dask resource. Each flow run publishes its throughput table as a markdown artifact.

Importing this module imports Prefect, so set PREFECT_HOME first (flows/prefect_env.py does).
"""

from __future__ import annotations

import contextlib
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed
from prefect.utilities.annotations import quote
from songmill.annotate import runner
from songmill.annotate.ingest import IngestSummary
from songmill.data_schema.store import Corpus
from songmill.flows.jobs import GroupResult, IngestJob, Job, annotate_jobs
from songmill.flows.progress import TerminalProgress
from songmill.flows.throughput import throughput_markdown


class _Progress:
    """Terminal bar plus a Prefect progress artifact, advanced together."""

    def __init__(self, description: str, total: int, show: bool):
        self.total = max(total, 1)
        self.artifact_id = create_progress_artifact(progress=0.0, description=description)
        self.bar = TerminalProgress(description, total, show)

    def advance(self, done: int) -> None:
        update_progress_artifact(artifact_id=self.artifact_id, progress=100.0 * done / self.total)
        self.bar.update(done)

    def close(self) -> None:
        self.bar.close()


@task(name="songmill-batches", cache_policy=NO_CACHE)
def run_group_task(job: Job, group: Any, may_repeat: bool = False) -> GroupResult:
    return job.run_group(group, may_repeat)


def run_job_in_flow(
    job: Job,
    parallelism: int = 1,
    gpu_resource: str | None = None,
    show_progress: bool = True,
    submit: bool = False,
) -> Any:
    """Plan on this process, run the groups as tasks (called here one after another, or with
    `submit` handed to the flow's task runner: Dask workers), finish here."""
    logger = get_run_logger()
    groups = job.plan(parallelism)
    n_items = sum(len(b) for g in groups for b in (g.batches if hasattr(g, "batches") else g))
    logger.info("%s: %d items in %d tasks", job.describe(), n_items, len(groups))
    progress = _Progress(job.kind, n_items, show_progress)
    results: list[GroupResult] = []
    try:
        if not submit:
            for group in groups:
                # quote(): Prefect would otherwise walk these (large) arguments on every task call.
                results.append(run_group_task(quote(job), quote(group)))
                progress.advance(sum(r.n_items for r in results))
        else:
            placement = contextlib.nullcontext()
            if job.resources == "gpu" and gpu_resource:
                import dask

                placement = dask.annotate(resources={gpu_resource: 1})
            with placement:
                # may_repeat: a worker that dies mid-group has its group run again elsewhere. No
                # quote() here: prefect-dask rebuilds a quoted argument as a bare tuple.
                futures = [run_group_task.submit(job, group, True) for group in groups]
            for future in as_completed(futures):
                results.append(future.result())
                progress.advance(sum(r.n_items for r in results))
    finally:
        progress.close()
    return job.finish(results)


def _publish_throughput(corpus_root: str, run_id: str) -> None:
    try:
        markdown = throughput_markdown(Corpus(corpus_root, create=False), run_ids=[run_id])
    except Exception as exc:  # the report is a nicety: never fail a finished run over it
        get_run_logger().warning("no throughput artifact: %s", exc)
        return
    create_markdown_artifact(
        key="songmill-throughput", markdown=markdown, description=f"songmill run {run_id}"
    )


@flow(name="songmill-ingest", log_prints=True)
def ingest_flow(
    corpus_root: str,
    sources: list[str],
    settings: dict[str, Any] | None = None,
    show_progress: bool = True,
    parallelism: int = 1,
    run_id: str | None = None,
    submit: bool = False,
) -> IngestSummary:
    job = IngestJob(
        Corpus(corpus_root).root, list(sources), settings, **({"run_id": run_id} if run_id else {})
    )
    summary = run_job_in_flow(job, parallelism, None, show_progress, submit)
    _publish_throughput(job.corpus_root, job.run_id)
    return summary


@flow(name="songmill-annotate", log_prints=True)
def annotate_flow(
    corpus_root: str,
    stage_names: list[str],
    settings: dict[str, dict[str, Any]],
    where: str | None = None,
    batch_size: int | None = None,
    force: bool = False,
    show_progress: bool = True,
    parallelism: int = 1,
    gpu_resource: str | None = None,
    run_id: str | None = None,
    submit: bool = False,
) -> list[runner.RunSummary]:
    corpus = Corpus(corpus_root, create=False)
    jobs = annotate_jobs(corpus.root, stage_names, settings, where, batch_size, force, run_id)
    summaries: list[runner.RunSummary] = []
    for job in jobs:
        summaries.extend(run_job_in_flow(job, parallelism, gpu_resource, show_progress, submit))
    for s in summaries:
        if s.unavailable:
            get_run_logger().warning(
                "%s unavailable, its tracks got retryable errors rows: %s", s.stage, s.unavailable
            )
    if jobs:
        _publish_throughput(corpus.root, jobs[0].run_id)
    return summaries
