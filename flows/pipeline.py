"""Prefect flows: ingest and annotate, one task per batch of tracks (never one per track: a task
run costs ~10-15 ms of orchestration, a batch of tracks seconds of work).

Importing this module imports Prefect, so set PREFECT_HOME first (flows/prefect_env.py does).
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote
from songmill.annotate import runner
from songmill.data_schema.store import Corpus
from songmill.flows.config import build_config, build_stages
from songmill.flows.ingest import (
    FoundFile,
    IngestConfig,
    IngestSummary,
    finish_ingest,
    ingest_batch,
    ingest_batches,
    plan_ingest,
)
from songmill.flows.progress import TerminalProgress


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


@task(name="ingest-batch", cache_policy=NO_CACHE)
def ingest_batch_task(corpus_root: str, files: list[FoundFile], run_id: str, verify: str) -> IngestSummary:
    return ingest_batch(Corpus(corpus_root), files, run_id, verify)


@flow(name="songmill-ingest", log_prints=True)
def ingest_flow(corpus_root: str, sources: list[str], settings: dict[str, Any] | None = None, show_progress: bool = True) -> IngestSummary:
    corpus = Corpus(corpus_root)
    config = build_config(IngestConfig, "ingest", settings)
    todo, summary = plan_ingest(corpus, sources, config)
    get_run_logger().info("ingest: %d files found, %d unchanged, %d to read", summary.found, summary.unchanged, len(todo))
    progress = _Progress("ingest", len(todo), show_progress)
    done = 0
    try:
        for batch in ingest_batches(todo, config.batch_size):
            # quote(): Prefect would otherwise walk these (large) arguments on every task call.
            summary.add(ingest_batch_task(corpus.root, quote(batch), summary.run_id, config.verify))
            done += len(batch)
            progress.advance(done)
    finally:
        progress.close()
    finish_ingest(corpus)
    return summary


# A task run costs ~10-40 ms of API calls to the Prefect server; a task should carry minutes of
# audio, while a batch (the unit of decoding and of Parquet parts) stays small for memory.
TASK_MIN_AUDIO_S = 600.0
TASK_MAX_TRACKS = 512


def group_batches(batches: list[list[dict[str, Any]]]) -> list[list[list[dict[str, Any]]]]:
    """Consecutive batches grouped so that each task holds >= TASK_MIN_AUDIO_S of audio."""
    groups: list[list[list[dict[str, Any]]]] = []
    audio = tracks = 0.0
    for batch in batches:
        if not groups or audio >= TASK_MIN_AUDIO_S or tracks + len(batch) > TASK_MAX_TRACKS:
            groups.append([])
            audio = tracks = 0.0
        groups[-1].append(batch)
        audio += sum(float(r.get("duration_s") or 0.0) for r in batch)
        tracks += len(batch)
    return groups


@task(name="annotate-batches", cache_policy=NO_CACHE)
def annotate_batches_task(corpus_root: str, plan: runner.Plan, batches: list[list[dict[str, Any]]]) -> int:
    corpus = Corpus(corpus_root)
    for batch in batches:
        runner.run_batch(corpus, plan, batch)
    return sum(len(b) for b in batches)


@flow(name="songmill-annotate", log_prints=True)
def annotate_flow(
    corpus_root: str,
    stage_names: list[str],
    settings: dict[str, dict[str, Any]],
    where: str | None = None,
    batch_size: int = runner.DEFAULT_BATCH_SIZE,
    force: bool = False,
    show_progress: bool = True,
) -> list[runner.RunSummary]:
    corpus = Corpus(corpus_root)
    logger = get_run_logger()
    stages = build_stages(stage_names, settings, corpus)
    plan = runner.plan(corpus, stages, where, batch_size, force=force)
    for p in plan.stages:
        logger.info("%s v%d (%s): %d tracks to process", p.stage.name, p.stage.version, p.stage.config_hash, len(p.pending))
    runner.setup_stages(plan)
    for p in plan.stages:
        if p.unavailable:
            logger.warning("%s unavailable, its tracks get retryable errors rows: %s", p.stage.name, p.unavailable)
    progress = _Progress("annotate", plan.n_tracks, show_progress)
    done = 0
    try:
        for group in group_batches(plan.batches):
            done += annotate_batches_task(corpus.root, quote(plan), quote(group))
            progress.advance(done)
    finally:
        progress.close()
    return runner.finish(corpus, plan)
