"""Prefect settings that must be in the environment before `import prefect`."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

EPHEMERAL_STARTUP_TIMEOUT_S = 600
DEFAULT_UI_URL = "http://127.0.0.1:4200/api"


def configured_api_url() -> str | None:
    """The Prefect server this process would report to, without importing Prefect where it is
    not loaded yet: $PREFECT_API_URL, else the active profile's (`prefect config set
    PREFECT_API_URL=...` writes it to $PREFECT_HOME/profiles.toml), else none (Prefect would
    start a temporary server of its own)."""
    import sys

    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    if "prefect.settings" in sys.modules:  # already loaded: ask it (a test harness, a script)
        from prefect.settings import get_current_settings

        return get_current_settings().api.url or None
    import tomllib

    home = os.path.expanduser(os.environ.get("PREFECT_HOME", "~/.prefect"))
    path = os.environ.get("PREFECT_PROFILES_PATH") or os.path.join(home, "profiles.toml")
    try:
        with open(os.path.expanduser(path), "rb") as f:
            profiles = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active")
    url = profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL") if active else None
    return str(url) if url else None


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
    # Prefect waits 20 s for its ephemeral server; creating the database of a new corpus takes
    # 35 s on a busy 2-core machine, and the command then failed. A slow start is not a failure.
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(EPHEMERAL_STARTUP_TIMEOUT_S)
    )
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
