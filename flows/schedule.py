"""`songmill serve --cron`: ingest then annotate on a schedule, as a served Prefect deployment.

`serve` registers (or updates) the deployment `songmill-scheduled/songmill-scheduled` on the
Prefect server named by PREFECT_API_URL, with the cron schedule and this command line's corpus,
sources, stages and settings as its parameters, then polls the server for due runs and runs each
in a child process until stopped. The server keeps the schedule and the run history; the corpus
keeps the data, so a run that is cancelled or crashes is simply redone (incrementally) by the next.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from prefect import flow
from songmill.annotate import DEFAULT_STAGES, build_stages
from songmill.annotate.ingest import IngestConfig
from songmill.annotate.settings import build_config, load_settings
from songmill.flows.pipeline import annotate_flow, ingest_flow

DEPLOYMENT_NAME = "songmill-scheduled"


@flow(name="songmill-scheduled")
def scheduled_flow(
    corpus_root: str, sources: list[str], stage_names: list[str], settings: dict[str, Any]
) -> None:
    if sources:
        ingest_flow(corpus_root, sources, settings.get("ingest"), show_progress=False)
    annotate_flow(corpus_root, stage_names, settings, show_progress=False)


def _error(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def check_cron(cron: str) -> str | None:
    """Why `cron` is not a schedule Prefect accepts, or None."""
    from prefect.client.schemas.schedules import CronSchedule
    from pydantic import ValidationError

    try:
        CronSchedule(cron=cron)
    except ValidationError as exc:
        return exc.errors()[0]["msg"]
    return None


def check_server() -> str | None:
    """Why no Prefect server can take the deployment (none configured, none answering), or None."""
    from prefect.client.orchestration import get_client
    from prefect.settings import get_current_settings
    from songmill.flows.hints import venv_command

    prefect = venv_command("prefect")
    url = get_current_settings().api.url  # env var or `prefect config set PREFECT_API_URL=...`
    if not url:
        return (
            f"scheduled runs need a running Prefect server: start `{prefect} server start`, then "
            "`export PREFECT_API_URL=http://127.0.0.1:4200/api`"
        )
    with get_client(sync_client=True) as client:
        failure = client.api_healthcheck()
    if failure is not None:
        reason = (
            str(failure).strip().splitlines()[0] if str(failure).strip() else type(failure).__name__
        )
        return f"no Prefect server answers at PREFECT_API_URL={url} ({reason}); is `{prefect} server start` running?"
    return None


def serve(
    corpus_root: str,
    sources: list[str],
    stage_names: list[str] | None,
    cron: str,
    config: str | None,
    overrides: list[str],
) -> int:
    problem = check_cron(cron)
    if problem:
        return _error(f"--cron {cron!r} is not a cron expression: {problem}")
    # Bad settings or stage names fail here, once, not in every scheduled run.
    settings = load_settings(config, corpus_root, overrides)
    stage_names = stage_names or list(DEFAULT_STAGES)
    build_config(IngestConfig, "ingest", settings.get("ingest"))
    build_stages(stage_names, settings)
    problem = check_server()
    if problem:
        return _error(problem)
    parameters = {
        "corpus_root": os.path.abspath(corpus_root) if "://" not in corpus_root else corpus_root,
        "sources": [
            os.path.abspath(s) if "://" not in s and not os.path.isabs(s) else s for s in sources
        ],
        "stage_names": stage_names,
        "settings": settings,
    }
    from prefect.client.schemas.objects import ConcurrencyLimitConfig, ConcurrencyLimitStrategy

    # One run at a time: a run still busy when the next one is due makes the server cancel the new
    # one (the next due run picks up what is left), so runs never pile up or race on the corpus.
    one_at_a_time = ConcurrencyLimitConfig(
        limit=1, collision_strategy=ConcurrencyLimitStrategy.CANCEL_NEW
    )
    # Stopping serve pauses the schedule (no runs pile up while nothing would run them); starting it
    # again updates the deployment and resumes the schedule.
    scheduled_flow.serve(
        name=DEPLOYMENT_NAME,
        cron=cron,
        parameters=parameters,
        global_limit=one_at_a_time,
        pause_on_shutdown=True,
    )
    return 0
