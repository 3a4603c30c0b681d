"""`songmill serve --cron`: ingest then annotate on a schedule, as a served Prefect deployment."""

from __future__ import annotations

import os
import sys
from typing import Any

from prefect import flow
from songmill.annotate import DEFAULT_STAGES
from songmill.flows.config import load_settings
from songmill.flows.pipeline import annotate_flow, ingest_flow


@flow(name="songmill-scheduled")
def scheduled_flow(corpus_root: str, sources: list[str], stage_names: list[str], settings: dict[str, Any]) -> None:
    if sources:
        ingest_flow(corpus_root, sources, settings.get("ingest"), show_progress=False)
    annotate_flow(corpus_root, stage_names, settings, show_progress=False)


def serve(corpus_root: str, sources: list[str], stage_names: list[str] | None, cron: str, config: str | None, overrides: list[str]) -> int:
    from prefect.settings import get_current_settings

    if not get_current_settings().api.url:  # env var or `prefect config set PREFECT_API_URL=...`
        print(
            "error: scheduled runs need a running Prefect server. Start one with\n"
            "  prefect server start\n"
            "and point songmill at it:\n"
            "  export PREFECT_API_URL=http://127.0.0.1:4200/api",
            file=sys.stderr,
        )
        return 2
    settings = load_settings(config, corpus_root, overrides)
    parameters = {
        "corpus_root": os.path.abspath(corpus_root) if "://" not in corpus_root else corpus_root,
        "sources": sources,
        "stage_names": stage_names or list(DEFAULT_STAGES),
        "settings": settings,
    }
    scheduled_flow.serve(name="songmill-scheduled", cron=cron, parameters=parameters)
    return 0
