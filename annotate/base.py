"""The one interface every annotation stage implements.

A stage is a small class: a name, a version, a config dataclass (hashed into `config_hash`), the
table it writes (declared with `data_schema.register_table`), the tables it reads, the resources it
needs, and a batch `process` that returns one row (a dict) or one exception per track. The runner
(annotate/runner.py) picks the tracks lacking a current result, decodes each track once per batch
and shares the audio between the stages of that batch, writes the rows, turns exceptions into
`errors` rows and goes on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
from songmill.annotate.audio import decode, resample, to_mono_resampled

if TYPE_CHECKING:
    from songmill.data_schema.store import Corpus

# Config fields marked this way (dataclasses.field(metadata=RUNTIME)) do not change results
# (batch size, device...) and so stay out of config_hash.
RUNTIME = {"runtime": True}


class StageUnavailable(RuntimeError):
    """The stage cannot run at all here (missing weights or package). Says what to do.

    The runner writes one retryable `errors` row per pending track and moves on to the next stage.
    """


@dataclass
class StageConfig:
    """Base for stage configs. Subclass as a dataclass with defaults; TOML keys map to fields."""

    batch_size: int = field(default=32, metadata=RUNTIME)
    device: str = field(default="auto", metadata=RUNTIME)

    def hashed_fields(self) -> dict[str, Any]:
        return {
            f.name: getattr(self, f.name)
            for f in dataclasses.fields(self)
            if not f.metadata.get("runtime", False)
        }


def config_hash(config: StageConfig) -> str:
    blob = json.dumps(config.hashed_fields(), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


class Track:
    """One track in a batch: its `tracks` row, the current rows of the tables the stage reads,
    and its audio, decoded on first use and cached so that every stage of a batch shares it."""

    def __init__(self, row: Mapping[str, Any], inputs: dict[str, Mapping[str, Any]] | None = None):
        self.row = dict(row)
        self.inputs: dict[str, Mapping[str, Any]] = inputs if inputs is not None else {}
        self._native: tuple[np.ndarray, int] | None = None
        self._variants: dict[tuple[int, bool], np.ndarray] = {}

    @property
    def track_id(self) -> str:
        return self.row["track_id"]

    @property
    def uri(self) -> str:
        return self.row["uri"]

    @property
    def duration_s(self) -> float:
        return float(self.row.get("duration_s") or 0.0)

    def audio(self, sample_rate: int | None = None, mono: bool = False) -> tuple[np.ndarray, int]:
        """float32 audio shaped (frames, channels), or (frames,) when mono; and its rate.

        Decoded once; each (rate, mono) variant is computed once and cached.
        """
        if self._native is None:
            self._native = decode(self.uri)
        samples, native_sr = self._native
        sr = sample_rate or native_sr
        if sr == native_sr and not mono:
            return samples, sr
        key = (sr, mono)
        if key not in self._variants:
            convert = to_mono_resampled if mono else resample
            self._variants[key] = convert(samples, native_sr, sr)
        return self._variants[key], sr

    def finite_audio(
        self, sample_rate: int | None = None, mono: bool = False
    ) -> tuple[np.ndarray, int]:
        """`audio()`, refusing empty or non-finite audio with a one-line error (the track's
        errors row) before a model turns it into NaN scores."""
        audio, sr = self.audio(sample_rate, mono)
        if audio.size == 0:
            raise ValueError("audio is empty")
        if not np.all(np.isfinite(audio)):
            raise ValueError("audio holds NaN or infinite samples")
        return audio, sr

    def release_audio(self) -> None:
        self._native = None
        self._variants.clear()


class Stage:
    """Subclass, set the class attributes and implement `process` (or `process_track`)."""

    name: ClassVar[str]
    version: ClassVar[int] = 1
    table: ClassVar[str]  # output table, registered in data_schema
    reads: ClassVar[tuple[str, ...]] = ()  # other tables whose current rows the stage needs
    resources: ClassVar[str] = "cpu"  # "cpu" or "gpu"
    config_class: ClassVar[type[StageConfig]] = StageConfig
    # Tracks must have a current row in each of these tables before the stage runs on them.
    requires: ClassVar[tuple[str, ...]] = ()
    # Modules the first track imports (lazily, to keep `songmill query` fast): a worker pool
    # forked from a process that imported them shares them instead of paying per worker.
    warm_imports: ClassVar[tuple[str, ...]] = ()

    def __init__(self, config: StageConfig | None = None, corpus: Corpus | None = None):
        self.config = config if config is not None else self.config_class()
        # Stages that write blobs (stems, feature shards) or read catalogs (lyrics) use it.
        self.corpus = corpus

    @property
    def config_hash(self) -> str:
        return config_hash(self.config)

    def setup(self) -> None:
        """Load weights / build models. Raise StageUnavailable with a how-to when it cannot."""

    @classmethod
    def warm_up(cls) -> None:
        """Import what setup and the first track would import, without setting anything up."""
        for module in cls.warm_imports:
            importlib.import_module(module)

    def process(self, tracks: Sequence[Track]) -> list[dict[str, Any] | BaseException]:
        """One result per track, in order: a row dict (stage columns only) or the exception."""
        results: list[dict[str, Any] | BaseException] = []
        for track in tracks:
            try:
                results.append(self.process_track(track))
            except Exception as exc:  # one bad track never stops the batch
                results.append(exc)
        return results

    def process_track(self, track: Track) -> dict[str, Any]:
        raise NotImplementedError(
            f"{type(self).__name__} implements neither process nor process_track"
        )

    def after_run(self, corpus: Corpus) -> None:
        """Corpus-wide work once a run wrote some of this stage's rows (e.g. the fingerprint
        stage's near-duplicate index). The runner calls it after the `runs` rows are in."""

    def __repr__(self) -> str:
        return f"<stage {self.name} v{self.version} {self.config_hash}>"
