"""Shared test fixtures. Prefect state goes to a temporary home, and one embedded Prefect server
is started per test session, only if a test asks for it."""

from __future__ import annotations

import os
import tempfile

_PREFECT_HOME = tempfile.mkdtemp(prefix="songmill-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ["PREFECT_LOGGING_LEVEL"] = "WARNING"
os.environ["PREFECT_SERVER_LOGGING_LEVEL"] = "ERROR"
os.environ.pop("PREFECT_API_URL", None)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import soundfile as sf  # noqa: E402
from songmill.data_schema.store import Corpus  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def _one_torch_thread():
    """The tests run tiny models: one thread is as fast, and far faster when cores are shared."""
    import torch

    torch.set_num_threads(1)


@pytest.fixture(scope="session")
def prefect_server():
    """One temporary Prefect server (SQLite) for the whole session (~15 s to start)."""
    from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
    from prefect.testing.utilities import prefect_test_harness

    # No heartbeats: each flow exit otherwise waits on its heartbeat thread.
    with (
        temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
        prefect_test_harness(server_startup_timeout=120),
    ):
        yield


@pytest.fixture
def corpus(tmp_path) -> Corpus:
    return Corpus(tmp_path / "corpus")


def tone(
    seconds: float = 2.0,
    sr: int = 44100,
    channels: int = 2,
    freq: float = 440.0,
    amp: float = 0.3,
    seed: int = 0,
) -> np.ndarray:
    """A tone with a little noise, shaped (frames, channels); the seed makes the bytes distinct."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    mono = amp * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size)
    return np.repeat(mono[:, None], channels, axis=1).astype(np.float32)


def write_audio(path, data: np.ndarray, sr: int = 44100, **kwargs) -> str:
    path = str(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, data, sr, **kwargs)
    return path


def rows(corpus: Corpus, sql: str) -> list[tuple]:
    """Result rows of `sql` over the corpus views, as tuples."""
    table = corpus.sql(sql)
    return (
        list(zip(*(c.to_pylist() for c in table.columns), strict=True)) if table.num_columns else []
    )
