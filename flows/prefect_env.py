"""Prefect settings that must be in the environment before `import prefect`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager


def configure_prefect(corpus_root: str | None = None) -> None:
    """Keep Prefect's state (its SQLite database, which the UI reads) with the corpus unless the
    user already chose a PREFECT_HOME or a server (PREFECT_API_URL)."""
    if "PREFECT_HOME" not in os.environ and "PREFECT_API_URL" not in os.environ:
        if corpus_root and "://" not in corpus_root:
            home = os.path.join(os.path.abspath(corpus_root), "_prefect")
        else:
            home = os.path.join(os.path.expanduser("~"), ".songmill", "prefect")
        os.environ["PREFECT_HOME"] = home
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "WARNING")
    # The ephemeral server's SQLite logs "database is locked" noise under load; it retries.
    os.environ.setdefault("PREFECT_SERVER_LOGGING_LEVEL", "ERROR")


@contextmanager
def foreground_run() -> Iterator[None]:
    """Settings for a flow the CLI runs in the foreground: no heartbeat thread. Heartbeats let a
    server notice crashed runs of deployments (`songmill serve` keeps them); in the foreground the
    user sees a crash, and the heartbeat thread costs 1-3 s at every flow exit."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        yield
